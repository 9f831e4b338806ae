/**
 * Element-level helpers for checkpoint tensors: dtypes, typed views over little-endian storage
 * bytes, float16/bfloat16 decoding and the strided gather that turns a torch view (storage,
 * offset, shape, strides) into row-major data — optionally with its axes permuted, which is how
 * the converter writes tfjs layout straight into a shard without an intermediate copy.
 */

export type TorchDtype =
  | 'float32'
  | 'float64'
  | 'float16'
  | 'bfloat16'
  | 'int64'
  | 'int32'
  | 'int16'
  | 'int8'
  | 'uint8'
  | 'bool';

export const DTYPE_BYTES: Record<TorchDtype, number> = {
  float32: 4,
  float64: 8,
  float16: 2,
  bfloat16: 2,
  int64: 8,
  int32: 4,
  int16: 2,
  int8: 1,
  uint8: 1,
  bool: 1,
};

export const FLOAT_DTYPES: ReadonlySet<TorchDtype> = new Set<TorchDtype>(['float32', 'float64', 'float16', 'bfloat16']);

/**
 * Values in their checkpoint dtype: float16/bfloat16 as their raw 16-bit patterns (Uint16Array),
 * int64 as BigInt64Array, bool as 0/1 bytes (Uint8Array).
 */
export type TensorValues =
  | Float32Array
  | Float64Array
  | Uint16Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array;

type ArrayMaker = (buffer: ArrayBufferLike, byteOffset: number, length: number) => TensorValues;

const MAKERS: Record<TorchDtype, ArrayMaker> = {
  float32: (b, o, n) => new Float32Array(b, o, n),
  float64: (b, o, n) => new Float64Array(b, o, n),
  float16: (b, o, n) => new Uint16Array(b, o, n),
  bfloat16: (b, o, n) => new Uint16Array(b, o, n),
  int64: (b, o, n) => new BigInt64Array(b, o, n),
  int32: (b, o, n) => new Int32Array(b, o, n),
  int16: (b, o, n) => new Int16Array(b, o, n),
  int8: (b, o, n) => new Int8Array(b, o, n),
  uint8: (b, o, n) => new Uint8Array(b, o, n),
  bool: (b, o, n) => new Uint8Array(b, o, n),
};

/** A typed view of little-endian bytes; copies only when the bytes are not element-aligned. */
export function typedView(bytes: Uint8Array, dtype: TorchDtype): TensorValues {
  const size = DTYPE_BYTES[dtype];
  // (a Node Buffer's slice() is a view, so copy through the Uint8Array constructor)
  const aligned = bytes.byteOffset % size === 0 ? bytes : new Uint8Array(bytes);
  return MAKERS[dtype](aligned.buffer, aligned.byteOffset, Math.floor(aligned.byteLength / size));
}

export function allocValues(dtype: TorchDtype, length: number): TensorValues {
  return MAKERS[dtype](new ArrayBuffer(length * DTYPE_BYTES[dtype]), 0, length);
}

let halfTable: Float32Array | undefined;

/** float16 bit pattern -> float32 value, for all 65536 patterns (exact: float16 ⊂ float32). */
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) t[h] = sign * frac * 2 ** -24;
    else if (exp === 31) t[h] = frac ? NaN : sign * Infinity;
    else t[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  halfTable = t;
  return t;
}

/** Widens (float16/bfloat16/float64 narrows) every element of a float storage to float32. */
export function floatValuesToFloat32(values: TensorValues, dtype: TorchDtype): Float32Array {
  switch (dtype) {
    case 'float32':
      return values as Float32Array;
    case 'float64':
      return Float32Array.from(values as Float64Array);
    case 'float16': {
      const table = halfToFloatTable();
      const src = values as Uint16Array;
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
      return out;
    }
    case 'bfloat16': {
      // bfloat16 is the top half of a float32
      const src = values as Uint16Array;
      const bits = new Uint32Array(src.length);
      for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
      return new Float32Array(bits.buffer);
    }
    default:
      throw new Error(`floatValuesToFloat32: ${dtype} is not a float dtype`);
  }
}

