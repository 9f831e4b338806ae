/**
 * Tensors made before the detector picked its backend live on whichever backend tfjs started
 * with (in a fresh Node process without tfjs-node: 'cpu'). tfjs moves such a tensor lazily, the
 * first time a kernel of the new backend reads it; the wasm backend does that move inside the
 * kernel, after it has taken a view of its heap, and when the move's allocation grows the heap
 * that view is detached ("Cannot perform Construct on a detached ArrayBuffer"). Copying the
 * values onto the active backend through a plain upload before any kernel runs avoids the
 * lazy move altogether.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Img2PoseWeights } from '../model/weights';

/** Whether `t`'s data lives on the active backend (so kernels read it without a move). */
export function onActiveBackend(t: tf.Tensor): boolean {
  return tf.engine().state.tensorInfo.get(t.dataId)?.backend === tf.backend();
}

/** A copy of `t` on the active backend (a new tensor the caller owns). */
export function copyToActiveBackend<T extends tf.Tensor>(t: T): T {
  return tf.tensor(t.dataSync(), t.shape, t.dtype) as T;
}

/**
 * `weights` with every tensor on the active backend, and the tensors made for it (the caller
 * disposes them once the network holds its own copies). Tensors already there are shared.
 */
export function weightsOnActiveBackend(weights: Img2PoseWeights): { weights: Img2PoseWeights; made: tf.Tensor[] } {
  const made: tf.Tensor[] = [];
  const tensors = new Map<string, tf.Tensor>();
  try {
    for (const [name, t] of weights.tensors) {
      if (onActiveBackend(t)) {
        tensors.set(name, t);
      } else {
        const copy = copyToActiveBackend(t);
        made.push(copy);
        tensors.set(name, copy);
      }
    }
  } catch (e) {
    tf.dispose(made);
    throw e;
  }
  return { weights: { ...weights, tensors }, made };
}
