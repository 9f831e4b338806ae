/**
 * Face alignment (upstream `_alignment.py`, used by `Img2Pose.align_faces`): each face's pose
 * places 5 landmarks in the image, a similarity transform maps them onto the closest of five
 * head-orientation templates, and the image is warped into a size x size RGB crop, the input
 * ArcFace-style recognition networks expect.
 *
 * Three stages, each reproducing its reference exactly:
 * 1. `projectLandmarks`: the 5 reference points posed and projected with focal w + h and centre
 *    (w / 2, h / 2) of the image, in float64 (upstream `project_5_landmarks`, scipy rotations).
 * 2. `fitTemplate`: a least-squares similarity per template in float64, cast to float32; the
 *    template whose float32 transform leaves the smallest summed point distance wins, the first
 *    one on ties (upstream `estimate_alignment_transform`).
 * 3. `warpAffine`: OpenCV 4.x `cv2.warpAffine(image, m, (size, size))` with its defaults
 *    (bilinear, constant border 0) in OpenCV's own fixed-point arithmetic, so crops equal
 *    upstream's byte for byte (a float bilinear differs by one level on some pixels). Interior
 *    pixels run in a small WebAssembly SIMD kernel where the runtime has one (Node, current
 *    browsers), else in JS; both give the same bytes.
 *
 * Everything here is plain typed-array arithmetic: no tfjs tensor outlives a call.
 */
import * as tf from '@tensorflow/tfjs-core';
import { InputError, OptionError, describeValue } from './errors';
import { DecodeLimits, ImageInput, RawImage, decodeBitmap, decodeImage } from './io/images';
import { projectPoints } from './model/pose';
import { encodePng } from './visualize';
import { compiledOnce } from './kernels/wasm/module';

export type AlignSize = 112 | 224;
export const ALIGN_SIZES: readonly AlignSize[] = [112, 224];
/** Upstream's `align_faces` default. */
export const DEFAULT_ALIGN_SIZE: AlignSize = 224;

/** Source pixel -> crop pixel: x' = a x + b y + c, y' = d x + e y + f (float32 values). */
export type AffineTransform = [[a: number, b: number, c: number], [d: number, e: number, f: number]];

/** An aligned crop: RGB, 8 bits per sample, `size` x `size`, row-major. */
export interface AlignedImage extends RawImage {
  data: Uint8Array;
  channels: 3;
}

export interface AlignedFace {
  image: AlignedImage;
  /** The similarity transform the crop was warped with (as passed to `cv2.warpAffine`). */
  transform: AffineTransform;
  /** The chosen template: 0 left profile, 1 left 3/4, 2 frontal, 3 right 3/4, 4 right profile. */
  template: number;
  /** The 5 projected points (left eye, right eye, nose, mouth left, mouth right), image pixels. */
  landmarks: [x: number, y: number][];
}

export interface AlignOptions {
  /** Crop side in pixels: 112 or 224 (default 224, as upstream's `align_faces`). */
  size?: AlignSize;
  /**
   * Largest width x height of an encoded image accepted, read from its header before decoding
   * (default `DEFAULT_MAX_PIXELS`; a detector's `alignFaces` uses the detector's `maxPixels`).
   */
  maxPixels?: number;
}

/** Anything with a 6DoF pose [rx, ry, rz, tx, ty, tz]: a detected `Face` or a bare `{ pose }`. */
export interface PosedFace {
  pose: ArrayLike<number>;
}

/**
 * The 5 alignment landmarks of the 3D reference face (left eye, right eye, nose, mouth left,
 * mouth right; x, y, z). Source: TalHassner/img2pose `reference_3d_5_points_trans.npy` (float32,
 * 5x3), (c) the img2pose authors, CC BY-NC 4.0; __tests__/align.test.ts checks them against the .npy.
 */
export const REFERENCE_POINTS_5 = new Float32Array([
  -0.30313677, -0.4008789, -0.37974212,
  0.32007796, -0.3944147, -0.37752032,
  0.0147879515, -0.029100643, -0.7367204,
  -0.23718083, 0.27580532, -0.39722505,
  0.22684711, 0.28580052, -0.41195285,
]);

/**
 * Upstream's five 112x112 alignment templates (float32), one per head orientation, each the 5
 * landmarks above as (x, y) crop pixels. For 224 they are doubled (exact in float32).
 */
export const ALIGNMENT_TEMPLATES_112 = new Float32Array([
  // 0: left profile
  51.642, 50.115, 57.617, 49.99, 35.74, 69.007, 51.157, 89.05, 57.025, 89.702,
  // 1: left 3/4
  45.031, 50.118, 65.568, 50.872, 39.677, 68.111, 45.177, 86.19, 64.246, 86.758,
  // 2: frontal
  39.73, 51.138, 72.27, 51.138, 56.0, 68.493, 42.463, 87.01, 69.537, 87.01,
  // 3: right 3/4
  46.845, 50.872, 67.382, 50.118, 72.737, 68.111, 48.167, 86.758, 67.236, 86.19,
  // 4: right profile
  54.796, 49.99, 60.771, 50.115, 76.673, 69.007, 55.388, 89.702, 61.257, 89.05,
]);

const TEMPLATE_COUNT = 5;
const POINTS = 5;

// --- 1. landmarks ------------------------------------------------------------------------------

/**
 * The 5 landmarks of a face with `pose` in a `width` x `height` image: (x, y) pairs, float64.
 * Upstream casts poses to float32 first, so the pose values are rounded to float32 here too.
 */
export function projectLandmarks(pose: ArrayLike<number>, width: number, height: number): Float64Array {
  const p32 = Float32Array.from({ length: 6 }, (_, i) => pose[i]);
  return projectPoints(p32, REFERENCE_POINTS_5, width + height, width / 2, height / 2, new Float64Array(POINTS * 2));
}

