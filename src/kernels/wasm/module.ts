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
