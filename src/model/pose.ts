/**
 * Pose math of img2pose's post-processing (upstream `_pose_ops.py` and `detector.py`), in plain
 * float64 as numpy/scipy compute it. Inputs that upstream holds in float32 tensors (boxes, the
 * normalised dofs, pose statistics, reference points) are taken as float32 values.
 *
 * Rotation conventions are scipy 1.10's: quaternions are (x, y, z, w), matrices are row-major
 * Float64Array(9), rotation vectors are axis * angle (radians).
 */
import { REFERENCE_POINTS_68 } from './reference_points';

export { REFERENCE_POINTS_68 } from './reference_points';

/** Indices of the 5 detector keypoints among the 68 reference landmarks (upstream `Img2Pose._KEYPOINT_INDICES`). */
export const KEYPOINT_INDICES = {
  left_eye: 36,
  right_eye: 45,
  nose: 30,
  mouth_left: 48,
  mouth_right: 54,
} as const;

export type KeypointName = keyof typeof KEYPOINT_INDICES;

/** scipy switches to Taylor series below this angle (radians) in from_rotvec / as_rotvec. */
const SMALL_ANGLE = 1e-3;

function norm3(x: number, y: number, z: number): number {
  return Math.sqrt(x * x + y * y + z * z);
}

/** scipy `Rotation.from_rotvec(r).as_quat()`: (x, y, z, w), not renormalised. */
export function rotvecToQuat(rotvec: ArrayLike<number>, out = new Float64Array(4)): Float64Array {
  const rx = rotvec[0];
  const ry = rotvec[1];
  const rz = rotvec[2];
  const angle = norm3(rx, ry, rz);
  let scale: number;
  if (angle <= SMALL_ANGLE) {
    const angle2 = angle * angle;
    scale = 0.5 - angle2 / 48 + (angle2 * angle2) / 3840;
  } else {
    scale = Math.sin(angle / 2) / angle;
  }
  out[0] = scale * rx;
  out[1] = scale * ry;
  out[2] = scale * rz;
  out[3] = Math.cos(angle / 2);
  return out;
}

/** scipy `as_matrix` of a quaternion (x, y, z, w): row-major 3x3. */
export function quatToMatrix(q: ArrayLike<number>, out = new Float64Array(9)): Float64Array {
  const x = q[0];
  const y = q[1];
  const z = q[2];
  const w = q[3];
  const x2 = x * x;
  const y2 = y * y;
  const z2 = z * z;
  const w2 = w * w;
  const xy = x * y;
  const zw = z * w;
  const xz = x * z;
  const yw = y * w;
  const yz = y * z;
  const xw = x * w;
  const m = out;
  m[0] = x2 - y2 - z2 + w2;
  m[1] = 2 * (xy - zw);
  m[2] = 2 * (xz + yw);
  m[3] = 2 * (xy + zw);
  m[4] = -x2 + y2 - z2 + w2;
  m[5] = 2 * (yz - xw);
  m[6] = 2 * (xz - yw);
  m[7] = 2 * (yz + xw);
  m[8] = -x2 - y2 + z2 + w2;
  return m;
}

/** Rotation vector -> row-major rotation matrix (scipy `from_rotvec(...).as_matrix()`). */
export function rotvecToMatrix(rotvec: ArrayLike<number>, out = new Float64Array(9)): Float64Array {
  return quatToMatrix(rotvecToQuat(rotvec, quatScratch), out);
}

// Scratch buffers of the per-candidate hot path (single-threaded, never returned to callers).
const quatScratch = new Float64Array(4);
const rotvecScratch = new Float64Array(3);
const rotationScratch = new Float64Array(9);
const shearedScratch = new Float64Array(9);

/**
 * scipy 1.10 `Rotation.from_matrix(m).as_quat()` for any 3x3 matrix, orthogonal or not.
 *
 * The pose transform produces a sheared (non-orthogonal) matrix, so the result depends on the exact
 * algorithm: Markley's method picks the largest of (m00, m11, m22, trace) -- first one on ties, as
 * numpy's argmax -- builds an unnormalised quaternion from that branch, then divides by its norm.
 * No orthogonalisation happens first (later scipy versions differ here).
 */