// --- 2. similarity fit and template choice -----------------------------------------------------

/**
 * Least-squares similarity (rotation, uniform scale, translation) taking the points `src` onto
 * `dst` (N (x, y) pairs each), computed in float64 and returned as float32 [a, b, c, d, e, f].
 * Upstream normalises both sets by their RMS radius and takes the rotation from an SVD of
 * src^T dst with a reflection check. For 2D that rotation is the one maximising trace(R H), so it
 * is computed directly: cos and sin proportional to (h00 + h11, h01 - h10). (An exact mirror image
 * with equal singular values has no unique answer; the identity is taken then.)
 * Degenerate `src` (RMS radius below 1e-10: all points in one spot) gives upstream's
 * identity-like transform onto dst's centroid.
 */
export function fitSimilarity(src: ArrayLike<number>, dst: ArrayLike<number>, out = new Float32Array(6)): Float32Array {
  const n = Math.floor(src.length / 2);
  let sx = 0, sy = 0, dx = 0, dy = 0;
  for (let i = 0; i < n; i++) {
    sx += src[2 * i];
    sy += src[2 * i + 1];
    dx += dst[2 * i];
    dy += dst[2 * i + 1];
  }
  sx /= n;
  sy /= n;
  dx /= n;
  dy /= n;
  let srcSq = 0, dstSq = 0;
  for (let i = 0; i < n; i++) {
    const ax = src[2 * i] - sx, ay = src[2 * i + 1] - sy;
    const bx = dst[2 * i] - dx, by = dst[2 * i + 1] - dy;
    srcSq += ax * ax + ay * ay;
    dstSq += bx * bx + by * by;
  }
  const srcRms = Math.sqrt(srcSq / n);
  const dstRms = Math.sqrt(dstSq / n);
  if (srcRms < 1e-10) {
    out.set([1, 0, dx, 0, 1, dy]);
    return out;
  }
  const scale = dstRms / srcRms;
  // H = src_n^T dst_n on the normalised point sets.
  let h00 = 0, h01 = 0, h10 = 0, h11 = 0;
  for (let i = 0; i < n; i++) {
    const ax = (src[2 * i] - sx) / srcRms, ay = (src[2 * i + 1] - sy) / srcRms;
    const bx = (dst[2 * i] - dx) / dstRms, by = (dst[2 * i + 1] - dy) / dstRms;
    h00 += ax * bx;
    h01 += ax * by;
    h10 += ay * bx;
    h11 += ay * by;
  }
  const cu = h00 + h11;
  const su = h01 - h10;
  const norm = Math.hypot(cu, su);
  const cos = norm > 0 ? cu / norm : 1;
  const sin = norm > 0 ? su / norm : 0;
  // dst = scale R src + t, R = [[cos, -sin], [sin, cos]].
  out[0] = scale * cos;
  out[1] = scale * -sin;
  out[2] = dx - scale * (cos * sx - sin * sy);
  out[3] = scale * sin;
  out[4] = scale * cos;
  out[5] = dy - scale * (sin * sx + cos * sy);
  return out;
}

const TEMPLATES: Record<AlignSize, Float64Array[]> = {
  112: templatesFor(112),
  224: templatesFor(224),
};

/** Upstream scales the float32 templates in float32 (by 1 or 2: exact). */
function templatesFor(size: AlignSize): Float64Array[] {
  const k = size / 112;
  return Array.from({ length: TEMPLATE_COUNT }, (_, t) =>
    Float64Array.from(ALIGNMENT_TEMPLATES_112.subarray(t * POINTS * 2, (t + 1) * POINTS * 2), (v) => Math.fround(v * k)),
  );
}

/** The template points (x, y pairs) of orientation `index` for crops of `size`. */
export function alignmentTemplate(index: number, size: AlignSize): Float64Array {
  return TEMPLATES[size][index].slice();
}

/**
 * The best template for `landmarks` (5 (x, y) pairs) and its float32 transform: the first with
 * the smallest sum of point distances between the transformed landmarks and the template.
 */
export function fitTemplate(landmarks: ArrayLike<number>, size: AlignSize): { transform: Float32Array; template: number } {
  let best: Float32Array = new Float32Array(6);
  let bestIndex = 0;
  let bestError = Infinity;
  for (let t = 0; t < TEMPLATE_COUNT; t++) {
    const tpl = TEMPLATES[size][t];
    const m = fitSimilarity(landmarks, tpl);
    let error = 0;
    for (let i = 0; i < POINTS; i++) {
      const x = landmarks[2 * i], y = landmarks[2 * i + 1];
      const ex = m[0] * x + m[1] * y + m[2] - tpl[2 * i];
      const ey = m[3] * x + m[4] * y + m[5] - tpl[2 * i + 1];
      error += Math.sqrt(ex * ex + ey * ey);
    }
    if (error < bestError) {
      bestError = error;
      best = m;
      bestIndex = t;
    }
  }
  return { transform: best, template: bestIndex };
}

// --- 3. the warp ----------------------------------------------------------------------------------

/** Packed RGB pixels, 8 bits per sample, row-major (what OpenCV warps). */
export interface Rgb8Image {
  data: Uint8Array | Uint8ClampedArray;
  width: number;
  height: number;
}

