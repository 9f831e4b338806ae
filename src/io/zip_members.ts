/**
 * Named members out of a release archive on disk, with the checkpoints' zip reader
 * (converter/zip.ts): only the file's tail and central directory are read into memory (so a
 * truncated download, which has no directory, is told apart from a zip lacking a member), then
 * each wanted member is streamed through zlib's raw inflate into its own file with its CRC-32
 * and size checked. Memory stays that of the stream buffers whatever the archive's size.
 */
import { promises as fsp, createReadStream, createWriteStream } from 'fs';
import { pipeline } from 'stream/promises';
import { Transform } from 'stream';
import * as zlib from 'zlib';
import {
  ZIP_TAIL_BYTES,
  ZipFormatError,
  ZipRecord,
  crc32,
  findCentralDirectory,
  readCentralDirectory,
  recordDataOffset,
} from '../../converter/zip';

const LOCAL_SIGNATURE = 0x04034b50;
/** The smallest zip: an end record alone. */
const EOCD_MIN = 22;

/** The archive's members, from its central directory. */
export async function listZip(file: string): Promise<ZipRecord[]> {
  const fh = await fsp.open(file, 'r');
  try {
    const { size } = await fh.stat();
    if (size < EOCD_MIN) throw new ZipFormatError(`${size} bytes: too short to be a zip archive`);
    const tailLength = Math.min(size, ZIP_TAIL_BYTES);
    const tail = Buffer.alloc(tailLength);
    await fh.read(tail, 0, tailLength, size - tailLength);
    const dir = findCentralDirectory(tail, size);
    if (dir === undefined) {
      const head = Buffer.alloc(4);
      await fh.read(head, 0, 4, 0);
      throw new ZipFormatError(
        head.readUInt32LE(0) === LOCAL_SIGNATURE
          ? 'a zip archive without its end (truncated download)'
          : 'not a zip archive (no zip signature at its start or end)',
      );
    }
    const cd = Buffer.alloc(dir.size);
    await fh.read(cd, 0, dir.size, dir.offset);
    return readCentralDirectory(cd, dir.count);
  } finally {
    await fh.close();
  }
}

/** Writes member `record` of `file` to `dest`, checking its size and CRC-32. */
export async function extractZipEntry(file: string, record: ZipRecord, dest: string): Promise<void> {
  const header = Buffer.alloc(30);
  const fh = await fsp.open(file, 'r');
  let headerBytes: number;
  try {
    ({ bytesRead: headerBytes } = await fh.read(header, 0, 30, record.localHeaderOffset));
  } finally {
    await fh.close();
  }
  const start = recordDataOffset(record, header.subarray(0, headerBytes));
  let crc = 0;
  let size = 0;
  const check = new Transform({
    transform(chunk: Buffer, _enc, done) {
      crc = crc32(chunk, crc);
      size += chunk.length;
      done(null, chunk);
    },
  });
  const source = (): NodeJS.ReadableStream => createReadStream(file, { start, end: start + record.compressedSize - 1 });
  try {
    if (record.compressedSize === 0) {
      await fsp.writeFile(dest, new Uint8Array(0));
    } else if (record.method === 0) {
      await pipeline(source(), check, createWriteStream(dest));
    } else {
      await pipeline(source(), zlib.createInflateRaw(), check, createWriteStream(dest));
    }
  } catch (e) {
    throw new ZipFormatError(`member ${record.name} cannot be read (${(e as Error).message})`);
  }
  if (size !== record.size || crc !== record.crc32) {
    throw new ZipFormatError(
      `member ${record.name} is corrupt (${size} bytes, CRC-32 ${crc.toString(16)}; expected ${record.size} bytes, CRC-32 ${record.crc32.toString(16)})`,
    );
  }
}
