/**
 * Hostile and careless inputs: crafted checkpoints, weights folders and image headers, and API
 * misuse, each with the message it must be refused with and a bound on its time. One catalogue
 * for the tests (__tests__/hostile.test.ts) and for the generator of docs/reliability.md's table
 * (bench/reliability_table.ts, which also measures each case's peak memory in a fresh process).
 *
 * `row` is the row of the reliability table the case belongs to: 4 hangs, 5 escapes from the
 * weights folder, 6 memory bombs, 7 silent wrong output, 8 resources, 10 option mistakes.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { convertCheckpoint } from '../converter/convert';
import { MODEL_JSON, SHARD_BYTES } from '../converter/weights_format';
import { Img2Pose, LoadOptions } from '../src/detector';
import { decodeImage } from '../src/io/images';
import { img2poseSpec, isModelTensor } from '../converter/spec';
import { SavedTensor, legacyCheckpoint, pickleCheckpoint, writeZip, zipCheckpoint } from './torch_save';
import { pngClaiming, writeZeroFolder } from './reliability_cases';

export interface HostileCase {
  row: number;
  label: string;
  /** What is done with it, as a user would: `img2pose convert`, `Img2Pose.load`, decoding an image. */
  how: string;
  /** Writes what it needs under `dir` (its own folder); returns the action, which must reject. */
  make(dir: string): Promise<() => Promise<unknown>>;
  /** The rejection's message must match. */
  message: RegExp;
  /** Seconds it may take on a slow 2-core machine. */
  seconds: number;
}

// --- helpers ------------------------------------------------------------------------------------

const zipOf = (pkl: Uint8Array): Uint8Array => writeZip([{ name: 'archive/data.pkl', data: pkl }]);

/** A legacy file around `pkl` (magic, protocol, sys info, then the object). */
function legacyOf(pkl: Uint8Array): Uint8Array {
  const header = Buffer.from('8002' + '8a0a6cfc9c46f9206aa850192e' + '80024de9032e' + '80027d2e', 'hex');
  return Buffer.concat([header, pkl]);
}

function write(dir: string, name: string, bytes: Uint8Array | string): string {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, name);
  fs.writeFileSync(file, bytes);
  return file;
}

const convert = (dir: string, checkpoint: string): Promise<unknown> =>
  convertCheckpoint({ checkpoint, out: path.join(dir, 'out'), warn: () => undefined });

/** Loads, and frees what loaded (a case that loads has failed its purpose, but must not leak). */
async function load(options: LoadOptions): Promise<unknown> {
  const det = await Img2Pose.load({ backend: 'cpu', threads: 1, ...options });
  await det.dispose();
  return det;
}

async function decode(file: string): Promise<unknown> {
  const t = await decodeImage(file);
  t.dispose();
  return t;
}

type Make = HostileCase['make'];
type Bytes = () => Uint8Array | Promise<Uint8Array>;

/** `img2pose convert` of the file `name` holding `bytes`. */
const convertOf = (name: string, bytes: Bytes): Make => async (dir) => {
  const file = write(dir, name, await bytes());
  return () => convert(dir, file);
};

/** `Img2Pose.load` of what `weights` writes (a file or folder path). */
const loadOf = (weights: (dir: string) => string | Promise<string>): Make => async (dir) => {
  const w = await weights(dir);
  return () => load({ weights: w });
};

/** Decoding the image file `name` holding `bytes`, as `detectFaces(file)` does. */
const decodeOf = (name: string, bytes: Bytes): Make => async (dir) => {
  const file = write(dir, name, await bytes());
  return () => decode(file);
};

/** `Img2Pose.load` with `options`. */
const loadWith = (options: LoadOptions): Make => async () => () => load(options);

const PROTO2 = Buffer.from([0x80, 0x02]);

/** `{'fpn_model': <value>}` around the pickle ops of `value`. */
function fpnModelPickle(value: Buffer): Buffer {
  return Buffer.concat([PROTO2, Buffer.from([0x7d, 0x8c, 9]), Buffer.from('fpn_model'), value, Buffer.from('s.')]);
}

/** A small state dict of one float tensor, with crafting fields. */
function oneTensor(extra: Partial<SavedTensor> = {}): SavedTensor[] {
  return [{ name: 'w', shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]), ...extra }];
}

