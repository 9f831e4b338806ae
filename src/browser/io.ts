/// <reference lib="dom" />
/**
 * src/io/images.ts for browsers (the browser build swaps it in for the detector): everything a page
 * holds an image in, turned into the raw RGBA pixels that src/io/images.ts then checks and converts
 * exactly as in Node.
 *
 * - `ImageData`: its pixels as they are.
 * - `HTMLImageElement`, `HTMLCanvasElement`, `OffscreenCanvas`, `ImageBitmap`, `VideoFrame`,
 *   `HTMLVideoElement` (its current frame): drawn at natural size on a 2D canvas and read back.
 * - Encoded bytes (`Uint8Array`, `ArrayBuffer`, `Blob`/`File`) and URL strings (fetched): JPEG with
 *   libjpeg-turbo (src/io/jpeg_turbo.ts, PIL's pixels) and, where it declines, jpeg-js, as Node's
 *   path decodes them, so pixels equal the Node CLI's; PNG and the rest with the browser's
 *   decoder, colour profiles ignored as in Node.
 * - Raw pixels and tensors: src/io/images.ts unchanged.
 */
import * as tf from '@tensorflow/tfjs-core';
import { decode as decodeJpeg } from 'jpeg-js';
import { describeValue, InputError } from '../errors';
import {
  decodeNetworkImage as decodeNetworkCore,
  describeInput as describeCore,
  DecodeLimits,
  ImageInput as CoreInput,
  RawImage,
} from '../io/images';
import { imageTensor, NetworkImage } from '../model/transform';
import { DEFAULT_MAX_PIXELS, headerSize } from '../io/image_header';
import { decodeJpegTurbo } from '../io/jpeg_turbo';

// Everything else of src/io/images.ts as it is; the names declared below replace theirs.
export * from '../io/images';

/** What a page can draw from: decoded by drawing it on a canvas. */
export type DrawableSource = HTMLImageElement | HTMLCanvasElement | OffscreenCanvas | ImageBitmap | VideoFrame | HTMLVideoElement;

/**
 * One image in the browser build: a URL string (fetched), encoded bytes (`Uint8Array`,
 * `ArrayBuffer`, `Blob`/`File`), `ImageData`, a drawable source, raw pixels or a `tf.Tensor3D`.
 */
export type ImageInput = Exclude<CoreInput, string> | string | Blob | ImageData | DrawableSource;

const EXPECTED_KINDS =
  'an image URL, JPEG/PNG bytes (Uint8Array, ArrayBuffer, Blob), ImageData, an HTMLImageElement, canvas, ImageBitmap, ' +
  'VideoFrame or HTMLVideoElement, raw pixels {data, width, height, channels} or a tf.Tensor3D';

/** jpeg-js's own bounds for `maxPixels`, as the Node path sets them. */
function jpegLimits(maxPixels: number): { maxResolutionInMP: number; maxMemoryUsageInMB: number } {
  return { maxResolutionInMP: Math.ceil(maxPixels / 1e6), maxMemoryUsageInMB: Math.max(2048, Math.ceil((maxPixels * 12) / 2 ** 20)) };
}

function isA<T>(name: string, v: unknown): v is T {
  const ctor = (globalThis as Record<string, unknown>)[name];
  return typeof ctor === 'function' && v instanceof (ctor as new () => unknown);
}

/** Natural size of a drawable source, or undefined when it is not one. */
function drawableSize(v: unknown): { kind: string; width: number; height: number } | undefined {
  if (isA<HTMLImageElement>('HTMLImageElement', v)) return { kind: 'HTMLImageElement', width: v.naturalWidth, height: v.naturalHeight };
  if (isA<HTMLVideoElement>('HTMLVideoElement', v)) return { kind: 'HTMLVideoElement', width: v.videoWidth, height: v.videoHeight };
  if (isA<HTMLCanvasElement>('HTMLCanvasElement', v)) return { kind: 'HTMLCanvasElement', width: v.width, height: v.height };
  if (isA<OffscreenCanvas>('OffscreenCanvas', v)) return { kind: 'OffscreenCanvas', width: v.width, height: v.height };
  if (isA<ImageBitmap>('ImageBitmap', v)) return { kind: 'ImageBitmap', width: v.width, height: v.height };
  if (isA<VideoFrame>('VideoFrame', v)) return { kind: 'VideoFrame', width: v.displayWidth, height: v.displayHeight };
  return undefined;
}

