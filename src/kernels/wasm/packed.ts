// Weights that live only in XNNPACK's packed form on the wasm backend.
// Why: tfjs-backend-wasm (4.22) runs a convolution or a matMul through an XNNPACK operator that it
// creates on the first call with a given weight tensor (keyed on the weight's id, its bias's id,
// the activation and, for a convolution, the geometry), packing the weight's values into the
// operator's own layout, and keeps the operator until the weight is disposed; calls that find it
// never read the weight's values again. For a network's constant weights the heap so holds both
// copies (~0.25 GB of img2pose's ~0.5 GB on wasm, per thread, and a wasm heap keeps its high-water
// mark). A stage runs once on a small input inside `packingRun`, where each weight's own copy is
// freed right after its first call (so that the next weight's copy can reuse the space, and the
// packed copies end up side by side); the tensor stays: its id still finds the operator, and
// disposing it still deletes the operator. The numbers are the packed ones either way, so results
// do not change.
//
// What it costs: the released tensor's values are gone (reading it gives meaningless numbers),
// and a call with a signature not packed before would make XNNPACK pack freed memory. The kernels
// that use a weight therefore go through `usePacked`, which refuses such a call instead.
import * as tf from '@tensorflow/tfjs-core';

/** tfjs-backend-wasm's bookkeeping of one tensor's storage (its BackendWasm.dataIdMap values). */
interface WasmTensorData {
  memoryOffset: number;
  refCount: number;
}

interface WasmBackend {
  wasm: { _free(offset: number): void };
  dataIdMap: { get(dataId: object): WasmTensorData | undefined };
}

/** Per storage (dataId): the call signatures whose XNNPACK operators exist. */
const packed = new WeakMap<object, Set<string>>();
/** Storages whose own copy was freed. */
const released = new WeakSet<object>();
/** Depth of `packingRun` calls. */
let packing = 0;

function wasmBackendOf(t: tf.Tensor): WasmBackend | null {
  const backend = tf.engine().state.tensorInfo.get(t.dataId)?.backend as Partial<WasmBackend> | undefined;
  if (!backend || backend !== tf.findBackend('wasm') || !backend.wasm || typeof backend.wasm._free !== 'function' || !backend.dataIdMap) return null;
  return backend as WasmBackend;
}

/**
 * Runs `op`, an XNNPACK convolution or matMul whose packed weight is `weight`, called the way
 * `signature` names (everything tfjs keys its operator on besides the weight: the bias tensor, the
 * activation, the geometry). Once `weight`'s own copy is released, a signature not seen before it
 * throws instead of running.
 */
export function usePacked<T>(weight: tf.Tensor, signature: string, op: () => T): T {
  const known = packed.get(weight.dataId);
  if (released.has(weight.dataId) && !known?.has(signature)) {
    const kept = known ? `kept only as packed for ${[...known].join(', ')}` : 'no longer held (its layer runs from another form of it)';
    throw new Error(`wasm packed weights: [${weight.shape}] is ${kept}; a call as ${signature} would read freed memory (build the network with the settings it will run with)`);
  }
  const out = op();
  if (!known) packed.set(weight.dataId, new Set([signature]));
  else known.add(signature);
  if (packing > 0) releaseUnpacked(weight);
  return out;
}

/**
 * Runs `warmUp` (a stage on a small input, calling every weight the way it will always be called)
 * with each weight's own copy freed right after its first `usePacked` call: from then on only the
 * packed copy remains. A weight that is later called in another way throws (see `usePacked`).
 */
export function packingRun<T>(warmUp: () => T): T {
  packing++;
  try {
    return warmUp();
  } finally {
    packing--;
  }
}

/**
 * A stage's weights packed as it is built: `warmUp` (the stage on a small zero input, its tensors
 * released) under `packingRun`. A stage whose warm-up throws is disposed, as a failing constructor
 * must leave nothing behind.
 */
export function packStage(stage: { dispose(): void }, warmUp: () => void): void {
  try {
    packingRun(() => tf.tidy(warmUp));
  } catch (e) {
    stage.dispose();
    throw e;
  }
}

/**
 * Frees the own copy of a weight that its layer no longer reads on wasm (a Winograd layer's 3x3
 * filter, once its transformed filters exist), if no other tensor shares its storage. A later call
 * through `usePacked` throws. Returns whether it was freed.
 */
export function releaseUnused(weight: tf.Tensor): boolean {
  if (weight.isDisposed || released.has(weight.dataId)) return false;
  const backend = wasmBackendOf(weight);
  const data = backend?.dataIdMap.get(weight.dataId);
  if (!backend || !data || data.refCount !== 1) return false;
  backend.wasm._free(data.memoryOffset);
  // Disposal frees memoryOffset again: free(0) does nothing.
  data.memoryOffset = 0;
  released.add(weight.dataId);
  return true;
}

/**
 * Frees `weight`'s own copy in the wasm heap if XNNPACK has packed it (a `usePacked` call ran) and
 * no other tensor shares its storage; the tensor stays, usable only as `usePacked` allows.
 * Returns whether it was freed.
 */
function releaseUnpacked(weight: tf.Tensor): boolean {
  return packed.has(weight.dataId) && releaseUnused(weight);
}

/** Whether a `packingRun` is under way (weights made now are best packed as they are made). */
export function packingActive(): boolean {
  return packing > 0;
}

/** Whether `weight`'s own copy was freed by `releaseUnpacked`. */
export function isReleased(weight: tf.Tensor): boolean {
  return released.has(weight.dataId);
}