// OpenCV's fixed point: source positions in 1/32 pixel (INTER_BITS 5) reached through steps
// scaled by 2^10 (AB_BITS), bilinear weights with 15 fractional bits (INTER_REMAP_COEF_BITS).
const INTER_BITS = 5;
const INTER_TAB_SIZE = 1 << INTER_BITS;
const AB_BITS = 10;
const AB_SCALE = 1 << AB_BITS;
const ROUND_DELTA = AB_SCALE / INTER_TAB_SIZE / 2;
/**
 * OpenCV's bilinear weights (`initInterTab2D`, 15 fractional bits) for the 1/32-pixel fraction
 * (fx, fy): (32 - fx)(32 - fy) 32, fx (32 - fy) 32, (32 - fx) fy 32 and fx fy 32, exact integers
 * summing to 2^15; a pixel is (sum of tap x weight + 2^14) >> 15. Stored per (fy, fx) as four
 * consecutive entries (p00, p01, p10, p11), as OpenCV's table. (OpenCV saturates the fx = fy = 0
 * entry to 32767 and gives the spare 1 to another tap; with 8-bit samples that rounds to the same
 * p00, so the exact 32768 is kept here.)
 */
const BILINEAR_WEIGHTS = bilinearWeights();
const ROUND_15 = 1 << 14;

function bilinearWeights(): Int32Array {
  const table = new Int32Array(INTER_TAB_SIZE * INTER_TAB_SIZE * 4);
  for (let fy = 0; fy < INTER_TAB_SIZE; fy++) {
    for (let fx = 0; fx < INTER_TAB_SIZE; fx++) {
      const i = (fy * INTER_TAB_SIZE + fx) * 4;
      table[i] = (INTER_TAB_SIZE - fx) * (INTER_TAB_SIZE - fy) * INTER_TAB_SIZE;
      table[i + 1] = fx * (INTER_TAB_SIZE - fy) * INTER_TAB_SIZE;
      table[i + 2] = (INTER_TAB_SIZE - fx) * fy * INTER_TAB_SIZE;
      table[i + 3] = fx * fy * INTER_TAB_SIZE;
    }
  }
  return table;
}

/**
 * The border path's separable form of the same sum: ((p00 (32 - fx) + p01 fx)(32 - fy) +
 * (p10 (32 - fx) + p11 fx) fy + 2^9) >> 10 equals (sum + 2^14) >> 15 exactly (the weights above
 * are the products times 32).
 */
const ROUND_10 = 1 << 9;
const INT_MIN = -2147483648;

/**
 * OpenCV's `saturate_cast<int>(double)` on x86-64: round half to even (cvtsd2si); a value out of
 * int range, or NaN, gives the "integer indefinite" INT_MIN.
 */
export function cvRound(v: number): number {
  if (!(v >= -2147483648.5 && v < 2147483647.5)) return INT_MIN;
  let r = Math.round(v);
  if (r - v === 0.5 && r % 2 !== 0) r -= 1;
  return r | 0;
}

function saturateShort(v: number): number {
  return v < -32768 ? -32768 : v > 32767 ? 32767 : v;
}

/** Which code computes the interior pixels; both give the same bytes (the border is always JS). */
export type WarpKernel = 'simd' | 'js';

/**
 * `cv2.warpAffine(src, m, (size, size))` (INTER_LINEAR, BORDER_CONSTANT 0) on packed RGB, as
 * OpenCV 4.x computes it: `m` (2x3, source -> destination) is inverted in float64; for output
 * pixel (x, y) the source position is cvRound(m0 x 1024) + cvRound((m1 y + m2) 1024) + 16 (int32),
 * shifted right by 5 to 1/32 pixel; its integer part picks the 2x2 taps and its fraction the
 * integer weights (1 - fx)(1 - fy) 2^15 ... (BILINEAR_WEIGHTS), and the pixel is
 * (sum + 2^14) >> 15. Taps outside the image read 0, so pixels along the border blend with black.
 * `kernel` picks the code for pixels with all four taps inside (default: WebAssembly SIMD where
 * the runtime has it); for several warps of one image, an `AffineWarper` prepares it once.
 */
export function warpAffine(
  src: Rgb8Image,
  m: ArrayLike<number>,
  size: number,
  out = new Uint8Array(size * size * 3),
  kernel: WarpKernel = defaultWarpKernel(),
): Uint8Array {
  return new AffineWarper(src, kernel).warp(m, size, out);
}

/**
 * The per-warp integer steps of OpenCV's `WarpAffineInvoker`: `m` inverted in float64, then per
 * column cvRound(m0 x 1024) and cvRound(m3 x 1024) (`adelta`, `bdelta`) and per row
 * cvRound((m1 y + m2) 1024) + 16 and cvRound((m4 y + m5) 1024) + 16 (`rows`, interleaved), the
 * rounding delta of INTER_BITS included. The arrays are filled in place.
 */
function warpSteps(m: ArrayLike<number>, size: number, adelta: Int32Array, bdelta: Int32Array, rows: Int32Array): void {
  // Inverse map, in OpenCV's operation order.
  let m0 = m[0], m1 = m[1], m2 = m[2], m3 = m[3], m4 = m[4], m5 = m[5];
  let det = m0 * m4 - m1 * m3;
  det = det !== 0 ? 1 / det : 0;
  const a11 = m4 * det, a22 = m0 * det;
  m0 = a11;
  m1 *= -det;
  m3 *= -det;
  m4 = a22;
  const b1 = -m0 * m2 - m1 * m5;
  const b2 = -m3 * m2 - m4 * m5;
  m2 = b1;
  m5 = b2;
  for (let x = 0; x < size; x++) {
    adelta[x] = cvRound(m0 * x * AB_SCALE);
    bdelta[x] = cvRound(m3 * x * AB_SCALE);
  }
  for (let y = 0; y < size; y++) {
    rows[2 * y] = cvRound((m1 * y + m2) * AB_SCALE) + ROUND_DELTA;
    rows[2 * y + 1] = cvRound((m4 * y + m5) * AB_SCALE) + ROUND_DELTA;
  }
}

/**
 * One source image prepared for any number of warps (`alignPoses` makes one per image). With the
 * SIMD kernel, the WebAssembly instance's memory holds a copy of the source rows the warps so far
 * have read (each row copied once) and the per-warp tables. The source must not change while the
 * warper is used. A runtime without WebAssembly SIMD, or a source too large for 32-bit
 * WebAssembly memory (or memory refused), gets the JS kernel.
 */
