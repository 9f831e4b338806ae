// Winograd F(2x2, 3x3) for the stride-1 3x3 convolutions (Lavin & Gray 2016): each 2x2 block of
// output pixels comes from its 4x4 input patch d as  Y = A^T [ sum_ci (G g G^T) . (B^T d B) ] A,
// 16 products per block and channel pair instead of 36. Two dispatches:
//   1. 16 GEMMs           M[e] = V[e] (tiles x cin) @ U[e] (cin x cout), the conv kernel in
//                         batched 1x1 mode, e = workgroup z, with the input transform
//                         V[e][tile][ci] = (B^T d B)[e] computed in its loads from x
//   2. output transform   y = A^T M A + bias (+ residual) (ReLU), written NHWC
// (the input transform runs in the GEMM's loads: no V buffer, one dispatch fewer; docs/webgpu.md).
// U = G g G^T is computed once per filter when the model is built (`prepareWinograd`).
// Why: the 3x3 256->256 convs of the FPN outputs and the RPN head are 56% of the network's FLOPs,
// and our fp32 SIMT GEMM is at ~half the card's peak, so doing 2.25x fewer multiplications is the
// largest step left (docs/webgpu.md). Rounding differs from the direct convolution by a few float32
// ulps (checked against a float64 convolution); every image's numbers still depend only on its
// own pixels, since tiles start at each image's origin and the choice of algorithm depends only
// on the layer (its channels and level), never on the batch.
import * as tf from '@tensorflow/tfjs';
import { ConvOptions, ConvTile, FusedConvProgram, chooseTile } from './conv2d';
import { runProgram, WebGPUProgram, webgpuBackend } from './program';

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

const filters = new WeakMap<tf.Tensor, tf.Tensor3D>();

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

/** U[e][ci][co] = (G g G^T)[e] for a filter in tfjs layout (3, 3, in, out): [16, in, out]. */
export function winogradFilter(filter: tf.Tensor4D): tf.Tensor3D {
  const [kh, kw, cin, cout] = filter.shape;
  if (kh !== 3 || kw !== 3) throw new Error(`winogradFilter: 3x3 filters only, got ${kh}x${kw}`);
  // (G (x) G) as a [16, 9] matrix: U_e = sum over taps (a, b) of G[i][a] G[j][b] g[a][b], e = 4i + j.
  const gg = new Float32Array(16 * 9);
  for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) {
    for (let a = 0; a < 3; a++) for (let b = 0; b < 3; b++) gg[(i * 4 + j) * 9 + a * 3 + b] = WINOGRAD_G[i][a] * WINOGRAD_G[j][b];
  }
  return tf.tidy(() => tf.reshape(tf.matMul(tf.tensor2d(gg, [16, 9]), tf.reshape(filter, [9, cin * cout])), [16, cin, cout]));
}

/**
 * Transforms and keeps U for `filter` when the layer fits (see `prepareConvFilter`, which calls
 * this on the webgpu backend); the stage that owns the filter releases it when it is disposed.
 */
export function prepareWinograd(filter: tf.Tensor4D): void {
  if (!winogradFilterFits(filter.shape) || filters.has(filter)) return;
  filters.set(filter, tf.keep(winogradFilter(filter)));
}

export function releaseWinograd(filter: tf.Tensor): void {
  const u = filters.get(filter);
  if (u) {
    u.dispose();
    filters.delete(filter);
  }
}

