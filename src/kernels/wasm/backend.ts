// The parts of tfjs's wasm backend our wasm kernels use (public at run time, not in its types):
// its heap, where each tensor lies in it, and its output allocation.
import * as tf from '@tensorflow/tfjs-core';

export interface WasmBackend {
  wasm: { asm: { memory: WebAssembly.Memory }; _malloc(bytes: number): number; _free(pointer: number): void };
  dataIdMap: { get(dataId: object): { memoryOffset: number } | undefined };
  makeOutput(shape: number[], dtype: 'float32'): tf.TensorInfo;
  incRef(dataId: object): void;
}

/** `backend` as tfjs's wasm backend, or null when it is another. */
export function asWasmBackend(backend: unknown): WasmBackend | null {
  const b = backend as Partial<WasmBackend> | null;
  return b && b.wasm && b.wasm.asm && b.wasm.asm.memory instanceof WebAssembly.Memory && typeof b.makeOutput === 'function' ? (b as WasmBackend) : null;
}

/**
 * A kernel's output of `shape`: `target` itself when given (the kernel writes into it in place, and
 * the result shares its data), else a new float32 tensor.
 */
export function outputInto(be: WasmBackend, shape: readonly number[], target: tf.TensorInfo | undefined): tf.TensorInfo {
  if (!target) return be.makeOutput([...shape], 'float32');
  be.incRef(target.dataId);
  return { dataId: target.dataId, shape: [...shape], dtype: 'float32' };
}

/** A new float32 tensor of `shape` on `be` whose values are left unset, for the caller to write in the heap. */
export function unsetTensor<R extends tf.Rank>(be: WasmBackend, shape: readonly number[]): tf.Tensor<R> {
  return tf.engine().makeTensorFromTensorInfo(be.makeOutput([...shape], 'float32')) as tf.Tensor<R>;
}

/** Where `t`'s float32 values lie in `be`'s heap (valid until the heap next grows). */
export function heapView(be: WasmBackend, t: tf.TensorInfo): Float32Array {
  const data = be.dataIdMap.get(t.dataId);
  if (!data) throw new Error('wasm heap: a tensor is not on the wasm backend');
  return new Float32Array(be.wasm.asm.memory.buffer, data.memoryOffset, t.shape.reduce((a, b) => a * b, 1));
}