export class AffineWarper {
  readonly kernel: WarpKernel;
  private readonly src: Uint8Array;
  private readonly width: number;
  private readonly height: number;
  /** An instance of its own, for sources too large for the shared one. */
  private ownSimd: SimdState | undefined;
  private readonly id = ++warperCount;
  /** How many of this warper's warps ran in the SIMD kernel (the others in JS). */
  simdWarps = 0;

  constructor(image: Rgb8Image, kernel: WarpKernel = defaultWarpKernel()) {
    // A monomorphic Uint8Array view keeps the JS loops' loads fast.
    this.src = image.data instanceof Uint8Array ? image.data : new Uint8Array(image.data.buffer, image.data.byteOffset, image.data.length);
    this.width = image.width;
    this.height = image.height;
    const bytes = simdSourceEnd(this.width, this.height);
    const simd = kernel === 'simd' && bytes <= SIMD_MAX_BYTES && warpModule() !== null;
    this.kernel = simd ? 'simd' : 'js';
  }

  /** The instance this warper's warps run in, holding this warper's rows (undefined: JS kernel). */
  private simdState(size: number): SimdState | undefined {
    if (this.kernel !== 'simd') return undefined;
    try {
      const end = simdSourceEnd(this.width, this.height);
      let state = this.ownSimd;
      if (!state) {
        if (end + simdTablesBytes(size) > SIMD_KEEP_BYTES) state = this.ownSimd = newSimdState();
        else state = sharedSimd ??= newSimdState();
      }
      if (state.owner !== this.id) {
        // The instance last held another source: nothing of this one is in it yet.
        growTo(state, end);
        state.owner = this.id;
        state.copied = new Uint8Array(this.height);
        state.tablesAt = end;
        state.tables = undefined;
      }
      simdTables(state, size);
      return state;
    } catch {
      // Memory refused (grow failed): the JS kernel needs none.
      return undefined;
    }
  }

  /** The size x size crop of `m` (source -> crop, 2x3 row-major), written into `out`. */
  warp(m: ArrayLike<number>, size: number, out = new Uint8Array(size * size * 3)): Uint8Array {
    const simd = this.simdState(size);
    if (simd) return this.warpSimd(simd, m, size, out);
    const adelta = new Int32Array(size), bdelta = new Int32Array(size), rows = new Int32Array(2 * size);
    warpSteps(m, size, adelta, bdelta, rows);
    warpJs(this.src, this.width, this.height, adelta, bdelta, rows, size, out);
    return out;
  }

  private warpSimd(state: SimdState, m: ArrayLike<number>, size: number, out: Uint8Array): Uint8Array {
    const { width, height, src } = this;
    const stride = width * 3;
    const tables = simdTables(state, size);
    const { memory } = state.exports;
    const words = new Int32Array(memory.buffer);
    const adelta = words.subarray(tables.adelta >> 2, (tables.adelta >> 2) + size);
    const bdelta = words.subarray(tables.bdelta >> 2, (tables.bdelta >> 2) + size);
    const rows = words.subarray(tables.rows >> 2, (tables.rows >> 2) + 2 * size);
    warpSteps(m, size, adelta, bdelta, rows);
    const [first, last] = tapRows(bdelta, rows, size, height);
    let missing = 0;
    for (let y = first; y <= last; y++) missing += 1 - state.copied[y];
    // Copying costs ~0.1 ns a byte, the SIMD kernel saves ~7 ns a pixel: a crop that would copy
    // more than 64 bytes per pixel (one large face, small crop) runs in JS instead.
    if (missing * stride > 64 * size * size) {
      warpJs(src, width, height, adelta, bdelta, rows, size, out);
      return out;
    }
    copySourceRows(state, src, stride, [first, last]);
    this.simdWarps++;
    const xLim = Math.min(width - 1, 32767);
    const yLim = Math.min(height - 1, 32767);
    const n = state.exports.warp(SIMD_SOURCE, stride, xLim, yLim, tables.adelta, tables.bdelta, tables.rows, size, tables.out, tables.border, SIMD_WEIGHTS);
    const heap = new Uint8Array(memory.buffer);
    out.set(heap.subarray(tables.out, tables.out + size * size * 3));
    for (let k = 0, b = tables.border >> 2; k < n; k++, b += 3) borderPixel(src, width, height, words[b + 1], words[b + 2], out, words[b]);
    return out;
  }
}

/**
 * The JS kernel: every pixel of the crop, interior ones with two unaligned little-endian loads
 * per tap row (six bytes: two RGB pixels) and the 2D weight table, the others by `borderPixel`.
 */
