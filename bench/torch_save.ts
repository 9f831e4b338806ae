/**
 * Writes img2pose-shaped checkpoints the way torch.save's zip format lays them out (a protocol-2
 * pickle of {'fpn_model': OrderedDict(name -> _rebuild_tensor_v2(...))} plus one zip record per
 * storage), so tests can make full-size checkpoints without torch. Storages may be deflated:
 * constant-valued weights then take a few hundred KB for the 170 MB of ResNet-18.
 */
import * as zlib from 'zlib';
import { crc32 } from '../converter/zip';

export interface SavedTensor {
  name: string;
  shape: number[];
  /** float32 values of its storage (row-major when `strides` and `offset` are left out) */
  data: Float32Array;
  /** Crafting: the storage offset and strides written to the pickle (default 0, contiguous). */
  offset?: number;
  strides?: number[];
  /** Crafting: the element count the storage reference declares (default data.length). */
  numel?: number;
  /** Legacy format only: a view (key, element offset, element count) into this storage. */
  view?: [string, number, number];
}

class PickleWriter {
  private readonly parts: number[] = [];
  op(code: string | number): this {
    this.parts.push(typeof code === 'number' ? code : code.charCodeAt(0));
    return this;
  }
  text(s: string): this {
    for (const b of Buffer.from(s, 'utf8')) this.parts.push(b);
    return this;
  }
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    this.op('X');
    this.u32(b.length);
    for (const x of b) this.parts.push(x);
    return this;
  }
  int(n: number): this {
    this.op('J');
    const b = Buffer.alloc(4);
    b.writeInt32LE(n);
    for (const x of b) this.parts.push(x);
    return this;
  }
  /** An int (BININT), or any other number as a float (BINFLOAT, big-endian). */
  number(n: number): this {
    if (Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31) return this.int(n);
    this.op('G');
    const b = Buffer.alloc(8);
    b.writeDoubleBE(n);
    for (const x of b) this.parts.push(x);
    return this;
  }
  global(module: string, name: string): this {
    return this.op('c').text(`${module}\n${name}\n`);
  }
  u32(n: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    for (const x of b) this.parts.push(x);
    return this;
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

function contiguousStrides(shape: number[]): number[] {
  const strides = new Array<number>(shape.length).fill(1);
  for (let d = shape.length - 2; d >= 0; d--) strides[d] = strides[d + 1] * shape[d + 1];
  return strides;
}

/** The data.pkl of a zip checkpoint (or the object pickle of a legacy one): storage i holds tensor i. */
export function pickleCheckpoint(tensors: readonly SavedTensor[], prefix = 'module.'): Uint8Array {
  const w = new PickleWriter();
  w.op(0x80).op(2).op('}').str('fpn_model');
  w.global('collections', 'OrderedDict').op(')').op('R');
  tensors.forEach((t, i) => {
    w.str(`${prefix}${t.name}`);
    w.global('torch._utils', '_rebuild_tensor_v2').op('(');
    w.op('(').str('storage').global('torch', 'FloatStorage').str(String(i)).str('cpu').number(t.numel ?? t.data.length);
    if (t.view) w.op('(').str(t.view[0]).number(t.view[1]).number(t.view[2]).op('t');
    w.op('t').op('Q');
    w.number(t.offset ?? 0);
    w.op('(');
    for (const n of t.shape) w.int(n);
    w.op('t').op('(');
    for (const s of t.strides ?? contiguousStrides(t.shape)) w.int(s);
    w.op('t').op(0x89);
    w.global('collections', 'OrderedDict').op(')').op('R');
    w.op('t').op('R').op('s');
  });
  w.op('s').op('.');
  return w.bytes();
}

/** One record of a zip written by `writeZip`. */
export interface ZipInput {
  name: string;
  data: Uint8Array;
  /** deflate level (0: stored) */
  level?: number;
}

/**
 * A zip archive (no zip64), deflated by zlib: fast enough to write hundreds of MB of test data.
 * Records with identical data and level share one compression.
 */
export function writeZip(records: readonly ZipInput[]): Uint8Array {
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  const cache = new Map<Uint8Array, Map<number, { body: Uint8Array; crc: number }>>();
  let offset = 0;
  for (const r of records) {
    const level = r.level ?? 0;
    let byLevel = cache.get(r.data);
    if (!byLevel) cache.set(r.data, (byLevel = new Map()));
    let packed = byLevel.get(level);
    if (!packed) {
      packed = { body: level === 0 ? r.data : zlib.deflateRawSync(r.data, { level }), crc: crc32(r.data) };
      byLevel.set(level, packed);
    }
    const name = Buffer.from(r.name, 'utf8');
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(level === 0 ? 0 : 8, 8);
    local.writeUInt32LE(packed.crc, 14);
    local.writeUInt32LE(packed.body.length, 18);
    local.writeUInt32LE(r.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    const head = Buffer.alloc(46);
    head.writeUInt32LE(0x02014b50, 0);
    head.writeUInt16LE(20, 4);
    head.writeUInt16LE(20, 6);
    head.writeUInt16LE(level === 0 ? 0 : 8, 10);
    head.writeUInt32LE(packed.crc, 16);
    head.writeUInt32LE(packed.body.length, 20);
    head.writeUInt32LE(r.data.length, 24);
    head.writeUInt16LE(name.length, 28);
    head.writeUInt32LE(offset, 42);
    parts.push(local, name, packed.body);
    central.push(head, name);
    offset += 30 + name.length + packed.body.length;
  }
  const cdSize = central.reduce((a, c) => a + c.length, 0);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(records.length, 8);
  end.writeUInt16LE(records.length, 10);
  end.writeUInt32LE(cdSize, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, ...central, end]);
}

/** A zip-format checkpoint (top folder `archive/`), storages deflated at `level`. */
export function zipCheckpoint(tensors: readonly SavedTensor[], level = 1): Uint8Array {
  return writeZip([
    { name: 'archive/data.pkl', data: pickleCheckpoint(tensors) },
    { name: 'archive/byteorder', data: Buffer.from('little') },
    ...tensors.map((t, i) => ({ name: `archive/data/${i}`, data: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), level })),
  ]);
}

