// Winograd F(2x2, 3x3) and F(4x4, 3x3) for the stride-1 3x3 convolutions (Lavin & Gray 2016):
// each m x m block of output pixels (m = 2 or 4, the "Winograd tile") comes from its
// (m + 2) x (m + 2) input patch d as  Y = A^T [ sum_ci (G g G^T) . (B^T d B) ] A,
// E = (m + 2)^2 products per block and channel pair instead of 9 m^2 (16 for 36, 36 for 144).
// F(2x2), two dispatches:
//   1. E = 16 GEMMs       M[e] = V[e] (tiles x cin) @ U[e] (cin x cout), the conv kernel in
//                         batched 1x1 mode, e = workgroup z, with the input transform
//                         V[e][tile][ci] = (B^T d B)[e] computed in its loads from x (B^T is
//                         +-1 with two entries a row: 4 loads and adds per element, no V buffer)
//   2. output transform   y = A^T M A + bias (+ residual) (ReLU), written NHWC
// F(4x4), three dispatches by default:
//   1. input transform    V [36, 1, tiles, cin] = B^T d B, one thread per tile and 4 channels
//   2. 36 GEMMs           M[e] = V[e] @ U[e] (the plain batched 1x1 conv kernel)
//   3. output transform   as above, with A^T of F(4x4)
// B^T of F(4x4) has four entries a row with coefficients 4, -5, 2 ...: computed in the GEMM's loads
// each A element would cost 16 vec4 loads and 16 FMAs, redone for every column block of the GEMM,
// in a kernel already register-bound; the separate transform reads each patch once and moves
// V (36 values per 16 outputs) through memory twice. The in-load variant exists too
// (IMG2POSE_WINOGRAD_F4_FUSED_INPUT, conv2d.ts) so the two can be timed on a GPU.
// U = G g G^T is computed once per filter when the model is built (`prepareWinograd`), for the
// tile the IMG2POSE_WINOGRAD_TILE flag asks for then (the other one only if the flag changes later).
// Why: the 3x3 256->256 convs of the FPN outputs and the RPN head are 56% of the network's FLOPs,
// and our fp32 SIMT GEMM is at ~half the card's peak, so doing 2.25x (F(2x2)) or 4x (F(4x4)) fewer
// multiplications is the largest step left (docs/webgpu.md). Rounding differs from the direct
// convolution by a few float32 ulps for F(2x2) and ~1e-6 relative for F(4x4) (its coefficients 4,
// 5, 8 and 1/6, 1/24; checked against a float64 convolution); every image's numbers still depend
// only on its own pixels, since tiles start at each image's origin and the choice of algorithm
// and tile depends only on the layer (its channels and level) and the flags, never on the batch.
import * as tf from '@tensorflow/tfjs-core';
import { ConvOptions, ConvTile, FusedConvProgram, chooseTile } from './conv2d';
import { runProgram, WebGPUProgram, webgpuBackend } from './program';
import { WINOGRAD_F4_AT, WINOGRAD_F4_BT, WINOGRAD_F4_G } from '../../ops/winograd_f4';

/** Layers with fewer input channels keep the direct convolution (ResNet-18's narrowest, 64, gains). */
export const WINOGRAD_MIN_CHANNELS = 64;

/**
 * tfjs env flag: the stride-1 3x3 convs (ResNet layers, FPN outputs and the RPN head, at every
 * pyramid level: stopping at level 2 or 3 measured slower at batches 1, 8 and 16 and on mixed
 * sizes) take the Winograd path (true, default) with our WebGPU kernels, and on the wasm backend
 * (F(4x4, 3x3), src/kernels/wasm/winograd.ts), or the direct convolution (false: for timing the
 * two, or to rule out Winograd's rounding).
 */