export function matrixToQuat(m: ArrayLike<number>, out = new Float64Array(4)): Float64Array {
  const trace = m[0] + m[4] + m[8];
  // argmax over (m00, m11, m22, trace); numpy's argmax keeps the first of equal values.
  let choice = 0;
  let best = m[0];
  if (m[4] > best) {
    choice = 1;
    best = m[4];
  }
  if (m[8] > best) {
    choice = 2;
    best = m[8];
  }
  if (trace > best) choice = 3;
  const q = out;
  if (choice !== 3) {
    const i = choice;
    const j = (i + 1) % 3;
    const k = (j + 1) % 3;
    q[i] = 1 - trace + 2 * m[i * 4];
    q[j] = m[j * 3 + i] + m[i * 3 + j];
    q[k] = m[k * 3 + i] + m[i * 3 + k];
    q[3] = m[k * 3 + j] - m[j * 3 + k];
  } else {
    q[0] = m[7] - m[5];
    q[1] = m[2] - m[6];
    q[2] = m[3] - m[1];
    q[3] = 1 + trace;
  }
  const n = Math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  q[0] /= n;
  q[1] /= n;
  q[2] /= n;
  q[3] /= n;
  return q;
}

/** scipy `as_rotvec` of a quaternion (x, y, z, w): w >= 0 representative, angle in [0, pi]. */
export function quatToRotvec(quat: ArrayLike<number>, out = new Float64Array(3)): Float64Array {
  const sign = quat[3] < 0 ? -1 : 1;
  const x = sign * quat[0];
  const y = sign * quat[1];
  const z = sign * quat[2];
  const w = sign * quat[3];
  const angle = 2 * Math.atan2(norm3(x, y, z), w);
  let scale: number;
  if (angle <= SMALL_ANGLE) {
    const angle2 = angle * angle;
    scale = 2 + angle2 / 12 + (7 * angle2 * angle2) / 2880;
  } else {
    scale = angle / Math.sin(angle / 2);
  }
  out[0] = scale * x;
  out[1] = scale * y;
  out[2] = scale * z;
  return out;
}

/** scipy 1.10 `Rotation.from_matrix(m).as_rotvec()`, including for non-orthogonal m. */
export function matrixToRotvec(m: ArrayLike<number>, out = new Float64Array(3)): Float64Array {
  return quatToRotvec(matrixToQuat(m, quatScratch), out);
}

/** Pinhole intrinsics with square pixels and no skew: [[focal, 0, cx], [0, focal, cy], [0, 0, 1]]. */
export interface Intrinsics {
  focal: number;
  cx: number;
  cy: number;
}

/**
 * Intrinsics the ROI heads assume for the RESIZED image: focal w + h, principal point (w // 2, h // 2)
 * with integer division (upstream builds an int64 matrix).
 */
export function imageIntrinsics(height: number, width: number): Intrinsics {
  return { focal: width + height, cx: Math.floor(width / 2), cy: Math.floor(height / 2) };
}

/**
 * Intrinsics of the box's "virtual camera": the image's, with the principal point moved to the box
 * centre left + (right - left) // 2 (float32 width, the floor division and the sum in float64, as
 * numpy's scalar rules give). Upstream writes that float centre into a copy of the int64 image
 * matrix, which truncates it toward zero -- the centre is an integer.
 */
export function bboxIntrinsics(image: Intrinsics, box: ArrayLike<number>, offset = 0): Intrinsics {
  const left = box[offset];
  const top = box[offset + 1];
  const right = box[offset + 2];
  const bottom = box[offset + 3];
  const width = Math.fround(right - left);
  const height = Math.fround(bottom - top);
  return {
    focal: image.focal,
    cx: Math.trunc(left + Math.floor(width / 2)),
    cy: Math.trunc(top + Math.floor(height / 2)),
  };
}

/**
 * Upstream `pose_bbox_to_full_image`: a pose regressed relative to a proposal box (its own camera
 * centred on the box, depth normalised by the box size) -> the pose in the full image's camera.
 *
 * `dof` holds float32 values (rx ry rz tx ty tz, already de-normalised), `box` float32 x1 y1 x2 y2.
 * t' = K^-1 K_box t with tz scaled by focal / (box w + box h); R' = K^-1 K_box R, which is a shear of
 * R, so it goes back to a rotation vector through scipy's non-orthogonal from_matrix.
 */
