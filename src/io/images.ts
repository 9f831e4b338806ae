/**
 * Image inputs -> HWC RGB float32 tensors with values 0..255, the network's input contract, or,
 * for a network that reads them (`decodeNetworkImage`), the decoded 8-bit samples as they are.
 *
 * Mirrors upstream `detector._load_image` + `convert('RGB')` (PIL): grayscale is replicated to
 * three channels and an alpha channel is DISCARDED, not composited over a background (PIL's
 * RGBA -> RGB conversion keeps the colour samples as they are, whatever the alpha).
 *
 * Decisions beyond upstream (which only takes uint8 RGB arrays besides files):
 * - Always float32 out, also for 8-bit sources: tfjs divides two int32 tensors with floor
 *   division, so an int32 image is a trap for any later `div(x, 255)`.
 * - Float inputs (raw Float32Array pixels, float32 tensors) must be finite and within [0, 255]:
 *   values outside are rejected rather than clipped, since they mean the caller used another
 *   convention (e.g. -1..1 normalisation) and clipping would silently give wrong detections.
 *   A 0..1 image cannot be told apart from a very dark one, so it is the caller's to avoid.
 * - Files are decoded with jimp's codecs (JPEG, PNG; BMP, GIF and TIFF work too), chosen by the
 *   file's signature; JPEGs first with libjpeg-turbo, as PIL decodes them (./jpeg_turbo): the
 *   same pixels. A JPEG libjpeg-turbo declines (corrupt, truncated, CMYK) goes to jimp's codec,
 *   jpeg-js, whose pixels can differ from PIL's by a few levels; PNG is exact. No EXIF orientation is applied, as PIL's
 *   `Image.open` applies none (and as `visualize` draws), so boxes refer to the stored pixels.
 * - 16-bit PNGs are scaled to 8 bits (round(v * 255 / 65535)). PIL opens 16-bit grayscale as
 *   mode 'I' and convert('RGB') then CLIPS at 255, so upstream sees such images as almost all
 *   white; we do not copy that. (16-bit RGB: PIL keeps the high byte, we round: +-1 level.)
 *
 * Ownership: every function returns a NEW tensor the caller must dispose, also for tensor
 * inputs (a clone sharing storage; the caller's own tensor is never disposed here). Nothing is
 * left allocated when a function throws.
 */
import * as fs from 'fs';
import * as tf from '@tensorflow/tfjs-core';
import { InputError, describeValue } from '../errors';
import { Unzlib } from 'fflate';
import { DEFAULT_MAX_PIXELS, ImageFormat, headerSize, pngDataProblem } from './image_header';
import { EXACT_JPEG, IMAGE_CODECS } from './codecs';
import { ImageBytes, imageTensor, NetworkImage } from '../model/transform';

export { DEFAULT_MAX_PIXELS };

/** Bounds on what an encoded image may cost to decode. */
export interface DecodeLimits {
  /** Largest width x height accepted, read from the header before decoding (default `DEFAULT_MAX_PIXELS`). */
  maxPixels?: number;
}

/** Pixels already in memory, row-major HWC. 8-bit data or float data in 0..255. */
export interface RawImage {
  data: Uint8Array | Uint8ClampedArray | Float32Array;
  width: number;
  height: number;
  channels: 1 | 3 | 4;
}

/** The part of a Jimp image we read: its RGBA bitmap. Any Jimp 1.x image satisfies it. */
export interface JimpImageLike {
  bitmap: { data: Uint8Array; width: number; height: number };
}

/**
 * Everything `detectFaces` accepts as one image: a file path, encoded file bytes (Buffer,
 * Uint8Array or ArrayBuffer of a JPEG/PNG), raw pixels, a HWC `tf.Tensor3D` (1, 3 or 4 channels,
 * int32 or float32, values 0..255) or a Jimp image.
 */
