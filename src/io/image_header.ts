/**
 * Image sizes read from the file's header, before any decoder allocates pixels: a few bytes can
 * declare billions of pixels (a "decompression bomb"), and the decoders allocate what the header
 * says. Every reader here walks the header structure once, so its cost is linear in the file.
 */

export type ImageFormat = 'JPEG' | 'PNG' | 'BMP' | 'GIF' | 'TIFF';

/** What a header declares: the largest frame (GIF, TIFF pages included). */
export type HeaderSize = { width: number; height: number } | { problem: string };

/** PIL's `Image.MAX_IMAGE_PIXELS` error bound (2 x 89478485): above it PIL refuses to open an image. */
export const DEFAULT_MAX_PIXELS = 178_956_970;

export function headerSize(bytes: Uint8Array, format: ImageFormat): HeaderSize {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (format) {
    case 'PNG':
      return pngSize(bytes, view);
    case 'JPEG':
      return jpegSize(bytes, view);
    case 'BMP':
      return bmpSize(bytes, view);
    case 'GIF':
      return gifSize(bytes, view);
    case 'TIFF':
      return tiffSize(bytes, view);
  }
}

const TRUNCATED = { problem: 'a header cut short' };

function pngSize(bytes: Uint8Array, view: DataView): HeaderSize {
  // signature (8), IHDR length and type (8), then width, height, bit depth, colour type, ..., interlace
  if (bytes.length < 29) return TRUNCATED;
  if (view.getUint32(12) !== 0x49484452) return { problem: 'no IHDR chunk first' };
  const width = view.getUint32(16);
  const height = view.getUint32(20);
  const needed = pngDataBytes(width, height, bytes[24], bytes[25], bytes[28]);
  if (needed === undefined) return { problem: 'an unknown bit depth or colour type' };
  return { width, height };
}

const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/**
 * Bytes the inflated IDAT stream of a PNG must hold: each row of each (Adam7) pass, with its
 * filter byte. Undefined for a depth or colour type PNG does not define.
 */
export function pngDataBytes(width: number, height: number, bitDepth: number, colourType: number, interlace: number): number | undefined {
  const channels = PNG_CHANNELS[colourType];
  if (channels === undefined || ![1, 2, 4, 8, 16].includes(bitDepth)) return undefined;
  const rowBytes = (w: number): number => (w === 0 ? 0 : 1 + Math.ceil((w * channels * bitDepth) / 8));
  if (interlace !== 1) return height * rowBytes(width);
  // Adam7: (x0, y0, dx, dy) of the seven passes
  const passes = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]];
  let total = 0;
  for (const [x0, y0, dx, dy] of passes) {
    const w = Math.ceil(Math.max(0, width - x0) / dx);
    const h = Math.ceil(Math.max(0, height - y0) / dy);
    total += h * rowBytes(w);
  }
  return total;
}

/**
 * Whether the PNG's compressed pixel data inflates to at least what its header needs (a file
 * cut short or crafted to claim more pixels than it holds decodes to zeros otherwise). The
 * stream is inflated in pieces that are counted and dropped: memory stays small.
 */
export function pngDataProblem(bytes: Uint8Array, inflate: (idat: Uint8Array[], onBytes: (n: number) => void) => void): string | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const needed = pngDataBytes(view.getUint32(16), view.getUint32(20), bytes[24], bytes[25], bytes[28]) ?? 0;
  const idat: Uint8Array[] = [];
  for (let at = 8; at + 8 <= bytes.length; ) {
    const length = view.getUint32(at);
    const type = view.getUint32(at + 4);
    if (at + 12 + length > bytes.length) break;
    if (type === 0x49444154) idat.push(bytes.subarray(at + 8, at + 8 + length));
    if (type === 0x49454e44) break; // IEND
    at += 12 + length;
  }
  let got = 0;
  try {
    inflate(idat, (n) => {
      got += n;
    });
  } catch {
    return undefined; // a corrupt stream: the decoder itself refuses it
  }
  return got < needed ? `pixel data cut short (${got} of ${needed} bytes)` : undefined;
}

/** Start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size. */
const JPEG_SOF = new Set([0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf]);

function jpegSize(bytes: Uint8Array, view: DataView): HeaderSize {
  let at = 2;
  while (at + 4 <= bytes.length) {
    if (bytes[at] !== 0xff) return { problem: 'a corrupt marker sequence' };
    const marker = bytes[at + 1];
    if (marker === 0xff) {
      at++; // fill byte
      continue;
    }
    if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      at += 2; // markers without a length
      continue;
    }
    if (marker === 0xda || marker === 0xd9) return { problem: 'no frame header before the image data' };
    const length = view.getUint16(at + 2);
    if (JPEG_SOF.has(marker)) {
      if (at + 9 > bytes.length) return TRUNCATED;
      return { width: view.getUint16(at + 7), height: view.getUint16(at + 5) };
    }
    if (length < 2) return { problem: 'a corrupt marker length' };
    at += 2 + length;
  }
  return TRUNCATED;
}