export const WINOGRAD_FLAG = 'IMG2POSE_WINOGRAD';
// Registered once per tfjs instance, also when this module is bundled twice.
if (!(WINOGRAD_FLAG in (tf.env() as unknown as { flagRegistry: object }).flagRegistry)) {
  tf.env().registerFlag(WINOGRAD_FLAG, () => true);
}

/** Output block edge m of Winograd F(m x m, 3x3). */
export type WinogradTile = 2 | 4;

/**
 * tfjs env flag: the Winograd tile of the WebGPU path, 'auto' (default: by layer, see
 * `winogradTile`), 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3)). Read when a network's filters are prepared
 * (their U is made for their tile) and at each convolution; a filter prepared for the other tile
 * gets this tile's U on its first use.
 */
export const WINOGRAD_TILE_FLAG = 'IMG2POSE_WINOGRAD_TILE';
if (!(WINOGRAD_TILE_FLAG in (tf.env() as unknown as { flagRegistry: object }).flagRegistry)) {
  tf.env().registerFlag(WINOGRAD_TILE_FLAG, () => 'auto');
}

/**
 * Layers with more input channels take F(2x2) under 'auto': measured on an H100, F(4x4) ran the
 * 64- to 256-channel layers faster (the 256-channel FPN outputs and RPN head at 160x288 in 0.59 ms
 * instead of 0.98) but ResNet's 512-channel layer4, on its small maps, slower.
 */
export const WINOGRAD_AUTO_F4_MAX_CHANNELS = 256;

/**
 * tfjs env flag: F(4x4, 3x3) computes its input transform inside the GEMM's loads (true, like
 * F(2x2)) instead of in a dispatch of its own writing V (false, default). For timing the two.
 */
export const WINOGRAD_F4_FUSED_FLAG = 'IMG2POSE_WINOGRAD_F4_FUSED_INPUT';
if (!(WINOGRAD_F4_FUSED_FLAG in (tf.env() as unknown as { flagRegistry: object }).flagRegistry)) {
  tf.env().registerFlag(WINOGRAD_F4_FUSED_FLAG, () => false);
}

/**
 * The Winograd tile the WINOGRAD_TILE_FLAG asks for, for a layer of `cin` input channels: under
 * 'auto', 4 up to WINOGRAD_AUTO_F4_MAX_CHANNELS (and when `cin` is not given), else 2. Depends on
 * the layer only, never on the image or the batch. An error for a value other than 'auto', 2 or 4.
 */
export function winogradTile(cin?: number): WinogradTile {
  const flag = tf.env().get(WINOGRAD_TILE_FLAG);
  if (flag === 'auto') return cin !== undefined && cin > WINOGRAD_AUTO_F4_MAX_CHANNELS ? 2 : 4;
  const v = Number(flag);
  if (v !== 2 && v !== 4) throw new Error(`${WINOGRAD_TILE_FLAG} must be 'auto', 2 or 4, got ${String(flag)}`);
  return v;
}

/** Where F(4x4, 3x3) computes B^T d B: in the GEMM's loads ('fused') or a dispatch of its own ('separate'). */
export type F4Input = 'fused' | 'separate';

function f4Input(): F4Input {
  return tf.env().getBool(WINOGRAD_F4_FUSED_FLAG) ? 'fused' : 'separate';
}

/** B^T of F(2x2, 3x3): the input transform along one axis. */
export const WINOGRAD_BT = [
  [1, 0, -1, 0],
  [0, 1, 1, 0],
  [0, -1, 1, 0],
  [0, 1, 0, -1],
] as const;
/** G: the filter transform along one axis. */
export const WINOGRAD_G = [
  [1, 0, 0],
  [0.5, 0.5, 0.5],
  [0.5, -0.5, 0.5],
  [0, 0, 1],
] as const;
/** A^T: the output transform along one axis. */
export const WINOGRAD_AT = [
  [1, 1, 1, 0],
  [0, 1, -1, -1],
] as const;

/** Per prepared filter, its U for each tile made so far. */
const filters = new WeakMap<tf.Tensor, Partial<Record<WinogradTile, tf.Tensor3D>>>();

