/**
 * The bad and odd inputs users send, in one catalogue shared by the reliability tests, the soak
 * (bench/soak.ts) and the generator of docs/reliability.md (bench/reliability_table.ts), so the
 * document describes exactly what the tests check.
 *
 * Files are written into a folder the caller owns (a temp dir); nothing here reads the test
 * fixtures, so it works from an installed package too. In-memory inputs are made fresh on each
 * `make()` call: tensors among them belong to the caller, who disposes them (`disposeInput`).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { Jimp, JimpInstance } from 'jimp';
import type { ImageInput } from '../src/io/images';
import { Img2PoseWeights, ResNetDepth } from '../src/model/weights';
import { img2poseSpec, isModelTensor } from '../converter/spec';
import { tfjsShape } from '../converter/axis_order';
import {
  Img2PoseModelJson,
  LAYOUT_DESCRIPTION,
  MODEL_JSON,
  SHARD_BYTES,
  WEIGHTS_FORMAT,
  WEIGHTS_FORMAT_VERSION,
  shardName,
} from '../converter/weights_format';

/** One bad input: what it is, how to make it, and what the error's `found` must say. */
export interface BadInputCase {
  label: string;
  /** For files: the path (the CLI takes these); undefined for in-memory values. */
  file?: string;
  make(): ImageInput;
  /** Matches `InputError.found` (the part of the message that says what is wrong). */
  found: RegExp;
}

/** One odd but valid image: it must be detected on, with boxes inside it. */
export interface OddInputCase {
  label: string;
  file?: string;
  width: number;
  height: number;
  make(): ImageInput;
}

/** A smooth colour pattern: photo-like enough for a network, cheap to make at any size. */
export function patternImage(width: number, height: number, seed = 0): JimpInstance {
  const image = new Jimp({ width, height, color: 0x000000ff });
  const data = image.bitmap.data;
  for (let y = 0, o = 0; y < height; y++) {
    for (let x = 0; x < width; x++, o += 4) {
      data[o] = (x * 255) / Math.max(1, width - 1);
      data[o + 1] = (y * 255) / Math.max(1, height - 1);
      data[o + 2] = 128 + 100 * Math.sin((x + y + seed * 17) / 9);
    }
  }
  return image;
}

export async function pngBytes(image: JimpInstance): Promise<Buffer> {
  return image.getBuffer('image/png');
}

export async function jpegBytes(image: JimpInstance, quality = 85): Promise<Buffer> {
  return image.getBuffer('image/jpeg', { quality });
}

/** Offset of the first data byte of `type`'s chunk in a PNG (after length and type). */
function pngChunkData(png: Buffer, type: string): number {
  for (let at = 8; at + 8 <= png.length; ) {
    const length = png.readUInt32BE(at);
    if (png.toString('latin1', at + 4, at + 8) === type) return at + 8;
    at += 12 + length;
  }
  throw new Error(`no ${type} chunk`);
}

/**
 * A valid PNG header and IHDR that promise `width` x `height` RGBA pixels, followed by one tiny
 * IDAT and IEND: a decoder that trusts the header allocates width * height * 4 bytes.
 */