/** How an input is named in error messages. */
export function describeInput(input: unknown): string {
  if (typeof input === 'string') return `URL ${JSON.stringify(input)}`;
  const d = drawableSize(input);
  if (d) return `${d.kind} ${d.width}x${d.height}`;
  if (isA<ImageData>('ImageData', input)) return `ImageData ${input.width}x${input.height}`;
  if (isA<Blob>('Blob', input)) return `${isA<File>('File', input) ? `File ${JSON.stringify(input.name)}` : 'Blob'} of ${input.size} bytes`;
  if (input instanceof Uint8Array) return `Uint8Array of ${input.length} bytes`;
  return describeCore(input);
}

type Fail = (expected: string, found: string, cause?: unknown) => never;

/** Decode any supported input to a new float32 [H, W, 3] tensor (0..255); `InputError` otherwise. */
export async function decodeImage(input: ImageInput, index?: number, limits: DecodeLimits = {}): Promise<tf.Tensor3D> {
  const image = await decodeNetworkImage(input, index, limits);
  return image instanceof tf.Tensor ? image : imageTensor(image);
}

/**
 * `decodeImage` for a network that reads 8-bit samples: page inputs and encoded bytes come back
 * as their RGBA samples (no float copy of the full-size image), as src/io/images.ts does in Node.
 */
export async function decodeNetworkImage(input: ImageInput, index?: number, limits: DecodeLimits = {}): Promise<NetworkImage> {
  const maxPixels = limits.maxPixels ?? DEFAULT_MAX_PIXELS;
  const where = describeInput(input);
  const fail: Fail = (expected, found, cause) => {
    throw new InputError({ index, input: where, expected, found, cause });
  };
  if (typeof input !== 'string' && (typeof input !== 'object' || input === null)) return fail(EXPECTED_KINDS, describeValue(input));
  const raw = await toRaw(input, fail, maxPixels);
  // Tensors, raw pixels and unknown objects: src/io/images.ts decides, as in Node.
  if (raw === undefined) return decodeNetworkCore(input as CoreInput, index, limits);
  try {
    return await decodeNetworkCore(raw, index, limits);
  } catch (e) {
    // The core names the decoded pixels; the user gave something else.
    if (e instanceof InputError) fail(e.expected, e.found, e);
    throw e;
  }
}

/**
 * A browser input as 8-bit RGBA pixels (raw pixels and tensors are returned as they are), for
 * callers that work on pixels rather than run the network (`alignFaces`).
 */
export async function decodePixels(input: ImageInput, index?: number, limits: DecodeLimits = {}): Promise<RawImage | CoreInput> {
  const fail: Fail = (expected, found, cause) => {
    throw new InputError({ index, input: describeInput(input), expected, found, cause });
  };
  if (typeof input !== 'string' && (typeof input !== 'object' || input === null)) return fail(EXPECTED_KINDS, describeValue(input));
  return (await toRaw(input, fail, limits.maxPixels ?? DEFAULT_MAX_PIXELS)) ?? (input as CoreInput);
}

/** RGBA pixels of a browser input; undefined for the forms src/io/images.ts takes as they are. */
async function toRaw(input: ImageInput, fail: Fail, maxPixels: number): Promise<RawImage | undefined> {
  if (typeof input === 'string') return decodeBytes(await fetchBytes(input, fail), fail, maxPixels);
  if (isA<Blob>('Blob', input)) return decodeBytes(new Uint8Array(await input.arrayBuffer()), fail, maxPixels);
  if (input instanceof Uint8Array) return decodeBytes(input, fail, maxPixels);
  if (input instanceof ArrayBuffer) return decodeBytes(new Uint8Array(input), fail, maxPixels);
  if (isA<ImageData>('ImageData', input)) return { data: input.data, width: input.width, height: input.height, channels: 4 };
  const size = drawableSize(input);
  if (size) {
    if (!(size.width > 0 && size.height > 0)) {
      return fail('an image with pixels (loaded, decoded, or a video with a current frame)', `a ${size.width}x${size.height} ${size.kind}`);
    }
    checkPixels(size.width, size.height, size.kind, maxPixels, fail);
    return drawToPixels(input as DrawableSource, size.width, size.height);
  }
  return undefined;
}