/** Whether stages ask for the Winograd path on their stride-1 3x3 convs (see WINOGRAD_FLAG). */
export function winogradEnabled(): boolean {
  return tf.env().getBool(WINOGRAD_FLAG);
}

/** Whether a filter (kh, kw, in, out) is one the Winograd path takes. Depends on the layer only. */
export function winogradFilterFits(shape: readonly number[]): boolean {
  const [kh, kw, cin, cout] = shape;
  return kh === 3 && kw === 3 && cin % 4 === 0 && cout % 4 === 0 && cin >= WINOGRAD_MIN_CHANNELS;
}

/** Whether a call with these options can use the Winograd path (asked for, stride 1, PyTorch pad 1). */
export function winogradOptionsFit(opts: ConvOptions): boolean {
  return opts.winograd === true && opts.stride === 1 && opts.pad === 1 && !(opts.residual !== undefined && opts.upsampleResidual);
}

/** Transform positions per tile, (m + 2)^2. */
function positions(tile: WinogradTile): number {
  return (tile + 2) * (tile + 2);
}

/**
 * U[e][ci][co] = (G g G^T)[e] for a filter in tfjs layout (3, 3, in, out): [16, in, out] for
 * F(2x2, 3x3), [36, in, out] for F(4x4, 3x3). The (G x G) coefficients are products in float64
 * rounded once; each U element is their float32 products with the 9 taps summed in tap order. On
 * the webgpu backend one program of ours (`WinogradFilterProgram`), not tfjs' matmul: that reads
 * its second operand past the end (docs/webgpu.md, the buffer pool); elsewhere one matMul.
 */
export function winogradFilter(filter: tf.Tensor4D, tile: WinogradTile = 2): tf.Tensor3D {
  const [kh, kw, cin, cout] = filter.shape;
  if (kh !== 3 || kw !== 3) throw new Error(`winogradFilter: 3x3 filters only, got ${kh}x${kw}`);
  const g: readonly (readonly number[])[] = tile === 2 ? WINOGRAD_G : WINOGRAD_F4_G;
  const side = tile + 2;
  const e = side * side;
  // (G (x) G) as an [E, 9] matrix: U_e = sum over taps (a, b) of G[i][a] G[j][b] g[a][b], e = side i + j.
  const gg = new Float32Array(e * 9);
  for (let i = 0; i < side; i++) for (let j = 0; j < side; j++) {
    for (let a = 0; a < 3; a++) for (let b = 0; b < 3; b++) gg[(i * side + j) * 9 + a * 3 + b] = g[i][a] * g[j][b];
  }
  return tf.tidy(() => {
    const taps = tf.reshape(filter, [9, cin * cout]);
    const u = tf.getBackend() === 'webgpu' ? runProgram<tf.Rank.R2>(new WinogradFilterProgram(e, cin * cout), [tf.tensor2d(gg, [e, 9]), taps]) : tf.matMul(tf.tensor2d(gg, [e, 9]), taps);
    return tf.reshape(u, [e, cin, cout]);
  });
}

/** gg [E, 9] and the taps [9, K] -> U [E, K], one thread per element, taps summed in order. */
class WinogradFilterProgram implements WebGPUProgram {
  variableNames = ['gg', 'taps'];
  outputShape: number[];
  shaderKey = 'i2pWinogradFilter';
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [THREADS, 1, 1];
  size = true;

  constructor(positions: number, k: number) {
    this.outputShape = [positions, k];
    this.dispatch = flatDispatch(positions * k);
  }

  getUserCode(): string {
    return `
fn main(index: i32) {
  if (index >= uniforms.size) { return; }
  let K = uniforms.outShape[1];
  let e = index / K; let k = index % K;
  var u = 0.0;
  for (var t = 0; t < 9; t++) { u = u + gg[e * 9 + t] * taps[t * K + k]; }
  result[index] = u;
}`;
  }
}

