/**
 * `bytes` compiled on first use and kept, or null where the runtime lacks WebAssembly or its SIMD.
 * Synchronous: for small modules only (browsers refuse a synchronous compile over 4 KB on a
 * page's main thread).
 */
export function compiledOnce(bytes: Uint8Array<ArrayBuffer>): () => WebAssembly.Module | null {
  let compiled: WebAssembly.Module | null | undefined;
  return () => {
    if (compiled === undefined) {
      compiled = null;
      try {
        if (typeof WebAssembly === 'object' && WebAssembly.validate(bytes)) compiled = new WebAssembly.Module(bytes);
      } catch {
        compiled = null;
      }
    }
    return compiled;
  };
}

/**
 * The exports of `module()` instantiated on a tfjs wasm backend's memory, once per backend; null
 * where the module is not compiled (see `compiledOnce`).
 */
export function onHeap<E>(module: () => WebAssembly.Module | null): (memory: WebAssembly.Memory) => E | null {
  const instances = new WeakMap<WebAssembly.Memory, E>();
  return (memory) => {
    let exports = instances.get(memory);
    if (exports === undefined) {
      const compiled = module();
      if (!compiled) return null;
      exports = new WebAssembly.Instance(compiled, { env: { memory } }).exports as unknown as E;
      instances.set(memory, exports);
    }
    return exports;
  };
}
