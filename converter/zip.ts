/**
 * The zip reader of both archives the package opens: torch.save checkpoints (`ZipArchive`, over
 * the whole file in memory or an open file read record by record) and the release download (src/io/zip_members.ts, which reads only the
 * tail and the central directory from disk, then streams each member it wants). Records are
 * located from the central directory without inflating anything, and a record is inflated only
 * when asked for, into at most the size the directory declares (and the caller accepts), with its
 * CRC-32 checked. Every offset and size is checked against the file, so a crafted archive costs
 * time and memory in proportion to what is actually read, never to what a header claims.
 */
import * as fs from 'fs';
import * as zlib from 'zlib';

export class ZipFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ZipFormatError';
  }
}

export interface ZipRecord {
  name: string;
  /** 0 stored, 8 deflated */
  method: number;
  compressedSize: number;
  /** uncompressed size as the central directory declares it */
  size: number;
  crc32: number;
  localHeaderOffset: number;
}

const EOCD = 0x06054b50;
const EOCD64 = 0x06064b50;
const EOCD64_LOCATOR = 0x07064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;

const CRC_TABLE = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

/** CRC-32 (zip's) of `bytes`, continuing from `crc` (that of the bytes before them); by zlib when this Node has it. */
export function crc32(bytes: Uint8Array, crc = 0): number {
  const native = (zlib as { crc32?: (data: Uint8Array, value: number) => number }).crc32;
  if (native) return native(bytes, crc) >>> 0;
  let c = ~crc;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** The most bytes from the end of an archive that `findCentralDirectory` needs: the end record with the longest comment, and the zip64 locator and end record before it. */
export const ZIP_TAIL_BYTES = 22 + 0xffff + 20 + 56;

/** Where an archive's central directory lies, as its end record(s) say. */
export interface CentralDirectory {
  offset: number;
  size: number;
  /** records it holds */
  count: number;
}

/**
 * The central directory of an archive of `fileSize` bytes whose last `tail.length` bytes are
 * `tail` (at least the last `ZIP_TAIL_BYTES`, or the whole file), zip64 included; undefined when
 * the tail holds no end record (a file cut short, or not a zip), which callers tell in their terms.
 */
export function findCentralDirectory(tail: Uint8Array, fileSize: number): CentralDirectory | undefined {
  const view = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  const eocd = findEndOfCentralDirectory(tail, view);
  if (eocd < 0) return undefined;
  // offset in the file of tail[0]
  const base = fileSize - tail.length;
  let count = view.getUint16(eocd + 10, true);
  let size = view.getUint32(eocd + 12, true);
  let offset = view.getUint32(eocd + 16, true);
  if (count === 0xffff || size === 0xffffffff || offset === 0xffffffff) {
    const locator = eocd - 20;
    if (locator < 0 || view.getUint32(locator, true) !== EOCD64_LOCATOR) throw new ZipFormatError('zip64 end record missing');
    const at = safeU64(view, locator + 8) - base;
    if (at < 0 || at + 56 > tail.length || view.getUint32(at, true) !== EOCD64) throw new ZipFormatError('zip64 end record missing');
    count = safeU64(view, at + 32);
    size = safeU64(view, at + 40);
    offset = safeU64(view, at + 48);
  }
  if (offset + size > fileSize) throw new ZipFormatError('the central directory lies beyond the end of the file');
  // each central record takes at least 46 bytes: a count the directory cannot hold is a lie
  if (count * 46 > size) throw new ZipFormatError(`the central directory is too small for ${count} records`);
  return { offset, size, count };
}

/**
 * The `count` records of the central directory `cd` (its bytes), in their order, duplicates
 * included. Refuses encrypted records.
 */
export function readCentralDirectory(cd: Uint8Array, count: number): ZipRecord[] {
  const view = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  const records: ZipRecord[] = [];
  let pos = 0;
  const end = cd.length;
  for (let i = 0; i < count; i++) {
    if (pos + 46 > end || view.getUint32(pos, true) !== CENTRAL) throw new ZipFormatError(`central directory record ${i} is corrupt`);
    const flags = view.getUint16(pos + 8, true);
    const method = view.getUint16(pos + 10, true);
    const crc = view.getUint32(pos + 16, true);
    let compressedSize = view.getUint32(pos + 20, true);
    let size = view.getUint32(pos + 24, true);
    const nameLength = view.getUint16(pos + 28, true);
    const extraLength = view.getUint16(pos + 30, true);
    const commentLength = view.getUint16(pos + 32, true);
    let localHeaderOffset = view.getUint32(pos + 42, true);
    const next = pos + 46 + nameLength + extraLength + commentLength;
    if (next > end) throw new ZipFormatError(`central directory record ${i} is corrupt`);
    // general purpose flag bit 11: the name is UTF-8; without it, the original IBM PC code page (latin1 here)
    const name = Buffer.from(cd.buffer, cd.byteOffset + pos + 46, nameLength).toString(flags & 0x800 ? 'utf8' : 'latin1');
    // zip64: the real sizes follow in the 0x0001 extra field, in this order, when the 32-bit ones are saturated
    let extra = pos + 46 + nameLength;
    const extraEnd = extra + extraLength;
    while (extra + 4 <= extraEnd) {
      const id = view.getUint16(extra, true);
      const length = view.getUint16(extra + 2, true);
      if (id === 0x0001) {
        let f = extra + 4;
        const take = (): number => {
          if (f + 8 > extra + 4 + length) throw new ZipFormatError(`record ${name}: corrupt zip64 field`);
          const v = safeU64(view, f);
          f += 8;
          return v;
        };
        if (size === 0xffffffff) size = take();
        if (compressedSize === 0xffffffff) compressedSize = take();
        if (localHeaderOffset === 0xffffffff) localHeaderOffset = take();
      }
      extra += 4 + length;
    }
    if (flags & 1) throw new ZipFormatError(`record ${name} is encrypted`);
    records.push({ name, method, compressedSize, size, crc32: crc, localHeaderOffset });
    pos = next;
  }
  return records;
}

/**
 * Where `record`'s data starts in the archive, from its local header: `header` is the archive's
 * bytes from `record.localHeaderOffset` on (30 are enough; fewer where the file ends sooner).
 * Refuses a compression method other than stored and deflate.
 */
export function recordDataOffset(record: ZipRecord, header: Uint8Array): number {
  const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
  if (header.length < 30 || view.getUint32(0, true) !== LOCAL) throw new ZipFormatError(`record ${record.name}: local header missing`);
  if (record.method !== 0 && record.method !== 8) {
    throw new ZipFormatError(`record ${record.name} uses compression method ${record.method} (only stored and deflate are read)`);
  }
  return record.localHeaderOffset + 30 + view.getUint16(26, true) + view.getUint16(28, true);
}

/** An archive's bytes: all of them in memory, or an open file read where asked. */
export interface ZipSource {
  readonly size: number;
  /** Whether `bytes` reads from a file (into a new buffer or the one given) rather than viewing memory. */
  readonly fromFile: boolean;
  /**
   * The bytes at `offset`, `length` of them or fewer where the archive ends (as `subarray` gives):
   * a view of memory, or read into `into` when given.
   */
  bytes(offset: number, length: number, into?: Uint8Array): Uint8Array;
}

/** An archive held in memory: `bytes` are views of `buf`. */
export function memorySource(buf: Uint8Array): ZipSource {
  return { size: buf.length, fromFile: false, bytes: (offset, length) => buf.subarray(offset, offset + length) };
}

/** An archive in an open file of `size` bytes (the caller closes `fd`): `bytes` reads them there. */
export function fileSource(fd: number, size: number): ZipSource {
  return {
    size,
    fromFile: true,
    bytes(offset, length, into) {
      length = Math.max(0, Math.min(length, size - offset));
      const out = into ?? new Uint8Array(length);
      if (out.length !== length) throw new RangeError(`fileSource: ${length} bytes into a buffer of ${out.length}`);
      let done = 0;
      while (done < length) {
        const n = fs.readSync(fd, out, done, length - done, offset + done);
        if (n === 0) throw new ZipFormatError(`the file ends at byte ${offset + done}, inside a record (changed while read?)`);
        done += n;
      }
      return out;
    },
  };
}

export class ZipArchive {
  private constructor(
    private readonly source: ZipSource,
    /** by name; the first record of a name wins (a later duplicate is ignored) */
    readonly records: ReadonlyMap<string, ZipRecord>,
  ) {}

  /** Reads the central directory of `buf` (the whole archive), or of the archive a source reads. */
  static open(buf: Uint8Array | ZipSource): ZipArchive {
    const source = buf instanceof Uint8Array ? memorySource(buf) : buf;
    // From memory the whole archive is the tail; from a file, the last bytes an end record may take.
    const tailLength = source.fromFile ? Math.min(source.size, ZIP_TAIL_BYTES) : source.size;
    const dir = findCentralDirectory(source.bytes(source.size - tailLength, tailLength), source.size);
    if (dir === undefined) throw new ZipFormatError('no end of central directory record (cut short?)');
    const records = new Map<string, ZipRecord>();
    for (const record of readCentralDirectory(source.bytes(dir.offset, dir.size), dir.count)) {
      if (!records.has(record.name)) records.set(record.name, record);
    }
    return new ZipArchive(source, records);
  }

  /** Whether records are read from a file (each read is a new copy, or lands in the buffer given). */
  get fromFile(): boolean {
    return this.source.fromFile;
  }

  /**
   * The bytes of `record`: for a stored record a view of the archive in memory, or read from the
   * file into `into` (when given: exactly `record.size` bytes) or a new buffer; else inflated into
   * at most `record.size` bytes. Refuses a record larger than `maxBytes` before reading it, and
   * data whose length or CRC-32 differs from the directory's.
   */
  read(record: ZipRecord, maxBytes: number, into?: Uint8Array): Uint8Array {
    const name = record.name;
    if (record.size > maxBytes) throw new ZipFormatError(`record ${name} declares ${record.size} bytes, more than the ${maxBytes} it may hold`);
    const start = recordDataOffset(record, this.source.bytes(record.localHeaderOffset, 30));
    if (start + record.compressedSize > this.source.size) throw new ZipFormatError(`record ${name} runs past the end of the file`);
    const stored = record.method === 0 && record.compressedSize === record.size;
    const raw = this.source.bytes(start, record.compressedSize, stored ? into : undefined);
    let data: Uint8Array;
    if (record.method === 0) {
      if (record.compressedSize !== record.size) throw new ZipFormatError(`stored record ${name} has two different sizes`);
      data = raw;
    } else {
      // deflate: recordDataOffset refused every other method
      if (record.size === 0) {
        data = new Uint8Array(0);
      } else {
        try {
          data = zlib.inflateRawSync(raw, { maxOutputLength: record.size });
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          throw new ZipFormatError(
            code === 'ERR_BUFFER_TOO_LARGE'
              ? `record ${name} inflates to more than its declared ${record.size} bytes`
              : `record ${name}: invalid deflate data (${(e as Error).message})`,
          );
        }
      }
      if (data.length !== record.size) throw new ZipFormatError(`record ${name} inflates to ${data.length} bytes, its header says ${record.size}`);
    }
    const crc = crc32(data);
    if (crc !== record.crc32) {
      throw new ZipFormatError(`record ${name} is corrupt: CRC-32 ${hex(crc)}, the archive says ${hex(record.crc32)}`);
    }
    return data;
  }
}

function hex(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function safeU64(view: DataView, at: number): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ZipFormatError('a zip64 size or offset out of range');
  return Number(v);
}

/** The end record's position in `buf` (the end of an archive), -1 when there is none. */
function findEndOfCentralDirectory(buf: Uint8Array, view: DataView): number {
  // the record is 22 bytes plus a comment of at most 65535
  const lowest = Math.max(0, buf.length - 22 - 0xffff);
  for (let at = buf.length - 22; at >= lowest; at--) {
    if (view.getUint32(at, true) === EOCD && at + 22 + view.getUint16(at + 20, true) <= buf.length) return at;
  }
  return -1;
}