function warpJs(
  s: Uint8Array, width: number, height: number,
  adelta: Int32Array, bdelta: Int32Array, rows: Int32Array, size: number, out: Uint8Array,
): void {
  const view = new DataView(s.buffer, s.byteOffset, s.byteLength);
  const weights = BILINEAR_WEIGHTS;
  const stride = width * 3;
  // Pixels whose four taps are inside; OpenCV stores positions as int16, so beyond 32767 the
  // slow path's saturation applies (images that wide are refused by OpenCV anyway).
  const xLim = Math.min(width - 1, 32767);
  const yLim = Math.min(height - 1, 32767);
  let o = 0;
  for (let y = 0; y < size; y++) {
    const x0 = rows[2 * y];
    const y0 = rows[2 * y + 1];
    for (let x = 0; x < size; x++, o += 3) {
      const X = ((x0 + adelta[x]) | 0) >> (AB_BITS - INTER_BITS);
      const Y = ((y0 + bdelta[x]) | 0) >> (AB_BITS - INTER_BITS);
      const sx = X >> INTER_BITS;
      const sy = Y >> INTER_BITS;
      if (sx >>> 0 < xLim && sy >>> 0 < yLim) {
        const w = ((Y & (INTER_TAB_SIZE - 1)) << (INTER_BITS + 2)) | ((X & (INTER_TAB_SIZE - 1)) << 2);
        const k00 = weights[w], k01 = weights[w + 1], k10 = weights[w + 2], k11 = weights[w + 3];
        const p = sy * stride + sx * 3;
        const q = p + stride;
        // Top row: bytes R G B R' (tu) and G' B' (tv); bottom row likewise (bu, bv).
        const tu = view.getUint32(p, true), tv = view.getUint16(p + 4, true);
        const bu = view.getUint32(q, true), bv = view.getUint16(q + 4, true);
        out[o] = ((tu & 255) * k00 + (tu >>> 24) * k01 + (bu & 255) * k10 + (bu >>> 24) * k11 + ROUND_15) >> 15;
        out[o + 1] = (((tu >>> 8) & 255) * k00 + (tv & 255) * k01 + ((bu >>> 8) & 255) * k10 + (bv & 255) * k11 + ROUND_15) >> 15;
        out[o + 2] = (((tu >>> 16) & 255) * k00 + (tv >>> 8) * k01 + ((bu >>> 16) & 255) * k10 + (bv >>> 8) * k11 + ROUND_15) >> 15;
      } else {
        borderPixel(s, width, height, X, Y, out, o);
      }
    }
  }
}

/**
 * A pixel with a tap outside the image (or a position saturated to int16): OpenCV's border
 * path, where taps outside read the border value 0 and a pixel with all taps outside is 0.
 */
function borderPixel(s: Uint8Array, width: number, height: number, X: number, Y: number, out: Uint8Array, o: number): void {
  const sx = saturateShort(X >> INTER_BITS);
  const sy = saturateShort(Y >> INTER_BITS);
  if (sx >= width || sx + 1 < 0 || sy >= height || sy + 1 < 0) {
    out[o] = out[o + 1] = out[o + 2] = 0;
    return;
  }
  const fx = X & (INTER_TAB_SIZE - 1), ix = INTER_TAB_SIZE - fx;
  const fy = Y & (INTER_TAB_SIZE - 1), iy = INTER_TAB_SIZE - fy;
  const in0x = sx >= 0, in1x = sx + 1 < width, in0y = sy >= 0, in1y = sy + 1 < height;
  const p = sy * width * 3 + sx * 3;
  const q = p + width * 3;
  for (let c = 0; c < 3; c++) {
    const v00 = in0x && in0y ? s[p + c] : 0;
    const v01 = in1x && in0y ? s[p + 3 + c] : 0;
    const v10 = in0x && in1y ? s[q + c] : 0;
    const v11 = in1x && in1y ? s[q + 3 + c] : 0;
    out[o + c] = ((v00 * ix + v01 * fx) * iy + (v10 * ix + v11 * fx) * fy + ROUND_10) >> 10;
  }
}

// --- the WebAssembly SIMD kernel (tools/warp_affine.wat) ----------------------------------------

/*
 * The interior pixels in WebAssembly SIMD: per pixel, both tap rows in one 128-bit register
 * (two 8-byte loads), one int16 dot product per row against the weights, the rounding shift, a
 * byte shuffle and one 4-byte store (about 2x the JS kernel's speed). tools/warp_affine.wat is
 * the source and documents the call; the bytes below are its assembly (tools/build_warp_wasm.js).
 */
// BEGIN warp_affine.wasm
const WARP_WASM = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 16, 1, 96, 11, 127, 127, 127, 127, 127, 127, 127, 127, 127, 127, 127,
  1, 127, 3, 2, 1, 0, 5, 3, 1, 0, 1, 7, 17, 2, 6, 109, 101, 109, 111, 114, 121, 2, 0, 4,
  119, 97, 114, 112, 0, 0, 10, 167, 3, 1, 164, 3, 2, 12, 127, 2, 123, 32, 8, 33, 20, 2, 64, 3,
  64, 32, 12, 32, 7, 79, 13, 1, 32, 6, 32, 12, 65, 3, 116, 106, 40, 2, 0, 33, 13, 32, 6, 32,
  12, 65, 3, 116, 106, 40, 2, 4, 33, 14, 65, 0, 33, 11, 2, 64, 3, 64, 32, 11, 32, 7, 79, 13,
  1, 32, 13, 32, 4, 32, 11, 65, 2, 116, 106, 40, 2, 0, 106, 65, 5, 117, 33, 15, 32, 14, 32, 5,
  32, 11, 65, 2, 116, 106, 40, 2, 0, 106, 65, 5, 117, 33, 16, 32, 15, 65, 5, 117, 33, 17, 32, 16,
  65, 5, 117, 33, 18, 32, 17, 32, 2, 73, 32, 18, 32, 3, 73, 113, 4, 64, 32, 0, 32, 18, 32, 1,
  108, 32, 17, 65, 3, 108, 106, 106, 33, 19, 32, 19, 253, 93, 3, 0, 33, 23, 32, 19, 32, 1, 106, 32,
  23, 253, 87, 3, 0, 1, 33, 23, 32, 10, 32, 16, 65, 31, 113, 65, 5, 116, 32, 15, 65, 31, 113, 114,
  65, 5, 116, 106, 33, 21, 32, 23, 253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 253, 13, 0, 16, 3, 16, 1, 16, 4, 16, 2, 16, 5, 16, 16, 16, 16, 16, 32, 21, 253, 0,
  4, 0, 253, 186, 1, 32, 23, 253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 253, 13, 8, 16, 11, 16, 9, 16, 12, 16, 10, 16, 13, 16, 16, 16, 16, 16, 32, 21, 253, 0, 4,
  16, 253, 186, 1, 253, 174, 1, 33, 24, 32, 24, 253, 12, 0, 64, 0, 0, 0, 64, 0, 0, 0, 64, 0,
  0, 0, 64, 0, 0, 253, 174, 1, 65, 15, 253, 173, 1, 33, 24, 32, 24, 32, 24, 253, 13, 0, 4, 8,
  12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 33, 24, 32, 20, 32, 24, 253, 90, 2, 0, 0,
  5, 32, 9, 32, 20, 32, 8, 107, 54, 2, 0, 32, 9, 32, 15, 54, 2, 4, 32, 9, 32, 16, 54, 2,
  8, 32, 9, 65, 12, 106, 33, 9, 32, 22, 65, 1, 106, 33, 22, 11, 32, 20, 65, 3, 106, 33, 20, 32,
  11, 65, 1, 106, 33, 11, 12, 0, 11, 11, 32, 12, 65, 1, 106, 33, 12, 12, 0, 11, 11, 32, 22, 11,
]);
// END warp_affine.wasm