/**
 * Transforms and keeps U for `filter` when the layer fits (see `prepareConvFilter`, which calls
 * this on the webgpu backend), for `tile` (the WINOGRAD_TILE_FLAG's, by default): only that U,
 * as U for F(4x4) takes 4x the filter's memory. The stage that owns the filter releases it when
 * it is disposed.
 */
export function prepareWinograd(filter: tf.Tensor4D, tile: WinogradTile = winogradTile(filter.shape[2])): void {
  if (!winogradFilterFits(filter.shape)) return;
  const entry = filters.get(filter) ?? {};
  filters.set(filter, entry);
  entry[tile] ??= tf.keep(winogradFilter(filter, tile));
}

export function releaseWinograd(filter: tf.Tensor): void {
  const entry = filters.get(filter);
  if (entry) {
    tf.dispose(Object.values(entry));
    filters.delete(filter);
  }
}

/**
 * The U of `filter` for `tile` (the WINOGRAD_TILE_FLAG's, by default) when the Winograd path
 * applies to this call (a prepared filter, options that fit), else undefined. A prepared filter
 * whose U for this tile was not made yet (the flag changed since) gets it now and keeps it.
 */
export function winogradFilterFor(filter: tf.Tensor4D, opts: ConvOptions, tile: WinogradTile = winogradTile(filter.shape[2])): tf.Tensor3D | undefined {
  if (!winogradOptionsFit(opts) || !filters.has(filter)) return undefined;
  prepareWinograd(filter, tile);
  return filters.get(filter)?.[tile];
}

const THREADS = 256;
// Workgroups per row of a 2-D dispatch: stays under WebGPU's default 65535 per dimension.
const ROW = 32768;

/** A flat one-thread-per-item dispatch folded into two dimensions. */
function flatDispatch(items: number): [number, number, number] {
  const groups = Math.ceil(items / THREADS);
  return [Math.min(groups, ROW), Math.ceil(groups / ROW), 1];
}

/**
 * WGSL prologue of the transform programs: this thread's tile (b, ty, tx) of `tile` x `tile`
 * outputs and 4-channel group c4 over a [N, H, W, C] map whose shape is the uniform `shape`;
 * returns early past the last tile.
 */
function tilePrologue(shape: 'xShape' | 'outShape', channels: number, tile: WinogradTile): string[] {
  return [
    `  let idx = i32((workgroupId.y * numWorkgroups.x + workgroupId.x) * ${THREADS}u + localIndex);`,
    `  let C4 = ${channels / 4}; let H = uniforms.${shape}.y; let W_ = uniforms.${shape}.z;`,
    `  let TW = (W_ + ${tile - 1}) / ${tile}; let TT = ((H + ${tile - 1}) / ${tile}) * TW; let T = uniforms.${shape}.x * TT;`,
    `  if (idx >= T * C4) { return; }`,
    `  let c4 = idx % C4; let t = idx / C4;`,
    `  let b = t / TT; let r = t - b * TT; let ty = r / TW; let tx = r - ty * TW;`,
    `  let plane = T * C4; let at = t * C4 + c4;`,
  ];
}

/**
 * What the transform programs share: one thread per tile and 4 channels, over a 2-D dispatch they
 * fold themselves (not a flat layout: the backend then calls main() without an index).
 */
abstract class TileTransformProgram {
  abstract variableNames: string[];
  abstract variableComponents: number[];
  outputComponent = 4;
  abstract outputShape: number[];
  abstract shaderKey: string;
  dispatchLayout = { x: [3], y: [1, 2], z: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [THREADS, 1, 1];

  constructor(tiles: number, channels: number) {
    this.dispatch = flatDispatch((tiles * channels) / 4);
  }
}

/**
 * x [N, H, W, C] -> V [36, 1, tiles, C], V[e] = (B^T d B)[e] of F(4x4, 3x3) for each tile's 6x6
 * patch d at (4 ty - 1, 4 tx - 1) (zeros outside the map: PyTorch's pad 1), one thread per tile
 * and 4 channels: each input pixel is read by at most 4 threads, consecutive threads read and
 * write consecutive channels.
 */
class WinogradF4InputProgram extends TileTransformProgram implements WebGPUProgram {
  variableNames = ['x'];
  variableComponents = [4];
  outputShape: number[];
  shaderKey: string;

