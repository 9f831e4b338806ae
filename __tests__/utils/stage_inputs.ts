/** Inputs for stage tests that start after the backbone: formula weight subsets, golden features. */
import * as tf from '@tensorflow/tfjs';
import { toTfjsLayout } from '../../converter/layout';
import { Img2PoseWeights } from '../../src/model/weights';
import { formulaTensor, gains, keySpecs } from './formula';
import { golden, goldenCase } from './golden';

/** The five FPN levels' golden keys, in upstream order. */
export const LEVEL_KEYS = ['feature_0', 'feature_1', 'feature_2', 'feature_3', 'feature_pool'];

/** Formula weights of the keys under `prefix` only (stage tests do not need the backbone). */
export function formulaSubset(prefix: string): Img2PoseWeights {
  const tensors = new Map<string, tf.Tensor>();
  for (const k of keySpecs(18)) {
    if (!k.name.startsWith(prefix) || k.name.endsWith('num_batches_tracked')) continue;
    const t = toTfjsLayout({ shape: k.shape, data: formulaTensor(k.name, k.shape) });
    tensors.set(k.name, tf.tensor(t.data, t.shape, 'float32'));
  }
  const g = gains();
  return { depth: 18, tensors, poseMean: Float64Array.from(g.POSE_MEAN), poseStddev: Float64Array.from(g.POSE_STDDEV) };
}

/** A golden (256, h, w) feature map as NHWC [1, h, w, 256]. */
export function goldenFeature(caseId: string, key: string): tf.Tensor4D {
  const { shape, data } = golden(caseId, key);
  return tf.tidy(() =>
    tf.tensor3d(Float32Array.from(data), shape as [number, number, number]).transpose([1, 2, 0]).expandDims(0),
  ) as tf.Tensor4D;
}

/** A case's padded input size (height, width). */
export function paddedSize(caseId: string): [number, number] {
  const p = goldenCase(caseId).padded_shape as number[];
  return [p[2], p[3]];
}

/** A case's resized (unpadded) image size (height, width). */
export function resizedSize(caseId: string): [number, number] {
  return goldenCase(caseId).resized_hw as [number, number];
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  // Plain comparisons: Math.max/abs calls are slow inside jest's vm context, and this sees 10M+ values.
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] > b[i] ? a[i] - b[i] : b[i] - a[i];
    if (d > m || d !== d) m = d !== d ? Infinity : d;
  }
  return m;
}

/**
 * Our ranked boxes reordered to follow the reference where the two rankings differ only by
 * near-tied scores (|score difference| <= scoreTol): position i of the result is the box of ours
 * that the reference ranks i-th. `moved` counts positions that needed a swap; a box with no
 * near-tied partner stays in place (and then fails the caller's comparison).
 */
export function alignNearTies(
  boxes: Float32Array,
  scores: Float32Array,
  refBoxes: ArrayLike<number>,
  refScores: ArrayLike<number>,
  scoreTol: number,
): { boxes: Float32Array; scores: Float32Array; moved: number } {
  const n = scores.length;
  const dist = (i: number, j: number): number => {
    let d = 0;
    for (let c = 0; c < 4; c++) d = Math.max(d, Math.abs(boxes[j * 4 + c] - refBoxes[i * 4 + c]));
    return d;
  };
  const used = new Uint8Array(n);
  const order = new Int32Array(n).fill(-1);
  let moved = 0;
  for (let i = 0; i < n; i++) {
    if (dist(i, i) < 1e-2 && !used[i]) {
      order[i] = i;
      used[i] = 1;
    }
  }
  for (let i = 0; i < n; i++) {
    if (order[i] >= 0) continue;
    let best = -1;
    for (let j = 0; j < n; j++) {
      if (used[j] || Math.abs(scores[j] - refScores[i]) > scoreTol) continue;
      if (best < 0 || dist(i, j) < dist(i, best)) best = j;
    }
    const pick = best >= 0 ? best : i;
    order[i] = pick;
    used[pick] = 1;
    moved++;
  }
  const out = { boxes: new Float32Array(n * 4), scores: new Float32Array(n), moved };
  order.forEach((j, i) => {
    out.boxes.set(boxes.subarray(j * 4, j * 4 + 4), i * 4);
    out.scores[i] = scores[j];
  });
  return out;
}