interface WarpExports {
  memory: WebAssembly.Memory;
  warp(
    src: number, stride: number, xLim: number, yLim: number,
    adelta: number, bdelta: number, rows: number, size: number,
    out: number, border: number, weights: number,
  ): number;
}

/**
 * Where the instance's memory keeps things: the weights, then the source (+8 bytes: the 8-byte
 * loads read 2 past a row's last pixel), then the per-warp tables.
 */
const SIMD_WEIGHTS = 0;
const SIMD_WEIGHTS_BYTES = INTER_TAB_SIZE * INTER_TAB_SIZE * 32;
const SIMD_SOURCE = SIMD_WEIGHTS + SIMD_WEIGHTS_BYTES;
const WASM_PAGE = 65536;
/** 32-bit WebAssembly memory ends at 4 GiB; engines cap it lower, so stay well below. */
const SIMD_MAX_BYTES = 1 << 30;

interface SimdTables {
  size: number;
  adelta: number;
  bdelta: number;
  rows: number;
  out: number;
  border: number;
}

interface SimdState {
  exports: WarpExports;
  /** The id of the warper whose source rows the memory holds (an id: no reference to its image). */
  owner: number;
  /** 1 for each of the owner's source rows already copied into the memory. */
  copied: Uint8Array;
  /** Where the per-warp tables start: after the owner's source. */
  tablesAt: number;
  tables: SimdTables | undefined;
}

/**
 * The instance warpers share (one at a time: a warper finding another's rows there starts
 * over), so a call of `alignFaces` pays no instantiation; its memory, which never shrinks, is
 * kept only up to SIMD_KEEP_BYTES (a 4K frame's source and tables fit): larger sources get an
 * instance of their own, dropped with their warper.
 */
let sharedSimd: SimdState | undefined;
let warperCount = 0;
const SIMD_KEEP_BYTES = 64 << 20;

/** The compiled kernel, or null where the runtime lacks WebAssembly or its SIMD (480 bytes: compiled synchronously). */
const warpModule = compiledOnce(WARP_WASM);

/** 'simd' where this runtime runs the WebAssembly SIMD kernel, else 'js'. */
export function defaultWarpKernel(): WarpKernel {
  return warpModule() ? 'simd' : 'js';
}

/** The end of a width x height source in the instance's memory (8 bytes of slack, 16-aligned). */
function simdSourceEnd(width: number, height: number): number {
  return align16(SIMD_SOURCE + width * height * 3 + 8);
}

/** A fresh instance with its weight table (throws where memory is refused). */
function newSimdState(): SimdState {
  const module = warpModule();
  if (!module) throw new Error('no WebAssembly SIMD');
  const exports = new WebAssembly.Instance(module, {}).exports as unknown as WarpExports;
  new Int16Array(exports.memory.buffer, SIMD_WEIGHTS, SIMD_WEIGHTS_BYTES / 2).set(simdWeights());
  return { exports, owner: 0, copied: new Uint8Array(0), tablesAt: SIMD_SOURCE, tables: undefined };
}

let simdWeightsCache: Int16Array | undefined;

/** The weights as int16, two 8-lane rows per fraction for the kernel's two dot products (see the .wat). */
function simdWeights(): Int16Array {
  if (simdWeightsCache) return simdWeightsCache;
  const w16 = new Int16Array(SIMD_WEIGHTS_BYTES / 2);
  for (let f = 0; f < INTER_TAB_SIZE * INTER_TAB_SIZE; f++) {
    let k00 = BILINEAR_WEIGHTS[4 * f];
    const k01 = BILINEAR_WEIGHTS[4 * f + 1], k10 = BILINEAR_WEIGHTS[4 * f + 2];
    let k11 = BILINEAR_WEIGHTS[4 * f + 3];
    // int16 lanes: OpenCV's own table saturates 32768 to 32767 and gives the spare 1 to
    // another tap; (32767 p00 + p11 + 2^14) >> 15 is still p00 for 8-bit samples.
    if (k00 > 32767) {
      k00 = 32767;
      k11 += 1;
    }
    w16.set([k00, k01, k00, k01, k00, k01, 0, 0, k10, k11, k10, k11, k10, k11, 0, 0], 16 * f);
  }
  simdWeightsCache = w16;
  return w16;
}

function align16(n: number): number {
  return Math.ceil(n / 16) * 16;
}

function growTo(state: SimdState, bytes: number): void {
  const { memory } = state.exports;
  const have = memory.buffer.byteLength;
  if (bytes > have) memory.grow(Math.ceil((bytes - have) / WASM_PAGE));
}

/** Bytes of the per-warp tables for crops of `size`: steps, the crop (+1 byte), the border list. */
function simdTablesBytes(size: number): number {
  return align16(16 * size + size * size * 3 + 1) + 12 * size * size;
}

