/**
 * A reader for NumPy `.npy` files (format versions 1, 2 and 3), enough for the pose statistics
 * and the golden fixtures: little-endian float32/float64/int32/int64/uint8/bool, C order.
 */
export class NpyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NpyError';
  }
}

export type NpyDtype = '<f4' | '<f8' | '<i4' | '<i8' | '|u1' | '|b1';

export interface NpyArray {
  dtype: NpyDtype;
  shape: number[];
  /** Values widened to float64 (int64 through Number). */
  data: Float64Array;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

export function parseNpy(bytes: Uint8Array, source = '<buffer>'): NpyArray {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new NpyError(`${source}: not a .npy file (missing \\x93NUMPY magic)`);
  }
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number;
  let headerStart: number;
  if (major === 1) {
    headerLen = view.getUint16(8, true);
    headerStart = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new NpyError(`${source}: truncated .npy header`);
    headerLen = view.getUint32(8, true);
    headerStart = 12;
  } else {
    throw new NpyError(`${source}: unsupported .npy format version ${major}`);
  }
  if (headerStart + headerLen > bytes.length) throw new NpyError(`${source}: truncated .npy header`);
  const header = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(
    bytes.subarray(headerStart, headerStart + headerLen),
  );
  const descr = /'descr'\s*:\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new NpyError(`${source}: malformed .npy header: ${header.trim()}`);
  }
  if (fortran === 'True') throw new NpyError(`${source}: Fortran-ordered arrays are not supported`);
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map((s) => Number.parseInt(s, 10));
  const count = shape.reduce((a, b) => a * b, 1);
  const dataStart = headerStart + headerLen;
  const sizes: Record<string, number> = { '<f4': 4, '<f8': 8, '<i4': 4, '<i8': 8, '|u1': 1, '|b1': 1 };
  const size = sizes[descr];
  if (size === undefined) {
    throw new NpyError(`${source}: unsupported dtype '${descr}' (expected one of ${Object.keys(sizes).join(', ')})`);
  }
  if (dataStart + count * size > bytes.length) {
    throw new NpyError(`${source}: truncated data: expected ${count * size} bytes, found ${bytes.length - dataStart}`);
  }
  const data = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const at = dataStart + i * size;
    switch (descr) {
      case '<f4': data[i] = view.getFloat32(at, true); break;
      case '<f8': data[i] = view.getFloat64(at, true); break;
      case '<i4': data[i] = view.getInt32(at, true); break;
      case '<i8': data[i] = Number(view.getBigInt64(at, true)); break;
      default: data[i] = bytes[at];
    }
  }
  return { dtype: descr as NpyDtype, shape, data };
}