async function fetchBytes(url: string, fail: Fail): Promise<Uint8Array> {
  if (url.length === 0) return fail('an image URL', 'an empty string');
  let response: Response;
  try {
    response = await fetch(url);
  } catch (e) {
    return fail('a reachable image URL', `a failed request (${e instanceof Error ? e.message : String(e)})`, e);
  }
  if (!response.ok) return fail('a reachable image URL', `HTTP ${response.status} ${response.statusText}`.trim());
  return new Uint8Array(await response.arrayBuffer());
}

function sniff(b: Uint8Array): 'JPEG' | 'PNG' | 'other' {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'JPEG';
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return 'PNG';
  return 'other';
}

function checkPixels(width: number, height: number, what: string, maxPixels: number, fail: Fail): void {
  if (width * height > maxPixels) {
    fail(`an image of at most ${maxPixels} pixels (the maxPixels option)`, `a ${width}x${height} ${what} (${width * height} pixels)`);
  }
}

async function decodeBytes(bytes: Uint8Array, fail: Fail, maxPixels: number): Promise<RawImage> {
  if (bytes.length === 0) return fail('a JPEG or PNG image', 'no data (0 bytes)');
  const format = sniff(bytes);
  if (format !== 'other') {
    // The size the header declares, before any decoder allocates it.
    const size = headerSize(bytes, format);
    if ('problem' in size) return fail('a JPEG or PNG image', `a ${format} whose header is broken (${size.problem})`);
    checkPixels(size.width, size.height, `${format} image`, maxPixels, fail);
  }
  if (format === 'JPEG') {
    const exact = decodeJpegTurbo(bytes);
    if (exact) return { data: exact.data, width: exact.width, height: exact.height, channels: 4 };
    try {
      const d = decodeJpeg(bytes, { ...jpegLimits(maxPixels), useTArray: true, formatAsRGBA: true });
      return { data: d.data, width: d.width, height: d.height, channels: 4 };
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      if (/limit exceeded/.test(msg)) return fail('a JPEG or PNG image', `a JPEG too large to decode (${msg})`, e);
      return fail('a JPEG or PNG image', 'truncated or corrupt JPEG data', e);
    }
  }
  let bitmap: ImageBitmap;
  try {
    const blob = new Blob([bytes as Uint8Array<ArrayBuffer>]);
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch (e) {
    const found = sniff(bytes) === 'PNG' ? 'truncated or corrupt PNG data' : `data that is not an image (${describeValue(bytes)})`;
    return fail('a JPEG or PNG image', found, e);
  }
  try {
    return drawToPixels(bitmap, bitmap.width, bitmap.height);
  } finally {
    bitmap.close();
  }
}

/** Draws the source 1:1 on a 2D canvas and reads its RGBA pixels back. */
function drawToPixels(source: DrawableSource, width: number, height: number): RawImage {
  const canvas = typeof OffscreenCanvas === 'function' ? new OffscreenCanvas(width, height) : Object.assign(document.createElement('canvas'), { width, height });
  const ctx = canvas.getContext('2d', { willReadFrequently: true }) as CanvasRenderingContext2D | OffscreenCanvasRenderingContext2D | null;
  if (!ctx) throw new Error('no 2D canvas context available to read pixels');
  ctx.drawImage(source as CanvasImageSource, 0, 0, width, height);
  const data = ctx.getImageData(0, 0, width, height).data;
  return { data, width, height, channels: 4 };
}