/**
 * A legacy-format checkpoint (torch.save with `_use_new_zipfile_serialization=False`): magic,
 * protocol and system-info pickles, the object, the storage key list, then each storage's
 * element count and bytes.
 */
export function legacyCheckpoint(tensors: readonly SavedTensor[]): Uint8Array {
  const small = (body: (w: PickleWriter) => void): Uint8Array => {
    const w = new PickleWriter();
    w.op(0x80).op(2);
    body(w);
    return w.op('.').bytes();
  };
  const magic = Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
  const parts: Uint8Array[] = [
    magic,
    small((w) => w.int(1001)),
    small((w) => w.op('}').str('little_endian').op(0x88).op('s')),
    pickleCheckpoint(tensors, ''),
    small((w) => {
      w.op('(');
      tensors.forEach((_, i) => w.str(String(i)));
      w.op('l');
    }),
  ];
  for (const t of tensors) {
    const count = Buffer.alloc(8);
    count.writeBigInt64LE(BigInt(t.data.length));
    parts.push(count, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  return Buffer.concat(parts);
}

/** Byte offset of the (compressed) data of the zip record `name`, from its local header. */
export function zipRecordDataOffset(zip: Uint8Array, name: string): number {
  const needle = Buffer.from(name, 'utf8');
  const bytes = Buffer.from(zip.buffer, zip.byteOffset, zip.byteLength);
  const view = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  for (let at = bytes.indexOf(needle); at >= 30; at = bytes.indexOf(needle, at + 1)) {
    const header = at - 30;
    if (view.getUint32(header, true) === 0x04034b50 && view.getUint16(header + 26, true) === needle.length) {
      return at + needle.length + view.getUint16(header + 28, true);
    }
  }
  throw new Error(`no local header for ${name}`);
}