  constructor(
    private readonly channels: number,
    xShape: [number, number, number, number],
  ) {
    const [n, h, w] = xShape;
    const tiles = n * Math.ceil(h / 4) * Math.ceil(w / 4);
    super(tiles, channels);
    this.outputShape = [36, 1, tiles, channels];
    this.shaderKey = `i2pWinogradF4In_${channels}`;
  }

  getUserCode(): string {
    const L: string[] = [];
    L.push(`fn main() {`, ...tilePrologue('xShape', this.channels, 4));
    L.push(`  let y0 = ty * 4 - 1; let x0 = tx * 4 - 1;`);
    for (let p = 0; p < 6; p++) L.push(`  let okY${p} = y0 + ${p} >= 0 && y0 + ${p} < H; let row${p} = (b * H + y0 + ${p}) * W_ + x0;`);
    for (let q = 0; q < 6; q++) L.push(`  let okX${q} = x0 + ${q} >= 0 && x0 + ${q} < W_;`);
    // B^T d: combine rows p for each column q, then (B^T d) B: combine columns. Emitted column by
    // column (its 6 pixels, then their 6 combinations), so that at most one column of d is live
    // next to B^T d: 36 + 6 vec4 registers instead of 72.
    for (let q = 0; q < 6; q++) {
      for (let p = 0; p < 6; p++) {
        L.push(`  var d${p}${q} = vec4<f32>(0.0); if (okY${p} && okX${q}) { d${p}${q} = x[(row${p} + ${q}) * C4 + c4]; }`);
      }
      for (let i = 0; i < 6; i++) L.push(`  let s${i}${q} = ${combine(WINOGRAD_F4_BT[i], (p) => `d${p}${q}`)};`);
    }
    for (let i = 0; i < 6; i++) for (let j = 0; j < 6; j++) {
      L.push(`  result[${i * 6 + j} * plane + at] = ${combine(WINOGRAD_F4_BT[j], (q) => `s${i}${q}`)};`);
    }
    L.push(`}`);
    return L.join('\n');
  }
}

/**
 * M [E, 1, tiles, C] -> y [N, H, W, C] (+ bias, + residual, ReLU) with A^T of F(m x m, 3x3), one
 * thread per tile and 4 channels; outputs past the map's edge (partial tiles) are not written.
 */
class WinogradOutputProgram extends TileTransformProgram implements WebGPUProgram {
  variableNames: string[];
  variableComponents: number[];
  outputShape: number[];
  shaderKey: string;

  constructor(
    private readonly tile: WinogradTile,
    private readonly channels: number,
    outShape: [number, number, number, number],
    private readonly hasBias: boolean,
    private readonly hasResidual: boolean,
    private readonly relu: boolean,
  ) {
    const [n, h, w] = outShape;
    super(n * Math.ceil(h / tile) * Math.ceil(w / tile), channels);
    this.outputShape = outShape;
    this.variableNames = ['wino'];
    if (hasBias) this.variableNames.push('bias');
    if (hasResidual) this.variableNames.push('res');
    this.variableComponents = this.variableNames.map(() => 4);
    this.shaderKey = `i2pWinogradOut${tile === 2 ? '' : tile}_${channels}_${hasBias ? 'b' : ''}${hasResidual ? 'r' : ''}${relu ? 'relu' : ''}`;
  }

