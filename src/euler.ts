/**
 * Head pose as angles. Upstream's README turns a pose's rotation vector into angles with scipy:
 * `Rotation.from_rotvec(pose[:3]).as_euler('xyz', degrees=True)` -> pitch, yaw, roll. This is
 * that computation (scipy 1.10, whose `as_euler` works on the rotation matrix: Shuster & Markley,
 * "General formula for extracting the Euler angles", 2006), including its choices where the
 * angles are not unique:
 * - gimbal lock (yaw within 1e-7 rad of +-90 degrees): roll is set to 0 and pitch takes the
 *   whole rotation about the locked axis (scipy also warns; we don't);
 * - half turns: each angle is wrapped into [-180, 180], and an exact +-180 keeps the sign scipy
 *   gets from the signs of the zeros in its matrix.
 */
import { OptionError, describeValue } from './errors';
import { rotvecToMatrix } from './model/pose';

export interface EulerAngles {
  /** Rotation about the camera's x axis (nodding), degrees. */
  pitch: number;
  /** Rotation about the y axis (turning left/right), degrees. */
  yaw: number;
  /** Rotation about the z axis (tilting), degrees. */
  roll: number;
}

/** scipy's test for a gimbal-locked middle angle, radians. */
const GIMBAL_EPS = 1e-7;
const RAD2DEG = 180 / Math.PI;

/**
 * A pose `[rx, ry, rz, tx, ty, tz]` (or just its rotation vector `[rx, ry, rz]`, radians) ->
 * extrinsic x-y-z Euler angles in degrees, as scipy's `as_euler('xyz', degrees=True)`:
 * R = Rz(roll) Ry(yaw) Rx(pitch). Yaw is within [-90, 90], pitch and roll within [-180, 180].
 */
export function poseToEuler(pose: ArrayLike<number>): EulerAngles {
  const ok =
    (Array.isArray(pose) || (ArrayBuffer.isView(pose) && !(pose instanceof DataView))) &&
    (pose.length === 3 || pose.length === 6) &&
    Array.prototype.every.call(pose, (v: unknown) => typeof v === 'number' && Number.isFinite(v));
  if (!ok) throw new OptionError('pose', 'a pose [rx, ry, rz, tx, ty, tz] or rotation vector [rx, ry, rz] of finite numbers', describePose(pose));
  const [x, y, z] = eulerXyzExtrinsic(rotvecToMatrix(pose));
  return { pitch: x * RAD2DEG, yaw: y * RAD2DEG, roll: z * RAD2DEG };
}

/**
 * scipy 1.10 `_compute_euler_from_matrix` for extrinsic 'xyz', radians (x, y, z). scipy solves it
 * as intrinsic 'zyx' (angles a0 about z, a1 about y, a2 about x) and reverses the result. With these axes the algorithm's change of basis
 * only permutes and negates matrix entries; numpy's matrix products give +0 for entries that are
 * zero, and the `0 +` below does the same, so exact half turns land on scipy's side of +-pi.
 */
function eulerXyzExtrinsic(m: Float64Array): [number, number, number] {
  // The transformed matrix of the reference algorithm, entry by entry.
  const t00 = 0 + m[4], t01 = 0 + m[5], t02 = 0 + m[3];
  const t10 = 0 - m[1], t11 = 0 - m[2], t12 = 0 - m[0];
  const t20 = 0 + m[7], t21 = 0 + m[8], t22 = 0 + m[6];
  const offset = Math.atan2(-1, 0); // lambda: -pi/2 for a Tait-Bryan sequence with these axes
  let a0 = 0;
  let a1 = Math.acos(Math.max(-1, Math.min(1, t22)));
  let a2 = 0;
  const safe1 = Math.abs(a1) >= GIMBAL_EPS;
  const safe2 = Math.abs(a1 - Math.PI) >= GIMBAL_EPS;
  const safe = safe1 && safe2;
  a1 += offset;
  if (safe) {
    a0 = Math.atan2(t02, -t12);
    a2 = Math.atan2(t20, t21);
  } else {
    // Extrinsic: the first angle (reversed: the last, roll) is set to zero.
    a0 = 0;
    if (!safe1) a2 = Math.atan2(t10 - t01, t00 + t11);
    if (!safe2) a2 = -Math.atan2(t10 + t01, t00 - t11);
  }
  // Keep the middle angle within [-pi/2, pi/2] (not for gimbal-locked rotations).
  if (safe && (a1 < -Math.PI / 2 || a1 > Math.PI / 2)) {
    a0 += Math.PI;
    a1 = 2 * offset - a1;
    a2 -= Math.PI;
  }
  const wrap = (a: number): number => (a < -Math.PI ? a + 2 * Math.PI : a > Math.PI ? a - 2 * Math.PI : a);
  return [wrap(a2), wrap(a1), wrap(a0)];
}

function describePose(p: unknown): string {
  if (Array.isArray(p) || ArrayBuffer.isView(p)) {
    const values = Array.from(p as ArrayLike<unknown>);
    const bad = values.findIndex((v) => typeof v !== 'number' || !Number.isFinite(v));
    if (values.length !== 3 && values.length !== 6) return `${values.length} values`;
    if (bad >= 0) return `${describeValue(values[bad])} at position ${bad}`;
  }
  return describeValue(p);
}