/** The per-warp tables' places for crops of `size` (laid out once per size and source). */
function simdTables(state: SimdState, size: number): SimdTables {
  if (state.tables?.size === size) return state.tables;
  const adelta = state.tablesAt;
  const bdelta = adelta + 4 * size;
  const rows = bdelta + 4 * size;
  const out = rows + 8 * size;
  // The crop is written 4 bytes per pixel: 1 byte of slack after it.
  const border = align16(out + size * size * 3 + 1);
  growTo(state, adelta + simdTablesBytes(size));
  state.tables = { size, adelta, bdelta, rows, out, border };
  return state.tables;
}

/**
 * The source rows the interior pixels of a warp read, [first, last], from its integer steps:
 * rows sy and sy + 1 for sy = (Y0 + bdelta[x]) >> 10 with 0 <= sy < height - 1. bdelta is
 * monotonic in x (cvRound of m3 x 1024), so each output row's extremes are at its ends. Steps
 * large enough to wrap int32 (or cvRound's INT_MIN) give every row.
 */
function tapRows(bdelta: Int32Array, rows: Int32Array, size: number, height: number): [number, number] {
  if (size === 0) return [0, -1];
  const LIMIT = 1 << 30;
  const bFirst = bdelta[0], bLast = bdelta[size - 1];
  if (Math.abs(bFirst) >= LIMIT || Math.abs(bLast) >= LIMIT) return [0, height - 1];
  let lo = Infinity, hi = -Infinity;
  for (let y = 0; y < size; y++) {
    const y0 = rows[2 * y + 1];
    if (Math.abs(y0) >= LIMIT) return [0, height - 1];
    // (v >> 5) >> 5: the 1/32-pixel position, then its integer part.
    const a = (y0 + bFirst) >> AB_BITS;
    const b = (y0 + bLast) >> AB_BITS;
    lo = Math.min(lo, a, b);
    hi = Math.max(hi, a, b);
  }
  return [Math.max(0, lo), Math.min(height - 1, hi + 1)];
}

/** Copies the rows [first, last] of the source into the instance's memory, those not there yet. */
function copySourceRows(state: SimdState, src: Uint8Array, stride: number, [first, last]: [number, number]): void {
  const { copied } = state;
  const heap = new Uint8Array(state.exports.memory.buffer);
  let y = first;
  while (y <= last) {
    if (copied[y]) {
      y++;
      continue;
    }
    let end = y;
    while (end <= last && !copied[end]) copied[end++] = 1;
    heap.set(src.subarray(y * stride, end * stride), SIMD_SOURCE + y * stride);
    y = end;
  }
}

// --- the public call -------------------------------------------------------------------------------

/**
 * Align each face of `faces` (anything with a `pose`, e.g. `detectFaces` results) in `image`:
 * per face, in order, a size x size RGB crop, the transform, the template and the landmarks.
 * `[]` for no faces (the image is then not read). The image is decoded once per call; any
 * `ImageInput` works, float pixels are rounded to 8 bits (upstream aligns uint8 images).
 * Bad faces or options throw before the image is read: `InputError` naming the face, `OptionError`.
 */
export async function alignFaces(image: ImageInput, faces: readonly PosedFace[], options?: AlignOptions): Promise<AlignedFace[]> {
  const size = alignSizeOf(options);
  return alignChecked(image, checkPoses(faces, 'faces'), size, undefined, 'faces', alignLimitsOf(options));
}

/**
 * `alignFaces` with the poses already checked (`checkPoses`). `index` locates the image in a
 * caller's list and `name` names its face list, for errors.
 */
export async function alignChecked(
  image: ImageInput,
  poses: readonly Float32Array[],
  size: AlignSize,
  index?: number,
  name = 'faces',
  limits: DecodeLimits = {},
): Promise<AlignedFace[]> {
  if (poses.length === 0) return [];
  const rgb = await decodeRgb8(image, index, limits);
  return alignPoses(rgb, poses, size, (k) => `${name}[${k}].pose`, index);
}

/** A crop (or any packed RGB image) as PNG file bytes. */
export async function cropToPng(image: { data: Uint8Array; width: number; height: number }): Promise<Uint8Array> {
  const { width, height, data } = image;
  const rgba = new Uint8Array(width * height * 4);
  for (let p = 0, s = 0, o = 0; p < width * height; p++, s += 3, o += 4) {
    rgba[o] = data[s];
    rgba[o + 1] = data[s + 1];
    rgba[o + 2] = data[s + 2];
    rgba[o + 3] = 255;
  }
  return encodePng({ width, height, data: rgba });
}

/**
 * The synchronous core: `poses` (checked, float32 values) aligned in decoded pixels.
 * `where(k)` names face k in errors.
 */
export function alignPoses(
  rgb: Rgb8Image,
  poses: readonly Float32Array[],
  size: AlignSize,
  where: (k: number) => string = (k) => `faces[${k}].pose`,
  index?: number,
): AlignedFace[] {
  // One warper per image: the SIMD kernel copies each source row into its memory once.
  let warper: AffineWarper | undefined;
  return poses.map((pose, k) => {
    const landmarks = projectLandmarks(pose, rgb.width, rgb.height);
    if (!landmarks.every(Number.isFinite)) {
      throw new InputError({
        index,
        input: where(k),
        expected: 'a pose with the face in front of the camera (finite projected landmarks)',
        found: `a pose that puts its landmarks at infinity (tz ${pose[5]})`,
      });
    }
    const { transform, template } = fitTemplate(landmarks, size);
    warper ??= new AffineWarper(rgb);
    const data = warper.warp(transform, size);
    return {
      image: { data, width: size, height: size, channels: 3 },
      transform: [
        [transform[0], transform[1], transform[2]],
        [transform[3], transform[4], transform[5]],
      ],
      template,
      landmarks: Array.from({ length: POINTS }, (_, i): [number, number] => [landmarks[2 * i], landmarks[2 * i + 1]]),
    };
  });
}