/** The prepared U of `filter` when the Winograd path applies to this call, else undefined. */
export function winogradFilterFor(filter: tf.Tensor4D, opts: ConvOptions): tf.Tensor3D | undefined {
  return winogradOptionsFit(opts) ? filters.get(filter) : undefined;
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
 * WGSL prologue of the transform programs: this thread's tile (b, ty, tx) and 4-channel group c4
 * over a [N, H, W, C] map whose shape is the uniform `shape`; returns early past the last tile.
 */
function tilePrologue(shape: 'xShape' | 'outShape', channels: number): string[] {
  return [
    `  let idx = i32((workgroupId.y * numWorkgroups.x + workgroupId.x) * ${THREADS}u + localIndex);`,
    `  let C4 = ${channels / 4}; let H = uniforms.${shape}.y; let W_ = uniforms.${shape}.z;`,
    `  let TW = (W_ + 1) / 2; let TT = ((H + 1) / 2) * TW; let T = uniforms.${shape}.x * TT;`,
    `  if (idx >= T * C4) { return; }`,
    `  let c4 = idx % C4; let t = idx / C4;`,
    `  let b = t / TT; let r = t - b * TT; let ty = r / TW; let tx = r - ty * TW;`,
    `  let plane = T * C4; let at = t * C4 + c4;`,
  ];
}

/** M [16, 1, tiles, C] -> y [N, H, W, C] (+ bias, + residual, ReLU), one thread per tile and 4 channels. */
class WinogradOutputProgram implements WebGPUProgram {
  variableNames: string[];
  variableComponents: number[];
  outputComponent = 4;
  outputShape: number[];
  shaderKey: string;
  // Not a flat layout: the backend then calls main() without an index (we fold a 2-D dispatch ourselves).
  dispatchLayout = { x: [3], y: [1, 2], z: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [THREADS, 1, 1];

  constructor(
    private readonly channels: number,
    outShape: [number, number, number, number],
    private readonly hasBias: boolean,
    private readonly hasResidual: boolean,
    private readonly relu: boolean,
  ) {
    this.outputShape = outShape;
    this.variableNames = ['wino'];
    if (hasBias) this.variableNames.push('bias');
    if (hasResidual) this.variableNames.push('res');
    this.variableComponents = this.variableNames.map(() => 4);
    this.shaderKey = `i2pWinogradOut_${channels}_${hasBias ? 'b' : ''}${hasResidual ? 'r' : ''}${relu ? 'relu' : ''}`;
    const [n, h, w] = outShape;
    this.dispatch = flatDispatch((n * Math.ceil(h / 2) * Math.ceil(w / 2) * channels) / 4);
  }

  getUserCode(): string {
    const L: string[] = [];
    L.push(`fn main() {`, ...tilePrologue('outShape', this.channels));
    for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) L.push(`  let m${i}${j} = wino[${i * 4 + j} * plane + at];`);
    // A^T M: combine rows i for each column j, then (A^T M) A: combine columns.
    for (let r = 0; r < 2; r++) for (let j = 0; j < 4; j++) L.push(`  let s${r}${j} = ${combine(WINOGRAD_AT[r], (i) => `m${i}${j}`)};`);
    if (this.hasBias) L.push(`  let bv = bias[c4];`);
    for (let r = 0; r < 2; r++) for (let c = 0; c < 2; c++) {
      L.push(`  { let oy = ty * 2 + ${r}; let ox = tx * 2 + ${c};`);
      L.push(`    if (oy < H && ox < W_) {`);
      L.push(`      let o = ((b * H + oy) * W_ + ox) * C4 + c4;`);
      L.push(`      var v = ${combine(WINOGRAD_AT[c], (j) => `s${r}${j}`)};`);
      if (this.hasBias) L.push(`      v = v + bv;`);
      if (this.hasResidual) L.push(`      v = v + res[o];`);
      if (this.relu) L.push(`      v = max(v, vec4<f32>(0.0));`);
      L.push(`      result[o] = v; } }`);
    }
    L.push(`}`);
    return L.join('\n');
  }
}

/** `c[0]*t(0) + c[1]*t(1) + ...` for coefficients in {-1, 0, 1}, as WGSL adds and subtracts. */
function combine(coeffs: readonly number[], term: (k: number) => string): string {
  let s = '';
  coeffs.forEach((c, k) => {
    if (c === 0) return;
    if (c !== 1 && c !== -1) throw new Error('combine: coefficients must be -1, 0 or 1');
    s += s === '' ? (c === 1 ? term(k) : `-${term(k)}`) : ` ${c === 1 ? '+' : '-'} ${term(k)}`;
  });
  return s;
}

/** Bytes the Winograd GEMM output M may take before a batch is run in image chunks. */
const MAX_CHUNK_BYTES = 1 << 30;

/**
 * Stride-1 pad-1 3x3 convolution of x NHWC with the prepared U [16, in, out] (+ bias, + residual
 * of the output's shape, then ReLU). Must run on the webgpu backend. Batches whose transformed
 * tiles would exceed a buffer binding run in image chunks (each image's numbers are unchanged).
 */
export function conv2dWinograd(
  x: tf.Tensor4D,
  u: tf.Tensor3D,
  bias: tf.Tensor1D | null,
  opts: ConvOptions,
  tile?: ConvTile,
  maxChunkBytes = MAX_CHUNK_BYTES,
): tf.Tensor4D {
  const [n, h, w, cin] = x.shape;
  const [e, ucin, cout] = u.shape;
  if (e !== 16 || ucin !== cin) throw new Error(`conv2dWinograd: input has ${cin} channels, U is [${u.shape}] (expects [16, ${cin}, out])`);
  if (cin % 4 !== 0 || cout % 4 !== 0) throw new Error(`conv2dWinograd: channels must be multiples of 4, got ${cin} -> ${cout}`);
  if (!winogradOptionsFit({ ...opts, winograd: true })) throw new Error('conv2dWinograd: stride 1, pad 1 and no upsampled residual only');
  const residual = opts.residual;
  if (residual !== undefined && !(residual.shape[0] === n && residual.shape[1] === h && residual.shape[2] === w && residual.shape[3] === cout)) {
    throw new Error(`conv2dWinograd: residual shape ${residual.shape} does not fit output ${[n, h, w, cout]}`);
  }
  const tilesPerImage = Math.ceil(h / 2) * Math.ceil(w / 2);
  const limit = Math.min(maxChunkBytes, webgpuBackend().device.limits.maxStorageBufferBindingSize);
  const perImage = 16 * tilesPerImage * cout * 4;
  const chunk = Math.max(1, Math.floor(limit / perImage));
  return tf.tidy(() => {
    if (n <= chunk) return winogradOnce(x, u, bias, opts.relu, residual, tile);
    const parts: tf.Tensor4D[] = [];
    for (let b = 0; b < n; b += chunk) {
      const size = Math.min(chunk, n - b);
      const xs = tf.slice(x, [b, 0, 0, 0], [size, h, w, cin]);
      const rs = residual === undefined ? undefined : tf.slice(residual, [b, 0, 0, 0], [size, h, w, cout]);
      parts.push(winogradOnce(xs, u, bias, opts.relu, rs, tile));
    }
    return tf.concat4d(parts, 0);
  });
}

function winogradOnce(
  x: tf.Tensor4D,
  u: tf.Tensor3D,
  bias: tf.Tensor1D | null,
  relu: boolean,
  residual: tf.Tensor4D | undefined,
  tile?: ConvTile,
): tf.Tensor4D {
  const [n, h, w, cin] = x.shape;
  const cout = u.shape[2];
  const tiles = n * Math.ceil(h / 2) * Math.ceil(w / 2);
  const gemm = new FusedConvProgram(
    {
      kh: 1, kw: 1, cin, cout, stride: 1, pad: 0, relu: false, hasBias: false, residual: 'none',
      tile: tile ?? chooseTile(16 * tiles, cout), batched: true, winogradInput: true,
    },
    [16, 1, tiles, cout],
  );
  const m = runProgram<tf.Rank.R4>(gemm, [x, u]);
  const inputs: tf.Tensor[] = [m];
  if (bias !== null) inputs.push(bias);
  if (residual !== undefined) inputs.push(residual);
  return runProgram<tf.Rank.R4>(new WinogradOutputProgram(cout, [n, h, w, cout], bias !== null, residual !== undefined, relu), inputs);
}