/** Plain numbers for display and tests (int64 through Number, float16 decoded). */
export function valuesAsNumbers(values: TensorValues, dtype: TorchDtype): number[] {
  if (dtype === 'float16' || dtype === 'bfloat16') return Array.from(floatValuesToFloat32(values, dtype));
  return Array.from(values as ArrayLike<number | bigint>, (v) => Number(v));
}

interface ElementArray<E> {
  [index: number]: E;
  readonly length: number;
}

/**
 * Copies elements `from .. from+count-1` (row-major over `shape`) of the strided view
 * `src[base + sum(idx[d] * strides[d])]` into `dst[dstPos ..]`.
 * With `shape`/`strides` permuted, this transposes while copying.
 */
export function gatherStrided<E>(
  src: ElementArray<E>,
  base: number,
  shape: readonly number[],
  strides: readonly number[],
  dst: ElementArray<E>,
  dstPos: number,
  from: number,
  count: number,
): void {
  if (count <= 0) return;
  const rank = shape.length;
  if (rank === 0) {
    dst[dstPos] = src[base];
    return;
  }
  const last = rank - 1;
  const n = shape[last];
  const s = strides[last];
  if (from === 0 && count === numelOf(shape) && s !== 1 && n > GATHER_BLOCK) {
    gatherBlocked(src, base, shape, strides, dst, dstPos);
    return;
  }
  // odometer position of element `from`
  const idx = new Array<number>(rank);
  let rem = from;
  let p = base;
  for (let d = last; d >= 0; d--) {
    idx[d] = rem % shape[d];
    rem = Math.floor(rem / shape[d]);
    p += idx[d] * strides[d];
  }
  let out = dstPos;
  let left = count;
  // Contiguous runs between typed arrays of one kind: a block copy.
  const copy = s === 1 && sameTypedArrays(src, dst);
  while (left > 0) {
    const run = Math.min(n - idx[last], left);
    if (copy) {
      (dst as unknown as Float32Array).set((src as unknown as Float32Array).subarray(p, p + run), out);
    } else if (s === 1) {
      for (let k = 0; k < run; k++) dst[out + k] = src[p + k];
    } else {
      for (let k = 0, q = p; k < run; k++, q += s) dst[out + k] = src[q];
    }
    out += run;
    left -= run;
    p += run * s;
    idx[last] += run;
    if (idx[last] === n && left > 0) {
      idx[last] = 0;
      p += nextRow(idx, shape, strides, last) - n * s;
    }
  }
}

/**
 * Steps the odometer `idx` over axes 0 .. axes-1 (row-major) to the next row; returns how far the
 * source offset moves.
 */
function nextRow(idx: number[], shape: readonly number[], strides: readonly number[], axes: number): number {
  let delta = 0;
  for (let d = axes - 1; d >= 0; d--) {
    idx[d]++;
    delta += strides[d];
    if (idx[d] < shape[d]) break;
    delta -= shape[d] * strides[d];
    idx[d] = 0;
  }
  return delta;
}

function sameTypedArrays(a: unknown, b: unknown): boolean {
  return ArrayBuffer.isView(a) && ArrayBuffer.isView(b) && !(a instanceof DataView) && Object.getPrototypeOf(a) === Object.getPrototypeOf(b);
}

/** Side of the square tiles `gatherBlocked` copies. */
const GATHER_BLOCK = 16;

/**
 * `gatherStrided` of a whole tensor whose last axis is strided in `src` (a transpose: torch's
 * OIHW filters and [out, in] matrices to tfjs' HWIO and [in, out]), by GATHER_BLOCK-square tiles
 * of the last two axes, each destination row of a tile written in one run. Row by row, each
 * element of a row comes from a different part of `src` (a cache miss each); within a tile, its
 * source lines stay in cache while every destination row takes its piece, and the inner loop
 * writes contiguously (~2x the rate of whole columns of 16-wide blocks).
 */