/** The `size` option, checked. */
/** The decoding bounds of `options` (`maxPixels`, else `fallback`, else the library default). */
export function alignLimitsOf(options: AlignOptions | undefined, fallback?: number): DecodeLimits {
  const maxPixels = (options as AlignOptions | undefined)?.maxPixels ?? fallback;
  if (maxPixels !== undefined && !(Number.isInteger(maxPixels) && maxPixels > 0)) {
    throw new OptionError('maxPixels', 'a positive integer', maxPixels);
  }
  return { maxPixels };
}

export function alignSizeOf(options: AlignOptions | undefined): AlignSize {
  if (options !== undefined && (typeof options !== 'object' || options === null)) {
    throw new OptionError('options', 'an object { size? }', options);
  }
  const size = options?.size ?? DEFAULT_ALIGN_SIZE;
  if (!ALIGN_SIZES.includes(size)) throw new OptionError('size', '112 or 224', size);
  return size;
}

/**
 * Faces -> their poses as float32 (what upstream's `np.array(..., dtype=float32)` makes), each
 * 6 finite values. `name` is the caller's name for the list, for messages.
 */
export function checkPoses(faces: unknown, name: string, index?: number): Float32Array[] {
  if (!Array.isArray(faces)) throw new OptionError(name, 'an array of faces, each with a pose [rx, ry, rz, tx, ty, tz]', faces);
  return faces.map((face: unknown, k) => {
    const fail = (found: string): never => {
      throw new InputError({ index, input: `${name}[${k}].pose`, expected: '6 finite numbers [rx, ry, rz, tx, ty, tz]', found });
    };
    const pose = typeof face === 'object' && face !== null ? (face as { pose?: unknown }).pose : undefined;
    if (!isNumberList(pose)) return fail(face === null || typeof face !== 'object' ? describeValue(face) : describeValue(pose));
    if (pose.length !== 6) return fail(`${pose.length} values`);
    const p32 = Float32Array.from(pose);
    const bad = p32.findIndex((v) => !Number.isFinite(v));
    // A finite float64 beyond float32's range becomes infinite too: upstream would fail on it.
    if (bad >= 0) return fail(`${describeValue(pose[bad])} at position ${bad}`);
    return p32;
  });
}

function isNumberList(v: unknown): v is ArrayLike<number> {
  if (ArrayBuffer.isView(v) && !(v instanceof DataView)) return !(v instanceof BigInt64Array || v instanceof BigUint64Array);
  return Array.isArray(v) && v.every((x) => typeof x === 'number');
}

// --- decoding to 8-bit RGB -------------------------------------------------------------------------

/**
 * Any image input -> packed 8-bit RGB, read once. Encoded files/bytes and 8-bit pixels are
 * taken without tfjs; tensors and float pixels go through `decodeImage` (its checks and errors)
 * and are rounded to 8 bits. `exact` says whether the pixels are the input's own values (false
 * when rounding changed any).
 */
export async function decodeRgb8(input: ImageInput, index?: number, limits: DecodeLimits = {}): Promise<Rgb8Image & { exact: boolean }> {
  if (typeof input === 'string' || input instanceof Uint8Array || input instanceof ArrayBuffer) {
    const bitmap = await decodeBitmap(input, index, limits);
    return { ...rgbaToRgb(bitmap.data, bitmap.width, bitmap.height, 4), exact: true };
  }
  if (!(input instanceof tf.Tensor)) {
    const raw = eightBitPixels(input);
    if (raw) return { ...rgbaToRgb(raw.data, raw.width, raw.height, raw.channels), exact: true };
  }
  // Tensors, float pixels, and anything malformed: decodeImage checks and explains.
  const t = await decodeImage(input, index, limits);
  try {
    const [height, width] = t.shape;
    const values = await t.data();
    const data = new Uint8Array(values.length);
    let exact = true;
    for (let i = 0; i < values.length; i++) {
      const v = Math.round(values[i]);
      if (v !== values[i]) exact = false;
      data[i] = v;
    }
    return { data, width, height, exact };
  } finally {
    t.dispose();
  }
}

/** Well-formed 8-bit raw pixels or a Jimp bitmap, or undefined (then decodeImage decides). */
function eightBitPixels(input: unknown): { data: Uint8Array | Uint8ClampedArray; width: number; height: number; channels: 1 | 3 | 4 } | undefined {
  if (typeof input !== 'object' || input === null) return undefined;
  const bitmap = (input as { bitmap?: unknown }).bitmap;
  const candidate = (typeof bitmap === 'object' && bitmap !== null ? { ...bitmap, channels: 4 } : input) as Partial<RawImage>;
  const { data, width, height, channels } = candidate;
  const ok =
    (data instanceof Uint8Array || data instanceof Uint8ClampedArray) &&
    Number.isInteger(width) && (width as number) > 0 &&
    Number.isInteger(height) && (height as number) > 0 &&
    (channels === 1 || channels === 3 || channels === 4) &&
    data.length === (width as number) * (height as number) * channels;
  return ok ? (candidate as { data: Uint8Array; width: number; height: number; channels: 1 | 3 | 4 }) : undefined;
}

function rgbaToRgb(src: Uint8Array | Uint8ClampedArray, width: number, height: number, channels: 1 | 3 | 4): Rgb8Image {
  if (channels === 3) return { data: src, width, height };
  const pixels = width * height;
  const data = new Uint8Array(pixels * 3);
  for (let p = 0, s = 0, o = 0; p < pixels; p++, s += channels, o += 3) {
    if (channels === 1) {
      data[o] = data[o + 1] = data[o + 2] = src[s];
    } else {
      data[o] = src[s];
      data[o + 1] = src[s + 1];
      data[o + 2] = src[s + 2];
    }
  }
  return { data, width, height };
}
