/**
 * ROI-heads post-processing of img2pose for one image (upstream `DOFRoIHeads.postprocess_detections`,
 * `transform_pose_global_project_bbox` and `GeneralizedRCNNTransform.postprocess`), on plain typed
 * arrays: class logits + dof regression of the proposals -> face boxes (original image coordinates),
 * scores and global 6DoF poses.
 *
 * Stages, each exported so tests can feed the reference's own intermediate tensors:
 *   selectCandidates          softmax, clip, score > 0.05, drop boxes thinner than 1e-2  -> pose_in_*
 *   transformPoseGlobalProjectBbox  de-normalise dofs, box pose -> image pose, box from pose -> pose_out_*
 *   batchedNms (0.5) + rescale to the original image                                   -> final_*
 */
import { clipBoxesToImage, gatherRows, removeSmallBoxes, resizeBoxes } from '../ops/boxes';
import { batchedNms } from '../ops/nms';
import {
  DEFAULT_EXPAND,
  ExpandOptions,
  imageIntrinsics,
  poseBboxToFullImage,
  poseToBox,
  REFERENCE_POINTS_68,
} from './pose';

export { projectKeypoints, KEYPOINT_INDICES } from './pose';

const f32 = Math.fround;

/** Number of classes of the ROI heads (background, face). */
const NUM_CLASSES = 2;
const DOF = 6;

/** Upstream DOFRoIHeads defaults. */
export const BOX_SCORE_THRESH = 0.05;
export const BOX_NMS_THRESH = 0.5;
/** remove_small_boxes threshold of the ROI heads. */
export const MIN_BOX_SIZE = 1e-2;

export type ImageSize = readonly [height: number, width: number];

export interface PostprocessInput {
  /** RPN proposals in resized-image coordinates, N*4 (x1 y1 x2 y2). */
  proposals: Float32Array;
  /** Classifier logits, N*2 (background, face). */
  classLogits: Float32Array;
  /** Pose head output, N*12: 6 normalised dofs per class (background, face). */
  dofRegression: Float32Array;
  /** Size the network saw, [h, w] (after resize, before padding). */
  imageSize: ImageSize;
  /** Size of the caller's image, [h, w]: final boxes are scaled to it. */
  originalSize: ImageSize;
  /** Pose statistics (rx ry rz tx ty tz); upstream holds them as float32. */
  poseMean: ArrayLike<number>;
  poseStddev: ArrayLike<number>;
  /** 3D reference landmarks N*3; default the 68 upstream points. */
  referencePoints?: ArrayLike<number>;
  scoreThresh?: number;
  nmsThresh?: number;
  expand?: ExpandOptions;
}

/** Detections of one image, highest score first. */
export interface Detections {
  /** M*4 boxes, x1 y1 x2 y2. */
  boxes: Float32Array;
  /** M face probabilities. */
  scores: Float32Array;
  /** M*6 global poses rx ry rz tx ty tz (float32, as upstream returns them). */
  dofs: Float32Array;
}

const F32_BITS = new Float32Array(1);
const U32_BITS = new Uint32Array(F32_BITS.buffer);

/** The float32 next to x (a float32 value) in the direction of `toward`. */
function nextFloat32(x: number, up: boolean): number {
  if (x === 0) return up ? 1.401298464324817e-45 : -1.401298464324817e-45;
  F32_BITS[0] = x;
  U32_BITS[0] += (x > 0) === up ? 1 : -1;
  return F32_BITS[0];
}

/**
 * Single-rounding float32 fused multiply-add a * b + c for float32 inputs. The product is exact in
 * float64; the float64 sum can round, so an exact float32 tie is resolved with the sum's error term.
 */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const r = f32(s);
  if (r === s || !Number.isFinite(s)) return r;
  const bb = s - p;
  const err = p - (s - bb) + (c - bb);
  if (err === 0) return r;
  const other = nextFloat32(r, s > r);
  if (Math.abs(s - r) !== Math.abs(other - s)) return r;
  // s is exactly halfway between two floats, the true sum is beyond it on err's side.
  return (err > 0) === (other > r) ? other : r;
}