export async function pngClaiming(width: number, height: number): Promise<Buffer> {
  const png = Buffer.from(await pngBytes(patternImage(4, 4)));
  const ihdr = pngChunkData(png, 'IHDR');
  png.writeUInt32BE(width, ihdr);
  png.writeUInt32BE(height, ihdr + 4);
  // Fix IHDR's CRC so the header itself is well formed.
  png.writeUInt32BE(crc32(png.subarray(ihdr - 4, ihdr + 13)), ihdr + 13);
  return png;
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * Bad files, written into `dir`. Every one of them must give an `InputError` naming the file.
 * (A folder is among them: the API refuses it; the CLI expands folders instead, see docs/reliability.md.)
 */
export async function writeBadFiles(dir: string): Promise<BadInputCase[]> {
  fs.mkdirSync(dir, { recursive: true });
  const png = await pngBytes(patternImage(64, 48));
  const jpeg = await jpegBytes(patternImage(64, 48));
  const files: [string, string | Uint8Array | null, RegExp][] = [
    ['truncated.jpg', jpeg.subarray(0, Math.floor(jpeg.length * 0.6)), /truncated or corrupt JPEG data/],
    ['truncated.png', png.subarray(0, Math.floor(png.length * 0.6)), /truncated or corrupt PNG data/],
    ['corrupt.jpg', corruptJpeg(jpeg), /truncated or corrupt JPEG data/],
    ['corrupt.png', corruptPng(png), /truncated or corrupt PNG data/],
    ['signature-only.png', png.subarray(0, 8), /truncated or corrupt PNG data/],
    ['empty.jpg', new Uint8Array(0), /an empty file \(0 bytes\)/],
    ['text.jpg', 'these are not pixels\n', /data that is not an image \(starts with 74 68 65 73/],
    ['random.png', Uint8Array.from({ length: 512 }, (_, i) => (i * 37 + 11) & 255), /data that is not an image/],
    // A header promising 6.4 GB of pixels: refused from the header (the pixel limit), nothing is decoded.
    ['huge-header.png', await pngClaiming(40000, 40000), /a 40000x40000 PNG image \(1600000000 pixels\)/],
    // A header promising 81 megapixels (under the limit) over 68 bytes of pixel data: refused before decoding.
    ['short-data.png', await pngClaiming(9000, 9000), /truncated or corrupt PNG data \(pixel data cut short \(68 of 324009000 bytes\)\)/],
    ['folder.png', null, /a directory/],
  ];
  const cases: BadInputCase[] = files.map(([name, content, found]) => {
    const file = path.join(dir, name);
    if (content === null) fs.mkdirSync(file, { recursive: true });
    else fs.writeFileSync(file, content);
    return { label: name, file, make: () => file, found };
  });
  const missing = path.join(dir, 'missing.jpg');
  cases.push({ label: 'missing.jpg', file: missing, make: () => missing, found: /no such file/ });
  return cases;
}

/** A JPEG whose tables are overwritten: the markers survive, the decoder cannot. */
function corruptJpeg(jpeg: Buffer): Buffer {
  const out = Buffer.from(jpeg);
  out.fill(0x07, 20, Math.min(out.length - 2, 400));
  return out;
}

/** A PNG whose compressed pixel data is overwritten (its CRC no longer matches). */
function corruptPng(png: Buffer): Buffer {
  const out = Buffer.from(png);
  const idat = pngChunkData(out, 'IDAT');
  out.fill(0x5a, idat + 2, Math.min(idat + 40, out.length - 16));
  return out;
}

/** Bad in-memory inputs: tensors, raw pixels and bytes of the wrong shape, dtype, channels or values. */
export function badValues(): BadInputCase[] {
  const t = (shape: number[], dtype: 'float32' | 'int32' | 'bool' = 'float32', fill = 100) =>
    tf.fill(shape, dtype === 'bool' ? 1 : fill, dtype);
  /** A 4x4 RGB image of 100s with one sample set to `v`. */
  const withValue = (v: number) => () => {
    const values = new Float32Array(48).fill(100);
    values[5] = v;
    return tf.tensor3d(values, [4, 4, 3]);
  };
  const raw = (data: Uint8Array | Float32Array, width: number, height: number, channels: number): ImageInput =>
    ({ data, width, height, channels }) as ImageInput;
  const nanAt = (n: number, at: number, v: number) => {
    const a = new Float32Array(n).fill(10);
    a[at] = v;
    return a;
  };
  const cases: [string, () => unknown, RegExp][] = [
    ['tensor rank 2 [4,4]', () => t([4, 4]), /rank 2, shape \[4,4\]/],
    ['tensor rank 4 [1,4,4,3]', () => t([1, 4, 4, 3]), /rank 4, shape \[1,4,4,3\] \(squeeze the batch axis\)/],
    ['tensor CHW [3,4,5]', () => t([3, 4, 5]), /5 channels, shape \[3,4,5\]/],
    ['tensor 2 channels [4,4,2]', () => t([4, 4, 2]), /2 channels/],
    ['tensor dtype bool', () => t([4, 4, 3], 'bool'), /dtype bool/],
    ['tensor with no pixels [0,4,3]', () => t([0, 4, 3]), /shape \[0,4,3\]/],
    ['disposed tensor', () => {
      const d = t([4, 4, 3]);
      d.dispose();
      return d;
    }, /a disposed tensor/],
    ['tensor with a NaN', withValue(NaN), /1 NaN or infinite value$/],
    ['tensor with +Infinity', withValue(Infinity), /1 NaN or infinite value$/],
    ['tensor in -1..1 (normalised)', withValue(-1), /values from -1 to 100/],
    ['tensor in 0..65535 (16-bit)', withValue(65535), /values from 100 to 65535/],
    ['raw pixels, wrong length', () => raw(new Uint8Array(10), 2, 2, 3), /10 samples/],
    ['raw pixels, 2 channels', () => raw(new Uint8Array(8), 2, 2, 2), /channels 2/],
    ['raw pixels, width 0', () => raw(new Uint8Array(0), 0, 2, 3), /width 0, height 2/],
    ['raw Float32 pixels with a NaN', () => raw(nanAt(12, 4, NaN), 2, 2, 3), /1 NaN or infinite value$/],
    ['raw Float32 pixels with -Infinity', () => raw(nanAt(12, 0, -Infinity), 2, 2, 3), /1 NaN or infinite value$/],
    ['raw pixels as a plain array', () => ({ data: [1, 2, 3], width: 1, height: 1, channels: 3 }), /an array of length 3/],
    ['bytes that are not an image', () => Buffer.from('<html>not found</html>'), /data that is not an image \(starts with 3c 68 74 6d/],
    ['GIF signature, corrupt body', () => Buffer.from('GIF89a but nothing else'), /truncated or corrupt GIF data/],
    ['empty Uint8Array', () => new Uint8Array(0), /no data \(0 bytes\)/],
    ['Jimp-like bitmap of the wrong size', () => ({ bitmap: { data: new Uint8Array(7), width: 2, height: 2 } }), /of length 7/],
    ['null', () => null, /^null$/],
    ['a number', () => 42, /^42$/],
    ['an empty object', () => ({}), /^an object$/],
  ];
  return cases.map(([label, make, found]) => ({ label, make: make as () => ImageInput, found }));
}

/** Odd but valid images: extreme aspect ratios and the smallest image. */
export async function writeOddFiles(dir: string): Promise<OddInputCase[]> {
  fs.mkdirSync(dir, { recursive: true });
  const out: OddInputCase[] = [];
  for (const [name, width, height] of [
    ['1x1.png', 1, 1],
    ['4000x3.png', 4000, 3],
    ['3x4000.png', 3, 4000],
  ] as const) {
    const file = path.join(dir, name);
    fs.writeFileSync(file, await pngBytes(patternImage(width, height)));
    out.push({ label: name, file, width, height, make: () => file });
  }
  out.push({
    label: 'tensor 2x1500 int32',
    width: 1500,
    height: 2,
    make: () => tf.tidy(() => tf.range(0, 2 * 1500 * 3, 1, 'int32').mod(256).reshape([2, 1500, 3])) as tf.Tensor3D,
  });
  return out;
}

/** Frees what `make()` returned when it is a tensor (inputs are never disposed by the library). */
export function disposeInput(input: unknown): void {
  if (input instanceof tf.Tensor && !input.isDisposed) input.dispose();
}

// --- weights folders --------------------------------------------------------------------------

function manifestEntries(depth: ResNetDepth): { name: string; shape: number[]; dtype: 'float32' }[] {
  return img2poseSpec(depth)
    .filter((k) => isModelTensor(k.name))
    .map((k) => ({ name: k.name, shape: tfjsShape(k.shape), dtype: 'float32' as const }));
}

function modelJson(depth: ResNetDepth, entries: ReturnType<typeof manifestEntries>, shardBytes: number[], pose: { mean: number[]; stddev: number[] }): Img2PoseModelJson {
  return {
    format: WEIGHTS_FORMAT,
    generatedBy: 'img2pose-tfjs reliability cases',
    convertedBy: 'img2pose-tfjs reliability cases',
    img2pose: {
      formatVersion: WEIGHTS_FORMAT_VERSION,
      depth,
      layout: LAYOUT_DESCRIPTION,
      poseMean: pose.mean,
      poseStddev: pose.stddev,
      poseStatistics: 'defaults',
      source: { file: 'in-memory', sha256: '', format: 'zip', bytes: 0 },
      converterVersion: 'test',
      shardBytes,
    },
    weightsManifest: [{ paths: shardBytes.map((_, i) => shardName(i + 1, shardBytes.length)), weights: entries }],
  };
}

function shardSizes(total: number): number[] {
  const n = Math.max(1, Math.ceil(total / SHARD_BYTES));
  return Array.from({ length: n }, (_, i) => Math.min(SHARD_BYTES, total - i * SHARD_BYTES));
}

/** `weights` as a converted folder (what `img2pose convert` writes), for `--weights <dir>`. */
export async function writeWeightsFolder(weights: Img2PoseWeights, dir: string): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  const entries = manifestEntries(weights.depth);
  const parts: Uint8Array[] = [];
  for (const e of entries) {
    const t = weights.tensors.get(e.name);
    if (t === undefined) throw new Error(`writeWeightsFolder: no tensor ${e.name}`);
    const values = await t.data<'float32'>();
    parts.push(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  }
  const all = Buffer.concat(parts);
  const sizes = shardSizes(all.length);
  const json = modelJson(weights.depth, entries, sizes, { mean: Array.from(weights.poseMean), stddev: Array.from(weights.poseStddev) });
  sizes.reduce((offset, size, i) => {
    fs.writeFileSync(path.join(dir, json.weightsManifest[0].paths[i]), all.subarray(offset, offset + size));
    return offset + size;
  }, 0);
  fs.writeFileSync(path.join(dir, MODEL_JSON), JSON.stringify(json));
}

/** A folder with a real model.json and all-zero (sparse) shards of the right sizes for `depth`. */
export function writeZeroFolder(dir: string, depth: ResNetDepth, declaredDepth: ResNetDepth = depth): void {
  fs.mkdirSync(dir, { recursive: true });
  const entries = manifestEntries(depth);
  const sizes = shardSizes(entries.reduce((a, e) => a + e.shape.reduce((x, y) => x * y, 1) * 4, 0));
  const json = modelJson(declaredDepth, entries, sizes, { mean: [0, 0, 0, 0, 0, 0], stddev: [1, 1, 1, 1, 1, 1] });
  json.weightsManifest[0].paths.forEach((p, i) => {
    const f = path.join(dir, p);
    fs.writeFileSync(f, '');
    fs.truncateSync(f, sizes[i]);
  });
  fs.writeFileSync(path.join(dir, MODEL_JSON), JSON.stringify(json));
}

/** One broken weights source and what the `WeightsError` message must say. */
export interface BrokenWeightsCase {
  label: string;
  path: string;
  message: RegExp;
}

/**
 * Broken weights sources under `dir`: each must be refused by `Img2Pose.load` with a
 * `WeightsError` before any inference.
 */
export function writeBrokenWeights(dir: string): BrokenWeightsCase[] {
  const at = (name: string) => path.join(dir, name);
  const cases: BrokenWeightsCase[] = [];
  const add = (label: string, p: string, message: RegExp) => cases.push({ label, path: p, message });

  add('missing folder', at('no-such-weights'), /no such weights folder or checkpoint file/);

  fs.mkdirSync(at('empty-folder'), { recursive: true });
  add('folder without model.json', at('empty-folder'), /no model\.json in this folder/);

  writeZeroFolder(at('missing-shard'), 18);
  fs.rmSync(at(`missing-shard/${shardName(3, shardSizes(totalBytes(18)).length)}`));
  add('a missing shard', at('missing-shard'), /group1-shard3of\d+\.bin: missing weight shard/);

  writeZeroFolder(at('truncated-shard'), 18);
  const last = shardName(shardSizes(totalBytes(18)).length, shardSizes(totalBytes(18)).length);
  fs.truncateSync(at(`truncated-shard/${last}`), 1000);
  add('a truncated shard', at('truncated-shard'), /truncated weight shard: expected \d+ bytes, found 1000/);

  writeZeroFolder(at('resnet50-says-18'), 50, 18);
  add('ResNet-50 tensors, model.json says 18', at('resnet50-says-18'), /\(model\.json says ResNet-18 but its tensors are those of ResNet-50\)/);

  writeZeroFolder(at('resnet18-says-101'), 18, 101);
  add('ResNet-18 tensors, model.json says 101', at('resnet18-says-101'), /\(model\.json says ResNet-101 but its tensors are those of ResNet-18\)/);

  fs.mkdirSync(at('tfjs-layers-model'), { recursive: true });
  fs.writeFileSync(
    at('tfjs-layers-model/model.json'),
    JSON.stringify({ format: 'layers-model', modelTopology: { class_name: 'Sequential' }, weightsManifest: [] }),
  );
  add('model.json of another tfjs model', at('tfjs-layers-model'), /not an img2pose weights file \(a tfjs model, format 'layers-model'\)/);

  fs.mkdirSync(at('not-json'), { recursive: true });
  fs.writeFileSync(at('not-json/model.json'), '<html>404</html>');
  add('model.json that is not JSON', at('not-json'), /model\.json: not valid JSON/);

  fs.writeFileSync(at('notes.pth'), 'not a checkpoint\n');
  add('a .pth that is not a checkpoint', at('notes.pth'), /notes\.pth: .*not a PyTorch checkpoint/);

  const zipStart = Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00]);
  fs.writeFileSync(at('cut.pth'), Buffer.concat([zipStart, Buffer.alloc(200, 0x41)]));
  add('a truncated .pth (zip cut short)', at('cut.pth'), /cut\.pth: truncated or corrupt zip archive/);
  return cases;
}

function totalBytes(depth: ResNetDepth): number {
  return manifestEntries(depth).reduce((a, e) => a + e.shape.reduce((x, y) => x * y, 1) * 4, 0);
}
