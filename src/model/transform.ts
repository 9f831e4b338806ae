/**
 * Input transform: what torchvision's GeneralizedRCNNTransform does to the images before the
 * backbone, as upstream img2pose configures it (eval mode, one min_size, max_size, ImageNet
 * mean/std, batches padded to a multiple of 32).
 *
 * Per image: uint8 RGB -> /255 -> (x - mean) / std -> bilinear resize (align_corners=False, no
 * antialias) to resizedSize(). Normalisation comes BEFORE the resize, as upstream does; the
 * zero padding is therefore zero in normalised space.
 *
 * An image comes as a HWC RGB tensor of 0..255 values or, on the host path, as its decoded 8-bit
 * samples (`ImageBytes`): each tap is then normalised through a 256-entry table and no float copy
 * of the full-size image is ever made (an 8000x8000 photo would take 768 MB as float32).
 */
import * as tf from '@tensorflow/tfjs-core';
import { ImageBytes, Kernels, normalizeResizePadBatchWebGPU, normalizeResizePadBytesWebGPU, PORTABLE_KERNELS } from '../kernels/webgpu';
import { bilinearTaps } from '../ops/resize';
import { Size } from '../ops/size';

/** torchvision's ImageNet statistics (GeneralizedRCNNTransform defaults used by upstream). */
export const IMAGE_MEAN: readonly [number, number, number] = [0.485, 0.456, 0.406];
export const IMAGE_STD: readonly [number, number, number] = [0.229, 0.224, 0.225];

/** Batches are padded so every side is a multiple of this (torchvision's size_divisible). */
export const SIZE_DIVISIBLE = 32;

export type { Size } from '../ops/size';
export { bilinearTaps } from '../ops/resize';
export type { LinearTaps } from '../ops/resize';

/** An image's 8-bit samples as decoded (gray, RGB or RGBA), as the WebGPU transform also reads them. */
export type { ImageBytes };

/** One image for the network: a HWC RGB tensor (int32 or float32, values 0..255) or its 8-bit samples. */
export type NetworkImage = tf.Tensor3D | ImageBytes;

/** [height, width] of a network image. */
export function imageSizeOf(image: NetworkImage): Size {
  return image instanceof tf.Tensor ? [image.shape[0], image.shape[1]] : [image.height, image.width];
}

/**
 * The RGB float32 tensor of an image (a new tensor: the caller disposes it). For backends that
 * upload the whole image (our WebGPU transform); the host path reads the bytes directly.
 */
export function imageTensor(image: NetworkImage): tf.Tensor3D {
  if (image instanceof tf.Tensor) return tf.clone(image);
  const { data, height, width, channels } = image;
  const pixels = height * width;
  const rgb = new Float32Array(pixels * 3);
  for (let p = 0; p < pixels; p++) {
    for (let c = 0; c < 3; c++) rgb[p * 3 + c] = data[p * channels + (channels === 1 ? 0 : c)];
  }
  return tf.tensor3d(rgb, [height, width, 3], 'float32');
}

export interface ImageBatch {
  /** NHWC float32: normalised, resized, zero-padded bottom/right to the batch's padded H and W. */
  images: tf.Tensor4D;
  /** Each image's size after the resize, before padding (upstream `image_sizes`). */
  imageSizes: Size[];
  /** Each image's OWN padded size (what a single-image run would pad to). */
  paddedSizes: Size[];
  /** Each input image's size. */
  originalSizes: Size[];
}

/**
 * Output size of the resize, bit-exact with upstream. torchvision computes
 * `min(min_size / short_side, max_size / long_side)` with the sides as float32 tensors and the
 * sizes as Python floats; torch evaluates `float / tensor` as `reciprocal(tensor) * float`, so the
 * scale is f32(f32(1 / side) * size), NOT the correctly rounded quotient (the two disagree on about
 * one size in five). The scale comes out as a Python float and interpolate floors side * scale in
 * float64. Example: a 718-pixel short side at minSize 640 gives scale 0.89136487 and 639 pixels.
 *
 * One departure: a side is never less than 1 pixel. Where upstream floors a very thin image's
 * short side to 0 (e.g. 3x4000 at maxSize 288) torch's interpolate raises; we keep one row.
 */