/** Round half to even, as the SSE/AVX float -> int conversion does. */
function rintEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const R_LN2F = f32(1.442695040888963407359924681001892137426645954152985934135449406931);
const L2UF = f32(0.693145751953125);
const L2LF = f32(1.428606765330187045e-6);
const EXPF_POLY = [
  0.000198527617612853646278381, 0.00139304355252534151077271, 0.00833336077630519866943359,
  0.0416664853692054748535156, 0.166666671633720397949219, 0.5,
].map(f32);

/** 2^n for integers n in -POW2_RANGE..POW2_RANGE, exact: what `2 ** n` gives, without a pow call. */
const POW2_RANGE = 160;
const POW2 = Float64Array.from({ length: 2 * POW2_RANGE + 1 }, (_, i) => 2 ** (i - POW2_RANGE));

/** 2 ** n (a table lookup for the exponents torchExpf meets). */
function pow2(n: number): number {
  return n >= -POW2_RANGE && n <= POW2_RANGE ? POW2[n + POW2_RANGE] : 2 ** n;
}

/**
 * float32 exp as torch's vectorised CPU kernels compute it (SLEEF `expf_u10` with FMA, AVX2/AVX-512):
 * within 1 ulp of exp, and reproducing its exact bits keeps scores at the 0.05 threshold and NMS
 * ties identical to upstream.
 */
export function torchExpf(d: number): number {
  const q = rintEven(f32(d * R_LN2F));
  let s = fmaf(q, -L2UF, d);
  s = fmaf(q, -L2LF, s);
  let u = EXPF_POLY[0];
  for (let k = 1; k < EXPF_POLY.length; k++) u = fmaf(u, s, EXPF_POLY[k]);
  u = f32(1 + fmaf(f32(s * s), u, s));
  // ldexp in two steps as SLEEF does (exact unless the result is subnormal).
  const q1 = q >> 1;
  u = f32(f32(u * pow2(q1)) * pow2(q - q1));
  if (d < -104) return 0;
  if (d > 100) return Infinity;
  return u;
}

/**
 * Face probability of each proposal: class 1 of torch's float32 softmax over 2 logits, which
 * subtracts the max, exponentiates, and multiplies by the reciprocal of the sum.
 */
export function faceScores(classLogits: Float32Array): Float32Array {
  const n = classLogits.length / NUM_CLASSES;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const a = classLogits[i * 2];
    const b = classLogits[i * 2 + 1];
    const m = a < b || Number.isNaN(b) ? b : a;
    const ea = torchExpf(f32(a - m));
    const eb = torchExpf(f32(b - m));
    out[i] = eb * f32(1 / f32(ea + eb));
  }
  return out;
}

/** Candidates entering the pose transform (upstream `pose_in_*`). */
export interface Candidates {
  /** K*4 clipped proposals. */
  boxes: Float32Array;
  /** K face probabilities. */
  scores: Float32Array;
  /** K*6 normalised face-class dofs. */
  dofs: Float32Array;
}

/**
 * First part of `postprocess_detections`: clip the proposals to the image, keep face-class
 * predictions with score > scoreThresh, then drop boxes with a side below 1e-2.
 */
export function selectCandidates(
  proposals: Float32Array,
  classLogits: Float32Array,
  dofRegression: Float32Array,
  imageSize: ImageSize,
  scoreThresh = BOX_SCORE_THRESH,
): Candidates {
  const n = proposals.length / 4;
  if (classLogits.length !== n * NUM_CLASSES || dofRegression.length !== n * NUM_CLASSES * DOF) {
    throw new Error(
      `postprocess: ${n} proposals but ${classLogits.length} class logits and ${dofRegression.length} dof values`,
    );
  }
  const clipped = clipBoxesToImage(proposals, imageSize[0], imageSize[1]);
  const allScores = faceScores(classLogits);
  // torch compares the float32 scores with the threshold cast to float32.
  const thresh = f32(scoreThresh);
  const above: number[] = [];
  for (let i = 0; i < n; i++) if (allScores[i] > thresh) above.push(i);
  const aboveBoxes = gatherRows(clipped, above, 4);
  const keep = Array.from(removeSmallBoxes(aboveBoxes, MIN_BOX_SIZE), (k) => above[k]);

  const dofs = new Float32Array(keep.length * DOF);
  keep.forEach((src, k) => {
    // Columns 6..11 are the face class's dofs.
    dofs.set(dofRegression.subarray(src * 12 + DOF, src * 12 + 2 * DOF), k * DOF);
  });
  return {
    boxes: gatherRows(clipped, keep, 4),
    scores: gatherRows(allScores, keep, 1),
    dofs,
  };
}