export function poseBboxToFullImage(
  dof: ArrayLike<number>,
  image: Intrinsics,
  box: ArrayLike<number>,
  boxOffset = 0,
  dofOffset = 0,
  out = new Float64Array(6),
): Float64Array {
  const f = image.focal;
  const boxK = bboxIntrinsics(image, box, boxOffset);
  const bboxSize = Math.fround(
    Math.fround(box[boxOffset + 2] - box[boxOffset]) + Math.fround(box[boxOffset + 3] - box[boxOffset + 1]),
  );
  const tx = dof[dofOffset + 3];
  const ty = dof[dofOffset + 4];
  // The scaled depth is written back into the float32 dof row, hence the rounding.
  const tz = Math.fround(dof[dofOffset + 5] * (f / bboxSize));

  // projected = K_box t; t' = projected . inv(K^T). numpy's LU inverse of K^T has entries 1/f and
  // -(c * (1/f)); of K, 1/f and -c/f. Mirrored so last-bit differences do not move int truncations.
  const p0 = f * tx + boxK.cx * tz;
  const p1 = f * ty + boxK.cy * tz;
  const invF = 1 / f;
  out[3] = p0 * invF + tz * -(image.cx * invF);
  out[4] = p1 * invF + tz * -(image.cy * invF);
  out[5] = tz;

  rotvecScratch[0] = dof[dofOffset];
  rotvecScratch[1] = dof[dofOffset + 1];
  rotvecScratch[2] = dof[dofOffset + 2];
  const r = rotvecToMatrix(rotvecScratch, rotationScratch);
  const kx = -image.cx / f;
  const ky = -image.cy / f;
  const sheared = shearedScratch;
  for (let c = 0; c < 3; c++) {
    const r2 = r[6 + c];
    sheared[c] = invF * (f * r[c] + boxK.cx * r2) + kx * r2;
    sheared[3 + c] = invF * (f * r[3 + c] + boxK.cy * r2) + ky * r2;
    sheared[6 + c] = r2;
  }
  matrixToRotvec(sheared, rotvecScratch);
  out[0] = rotvecScratch[0];
  out[1] = rotvecScratch[1];
  out[2] = rotvecScratch[2];
  return out;
}

/** points (N*3) -> points . R^T + t, the model frame seen from the camera (upstream `transform_points`). */
export function transformPoints(pose: ArrayLike<number>, points: ArrayLike<number>): Float64Array {
  const r = rotvecToMatrix(pose);
  const n = Math.floor(points.length / 3);
  const out = new Float64Array(n * 3);
  for (let i = 0; i < n; i++) {
    const x = points[i * 3];
    const y = points[i * 3 + 1];
    const z = points[i * 3 + 2];
    out[i * 3] = x * r[0] + y * r[1] + z * r[2] + pose[3];
    out[i * 3 + 1] = x * r[3] + y * r[4] + z * r[5] + pose[4];
    out[i * 3 + 2] = x * r[6] + y * r[7] + z * r[8] + pose[5];
  }
  return out;
}

/**
 * Project 3D points (N*3, model frame) posed by `pose` (rx ry rz tx ty tz) through the pinhole camera
 * (focal, cx, cy): returns N*2 pixel coordinates (upstream `plot_3d_landmark` / `_project_landmarks`:
 * transform_points, then K . p, then divide by depth). `out` may supply the result buffer.
 */
export function projectPoints(
  pose: ArrayLike<number>,
  points: ArrayLike<number>,
  focal: number,
  cx: number,
  cy: number,
  out: Float64Array = new Float64Array(Math.floor(points.length / 3) * 2),
): Float64Array {
  const r = rotvecToMatrix(pose, rotationScratch);
  const tx = pose[3];
  const ty = pose[4];
  const tz = pose[5];
  const n = Math.floor(points.length / 3);
  for (let i = 0; i < n; i++) {
    const px = points[i * 3];
    const py = points[i * 3 + 1];
    const pz = points[i * 3 + 2];
    const x = px * r[0] + py * r[1] + pz * r[2] + tx;
    const y = px * r[3] + py * r[4] + pz * r[5] + ty;
    const z = px * r[6] + py * r[7] + pz * r[8] + tz;
    out[i * 2] = (focal * x + cx * z) / z;
    out[i * 2 + 1] = (focal * y + cy * z) / z;
  }
  return out;
}

/** Box-from-landmarks parameters (upstream defaults of DOFRoIHeads). */
export interface ExpandOptions {
  bboxXFactor: number;
  bboxYFactor: number;
  expandForehead: number;
}

export const DEFAULT_EXPAND: Readonly<ExpandOptions> = { bboxXFactor: 1.1, bboxYFactor: 1.1, expandForehead: 0.3 };

/** numpy `astype(np.int32)` of a finite float64 in int32 range: truncation toward zero. */
function toInt32(v: number): number {
  return Math.trunc(v);
}

/**
 * Upstream `expand_bbox_rectangle`: the face box around projected landmarks (N*2). The size is the
 * landmark extent times the factor truncated to an integer, the forehead side (chosen by the roll:
 * |roll| > 2.5 bottom, roll > 1 right, roll < -1 left, else top) grows by expandForehead * extent, the
 * corners are truncated to int32, and each corner is clamped only on its own side (left/top at 0,
 * right/bottom at w/h), so boxes outside the image come out inverted rather than empty.
 */
