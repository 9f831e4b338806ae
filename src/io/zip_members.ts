/**
 * Just enough of the zip format to take named members out of a release archive on disk: the
 * central directory is read from the end of the file (so a truncated download, which has none,
 * is told apart from a zip lacking a member), then each wanted member is streamed through
 * zlib's raw inflate into its own file with its CRC-32 and size checked. Memory stays that of
 * the stream buffers whatever the archive's size.
 */
import { promises as fsp, createReadStream, createWriteStream } from 'fs';
import { pipeline } from 'stream/promises';
import { Transform } from 'stream';
import * as zlib from 'zlib';

export class ZipProblem extends Error {}

export interface ZipEntry {
  name: string;
  /** 0 stored, 8 deflated */
  method: number;
  crc32: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

const EOCD_SIGNATURE = 0x06054b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;
const EOCD_MIN = 22;
const MAX_COMMENT = 0xffff;

/** The archive's members, from its central directory. */
export async function listZip(file: string): Promise<ZipEntry[]> {
  const fh = await fsp.open(file, 'r');
  try {
    const { size } = await fh.stat();
    if (size < EOCD_MIN) throw new ZipProblem(`${size} bytes: too short to be a zip archive`);
    const tailLength = Math.min(size, EOCD_MIN + MAX_COMMENT);
    const tail = Buffer.alloc(tailLength);
    await fh.read(tail, 0, tailLength, size - tailLength);
    let eocd = -1;
    for (let i = tailLength - EOCD_MIN; i >= 0; i--) {
      if (tail.readUInt32LE(i) === EOCD_SIGNATURE) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) {
      const head = Buffer.alloc(4);
      await fh.read(head, 0, 4, 0);
      throw new ZipProblem(
        head.readUInt32LE(0) === LOCAL_SIGNATURE
          ? 'a zip archive without its end (truncated download)'
          : 'not a zip archive (no zip signature at its start or end)',
      );
    }
    const count = tail.readUInt16LE(eocd + 10);
    const cdSize = tail.readUInt32LE(eocd + 12);
    const cdOffset = tail.readUInt32LE(eocd + 16);
    if (count === 0xffff || cdOffset === 0xffffffff || cdSize === 0xffffffff) throw new ZipProblem('a zip64 archive, which is not supported');
    if (cdOffset + cdSize > size - tailLength + eocd) throw new ZipProblem('a zip archive whose central directory lies past its end (truncated or corrupt)');
    const cd = Buffer.alloc(cdSize);
    await fh.read(cd, 0, cdSize, cdOffset);
    const entries: ZipEntry[] = [];
    let p = 0;
    for (let n = 0; n < count; n++) {
      if (p + 46 > cd.length || cd.readUInt32LE(p) !== CENTRAL_SIGNATURE) throw new ZipProblem('a zip archive with a corrupt central directory');
      const flags = cd.readUInt16LE(p + 8);
      const nameLength = cd.readUInt16LE(p + 28);
      const entry: ZipEntry = {
        name: cd.toString(flags & 0x800 ? 'utf8' : 'latin1', p + 46, p + 46 + nameLength),
        method: cd.readUInt16LE(p + 10),
        crc32: cd.readUInt32LE(p + 16),
        compressedSize: cd.readUInt32LE(p + 20),
        size: cd.readUInt32LE(p + 24),
        localHeaderOffset: cd.readUInt32LE(p + 42),
      };
      if (flags & 1) throw new ZipProblem(`member ${entry.name} is encrypted`);
      entries.push(entry);
      p += 46 + nameLength + cd.readUInt16LE(p + 30) + cd.readUInt16LE(p + 32);
    }
    return entries;
  } finally {
    await fh.close();
  }
}

let crcTable: Uint32Array | undefined;

/** CRC-32 (zip's), continuing from `crc`; zlib's native one where this Node has it. */
function crc32(data: Uint8Array, crc: number): number {
  const native = (zlib as { crc32?: (d: Uint8Array, v: number) => number }).crc32;
  if (native) return native(data, crc);
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** Writes member `entry` of `file` to `dest`, checking its size and CRC-32. */
export async function extractZipEntry(file: string, entry: ZipEntry, dest: string): Promise<void> {
  if (entry.method !== 0 && entry.method !== 8) throw new ZipProblem(`member ${entry.name} uses compression method ${entry.method} (only stored and deflated are read)`);
  const header = Buffer.alloc(30);
  const fh = await fsp.open(file, 'r');
  try {
    await fh.read(header, 0, 30, entry.localHeaderOffset);
  } finally {
    await fh.close();
  }
  if (header.readUInt32LE(0) !== LOCAL_SIGNATURE) throw new ZipProblem(`member ${entry.name}: corrupt local header`);
  const start = entry.localHeaderOffset + 30 + header.readUInt16LE(26) + header.readUInt16LE(28);
  let crc = 0;
  let size = 0;
  const check = new Transform({
    transform(chunk: Buffer, _enc, done) {
      crc = crc32(chunk, crc);
      size += chunk.length;
      done(null, chunk);
    },
  });
  const source = (): NodeJS.ReadableStream => createReadStream(file, { start, end: start + entry.compressedSize - 1 });
  try {
    if (entry.compressedSize === 0) {
      await fsp.writeFile(dest, new Uint8Array(0));
    } else if (entry.method === 0) {
      await pipeline(source(), check, createWriteStream(dest));
    } else {
      await pipeline(source(), zlib.createInflateRaw(), check, createWriteStream(dest));
    }
  } catch (e) {
    throw new ZipProblem(`member ${entry.name} cannot be read (${(e as Error).message})`);
  }
  if (size !== entry.size || crc !== entry.crc32) {
    throw new ZipProblem(`member ${entry.name} is corrupt (${size} bytes, CRC-32 ${crc.toString(16)}; expected ${entry.size} bytes, CRC-32 ${entry.crc32.toString(16)})`);
  }
}
