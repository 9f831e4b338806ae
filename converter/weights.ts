import * as tf from '@tensorflow/tfjs-core';

export type ResNetDepth = 18 | 50 | 101;

/**
 * Everything the network needs, in memory.
 *
 * `tensors` is keyed by the upstream state-dict names without any `module.` prefix
 * (e.g. `backbone.body.layer1.0.conv1.weight`), in the layout of `converter/layout.ts`:
 * conv (kh, kw, in, out), linear (in, out), norm parameters raw (not folded).
 * `num_batches_tracked` entries are not present.
 */
export interface Img2PoseWeights {
  depth: ResNetDepth;
  tensors: Map<string, tf.Tensor>;
  /** Pose normalisation: dof = dof_norm * poseStddev + poseMean (6 values each). */
  poseMean: Float64Array;
  poseStddev: Float64Array;
}

/** Upstream's statistics for a custom model trained without them. */
export const DEFAULT_POSE_MEAN = Float64Array.from([0, 0, 0, 0, 0, 1]);
export const DEFAULT_POSE_STDDEV = Float64Array.from([1, 1, 1, 1, 1, 1]);

export function disposeWeights(w: Img2PoseWeights): void {
  for (const t of w.tensors.values()) t.dispose();
  w.tensors.clear();
}