export type ImageInput = string | Uint8Array | ArrayBuffer | RawImage | tf.Tensor3D | JimpImageLike;

const EXPECTED_KINDS =
  'a file path, JPEG/PNG bytes, raw pixels {data, width, height, channels}, a tf.Tensor3D or a Jimp image';

/** How an input is named in error messages. */
export function describeInput(input: unknown): string {
  if (typeof input === 'string') return `file ${JSON.stringify(input)}`;
  if (input instanceof tf.Tensor) return `tf.Tensor [${input.shape.join(',')}] ${input.dtype}`;
  if (typeof Buffer !== 'undefined' && Buffer.isBuffer(input)) return `Buffer of ${input.length} bytes`;
  if (input instanceof Uint8Array) return `Uint8Array of ${input.length} bytes`;
  if (input instanceof ArrayBuffer) return `ArrayBuffer of ${input.byteLength} bytes`;
  if (isJimpLike(input)) return `Jimp image ${input.bitmap.width}x${input.bitmap.height}`;
  if (isRawLike(input)) {
    const r = input as { width?: unknown; height?: unknown; channels?: unknown };
    return `raw pixels ${String(r.width)}x${String(r.height)}x${String(r.channels)}`;
  }
  return describeValue(input);
}

/**
 * The input in a form the pixel-level code (alignment) reads. In Node every input already is
 * one; the browser build's version draws page elements (images, canvases, video) into pixels.
 */
export async function decodePixels(input: ImageInput, _index?: number): Promise<ImageInput> {
  return input;
}

/**
 * Decode any supported input to a new float32 [H, W, 3] tensor (0..255). `index` locates the
 * input in a batch for error messages. Throws `InputError` for anything unusable.
 */
export async function decodeImage(input: ImageInput, index?: number, limits: DecodeLimits = {}): Promise<tf.Tensor3D> {
  const image = await decodeNetworkImage(input, index, limits);
  // 8-bit samples: gray replicated, alpha discarded (PIL convert('RGB')).
  return image instanceof tf.Tensor ? image : imageTensor(image);
}

/**
 * `decodeImage` for a network that reads 8-bit samples (`DetectionModel.predictImages`): files,
 * encoded bytes, Jimp images and 8-bit raw pixels come back as their samples (the decoder's or
 * the caller's own array, RGBA, RGB or gray: no copy), tensors and float pixels as decodeImage's
 * tensor. Same checks, same `InputError`s. The network's transform resizes straight from the
 * bytes, so no float32 copy of the full-size image is made (768 MB for an 8000x8000 photo).
 */
export async function decodeNetworkImage(input: ImageInput, index?: number, limits: DecodeLimits = {}): Promise<NetworkImage> {
  const maxPixels = limits.maxPixels ?? DEFAULT_MAX_PIXELS;
  const where = describeInput(input);
  const fail = (expected: string, found: string, cause?: unknown): never => {
    throw new InputError({ index, input: where, expected, found, cause });
  };

  if (typeof input === 'string') {
    const bytes = await readImageFile(input, fail);
    return bitmapBytes(await decodeBytes(bytes, fail, maxPixels), fail);
  }
  if (input instanceof tf.Tensor) return tensorToRgb(input, fail);
  if (input instanceof Uint8Array) return bitmapBytes(await decodeBytes(input, fail, maxPixels), fail);
  if (input instanceof ArrayBuffer) {
    return bitmapBytes(await decodeBytes(new Uint8Array(input), fail, maxPixels), fail);
  }
  if (isJimpLike(input)) return bitmapBytes(input.bitmap, fail);
  if (isForeignTensor(input)) {
    return fail(EXPECTED_KINDS, 'a tensor of another @tensorflow/tfjs copy (install a single tfjs version)');
  }
  if (isRawLike(input)) return rawImage(input as RawImage, fail);
  return fail(EXPECTED_KINDS, describeValue(input));
}