/** Output of the pose transform (upstream `pose_out_*`). */
export interface GlobalPoses {
  /** K*4 boxes projected from the poses (integers, possibly inverted or empty). */
  boxes: Float32Array;
  /** K*6 poses in the image's camera. */
  dofs: Float32Array;
}

/**
 * Upstream `transform_pose_global_project_bbox`: de-normalise each dof (float32 dof * std + mean),
 * convert it from its proposal's camera to the resized image's, and replace the proposal by the box
 * of the posed reference landmarks.
 */
export function transformPoseGlobalProjectBbox(
  boxes: Float32Array,
  dofs: Float32Array,
  poseMean: ArrayLike<number>,
  poseStddev: ArrayLike<number>,
  imageSize: ImageSize,
  referencePoints: ArrayLike<number> = REFERENCE_POINTS_68,
  expand: ExpandOptions = DEFAULT_EXPAND,
): GlobalPoses {
  const k = dofs.length / DOF;
  if (k === 0) return { boxes: boxes.slice(), dofs: dofs.slice() };
  const [h, w] = imageSize;
  const intrinsics = imageIntrinsics(h, w);
  const mean = Float32Array.from({ length: DOF }, (_, c) => poseMean[c]);
  const std = Float32Array.from({ length: DOF }, (_, c) => poseStddev[c]);
  const outBoxes = new Float32Array(k * 4);
  const outDofs = new Float32Array(k * DOF);
  const dof = new Float32Array(DOF);
  const global = new Float64Array(DOF);
  for (let i = 0; i < k; i++) {
    for (let c = 0; c < DOF; c++) dof[c] = f32(dofs[i * DOF + c] * std[c]) + mean[c];
    poseBboxToFullImage(dof, intrinsics, boxes, i * 4, 0, global);
    outDofs.set(global, i * DOF);
    // The box uses the float64 pose (the float32 cast happens after).
    outBoxes.set(poseToBox(global, intrinsics, w, h, referencePoints, expand), i * 4);
  }
  return { boxes: outBoxes, dofs: outDofs };
}

/** Final NMS among the pose-projected boxes (one class, so one NMS). Indices, best first. */
export function finalNms(boxes: Float32Array, scores: Float32Array, nmsThresh = BOX_NMS_THRESH): Int32Array {
  return batchedNms(boxes, scores, new Int32Array(scores.length).fill(1), nmsThresh);
}

/**
 * The whole post-processing of one image: candidates -> pose transform -> NMS 0.5 -> boxes scaled
 * to the original image. Upstream's `detections_per_img` cut is applied to an unused variable, so
 * every NMS survivor is returned.
 */
export function postprocessDetections(input: PostprocessInput): Detections {
  const cand = selectCandidates(
    input.proposals,
    input.classLogits,
    input.dofRegression,
    input.imageSize,
    input.scoreThresh ?? BOX_SCORE_THRESH,
  );
  const posed = transformPoseGlobalProjectBbox(
    cand.boxes,
    cand.dofs,
    input.poseMean,
    input.poseStddev,
    input.imageSize,
    input.referencePoints ?? REFERENCE_POINTS_68,
    input.expand ?? DEFAULT_EXPAND,
  );
  const keep = finalNms(posed.boxes, cand.scores, input.nmsThresh ?? BOX_NMS_THRESH);
  return {
    boxes: resizeBoxes(gatherRows(posed.boxes, keep, 4), input.imageSize, input.originalSize),
    scores: gatherRows(cand.scores, keep, 1),
    dofs: gatherRows(posed.dofs, keep, DOF),
  };
}