export function resizedSize(h: number, w: number, minSize: number, maxSize: number): Size {
  if (!(h > 0 && w > 0)) throw new Error(`resizedSize: image size must be positive, got ${h}x${w}`);
  const f32 = Math.fround;
  // A product of two float32 values is exact in float64, so one fround gives torch's float32 product.
  const byShort = f32(f32(1 / f32(Math.min(h, w))) * f32(minSize));
  const byLong = f32(f32(1 / f32(Math.max(h, w))) * f32(maxSize));
  const scale = Math.min(byShort, byLong);
  return [Math.max(1, Math.floor(h * scale)), Math.max(1, Math.floor(w * scale))];
}

function ceilTo(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/** The size an image of size [h, w] is padded to when it runs alone. */
export function paddedSize([h, w]: Size): Size {
  return [ceilTo(h, SIZE_DIVISIBLE), ceilTo(w, SIZE_DIVISIBLE)];
}

const MEAN_F32 = IMAGE_MEAN.map(Math.fround);
const STD_F32 = IMAGE_STD.map(Math.fround);

/** Upstream's normalisation of one 0..255 value of channel c, float32 after every operation. */
export function normalizePixel(value: number, c: number): number {
  const f32 = Math.fround;
  return f32(f32(f32(f32(value) / 255) - MEAN_F32[c]) / STD_F32[c]);
}

/** normalizePixel for the 256 byte values of each channel (images are almost always uint8). */
const NORMALIZED_BYTES: Float32Array[] = [0, 1, 2].map((c) => Float32Array.from({ length: 256 }, (_, v) => normalizePixel(v, c)));

/** The same table, then the float32 means and stds, as the WebGPU transform takes them. */
const WEBGPU_TABLE = Float32Array.from([...NORMALIZED_BYTES[0], ...NORMALIZED_BYTES[1], ...NORMALIZED_BYTES[2], ...MEAN_F32, ...STD_F32]);

/** Pixel samples as the transform reads them: the image's samples and how many make a pixel. */
interface Samples {
  data: ArrayLike<number>;
  channels: 1 | 3 | 4;
}

/**
 * Normalise one source row (w pixels starting at sample `offset`) into `out` as RGB. Byte values
 * (the usual case) come from the table; anything else is computed (the same float32 steps).
 */
function normalizeRow({ data, channels }: Samples, offset: number, w: number, out: Float32Array): void {
  const bytes = data instanceof Uint8Array || data instanceof Uint8ClampedArray;
  for (let x = 0; x < w; x++) {
    const p = offset + x * channels;
    for (let c = 0; c < 3; c++) {
      const v = data[channels === 1 ? p : p + c];
      out[x * 3 + c] = bytes || (v >= 0 && v <= 255 && v === Math.floor(v)) ? NORMALIZED_BYTES[c][v] : normalizePixel(v, c);
    }
  }
}

/**
 * Normalise, then bilinearly resize, one HWC image, writing it into the top-left corner
 * of `out` (rows of `outRowStride` floats). Like torch, each output is interpolated along the
 * width within two source rows, then between the rows; a source row is normalised and
 * width-interpolated once, when first needed.
 */
function normalizeResizeInto(
  src: Samples,
  [h, w]: Size,
  [oh, ow]: Size,
  out: Float32Array,
  outOffset: number,
  outRowStride: number,
): void {
  const tx = bilinearTaps(w, ow);
  const ty = bilinearTaps(h, oh);
  const rowLen = ow * 3;
  const normalized = new Float32Array(w * 3);
  // Two-row cache: the source rows of consecutive output rows never go backwards.
  const rows = [new Float32Array(rowLen), new Float32Array(rowLen)];
  const rowOf = [-1, -1];
  let next = 0;
  const sourceRow = (y: number): Float32Array => {
    if (rowOf[0] === y) return rows[0];
    if (rowOf[1] === y) return rows[1];
    const slot = next;
    next = 1 - next;
    rowOf[slot] = y;
    const row = rows[slot];
    normalizeRow(src, y * w * src.channels, w, normalized);
    for (let x = 0; x < ow; x++) {
      const p0 = tx.index0[x] * 3;
      const p1 = tx.index1[x] * 3;
      const a = tx.weight0[x];
      const b = tx.weight1[x];
      const o = x * 3;
      row[o] = normalized[p0] * a + normalized[p1] * b;
      row[o + 1] = normalized[p0 + 1] * a + normalized[p1 + 1] * b;
      row[o + 2] = normalized[p0 + 2] * a + normalized[p1 + 2] * b;
    }
    return row;
  };
  for (let y = 0; y < oh; y++) {
    const r0 = sourceRow(ty.index0[y]);
    const r1 = sourceRow(ty.index1[y]);
    const a = ty.weight0[y];
    const b = ty.weight1[y];
    const o = outOffset + y * outRowStride;
    for (let k = 0; k < rowLen; k++) out[o + k] = r0[k] * a + r1[k] * b;
  }
}

/**
 * Stack images into one zero-padded NHWC batch. `images` are HWC RGB tensors with values 0..255
 * (int32 or float32) or 8-bit samples; they are not disposed. The work is done on the host: it is
 * a few multiply-adds per output pixel, and doing it in JS lets us follow torch's sampling exactly.
 * Where `kernels` run our WebGPU programs, one GPU dispatch does the same
 * (src/kernels/webgpu/transform.ts).
 */
export function prepareBatch(images: NetworkImage[], minSize: number, maxSize: number, kernels: Kernels = PORTABLE_KERNELS): ImageBatch {
  const layout = layoutOf(images, minSize, maxSize);
  if (kernels.webgpu) return webgpuBatch(images, layout);
  const batch = hostBatch(images.length, layout);
  images.forEach((image, i) => batch.add(i, samplesOf(image, image instanceof tf.Tensor ? image.dataSync() : undefined)));
  return batch.done();
}

/**
 * `prepareBatch` for any backend: GPU backends (webgpu) cannot read pixels synchronously, so the
 * host path awaits them first. The model uses this one.
 */
export async function prepareBatchAsync(
  images: NetworkImage[], minSize: number, maxSize: number, kernels: Kernels = PORTABLE_KERNELS,
): Promise<ImageBatch> {
  if (kernels.webgpu || images.length === 0) return prepareBatch(images, minSize, maxSize, kernels);
  const layout = layoutOf(images, minSize, maxSize);
  const batch = hostBatch(images.length, layout);
  // A tensor's values are read as it is resized: at most one full-size copy at a time.
  for (const [i, image] of images.entries()) batch.add(i, samplesOf(image, image instanceof tf.Tensor ? await image.data() : undefined));
  return batch.done();
}

/** The samples of an image: a tensor's values (`values`, read by the caller) or the bytes as they are. */
function samplesOf(image: NetworkImage, values: tf.TypedArray | undefined): Samples {
  if (image instanceof tf.Tensor) return { data: values as tf.TypedArray, channels: 3 };
  return { data: image.data, channels: image.channels };
}

interface BatchLayout {
  originalSizes: Size[];
  imageSizes: Size[];
  paddedSizes: Size[];
  batchH: number;
  batchW: number;
}

function layoutOf(images: NetworkImage[], minSize: number, maxSize: number): BatchLayout {
  if (images.length === 0) throw new Error('prepareBatch: no images');
  const originalSizes: Size[] = [];
  const imageSizes: Size[] = [];
  const paddedSizes: Size[] = [];
  for (const [i, img] of images.entries()) {
    checkImage(img, i);
    const [h, w] = imageSizeOf(img);
    const r = resizedSize(h, w, minSize, maxSize);
    if (r[0] < 1 || r[1] < 1) throw new Error(`prepareBatch: image ${i} (${h}x${w}) resizes to an empty ${r[0]}x${r[1]}`);
    originalSizes.push([h, w]);
    imageSizes.push(r);
    paddedSizes.push(paddedSize(r));
  }
  const batchH = Math.max(...paddedSizes.map((s) => s[0]));
  const batchW = Math.max(...paddedSizes.map((s) => s[1]));
  return { originalSizes, imageSizes, paddedSizes, batchH, batchW };
}

function checkImage(img: NetworkImage, i: number): void {
  if (img instanceof tf.Tensor) {
    if (img.rank !== 3 || img.shape[2] !== 3) {
      throw new Error(`prepareBatch: image ${i} must be HWC with 3 (RGB) channels, got shape [${img.shape}]`);
    }
    return;
  }
  const { data, height, width, channels } = img;
  if (!(data instanceof Uint8Array || data instanceof Uint8ClampedArray)) throw new Error(`prepareBatch: image ${i}'s samples must be a Uint8Array`);
  if (!(channels === 1 || channels === 3 || channels === 4)) throw new Error(`prepareBatch: image ${i} must have 1, 3 or 4 channels, got ${String(channels)}`);
  if (!(Number.isInteger(height) && Number.isInteger(width) && height > 0 && width > 0) || data.length !== height * width * channels) {
    throw new Error(`prepareBatch: image ${i} is ${height}x${width}x${channels} but holds ${data.length} samples`);
  }
}

/** One dispatch for the batch on the GPU, same taps and byte table (see src/kernels/webgpu/transform.ts). */
function webgpuBatch(images: NetworkImage[], { originalSizes, imageSizes, paddedSizes, batchH, batchW }: BatchLayout): ImageBatch {
  const yTaps = images.map((_, i) => bilinearTaps(originalSizes[i][0], imageSizes[i][0]));
  const xTaps = images.map((_, i) => bilinearTaps(originalSizes[i][1], imageSizes[i][1]));
  const bytes = images.filter((img): img is ImageBytes => !(img instanceof tf.Tensor));
  // Decoded files go up as their bytes; a batch that mixes them with tensors goes up as floats.
  if (bytes.length === images.length) {
    return { images: normalizeResizePadBytesWebGPU(bytes, yTaps, xTaps, [batchH, batchW], WEBGPU_TABLE), imageSizes, paddedSizes, originalSizes };
  }
  const uploads = images.map((img) => (img instanceof tf.Tensor ? img : imageTensor(img)));
  try {
    const batch = normalizeResizePadBatchWebGPU(uploads, yTaps, xTaps, [batchH, batchW], WEBGPU_TABLE);
    return { images: batch, imageSizes, paddedSizes, originalSizes };
  } finally {
    uploads.forEach((t, i) => t !== images[i] && t.dispose());
  }
}

/** The host path's batch, filled one image at a time. */
function hostBatch(n: number, { originalSizes, imageSizes, paddedSizes, batchH, batchW }: BatchLayout) {
  const imageLen = batchH * batchW * 3;
  // Zero-initialised: the padding is 0 in normalised space, as upstream pads after normalising.
  const data = new Float32Array(n * imageLen);
  return {
    add(i: number, samples: Samples): void {
      normalizeResizeInto(samples, originalSizes[i], imageSizes[i], data, i * imageLen, batchW * 3);
    },
    done(): ImageBatch {
      return { images: tf.tensor4d(data, [n, batchH, batchW, 3], 'float32'), imageSizes, paddedSizes, originalSizes };
    },
  };
}