/**
 * An encoded image (file path or bytes) decoded to its RGBA bitmap, with `decodeImage`'s checks and
 * `InputError`s. For callers that draw on pixels rather than run the network (`visualize`).
 */
export async function decodeBitmap(input: string | Uint8Array | ArrayBuffer, index?: number, limits: DecodeLimits = {}): Promise<Bitmap> {
  const where = describeInput(input);
  const fail = (expected: string, found: string, cause?: unknown): never => {
    throw new InputError({ index, input: where, expected, found, cause });
  };
  const bytes =
    typeof input === 'string' ? await readImageFile(input, fail) : input instanceof ArrayBuffer ? new Uint8Array(input) : input;
  const decoded = await decodeBytes(bytes, fail, limits.maxPixels ?? DEFAULT_MAX_PIXELS);
  return { width: decoded.width, height: decoded.height, data: new Uint8Array(decoded.data) };
}

type Fail = (expected: string, found: string, cause?: unknown) => never;

const IMAGE_FILE = 'a readable JPEG or PNG image file';

async function readImageFile(path: string, fail: Fail): Promise<Uint8Array> {
  if (path.length === 0) return fail(IMAGE_FILE, 'an empty path');
  let stat: fs.Stats;
  try {
    stat = await fs.promises.stat(path);
  } catch (e) {
    return fail(IMAGE_FILE, fsProblem(e), e);
  }
  if (stat.isDirectory()) return fail(IMAGE_FILE, 'a directory');
  if (!stat.isFile()) return fail(IMAGE_FILE, 'something that is not a regular file');
  if (stat.size === 0) return fail(IMAGE_FILE, 'an empty file (0 bytes)');
  try {
    return await fs.promises.readFile(path);
  } catch (e) {
    return fail(IMAGE_FILE, fsProblem(e), e);
  }
}

function fsProblem(e: unknown): string {
  const code = (e as { code?: unknown }).code;
  switch (code) {
    case 'ENOENT':
      return 'no such file';
    case 'EACCES':
    case 'EPERM':
      return 'a file this process may not read';
    case 'ENOTDIR':
      return 'a path through something that is not a directory';
    default:
      return `a path that cannot be read (${typeof code === 'string' ? code : 'unknown error'})`;
  }
}

type Format = ImageFormat;

const MIME: Record<Format, string> = {
  JPEG: 'image/jpeg',
  PNG: 'image/png',
  BMP: 'image/bmp',
  GIF: 'image/gif',
  TIFF: 'image/tiff',
};