  getUserCode(): string {
    const m = this.tile;
    const side = m + 2;
    const at: readonly (readonly number[])[] = m === 2 ? WINOGRAD_AT : WINOGRAD_F4_AT;
    const L: string[] = [];
    L.push(`fn main() {`, ...tilePrologue('outShape', this.channels, m));
    // A^T M: combine rows i for each column j, then (A^T M) A: combine columns.
    const load = (i: number, j: number): string => `  let m${i}${j} = wino[${i * side + j} * plane + at];`;
    const rows = (j: number): string[] => Array.from({ length: m }, (_, r) => `  let s${r}${j} = ${combine(at[r], (i) => `m${i}${j}`)};`);
    if (m === 2) {
      for (let i = 0; i < side; i++) for (let j = 0; j < side; j++) L.push(load(i, j));
      for (let r = 0; r < m; r++) for (let j = 0; j < side; j++) L.push(rows(j)[r]);
    } else {
      // F(4x4): column by column (its 6 values of M, then their 4 combinations), so that one
      // column of M is live next to A^T M: 24 + 6 vec4 registers instead of 60.
      for (let j = 0; j < side; j++) {
        for (let i = 0; i < side; i++) L.push(load(i, j));
        L.push(...rows(j));
      }
    }
    if (this.hasBias) L.push(`  let bv = bias[c4];`);
    for (let r = 0; r < m; r++) for (let c = 0; c < m; c++) {
      L.push(`  { let oy = ty * ${m} + ${r}; let ox = tx * ${m} + ${c};`);
      L.push(`    if (oy < H && ox < W_) {`);
      L.push(`      let o = ((b * H + oy) * W_ + ox) * C4 + c4;`);
      L.push(`      var v = ${combine(at[c], (j) => `s${r}${j}`)};`);
      if (this.hasBias) L.push(`      v = v + bv;`);
      if (this.hasResidual) L.push(`      v = v + res[o];`);
      if (this.relu) L.push(`      v = max(v, vec4<f32>(0.0));`);
      L.push(`      result[o] = v; } }`);
    }
    L.push(`}`);
    return L.join('\n');
  }
}

/**
 * `c[0]*t(0) + c[1]*t(1) + ...` as WGSL, zero terms left out: coefficients +-1 as adds and
 * subtracts, others as products with a float literal (`- 5.0 * t`).
 */
function combine(coeffs: readonly number[], term: (k: number) => string): string {
  let s = '';
  coeffs.forEach((c, k) => {
    if (c === 0) return;
    const mag = Math.abs(c);
    if (!Number.isInteger(mag)) throw new Error('combine: integer coefficients only');
    const t = mag === 1 ? term(k) : `${mag}.0 * ${term(k)}`;
    s += s === '' ? (c > 0 ? t : `-${t}`) : ` ${c > 0 ? '+' : '-'} ${t}`;
  });
  return s;
}

/** Bytes the Winograd buffers V and M may take before a batch is run in image chunks. */
const MAX_CHUNK_BYTES = 1 << 30;

/**
 * Stride-1 pad-1 3x3 convolution of x NHWC with the prepared U (+ bias, + residual of the
 * output's shape, then ReLU): F(2x2, 3x3) for U [16, in, out], F(4x4, 3x3) for U [36, in, out]
 * (`winogradFilter`), with its input transform where `f4input` says (the
 * IMG2POSE_WINOGRAD_F4_FUSED_INPUT flag's, by default). Must run on the webgpu backend. Batches
 * whose transformed tiles (V, M) would exceed a buffer binding run in image chunks (each image's
 * numbers are unchanged).
 */
export function conv2dWinograd(
  x: tf.Tensor4D,
  u: tf.Tensor3D,
  bias: tf.Tensor1D | null,
  opts: ConvOptions,
  tile?: ConvTile,
  maxChunkBytes = MAX_CHUNK_BYTES,
  f4input: F4Input = f4Input(),
): tf.Tensor4D {
  const [n, h, w, cin] = x.shape;
  const [e, ucin, cout] = u.shape;
  const m: WinogradTile | undefined = e === positions(2) ? 2 : e === positions(4) ? 4 : undefined;
  if (m === undefined || ucin !== cin) throw new Error(`conv2dWinograd: input has ${cin} channels, U is [${u.shape}] (expects [16 or 36, ${cin}, out])`);
  if (cin % 4 !== 0 || cout % 4 !== 0) throw new Error(`conv2dWinograd: channels must be multiples of 4, got ${cin} -> ${cout}`);
  if (!winogradOptionsFit({ ...opts, winograd: true })) throw new Error('conv2dWinograd: stride 1, pad 1 and no upsampled residual only');
  const residual = opts.residual;
  if (residual !== undefined && !(residual.shape[0] === n && residual.shape[1] === h && residual.shape[2] === w && residual.shape[3] === cout)) {
    throw new Error(`conv2dWinograd: residual shape ${residual.shape} does not fit output ${[n, h, w, cout]}`);
  }
  const separate = m === 4 && f4input === 'separate';
  const limit = Math.min(maxChunkBytes, webgpuBackend().device.limits.maxStorageBufferBindingSize);
  // M [E, tiles, cout], and V [E, tiles, cin] where the input transform writes one.
  const perImage = e * winogradTiles(1, h, w, m) * Math.max(cout, separate ? cin : 0) * 4;
  const chunk = Math.max(1, Math.floor(limit / perImage));
  const once = (xs: tf.Tensor4D, rs: tf.Tensor4D | undefined): tf.Tensor4D => winogradOnce(m, separate, xs, u, bias, opts.relu, rs, tile);
  return tf.tidy(() => {
    if (n <= chunk) return once(x, residual);
    const parts: tf.Tensor4D[] = [];
    for (let b = 0; b < n; b += chunk) {
      const size = Math.min(chunk, n - b);
      const xs = tf.slice(x, [b, 0, 0, 0], [size, h, w, cin]);
      const rs = residual === undefined ? undefined : tf.slice(residual, [b, 0, 0, 0], [size, h, w, cout]);
      parts.push(once(xs, rs));
    }
    return tf.concat4d(parts, 0);
  });
}

/** Winograd tiles of `tile` x `tile` outputs over n maps of h x w (each image's start at its origin). */
export function winogradTiles(n: number, h: number, w: number, tile: WinogradTile): number {
  return n * Math.ceil(h / tile) * Math.ceil(w / tile);
}

function winogradOnce(
  m: WinogradTile,
  separate: boolean,
  x: tf.Tensor4D,
  u: tf.Tensor3D,
  bias: tf.Tensor1D | null,
  relu: boolean,
  residual: tf.Tensor4D | undefined,
  tile?: ConvTile,
): tf.Tensor4D {
  const [n, h, w, cin] = x.shape;
  const [e, , cout] = u.shape;
  const tiles = winogradTiles(n, h, w, m);
  const gemm = new FusedConvProgram(
    {
      kh: 1, kw: 1, cin, cout, stride: 1, pad: 0, relu: false, hasBias: false, residual: 'none',
      tile: tile ?? chooseTile(e * tiles, cout), batched: true, winogradInput: separate ? undefined : m,
    },
    [e, 1, tiles, cout],
  );
  const a = separate ? runProgram<tf.Rank.R4>(new WinogradF4InputProgram(cin, [n, h, w, cin]), [x]) : x;
  const mt = runProgram<tf.Rank.R4>(gemm, [a, u]);
  if (a !== x) a.dispose();
  const inputs: tf.Tensor[] = [mt];
  if (bias !== null) inputs.push(bias);
  if (residual !== undefined) inputs.push(residual);
  const y = runProgram<tf.Rank.R4>(new WinogradOutputProgram(m, cout, [n, h, w, cout], bias !== null, residual !== undefined, relu), inputs);
  mt.dispose();
  return y;
}