function gatherBlocked<E>(src: ElementArray<E>, base: number, shape: readonly number[], strides: readonly number[], dst: ElementArray<E>, dstPos: number): void {
  const rank = shape.length;
  const n = shape[rank - 1];
  const s = strides[rank - 1];
  // The tile rows' axis (the one before the last; a single row for a 1-D tensor) and the axes before it.
  const m = rank >= 2 ? shape[rank - 2] : 1;
  const sm = rank >= 2 ? strides[rank - 2] : 0;
  const lead = Math.max(rank - 2, 0);
  const outer = numelOf(shape.slice(0, lead));
  const idx = new Array<number>(lead).fill(0);
  let p0 = base;
  let out0 = dstPos;
  for (let o = 0; o < outer; o++) {
    for (let r0 = 0; r0 < m; r0 += GATHER_BLOCK) {
      const r1 = Math.min(r0 + GATHER_BLOCK, m);
      for (let c0 = 0; c0 < n; c0 += GATHER_BLOCK) {
        copyTile(src, p0 + r0 * sm + c0 * s, sm, s, dst, out0 + r0 * n + c0, n, r1 - r0, Math.min(GATHER_BLOCK, n - c0));
      }
    }
    out0 += m * n;
    if (o + 1 < outer) p0 += nextRow(idx, shape, strides, lead);
  }
}

/**
 * dst[out + r * n + c] = src[p + r * sm + c * s] for r < rows, c < cols: one tile of
 * `gatherBlocked`, a function of its own so that it is optimized after its first calls rather
 * than once the whole copy's loop has run long enough to be replaced on the stack.
 */
function copyTile<E>(src: ElementArray<E>, p: number, sm: number, s: number, dst: ElementArray<E>, out: number, n: number, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++, p += sm, out += n) {
    for (let c = 0, q = p; c < cols; c++, q += s) dst[out + c] = src[q];
  }
}

export function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Values `firstNonFinite` checks at once before it looks for the one that failed. */
const FINITE_BLOCK = 4096;

/**
 * Index of the first NaN or infinite value of `values[from, to)`, or -1. Every weight is checked
 * as it is read: a block at a time without a branch per value (~2x the rate), then value by value
 * only in a block that failed.
 */
export function firstNonFinite(values: Float32Array, from = 0, to = values.length): number {
  for (let start = from; start < to; start += FINITE_BLOCK) {
    const end = Math.min(start + FINITE_BLOCK, to);
    if (blockFinite(values, start, end)) continue;
    for (let i = start; i < end; i++) {
      const x = values[i];
      // x - x is 0 for every finite x and NaN for NaN and the infinities
      if (x - x !== 0) return i;
    }
  }
  return -1;
}

/** Whether `values[from, to)` are all finite: x * 0 is ±0 for every finite x, NaN otherwise, and NaN stays in a sum. */
function blockFinite(values: Float32Array, from: number, to: number): boolean {
  let a = 0;
  let b = 0;
  let i = from;
  for (; i + 1 < to; i += 2) {
    a += values[i] * 0;
    b += values[i + 1] * 0;
  }
  if (i < to) a += values[i] * 0;
  return a + b === 0;
}

/**
 * Float32 views handed out one after another from one SharedArrayBuffer of `total` values: weights
 * made this way can go to worker threads, which then share them instead of copying them.
 */
export function sharedFloat32(total: number): (numel: number) => Float32Array {
  const buffer = new SharedArrayBuffer(total * 4);
  let at = 0;
  return (numel) => {
    if (at + numel > total) throw new RangeError(`sharedFloat32: ${numel} more values do not fit (${at} of ${total} taken)`);
    const view = new Float32Array(buffer, at * 4, numel);
    at += numel;
    return view;
  };
}