export function expandBboxRectangle(
  width: number,
  height: number,
  landmarks: ArrayLike<number>,
  roll: number,
  options: ExpandOptions = DEFAULT_EXPAND,
): [number, number, number, number] {
  let minX = Infinity;
  let maxX = -Infinity;
  let minY = Infinity;
  let maxY = -Infinity;
  for (let i = 0; i + 1 < landmarks.length; i += 2) {
    const x = landmarks[i];
    const y = landmarks[i + 1];
    if (x < minX) minX = x;
    if (x > maxX) maxX = x;
    if (y < minY) minY = y;
    if (y > maxY) maxY = y;
  }
  return boxOfExtent(width, height, minX, maxX, minY, maxY, roll, options);
}

/** expandBboxRectangle from the landmarks' extent on. */
function boxOfExtent(
  width: number,
  height: number,
  minX: number,
  maxX: number,
  minY: number,
  maxY: number,
  roll: number,
  options: ExpandOptions,
): [number, number, number, number] {
  const extentX = maxX - minX;
  const extentY = maxY - minY;
  const sizeX = Math.trunc(extentX * options.bboxXFactor);
  const sizeY = Math.trunc(extentY * options.bboxYFactor);
  const centerX = 0.5 * minX + 0.5 * maxX;
  const centerY = 0.5 * minY + 0.5 * maxY;
  let x1 = centerX - sizeX * 0.5;
  let x2 = centerX + sizeX * 0.5;
  let y1 = centerY - sizeY * 0.5;
  let y2 = centerY + sizeY * 0.5;
  if (Math.abs(roll) > 2.5) {
    y2 += options.expandForehead * extentY;
  } else if (roll > 1) {
    x2 += options.expandForehead * extentX;
  } else if (roll < -1) {
    x1 -= options.expandForehead * extentX;
  } else {
    y1 -= options.expandForehead * extentY;
  }
  const left = toInt32(x1);
  const top = toInt32(y1);
  const right = toInt32(x2);
  const bottom = toInt32(y2);
  return [Math.max(left, 0), Math.max(top, 0), right > width ? width : right, bottom > height ? height : bottom];
}

/**
 * The face box implied by a global pose: project the reference landmarks with the image intrinsics
 * and expand (upstream `plot_3d_landmark` + `expand_bbox_rectangle`, roll = pose[2]). The same
 * numbers as expandBboxRectangle(projectPoints(...)), in one pass that keeps only the extent.
 */
export function poseToBox(
  pose: ArrayLike<number>,
  image: Intrinsics,
  width: number,
  height: number,
  points: ArrayLike<number> = REFERENCE_POINTS_68,
  options: ExpandOptions = DEFAULT_EXPAND,
): [number, number, number, number] {
  const r = rotvecToMatrix(pose, rotationScratch);
  const { focal, cx, cy } = image;
  const tx = pose[3];
  const ty = pose[4];
  const tz = pose[5];
  let minX = Infinity;
  let maxX = -Infinity;
  let minY = Infinity;
  let maxY = -Infinity;
  const n = Math.floor(points.length / 3);
  for (let i = 0; i < n; i++) {
    // projectPoints' arithmetic, term for term.
    const px = points[i * 3];
    const py = points[i * 3 + 1];
    const pz = points[i * 3 + 2];
    const x = px * r[0] + py * r[1] + pz * r[2] + tx;
    const y = px * r[3] + py * r[4] + pz * r[5] + ty;
    const z = px * r[6] + py * r[7] + pz * r[8] + tz;
    const u = (focal * x + cx * z) / z;
    const v = (focal * y + cy * z) / z;
    if (u < minX) minX = u;
    if (u > maxX) maxX = u;
    if (v < minY) minY = v;
    if (v > maxY) maxY = v;
  }
  return boxOfExtent(width, height, minX, maxX, minY, maxY, pose[2], options);
}

/**
 * The detector's 5 keypoints of a face: the 68 reference points projected with focal w + h and centre
 * (w / 2, h / 2) of the ORIGINAL image (float division, unlike the ROI heads' w // 2).
 * `pose` holds the float32 dofs of a detection.
 */
export function projectKeypoints(
  pose: ArrayLike<number>,
  width: number,
  height: number,
  points: ArrayLike<number> = REFERENCE_POINTS_68,
): Record<KeypointName, [number, number]> {
  const lms = projectPoints(pose, points, width + height, width / 2, height / 2);
  const at = (i: number): [number, number] => [lms[i * 2], lms[i * 2 + 1]];
  return {
    left_eye: at(KEYPOINT_INDICES.left_eye),
    right_eye: at(KEYPOINT_INDICES.right_eye),
    nose: at(KEYPOINT_INDICES.nose),
    mouth_left: at(KEYPOINT_INDICES.mouth_left),
    mouth_right: at(KEYPOINT_INDICES.mouth_right),
  };
}