/** The container, from its signature. */
export function sniffFormat(b: Uint8Array): Format | undefined {
  const starts = (...sig: number[]): boolean => b.length >= sig.length && sig.every((v, i) => b[i] === v);
  if (starts(0xff, 0xd8, 0xff)) return 'JPEG';
  if (starts(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return 'PNG';
  if (starts(0x42, 0x4d)) return 'BMP';
  if (starts(0x47, 0x49, 0x46, 0x38)) return 'GIF';
  if (starts(0x49, 0x49, 0x2a, 0x00) || starts(0x4d, 0x4d, 0x00, 0x2a)) return 'TIFF';
  return undefined;
}

const ENCODED_IMAGE = 'a JPEG or PNG image';

/**
 * Decode with jimp's codec for the sniffed format. `Jimp.fromBuffer` is avoided on purpose: its
 * type detection is an ESM dynamic import that CommonJS runners (jest) cannot execute, and it
 * applies EXIF rotation.
 */
async function decodeBytes(bytes: Uint8Array, fail: Fail, maxPixels: number): Promise<Bitmap> {
  if (bytes.length === 0) return fail(ENCODED_IMAGE, 'no data (0 bytes)');
  const format = sniffFormat(bytes);
  if (format === undefined) return fail(ENCODED_IMAGE, `data that is not an image (${headHex(bytes)})`);
  // The size the header declares decides what the decoder allocates: checked before decoding.
  const size = headerSize(bytes, format);
  if ('problem' in size) return fail(ENCODED_IMAGE, `truncated or corrupt ${format} data (${size.problem})`);
  const pixels = size.width * size.height;
  if (pixels === 0) return fail('an image with at least one pixel', `a ${size.width}x${size.height} ${format} image`);
  if (pixels > maxPixels) {
    return fail(`an image of at most ${maxPixels} pixels (the maxPixels option)`, `a ${size.width}x${size.height} ${format} image (${pixels} pixels)`);
  }
  if (format === 'PNG') {
    const short = pngDataProblem(bytes, inflatePieces);
    if (short) return fail(ENCODED_IMAGE, `truncated or corrupt PNG data (${short})`);
  }
  const exact = format === 'JPEG' && EXACT_JPEG ? EXACT_JPEG(bytes) : null;
  if (exact) return exact;
  const codec = IMAGE_CODECS.map((f) => f()).find((f) => f.mime === MIME[format]);
  if (codec === undefined) return fail(ENCODED_IMAGE, `a ${format} image, which this jimp build cannot decode`);
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  try {
    const decoded = await quietly(format, () =>
      format === 'JPEG' ? (codec as JpegCodec).decode(buffer, jpegLimits(maxPixels)) : codec.decode(buffer),
    );
    if (decoded.width * decoded.height > maxPixels) {
      return fail(`an image of at most ${maxPixels} pixels (the maxPixels option)`, `a ${decoded.width}x${decoded.height} ${format} image`);
    }
    return { data: decoded.data, width: decoded.width, height: decoded.height };
  } catch (e) {
    if (e instanceof InputError) throw e;
    const msg = e instanceof Error ? e.message : String(e);
    // jpeg-js refuses images above its resolution / memory limits with these words.
    if (/limit exceeded/.test(msg)) return fail(ENCODED_IMAGE, `a ${format} too large to decode (${msg})`, e);
    if (e instanceof RangeError && /allocation|typed array length|array length|Array buffer/i.test(e.message)) {
      return fail(ENCODED_IMAGE, `a ${size.width}x${size.height} ${format} image too large to decode in memory`, e);
    }
    return fail(ENCODED_IMAGE, `truncated or corrupt ${format} data`, e);
  }
}

/** Streams zlib data through inflate, reporting the size of each piece (none is kept). */
function inflatePieces(pieces: Uint8Array[], onBytes: (n: number) => void): void {
  const inflater = new Unzlib((chunk) => onBytes(chunk.length));
  pieces.forEach((p, i) => inflater.push(p, i === pieces.length - 1));
}

/**
 * Runs a decoder with console.log/warn captured: the GIF decoder reports a stream shorter than
 * its frame there (and decodes the rest as zeros), which would break JSON on stdout and accept
 * a truncated file. Such a report becomes an error.
 */
async function quietly<T>(format: Format, decode: () => T | Promise<T>): Promise<T> {
  if (format !== 'GIF') return decode();
  const said: string[] = [];
  const { log, warn } = console;
  console.log = console.warn = (...args: unknown[]) => void said.push(args.map(String).join(' '));
  try {
    const out = await decode();
    if (said.length > 0) throw new Error(`decoder: ${said.join('; ')}`);
    return out;
  } finally {
    console.log = log;
    console.warn = warn;
  }
}

/**
 * jpeg-js refuses to decode once its buffers would pass 512 MB, which stops photos near 8000x8000
 * (~750 MB): its budget follows the pixel limit instead (~12 bytes a pixel, at least 2 GB), and
 * its own resolution cap is the pixel limit.
 */
function jpegLimits(maxPixels: number): JpegLimits {
  return {
    maxResolutionInMP: Math.ceil(maxPixels / 1e6),
    maxMemoryUsageInMB: Math.max(2048, Math.ceil((maxPixels * 12) / 2 ** 20)),
  };
}

interface JpegLimits {
  maxResolutionInMP: number;
  maxMemoryUsageInMB: number;
}

/** jimp's JPEG codec (@jimp/js-jpeg) passes its decode options through to jpeg-js. */
interface JpegCodec {
  decode(data: Buffer, options: JpegLimits): Bitmap;
}

function headHex(b: Uint8Array): string {
  const n = Math.min(8, b.length);
  const hex = Array.from(b.subarray(0, n), (v) => v.toString(16).padStart(2, '0')).join(' ');
  return `starts with ${hex}${b.length > n ? ' ...' : ''}`;
}

/** RGBA, 8 bits per sample: what jimp decodes to. */
/** RGBA, 4 bytes a pixel, row-major. */
export interface Bitmap {
  data: Uint8Array;
  width: number;
  height: number;
}

/** A decoded RGBA bitmap, checked, as the network's 8-bit samples (the same array). */
function bitmapBytes(bitmap: Bitmap, fail: Fail): ImageBytes {
  const { width, height, data } = bitmap;
  if (!isPositiveInt(width) || !isPositiveInt(height)) {
    return fail('an image with at least one pixel', `a ${String(width)}x${String(height)} image`);
  }
  // Exactly: a longer buffer means a wrong stride or a view over a larger pool (jimp's
  // fromBitmap wraps a Buffer's whole underlying ArrayBuffer), and reading it gives garbage.
  if (!(data instanceof Uint8Array) || data.length !== width * height * 4) {
    return fail(`an RGBA bitmap of ${width * height * 4} bytes`, `${describeValue(data)} of ${lengthOf(data)}`);
  }
  return { data, height, width, channels: 4 };
}

/** Float pixel samples -> RGB float32: gray replicated, alpha discarded (PIL convert('RGB')). */
function dropToRgb(src: Float32Array, pixels: number, channels: 1 | 3 | 4): Float32Array {
  if (channels === 3) return src.slice();
  const out = new Float32Array(pixels * 3);
  for (let p = 0, s = 0, o = 0; p < pixels; p++, s += channels, o += 3) {
    out[o] = src[s];
    out[o + 1] = src[channels === 1 ? s : s + 1];
    out[o + 2] = src[channels === 1 ? s : s + 2];
  }
  return out;
}

const PIXEL_RANGE = 'finite values within 0..255';

/** Raw pixels, checked: 8-bit ones as the network's samples (the caller's array), float ones as a new tensor. */
function rawImage(raw: RawImage, fail: Fail): NetworkImage {
  const { data, width, height, channels } = raw;
  const is8bit = data instanceof Uint8Array || data instanceof Uint8ClampedArray;
  if (!is8bit && !(data instanceof Float32Array)) {
    return fail('raw pixel data as a Uint8Array, Uint8ClampedArray or Float32Array', describeValue(data));
  }
  if (!isPositiveInt(width) || !isPositiveInt(height)) {
    return fail('positive integer width and height', `width ${describeValue(width)}, height ${describeValue(height)}`);
  }
  if (channels !== 1 && channels !== 3 && channels !== 4) {
    return fail('channels 1 (gray), 3 (RGB) or 4 (RGBA)', `channels ${describeValue(channels)}`);
  }
  const needed = width * height * channels;
  if (data.length !== needed) {
    return fail(`${needed} samples (${width}x${height}x${channels})`, `${data.length} samples`);
  }
  if (is8bit) return { data: data as Uint8Array | Uint8ClampedArray, height, width, channels };
  const bad = checkRange(data as Float32Array, channels);
  if (bad) return fail(PIXEL_RANGE, bad);
  return tf.tensor3d(dropToRgb(data as Float32Array, width * height, channels), [height, width, 3], 'float32');
}

/** What is wrong with the colour samples (alpha is dropped, so not checked), or undefined. */
function checkRange(v: Float32Array, channels: 1 | 3 | 4): string | undefined {
  let nonFinite = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < v.length; i++) {
    if (channels === 4 && i % 4 === 3) continue;
    const x = v[i];
    if (!Number.isFinite(x)) nonFinite++;
    else {
      if (x < min) min = x;
      if (x > max) max = x;
    }
  }
  return rangeProblem(nonFinite, min, max);
}

function rangeProblem(nonFinite: number, min: number, max: number): string | undefined {
  if (nonFinite > 0) return `${nonFinite} NaN or infinite value${nonFinite > 1 ? 's' : ''}`;
  if (min < 0 || max > 255) return `values from ${min} to ${max}`;
  return undefined;
}

async function tensorToRgb(t: tf.Tensor, fail: Fail): Promise<tf.Tensor3D> {
  if (t.isDisposed) return fail('a live tensor', 'a disposed tensor');
  if (t.rank !== 3) {
    const hint = t.rank === 4 && t.shape[0] === 1 ? ' (squeeze the batch axis)' : '';
    return fail('a rank-3 HWC tensor [height, width, channels]', `rank ${t.rank}, shape [${t.shape.join(',')}]${hint}`);
  }
  if (t.dtype !== 'float32' && t.dtype !== 'int32') {
    return fail('dtype float32 or int32', `dtype ${t.dtype}`);
  }
  const [h, w, c] = t.shape as [number, number, number];
  if (c !== 1 && c !== 3 && c !== 4) {
    return fail('1 (gray), 3 (RGB) or 4 (RGBA) channels (HWC layout)', `${c} channels, shape [${h},${w},${c}]`);
  }
  if (h === 0 || w === 0) return fail('an image with at least one pixel', `shape [${h},${w},${c}]`);

  // Checked before gray is replicated, so counts refer to the caller's samples.
  const colour = c === 4 ? tf.slice(t, [0, 0, 0], [h, w, 3]) : t;
  let stats: Float32Array | Int32Array | Uint8Array;
  try {
    // One read for the three checks: count of non-finite values, then min and max of the rest.
    const s = tf.tidy(() => {
      const x = tf.cast(colour, 'float32');
      const finite = tf.isFinite(x);
      const safe = tf.where(finite, x, tf.zerosLike(x));
      const nonFinite = tf.sum(tf.cast(tf.logicalNot(finite), 'float32'));
      return tf.stack([nonFinite, tf.min(safe), tf.max(safe)]);
    });
    stats = await s.data();
    s.dispose();
  } catch (e) {
    if (colour !== t) colour.dispose();
    throw e;
  }
  const bad = rangeProblem(stats[0], stats[1], stats[2]);
  if (bad) {
    if (colour !== t) colour.dispose();
    return fail(PIXEL_RANGE, bad);
  }
  return tf.tidy(() => {
    const x = c === 1 ? tf.tile(colour, [1, 1, 3]) : colour;
    const out = x.dtype === 'float32' ? tf.clone(x) : tf.cast(x, 'float32');
    if (colour !== t) colour.dispose();
    return out;
  }) as tf.Tensor3D;
}

function isPositiveInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v > 0;
}

function lengthOf(v: unknown): string {
  const n = (v as { length?: unknown } | null)?.length;
  return typeof n === 'number' ? `length ${n}` : 'unknown length';
}

function isJimpLike(v: unknown): v is JimpImageLike {
  if (typeof v !== 'object' || v === null || !('bitmap' in v)) return false;
  const b = (v as { bitmap: unknown }).bitmap;
  return typeof b === 'object' && b !== null && 'data' in b && 'width' in b && 'height' in b;
}

function isRawLike(v: unknown): boolean {
  return typeof v === 'object' && v !== null && 'data' in v && 'width' in v && 'height' in v;
}

function isForeignTensor(v: unknown): boolean {
  return typeof v === 'object' && v !== null && 'dataId' in v && 'shape' in v && 'dtype' in v;
}