function bmpSize(bytes: Uint8Array, view: DataView): HeaderSize {
  if (bytes.length < 26) return TRUNCATED;
  const dataOffset = view.getUint32(10, true);
  const headerBytes = view.getUint32(14, true);
  if (headerBytes === 12) return { width: view.getUint16(18, true), height: view.getUint16(20, true) };
  // a negative height means rows are stored top-down
  const width = Math.abs(view.getInt32(18, true));
  const height = Math.abs(view.getInt32(22, true));
  if (bytes.length >= 34) {
    const bitsPerPixel = view.getUint16(28, true);
    const compression = view.getUint32(30, true);
    // uncompressed rows are padded to 4 bytes: the file must hold them all
    const rowBytes = Math.ceil((bitsPerPixel * width) / 32) * 4;
    if (compression === 0 && bitsPerPixel > 0 && dataOffset + rowBytes * height > bytes.length) {
      return { problem: `pixel data cut short (${bytes.length} bytes, the header needs ${dataOffset + rowBytes * height})` };
    }
  }
  return { width, height };
}

/**
 * GIF: the logical screen, and every frame's own size (a frame may be larger than the screen).
 * The walk also finds a file that ends before its first frame's data does.
 */
function gifSize(bytes: Uint8Array, view: DataView): HeaderSize {
  if (bytes.length < 13) return TRUNCATED;
  let width = view.getUint16(6, true);
  let height = view.getUint16(8, true);
  let at = 13;
  const flags = bytes[10];
  if (flags & 0x80) at += 3 << ((flags & 7) + 1); // global colour table
  let frames = 0;
  /** Skips data sub-blocks; returns the offset after the terminator, or -1 when the file ends first. */
  const skipBlocks = (from: number): number => {
    let p = from;
    while (p < bytes.length) {
      const n = bytes[p];
      if (n === 0) return p + 1;
      p += 1 + n;
    }
    return -1;
  };
  for (;;) {
    if (at >= bytes.length) return frames > 0 ? { width, height } : { problem: 'no complete frame (the file ends early)' };
    const block = bytes[at];
    if (block === 0x3b) break; // trailer
    if (block === 0x21) {
      // extension: label, then sub-blocks
      at = skipBlocks(at + 2);
      if (at < 0) return frames > 0 ? { width, height } : { problem: 'no complete frame (the file ends early)' };
    } else if (block === 0x2c) {
      if (at + 10 > bytes.length) return frames > 0 ? { width, height } : TRUNCATED;
      const w = view.getUint16(at + 5, true);
      const h = view.getUint16(at + 7, true);
      if (w * h > width * height) [width, height] = [w, h];
      const local = bytes[at + 9];
      at += 10;
      if (local & 0x80) at += 3 << ((local & 7) + 1);
      at = skipBlocks(at + 1); // LZW minimum code size, then the image data
      if (at < 0) return frames > 0 ? { width, height } : { problem: 'no complete frame (the file ends early)' };
      frames++;
    } else {
      return frames > 0 ? { width, height } : { problem: `an unknown block 0x${block.toString(16)}` };
    }
  }
  return frames > 0 ? { width, height } : { problem: 'no frame' };
}

/** Bytes per value of the TIFF field types (6.0 and BigTIFF's 8-byte ones). */
const TIFF_TYPE_BYTES: Record<number, number> = { 1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8 };

/** TIFF: every page (IFD) of the chain; the largest counts. */
function tiffSize(bytes: Uint8Array, view: DataView): HeaderSize {
  if (bytes.length < 8) return TRUNCATED;
  const le = bytes[0] === 0x49;
  const u16 = (p: number): number => view.getUint16(p, le);
  const u32 = (p: number): number => view.getUint32(p, le);
  let ifd = u32(4);
  let best: { width: number; height: number } | undefined;
  const seen = new Set<number>();
  while (ifd !== 0) {
    if (seen.has(ifd) || seen.size >= 1024) return { problem: 'a looping or endless chain of pages' };
    seen.add(ifd);
    if (ifd + 2 > bytes.length) return best ?? TRUNCATED;
    const count = u16(ifd);
    if (ifd + 2 + count * 12 + 4 > bytes.length) return best ?? TRUNCATED;
    let width = 0;
    let height = 0;
    for (let i = 0; i < count; i++) {
      const e = ifd + 2 + i * 12;
      const tag = u16(e);
      const type = u16(e + 2);
      // a field's values must lie in the file: decoders read (and keep, as JS arrays) as many as it says
      const size = TIFF_TYPE_BYTES[type];
      if (size === undefined) return { problem: `a field of unknown type ${type}` };
      const bytesNeeded = size * u32(e + 4);
      if (bytesNeeded > 4 && u32(e + 8) + bytesNeeded > bytes.length) return { problem: `field ${tag} runs past the end of the file` };
      if (tag !== 256 && tag !== 257) continue;
      const value = type === 3 ? u16(e + 8) : type === 4 ? u32(e + 8) : 0;
      if (tag === 256) width = value;
      else height = value;
    }
    if (width === 0 || height === 0) return { problem: 'a page without its width and height' };
    if (!best || width * height > best.width * best.height) best = { width, height };
    ifd = u32(ifd + 2 + count * 12);
  }
  return best ?? { problem: 'no page' };
}