/** The ResNet-18 state dict with constant tensors (deflates to almost nothing). */
function fullStateDict(): SavedTensor[] {
  return img2poseSpec(18)
    .filter((k) => isModelTensor(k.name))
    .map((k, i) => ({ name: k.name, shape: k.shape, data: new Float32Array(k.shape.reduce((a, b) => a * b, 1)).fill(((i % 7) + 1) / 8) }));
}

/** A converted folder of zeros (sparse files) for ResNet-18, edited by `edit` before writing model.json. */
function zeroFolder(dir: string, edit: (json: ModelJsonShape, dir: string) => void = () => undefined): string {
  const folder = path.join(dir, 'weights');
  writeZeroFolder(folder, 18);
  const json = JSON.parse(fs.readFileSync(path.join(folder, MODEL_JSON), 'utf8')) as ModelJsonShape;
  edit(json, folder);
  fs.writeFileSync(path.join(folder, MODEL_JSON), JSON.stringify(json));
  return folder;
}

interface ModelJsonShape {
  img2pose: { shardBytes?: number[] };
  weightsManifest: { paths: string[] }[];
}

// --- the catalogue ------------------------------------------------------------------------------

export function hostileCases(): HostileCase[] {
  const cases: HostileCase[] = [];
  const add = (c: HostileCase): void => void cases.push(c);
  const CONVERT = 'img2pose convert';
  const LOAD = 'Img2Pose.load';
  const DECODE = 'detectFaces(file)';

  // 4: hangs -------------------------------------------------------------------------------------
  const long4 = Buffer.concat([PROTO2, Buffer.from([0x8b, 0, 0, 4, 0]), Buffer.alloc(262144, 0x7f), Buffer.from('.')]);
  add({ row: 4, label: 'LONG4 integer of 256 KB (zip)', how: CONVERT, make: convertOf('long4.pth', () => zipOf(long4)), message: /an integer of 262144 bytes \(more than 256\)/, seconds: 2 });
  add({ row: 4, label: 'LONG4 integer of 256 KB (legacy)', how: LOAD, make: loadOf((d) => write(d, 'long4.pth', legacyOf(long4))), message: /an integer of 262144 bytes/, seconds: 2 });
  const longText = Buffer.concat([PROTO2, Buffer.from([0x4c]), Buffer.alloc(262144, 0x37), Buffer.from('\n.')]);
  add({ row: 4, label: 'LONG text integer of 256 K digits', how: CONVERT, make: convertOf('long.pth', () => zipOf(longText)), message: /an integer of 262144 digits/, seconds: 2 });
  const marks = Buffer.concat([PROTO2, Buffer.alloc(200_000, 0x28), Buffer.from('N.')]);
  add({ row: 4, label: '200,000 nested MARKs', how: CONVERT, make: convertOf('marks.pth', () => zipOf(marks)), message: /nested more than 10000 levels deep/, seconds: 3 });
  const lists = Buffer.concat([Buffer.alloc(200_000, 0x5d), Buffer.alloc(199_999, 0x61)]);
  add({ row: 4, label: "200,000 nested lists as 'fpn_model'", how: CONVERT, make: convertOf('lists.pth', () => zipOf(fpnModelPickle(lists))), message: /'fpn_model' is a list, expected a state dict/, seconds: 5 });
  // x(x(x(...x()...))): each call's result is the next one's only argument
  const reduce = Buffer.concat([
    ...Array.from({ length: 200_000 }, () => Buffer.from('cbuiltins\nx\n')),
    Buffer.from(')'),
    Buffer.alloc(2 * 199_999).fill(Buffer.from([0x52, 0x85])),
    Buffer.from([0x52]),
  ]);
  add({ row: 4, label: '200,000 nested REDUCE calls', how: CONVERT, make: convertOf('reduce.pth', () => zipOf(fpnModelPickle(reduce))), message: /'fpn_model' is a builtins\.x object, expected a state dict/, seconds: 8 });
  const appends = Buffer.concat([Buffer.from([0x5d, 0x28]), Buffer.alloc(1_000_000, 0x4e), Buffer.from('e')]);
  add({ row: 4, label: 'a list of 1,000,000 items (APPENDS)', how: CONVERT, make: convertOf('appends.pth', () => zipOf(fpnModelPickle(appends))), message: /'fpn_model' is a list, expected a state dict/, seconds: 5 });

  // 5: escapes from the weights folder -----------------------------------------------------------
  const shardPath = (label: string, p: (dir: string) => string, message: RegExp): void =>
    add({ row: 5, label, how: LOAD, make: loadOf((d) => zeroFolder(d, (j, folder) => (j.weightsManifest[0].paths[0] = p(folder)))), message, seconds: 3 });
  shardPath("shard path '../secret.bin'", (folder) => {
    write(path.dirname(folder), 'secret.bin', Buffer.alloc(SHARD_BYTES));
    return '../secret.bin';
  }, /shard path "\.\.\/secret\.bin" is a path with '\.\.'/);
  shardPath('shard path /proc/self/environ', () => '/proc/self/environ', /shard path "\/proc\/self\/environ" is an absolute path/);
  shardPath('shard path /dev/zero', () => '/dev/zero', /shard path "\/dev\/zero" is an absolute path/);
  shardPath('a shard that is a symlink to /dev/zero', (folder) => {
    fs.symlinkSync('/dev/zero', path.join(folder, 'zero.bin'));
    return 'zero.bin';
  }, /shard path "zero\.bin" is a symbolic link out of the weights folder/);
  shardPath('a shard that is a symlink to a file outside', (folder) => {
    const outside = write(path.dirname(folder), 'outside.bin', Buffer.alloc(SHARD_BYTES));
    fs.symlinkSync(outside, path.join(folder, 'link.bin'));
    return 'link.bin';
  }, /shard path "link\.bin" is a symbolic link out of the weights folder/);
  shardPath('a shard that is a FIFO', (folder) => {
    execFileSync('mkfifo', [path.join(folder, 'fifo.bin')]);
    return 'fifo.bin';
  }, /fifo\.bin: a weight shard that is not a regular file/);
  add({ row: 5, label: 'model.json that is a FIFO', how: LOAD, make: loadOf((d) => {
    fs.mkdirSync(path.join(d, 'w'), { recursive: true });
    execFileSync('mkfifo', [path.join(d, 'w', MODEL_JSON)]);
    return path.join(d, 'w');
  }), message: /model\.json: not a regular file/, seconds: 2 });
  add({ row: 5, label: '--weights /dev/zero', how: LOAD, make: loadWith({ weights: '/dev/zero' }), message: /\/dev\/zero: not a regular file/, seconds: 2 });

  // 6: memory bombs -------------------------------------------------------------------------------
  add({ row: 6, label: 'PNG header declaring 20000x20000', how: DECODE, make: decodeOf('big.png', () => pngClaiming(20000, 20000)), message: /a 20000x20000 PNG image \(400000000 pixels\)/, seconds: 1 });
  add({ row: 6, label: 'PNG header declaring 60000x60000', how: DECODE, make: decodeOf('big.png', () => pngClaiming(60000, 60000)), message: /a 60000x60000 PNG image/, seconds: 1 });
  add({ row: 6, label: 'PNG declaring 9000x9000 over 68 bytes of pixels', how: DECODE, make: decodeOf('short.png', () => pngClaiming(9000, 9000)), message: /pixel data cut short \(68 of 324009000 bytes\)/, seconds: 3 });
  add({ row: 6, label: 'TIFF of 186 bytes declaring 60000x60000', how: DECODE, make: decodeOf('big.tif', () => tiffClaiming(60000, 60000)), message: /a 60000x60000 TIFF image/, seconds: 1 });
  add({ row: 6, label: 'GIF of 35 bytes declaring 65535x65535', how: DECODE, make: decodeOf('big.gif', () => gifClaiming(65535, 65535)), message: /a 65535x65535 GIF image/, seconds: 1 });
  add({ row: 6, label: 'GIF of 35 bytes declaring 2048x2048 (under the limit, data cut short)', how: DECODE, make: decodeOf('short.gif', () => gifClaiming(2048, 2048)), message: /truncated or corrupt GIF data/, seconds: 5 });
  add({ row: 6, label: 'BMP header declaring 3000x3000 over 6 bytes', how: DECODE, make: decodeOf('short.bmp', () => bmpClaiming(3000, 3000)), message: /truncated or corrupt BMP data \(pixel data cut short/, seconds: 1 });
  add({ row: 6, label: 'zip whose data.pkl inflates to 80 MB', how: CONVERT, make: convertOf('bomb.pth', () => writeZip([{ name: 'archive/data.pkl', data: new Uint8Array(80 * 1024 * 1024), level: 9 }])), message: /record archive\/data\.pkl declares 83886080 bytes, more than the 67108864 it may hold/, seconds: 10 });
  add({ row: 6, label: 'zip with 1,000 data.pkl records of 1 MB each', how: CONVERT, make: convertOf('many.pth', () => {
    const filler = new Uint8Array(1024 * 1024);
    return writeZip([
      ...Array.from({ length: 1000 }, (_, i) => ({ name: `x${i}/y/data.pkl`, data: filler, level: 9 })),
      { name: 'archive/data.pkl', data: pickleCheckpoint(oneTensor()) },
    ]);
  }), message: /zip archive lacks the storage record archive\/data\/0/, seconds: 20 });
  add({ row: 6, label: 'a storage declaring 1e9 elements for a 6-element tensor', how: CONVERT, make: convertOf('huge.pth', () => zipCheckpoint(oneTensor({ numel: 1e9 }))), message: /storage 0 declares 1000000000 elements but its tensors use 6/, seconds: 2 });

  // 7: silent wrong output ----------------------------------------------------------------------
  add({ row: 7, label: 'negative storage offset', how: CONVERT, make: convertOf('neg.pth', () => zipCheckpoint(oneTensor({ offset: -3 }))), message: /a tensor with storage offset -3/, seconds: 1 });
  add({ row: 7, label: 'fractional storage offset', how: CONVERT, make: convertOf('frac.pth', () => zipCheckpoint(oneTensor({ offset: 0.5 }))), message: /a tensor with storage offset 0\.5/, seconds: 1 });
  add({ row: 7, label: 'legacy storage view past its storage', how: CONVERT, make: convertOf('view.pth', () => legacyCheckpoint(oneTensor({ view: ['v', 4, 6] }))), message: /storage view v covers elements 4\.\.10 of storage 0, which has 6/, seconds: 1 });
  add({ row: 7, label: 'a tensor reading past its storage (strides)', how: CONVERT, make: convertOf('stride.pth', () => zipCheckpoint(oneTensor({ strides: [3, 2] }))), message: /tensor 'module\.w' reads element 7 of a storage with 6 elements/, seconds: 1 });
  add({ row: 7, label: 'a full checkpoint whose last storage fails its CRC-32', how: CONVERT, make: convertOf('crc.pth', () => {
    const tensors = fullStateDict();
    const zip = zipCheckpoint(tensors);
    zip[zipCentralRecord(zip, `archive/data/${tensors.length - 1}`) + 16] ^= 0x01; // the CRC the directory records
    return zip;
    // The whole 170 MB checkpoint is read and checked before the last record fails: linear, but
    // tens of seconds on a 2-core machine shared with other suites (the bound is for a hang).
  }), message: /record archive\/data\/139 is corrupt: CRC-32 [0-9a-f]{8}, the archive says [0-9a-f]{8}/, seconds: 60 });
  add({ row: 7, label: 'NaN in a weight of a full checkpoint', how: CONVERT, make: convertOf('nan.pth', () => {
    const tensors = fullStateDict();
    tensors[60].data[123] = NaN;
    return zipCheckpoint(tensors);
  }), message: /tensor '[\w.]+' holds NaN at element \d+ \(NaN or infinite weights/, seconds: 20 });
  add({ row: 7, label: '+Infinity in a weight of a converted folder', how: LOAD, make: loadOf((d) => {
    const folder = zeroFolder(d);
    const fd = fs.openSync(path.join(folder, 'group1-shard5of41.bin'), 'r+');
    fs.writeSync(fd, Buffer.from(new Float32Array([Infinity]).buffer), 0, 4, 4000);
    fs.closeSync(fd);
    return folder;
  }), message: /model\.json: weight [\w.]+ holds a NaN or infinite value \(element \d+\)/, seconds: 10 });
  add({ row: 7, label: 'shards 4 bytes short and 4 long, sizes not recorded', how: LOAD, make: loadOf((d) => {
    const folder = zeroFolder(d, (j) => delete j.img2pose.shardBytes);
    fs.truncateSync(path.join(folder, 'group1-shard1of41.bin'), SHARD_BYTES - 4);
    fs.truncateSync(path.join(folder, 'group1-shard2of41.bin'), SHARD_BYTES + 4);
    return folder;
  }), message: /group1-shard1of41\.bin: weight shard of 4194300 bytes: without img2pose\.shardBytes, every shard but the last must hold 4194304/, seconds: 3 });

  // 8, 10: resources and option mistakes -------------------------------------------------------
  add({ row: 8, label: 'threads: 1000', how: LOAD, make: loadWith({ weights: '/nonexistent', threads: 1000 }), message: /Option threads: expected at most \d+/, seconds: 1 });
  add({ row: 10, label: "a typo: 'scoreTreshold'", how: LOAD, make: loadWith({ weights: '/nonexistent', scoreTreshold: 0.3 } as LoadOptions), message: /Unknown Img2Pose\.load option 'scoreTreshold' \(did you mean 'scoreThreshold'\?\)/, seconds: 1 });
  add({ row: 10, label: 'minSize 800 > maxSize 600 (API)', how: LOAD, make: loadWith({ weights: '/nonexistent', minSize: 800, maxSize: 600 }), message: /Option minSize: expected at most maxSize \(600\), found 800/, seconds: 1 });
  return cases;
}

/** Offset of the central directory record of `name` in a zip. */
function zipCentralRecord(zip: Uint8Array, name: string): number {
  const bytes = Buffer.from(zip.buffer, zip.byteOffset, zip.byteLength);
  const needle = Buffer.from(name, 'utf8');
  for (let at = bytes.indexOf(needle); at >= 46; at = bytes.indexOf(needle, at + 1)) {
    if (bytes.readUInt32LE(at - 46) === 0x02014b50 && bytes.readUInt16LE(at - 46 + 28) === needle.length) return at - 46;
  }
  throw new Error(`no central record for ${name}`);
}

// --- crafted image headers ------------------------------------------------------------------------

/** A 186-byte little-endian TIFF whose one page declares `width` x `height`, with no pixel data. */
export function tiffClaiming(width: number, height: number): Buffer {
  const b = Buffer.alloc(186);
  b.write('II*\0', 0, 'latin1');
  b.writeUInt32LE(8, 4);
  b.writeUInt16LE(2, 8);
  [[256, width], [257, height]].forEach(([tag, value], i) => {
    const e = 10 + i * 12;
    b.writeUInt16LE(tag, e);
    b.writeUInt16LE(4, e + 2); // LONG
    b.writeUInt32LE(1, e + 4);
    b.writeUInt32LE(value, e + 8);
  });
  return b;
}

/** A 35-byte GIF whose screen and frame declare `width` x `height`, with a few bytes of pixels. */
export function gifClaiming(width: number, height: number): Buffer {
  const b = Buffer.alloc(35);
  b.write('GIF89a', 0, 'latin1');
  b.writeUInt16LE(width, 6);
  b.writeUInt16LE(height, 8);
  Buffer.from([0x2c, 0, 0, 0, 0]).copy(b, 13);
  b.writeUInt16LE(width, 18);
  b.writeUInt16LE(height, 20);
  Buffer.from([0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b]).copy(b, 22);
  return b;
}

/** A BMP header declaring `width` x `height` at 24 bits, with 6 bytes of pixels. */
export function bmpClaiming(width: number, height: number): Buffer {
  const b = Buffer.alloc(60);
  b.write('BM', 0, 'latin1');
  b.writeUInt32LE(60, 2);
  b.writeUInt32LE(54, 10);
  b.writeUInt32LE(40, 14);
  b.writeInt32LE(width, 18);
  b.writeInt32LE(height, 22);
  b.writeUInt16LE(1, 26);
  b.writeUInt16LE(24, 28);
  return b;
}
