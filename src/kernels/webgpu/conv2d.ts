// Implicit-GEMM NHWC convolution for the webgpu backend, with bias, residual add (same size, or a
// nearest-upsampled smaller map: the FPN top-down path) and ReLU fused into the epilogue.
//
// GEMM view: rows m = output pixels (b, oy, ox), columns n = output channels, reduction
// k = (ky, kx, ci), which is exactly the row-major order of tfjs filters (kh, kw, in, out), so the
// filter is the B matrix as stored. A is never materialised: each k-tile gathers its input pixels
// (zero outside the image, i.e. PyTorch's symmetric zero padding). 16x16 threads per workgroup;
// shared-memory tiles of BM x BK (A, k-major) and BK x BN (B); each thread keeps a
// (BM/16) x (BN/16) register tile and prefetches the next k-tile into registers while computing.
// Fully connected layers are the 1x1 case (H = 1, W = rows), see `linearFused`.
import * as tf from '@tensorflow/tfjs-core';
import { convOutputSize } from '../../ops/size';
import { runProgram, WebGPUProgram } from './program';
import { WINOGRAD_F4_BT } from '../../ops/winograd_f4';

export interface ConvOptions {
  stride: number;
  /** Symmetric zero padding on each side (PyTorch's `padding`). */
  pad: number;
  relu: boolean;
  /** Added before the ReLU: same shape as the output, or a smaller map when `upsampleResidual`. */
  residual?: tf.Tensor4D;
  /** Read `residual` with nearest-neighbour upsampling to the output size (F.interpolate 'nearest'). */
  upsampleResidual?: boolean;
  /**
   * Let this call take the Winograd path (webgpu kernels, a filter given to `prepareConvFilter`,
   * stride 1, pad 1). The caller decides per layer and level, never per batch, so an image's
   * numbers do not depend on its batch.
   */
  winograd?: boolean;
  /**
   * The wasm backend only, one image: compute output rows [start, end) alone. The output has the
   * whole map's shape; its other rows are left unset (another thread fills them, see
   * Backbone.bodyShared). Each row computed is the bits of the whole map's (`Kernels.rowAlign`
   * gives the multiple `start` must be).
   */
  rows?: Rows;
  /** With `rows`: the output is those rows alone, [N, end - start, W, C] (the row-band path only: the stem and the small 3x3 filters, see Kernels.conv). */
  bandOnly?: boolean;
  /**
   * Our webgpu kernels: where the output channels are not a multiple of 4, keep the zeros that
   * pad them to one (the vec4 layout our programs write) instead of slicing them off: one
   * dispatch fewer, for a consumer that reads the channels by the output's shape. Elsewhere the
   * output has the filter's channels either way.
   */
  paddedChannels?: boolean;
}

/** Output rows [start, end) of a map. */
export type Rows = readonly [number, number];

/** Tile shape of one workgroup: BM output pixels x BN output channels, BK reduction steps (16 unless given). */
export interface ConvTile {
  bm: 64 | 128;
  bn: 64 | 128;
  bk?: 16 | 32;
}

const BK = 16;
const THREADS = 256;
// Enough workgroups to give each of the ~132 SMs of an H100/H200 two resident workgroups.
const FULL_WAVE = 264;


/** Largest tile that still fills the GPU: small late layers trade register reuse for parallelism. */
export function chooseTile(rows: number, cols: number): ConvTile {
  const count = (bm: number, bn: number): number => Math.ceil(rows / bm) * Math.ceil(cols / bn);
  if (cols > 64 && count(128, 128) >= FULL_WAVE) return { bm: 128, bn: 128 };
  if (count(128, 64) >= FULL_WAVE) return { bm: 128, bn: 64 };
  return { bm: 64, bn: 64 };
}

export interface ConvShaderSpec {
  kh: number;
  kw: number;
  cin: number;
  cout: number;
  stride: number;
  pad: number;
  relu: boolean;
  hasBias: boolean;
  residual: 'none' | 'same' | 'upsample';
  tile: ConvTile;
  /**
   * 1x1 only: independent GEMMs (Winograd's 16 or 36 transformed components), one per workgroup z
   * and output batch index: x [E, 1, rows, in], W [E, in, out], output [E, 1, rows, out].
   */
  batched?: boolean;
  /**
   * Batched only: A is not read from an [E, 1, rows, in] tensor but computed while loading from
   * the conv input x [N, H, W, in], for Winograd F(m x m, 3x3) with m = this value: row r is tile
   * r (m x m outputs, (m + 2) x (m + 2) input patch d at (m ty - 1, m tx - 1)) and GEMM z is
   * component (z / (m + 2), z % (m + 2)) of B^T d B.
   */
  winogradInput?: 2 | 4;
}

function specKey(s: ConvShaderSpec): string {
  return `i2pConv_${s.kh}x${s.kw}_${s.cin}_${s.cout}_s${s.stride}_p${s.pad}_${s.relu ? 'r' : ''}${s.hasBias ? 'b' : ''}` +
    `_${s.residual}_${s.tile.bm}x${s.tile.bn}x${s.tile.bk ?? BK}${s.batched ? '_z' : ''}${s.winogradInput ? `w${s.winogradInput}` : ''}`;
}

/**
 * WGSL body (after the backend's generated header) for one conv configuration. Channel counts
 * are multiples of 4 here (conv2dFused pads), so every load and store is a vec4.
 */
export function convShaderSource(s: ConvShaderSpec): string {
  const { bm, bn } = s.tile;
  const bk = s.tile.bk ?? BK;
  const rm = bm / 64; // row groups of 4 per thread, 16 threads apart
  const rn = bn / 64; // column groups of 4 per thread
  if (s.cin % 4 !== 0 || s.cout % 4 !== 0) throw new Error('convShaderSource: channels must be multiples of 4');
  const batched = s.batched === true;
  if (batched && (s.kh !== 1 || s.kw !== 1 || s.stride !== 1 || s.pad !== 0 || s.hasBias || s.residual !== 'none' || s.relu)) {
    throw new Error('convShaderSource: batched GEMMs are plain 1x1 (no bias, residual or ReLU)');
  }
  const wino = s.winogradInput !== undefined;
  if (wino && !batched) throw new Error('convShaderSource: the Winograd input transform needs batched GEMMs');
  // Cin % 16 == 0: a whole k-tile is 16 channels of one tap, decoded once per tile; else each
  // vec4 (4 channels of one tap) decodes its own tap.
  const tileTap = s.cin % bk === 0;
  const ktot = s.kh * s.kw * s.cin;
  const lines: string[] = [];
  const L = (t: string): void => {
    lines.push(t);
  };

  L(`const BM = ${bm}; const BN = ${bn}; const BK = ${bk};`);
  L(`const CIN = ${s.cin}; const COUT = ${s.cout}; const KW = ${s.kw}; const KTOT = ${ktot};`);
  L(`const STRIDE = ${s.stride}; const PAD = ${s.pad};`);
  L(`var<workgroup> As: array<vec4<f32>, ${(bk * bm) / 4}>;`);
  L(`var<workgroup> Bs: array<vec4<f32>, ${(bk * bn) / 4}>;`);
  L(`fn main() {`);
  L(`  let tx = i32(localId.x); let ty = i32(localId.y); let tid = ty * 16 + tx;`);
  L(`  let n0 = i32(workgroupId.x) * BN; let m0 = i32(workgroupId.y) * BM;`);
  L(`  let HO = uniforms.outShape.y; let WO = uniforms.outShape.z;`);
  // Batched: rows of one GEMM only; the GEMM's index is the workgroup's z.
  L(batched ? `  let zb = i32(workgroupId.z); let M = HO * WO;` : `  let M = uniforms.outShape.x * HO * WO;`);
  L(`  let H = uniforms.xShape.y; let W_ = uniforms.xShape.z;`);

  // Per-thread A-loader rows are fixed for the whole k loop: decode their pixels once.
  const aLoads = (bm * bk) / 4 / THREADS;
  if (s.winogradInput === 4) {
    lines.push(...winogradF4LoaderSetup(aLoads, bk, THREADS));
  } else if (wino) {
    // Component (i, j) of B^T d B is sum over rows p in {PA, PB} and columns q in {QA, QB} of
    // sign * d[p][q]: each row of B^T has two non-zero entries, +-1.
    L(`  let wi = zb / 4; let wj = zb - wi * 4;`);
    // B^T rows: 0 -> d0 - d2, 1 -> d1 + d2, 2 -> -d1 + d2, 3 -> d1 - d3.
    L(`  let PA = select(1, 0, wi == 0); let PB = select(2, 3, wi == 3);`);
    L(`  let QA = select(1, 0, wj == 0); let QB = select(2, 3, wj == 3);`);
    L(`  let SA = select(1.0, -1.0, wi == 2); let SB = select(1.0, -1.0, wi == 0 || wi == 3);`);
    L(`  let TA = select(1.0, -1.0, wj == 2); let TB = select(1.0, -1.0, wj == 0 || wj == 3);`);
    L(`  let TW = (W_ + 1) / 2; let TT = ((H + 1) / 2) * TW;`);
    for (let l = 0; l < aLoads; l++) {
      L(`  let aM${l} = (tid + ${l * THREADS}) / ${bk / 4}; let aK${l} = (tid + ${l * THREADS}) % ${bk / 4};`);
      L(`  let aT${l} = m0 + aM${l}; let aOk${l} = aT${l} < M;`);
      L(`  let aB${l} = aT${l} / TT; let aR${l} = aT${l} - aB${l} * TT; let aTy${l} = aR${l} / TW; let aTx${l} = aR${l} - aTy${l} * TW;`);
      L(`  let ya${l} = aTy${l} * 2 - 1 + PA; let yb${l} = aTy${l} * 2 - 1 + PB; let xa${l} = aTx${l} * 2 - 1 + QA; let xb${l} = aTx${l} * 2 - 1 + QB;`);
      L(`  let okYa${l} = aOk${l} && ya${l} >= 0 && ya${l} < H; let okYb${l} = aOk${l} && yb${l} >= 0 && yb${l} < H;`);
      L(`  let okXa${l} = xa${l} >= 0 && xa${l} < W_; let okXb${l} = xb${l} >= 0 && xb${l} < W_;`);
      // Element offsets of the four pixels, -1 where the pixel is padding.
      for (const [name, y, x] of [['aa', 'a', 'a'], ['ab', 'a', 'b'], ['ba', 'b', 'a'], ['bb', 'b', 'b']]) {
        L(`  let p${name}${l} = select(-1, ((aB${l} * H + y${y}${l}) * W_ + x${x}${l}) * CIN, okY${y}${l} && okX${x}${l});`);
      }
      L(`  var ra${l} = vec4<f32>(0.0);`);
    }
  }
  for (let l = 0; l < (wino ? 0 : aLoads); l++) {
    L(`  let aM${l} = (tid + ${l * THREADS}) / ${bk / 4}; let aK${l} = (tid + ${l * THREADS}) % ${bk / 4};`);
    L(`  let aPix${l} = m0 + aM${l}; let aOk${l} = aPix${l} < M;`);
    L(batched ? `  let aB${l} = zb; let aR${l} = aPix${l};` : `  let aB${l} = aPix${l} / (HO * WO); let aR${l} = aPix${l} - aB${l} * HO * WO;`);
    L(`  let aOy${l} = aR${l} / WO; let aOx${l} = aR${l} - aOy${l} * WO;`);
    L(`  let aIy${l} = aOy${l} * STRIDE - PAD; let aIx${l} = aOx${l} * STRIDE - PAD; let aBase${l} = aB${l} * H * W_;`);
    L(`  var ra${l} = vec4<f32>(0.0);`);
  }
  const bLoads = (bn * bk) / 4 / THREADS;
  for (let l = 0; l < bLoads; l++) {
    L(`  let bK${l} = (tid + ${l * THREADS}) / ${bn / 4}; let bN${l} = n0 + ((tid + ${l * THREADS}) % ${bn / 4}) * 4;`);
    L(`  var rb${l} = vec4<f32>(0.0);`);
  }
  for (let r = 0; r < rm; r++) for (let j = 0; j < 4; j++) for (let c = 0; c < rn; c++) {
    L(`  var acc${r}_${j}_${c} = vec4<f32>(0.0);`);
  }

  const gather = (l: number, ci: string): string[] => [
    `  { let iy = aIy${l} + ky; let ix = aIx${l} + kx; ra${l} = vec4<f32>(0.0);`,
    `    if (aOk${l} && iy >= 0 && iy < H && ix >= 0 && ix < W_) {`,
    `      ra${l} = x[((aBase${l} + iy * W_ + ix) * CIN + ${ci}) / 4]; } }`,
  ];
  const loadA = (k0: string): string[] => {
    const out: string[] = [];
    if (s.winogradInput === 4) {
      for (let l = 0; l < aLoads; l++) out.push(...winogradF4Load(l, k0));
      return out;
    }
    if (wino) {
      for (let l = 0; l < aLoads; l++) {
        out.push(`{ let ci = ${k0} + aK${l} * 4; ra${l} = vec4<f32>(0.0);`);
        out.push(`  if (ci < CIN) {`);
        for (const name of ['aa', 'ab', 'ba', 'bb']) {
          out.push(`    var d${name} = vec4<f32>(0.0); if (p${name}${l} >= 0) { d${name} = x[(p${name}${l} + ci) / 4]; }`);
        }
        out.push(`    ra${l} = SA * (TA * daa + TB * dab) + SB * (TA * dba + TB * dbb); } }`);
      }
      return out;
    }
    if (tileTap) {
      out.push(`{ let kpos = ${k0} / CIN; let ci0 = ${k0} - kpos * CIN; let ky = kpos / KW; let kx = kpos - ky * KW;`);
      for (let l = 0; l < aLoads; l++) out.push(...gather(l, `ci0 + aK${l} * 4`));
      out.push(`}`);
    } else {
      for (let l = 0; l < aLoads; l++) {
        out.push(`{ let k = ${k0} + aK${l} * 4; ra${l} = vec4<f32>(0.0);`);
        out.push(`  if (k < KTOT) { let kpos = k / CIN; let ci = k - kpos * CIN; let ky = kpos / KW; let kx = kpos - ky * KW;`);
        out.push(...gather(l, 'ci'), `} }`);
      }
    }
    return out;
  };
  const loadB = (k0: string): string[] => {
    const out: string[] = [];
    for (let l = 0; l < bLoads; l++) {
      out.push(`{ let k = ${k0} + bK${l}; rb${l} = vec4<f32>(0.0);`);
      out.push(`  if (k < KTOT && bN${l} < COUT) { rb${l} = W[((${batched ? 'zb * KTOT + ' : ''}k) * COUT + bN${l}) / 4]; } }`);
    }
    return out;
  };
  const storeTiles = (): string[] => {
    const out: string[] = [];
    for (let l = 0; l < aLoads; l++) {
      // k-major A tile: element (k, m) at As[k * BM/4 + m/4][m % 4]
      for (let e = 0; e < 4; e++) out.push(`As[(aK${l} * 4 + ${e}) * ${bm / 4} + aM${l} / 4][aM${l} % 4] = ra${l}[${e}];`);
    }
    for (let l = 0; l < bLoads; l++) out.push(`Bs[bK${l} * ${bn / 4} + (tid + ${l * THREADS}) % ${bn / 4}] = rb${l};`);
    return out;
  };

  L(`  let nk = (KTOT + BK - 1) / BK;`);
  lines.push(...loadA('0'), ...loadB('0'));
  L(`  for (var t = 0; t < nk; t++) {`);
  lines.push(...storeTiles());
  L(`    workgroupBarrier();`);
  L(`    if (t + 1 < nk) {`);
  lines.push(...loadA('(t + 1) * BK'), ...loadB('(t + 1) * BK'));
  L(`    }`);
  L(`    for (var k = 0; k < BK; k++) {`);
  for (let r = 0; r < rm; r++) L(`      let a${r} = As[k * ${bm / 4} + ty + ${r * 16}];`);
  for (let c = 0; c < rn; c++) L(`      let b${c} = Bs[k * ${bn / 4} + tx + ${c * 16}];`);
  for (let r = 0; r < rm; r++) for (let j = 0; j < 4; j++) for (let c = 0; c < rn; c++) {
    L(`      acc${r}_${j}_${c} = fma(vec4<f32>(a${r}[${j}]), b${c}, acc${r}_${j}_${c});`);
  }
  L(`    }`);
  L(`    workgroupBarrier();`);
  L(`  }`);

  // Epilogue: bias, residual, ReLU, store.
  if (s.residual === 'upsample') {
    L(`  let HR = uniforms.resShape.y; let WR = uniforms.resShape.z;`);
    L(`  let scaleY = f32(HR) / f32(HO); let scaleX = f32(WR) / f32(WO);`);
  }
  for (let r = 0; r < rm; r++) for (let j = 0; j < 4; j++) {
    L(`  { let m = m0 + (ty + ${r * 16}) * 4 + ${j};`);
    L(`    if (m < M) {`);
    if (s.residual === 'upsample') {
      L(`      let b = m / (HO * WO); let rem = m - b * HO * WO; let oy = rem / WO; let ox = rem - oy * WO;`);
      L(`      let ry = min(i32(floor(f32(oy) * scaleY)), HR - 1); let rx = min(i32(floor(f32(ox) * scaleX)), WR - 1);`);
      L(`      let rrow = ((b * HR + ry) * WR + rx) * COUT;`);
    } else if (s.residual === 'same') {
      L(`      let rrow = m * COUT;`);
    }
    for (let c = 0; c < rn; c++) {
      L(`      { let n = n0 + (tx + ${c * 16}) * 4; var v = acc${r}_${j}_${c};`);
      L(`        if (n < COUT) {`);
      if (s.hasBias) L(`          v = v + bias[n / 4];`);
      if (s.residual !== 'none') L(`          v = v + res[(rrow + n) / 4];`);
      if (s.relu) L(`          v = max(v, vec4<f32>(0.0));`);
      L(`          result[((${batched ? 'zb * M + ' : ''}m) * COUT + n) / 4] = v; } }`);
    }
    L(`    } }`);
  }
  L(`}`);
  return lines.join('\n');
}

/**
 * Tap positions (-1: none) and coefficients of each row of the F(4x4, 3x3) B^T, four per row
 * (rows 0 and 5 have three non-zero entries, rows 1-4 four), as WGSL vec4 constructors.
 */
function f4Taps(): { pos: string[]; coef: string[] } {
  const pos: string[] = [];
  const coef: string[] = [];
  for (const row of WINOGRAD_F4_BT) {
    const taps = row.flatMap((c, k) => (c === 0 ? [] : [[k, c]]));
    while (taps.length < 4) taps.push([-1, 0]);
    pos.push(`vec4<i32>(${taps.map(([k]) => k).join(', ')})`);
    coef.push(`vec4<f32>(${taps.map(([, c]) => `${c}.0`).join(', ')})`);
  }
  return { pos, coef };
}

/**
 * F(4x4, 3x3) input transform inside the GEMM's A loads, set-up part: this GEMM's component
 * (wi, wj) picks four rows and four columns of the 6x6 patch with their B^T coefficients, and
 * each A-loader row (a tile) decodes the four row offsets and four columns it reads (-1 where the
 * pixel is padding or the tap is absent), once for the whole k loop.
 * Why it is an option and not the default: each A element costs 16 vec4 loads and 16 FMAs (4 and
 * 4 adds in F(2x2)), redone for every column block of workgroups, and the offsets take 8 more
 * registers per loader row in a kernel that is register-bound; the separate input transform
 * (winograd.ts) writes and reads V [36, tiles, cin] once instead. Which wins is measured, not
 * assumed (IMG2POSE_WINOGRAD_F4_FUSED_INPUT).
 */
function winogradF4LoaderSetup(aLoads: number, bk: number, threads: number): string[] {
  const { pos, coef } = f4Taps();
  const out: string[] = [];
  const L = (t: string): void => {
    out.push(t);
  };
  L(`  var btPos = array<vec4<i32>, 6>(${pos.join(', ')});`);
  L(`  var btCoef = array<vec4<f32>, 6>(${coef.join(', ')});`);
  L(`  let wi = zb / 6; let wj = zb - wi * 6;`);
  L(`  let rowTap = btPos[wi]; let rowC = btCoef[wi]; let colTap = btPos[wj]; let colC = btCoef[wj];`);
  L(`  let TW = (W_ + 3) / 4; let TT = ((H + 3) / 4) * TW;`);
  for (let l = 0; l < aLoads; l++) {
    L(`  let aM${l} = (tid + ${l * threads}) / ${bk / 4}; let aK${l} = (tid + ${l * threads}) % ${bk / 4};`);
    L(`  let aT${l} = m0 + aM${l}; let aOk${l} = aT${l} < M;`);
    L(`  let aB${l} = aT${l} / TT; let aR${l} = aT${l} - aB${l} * TT; let aTy${l} = aR${l} / TW; let aTx${l} = aR${l} - aTy${l} * TW;`);
    for (let p = 0; p < 4; p++) {
      L(`  let y${p}_${l} = aTy${l} * 4 - 1 + rowTap[${p}];`);
      L(`  let r${p}_${l} = select(-1, (aB${l} * H + y${p}_${l}) * W_, aOk${l} && rowTap[${p}] >= 0 && y${p}_${l} >= 0 && y${p}_${l} < H);`);
      L(`  let x${p}_${l} = aTx${l} * 4 - 1 + colTap[${p}];`);
      L(`  let c${p}_${l} = select(-1, x${p}_${l}, colTap[${p}] >= 0 && x${p}_${l} >= 0 && x${p}_${l} < W_);`);
    }
    L(`  var ra${l} = vec4<f32>(0.0);`);
  }
  return out;
}

/**
 * One A load of the in-GEMM F(4x4, 3x3) input transform: component (wi, wj) of B^T d B for 4
 * channels, combining each of the four columns over its four rows first (the order of the
 * separate transform in winograd.ts), padding and absent taps reading zero.
 */
function winogradF4Load(l: number, k0: string): string[] {
  const out = [`{ let ci = ${k0} + aK${l} * 4; ra${l} = vec4<f32>(0.0);`, `  if (ci < CIN) {`];
  for (let q = 0; q < 4; q++) {
    out.push(`    var s${q} = vec4<f32>(0.0);`);
    for (let p = 0; p < 4; p++) {
      out.push(`    if (r${p}_${l} >= 0 && c${q}_${l} >= 0) { s${q} = s${q} + rowC[${p}] * x[((r${p}_${l} + c${q}_${l}) * CIN + ci) / 4]; }`);
    }
  }
  out.push(`    ra${l} = colC[0] * s0 + colC[1] * s1 + colC[2] * s2 + colC[3] * s3; } }`);
  return out;
}

export class FusedConvProgram implements WebGPUProgram {
  variableNames: string[];
  variableComponents: number[];
  outputComponent = 4;
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [3], y: [1, 2], z: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [16, 16, 1];

  constructor(private readonly spec: ConvShaderSpec, outShape: [number, number, number, number]) {
    this.outputShape = outShape;
    this.variableNames = ['x', 'W'];
    if (spec.hasBias) this.variableNames.push('bias');
    if (spec.residual !== 'none') this.variableNames.push('res');
    this.variableComponents = this.variableNames.map(() => 4);
    this.shaderKey = specKey(spec);
    const rows = outShape[0] * outShape[1] * outShape[2];
    this.dispatch = spec.batched
      ? [Math.ceil(spec.cout / spec.tile.bn), Math.ceil((outShape[1] * outShape[2]) / spec.tile.bm), outShape[0]]
      : [Math.ceil(spec.cout / spec.tile.bn), Math.ceil(rows / spec.tile.bm), 1];
  }

  getUserCode(): string {
    return convShaderSource(this.spec);
  }
}

const roundUp4 = (v: number): number => Math.ceil(v / 4) * 4;

/** Channel-padded copies of filters and biases, kept per tensor so calls skip a pad dispatch each. */
const paddedCopies = new WeakMap<tf.Tensor, tf.Tensor>();

/**
 * Keeps the vec4-padded copy that conv2dFused would make on every call, for a filter (kh, kw, in,
 * out) and its bias whose channels are not multiples of 4 (the RGB stem, the RPN predictor).
 */
export function preparePadded(w: tf.Tensor4D, bias: tf.Tensor1D | null): void {
  const [, , cin, cout] = w.shape;
  if ((cin % 4 !== 0 || cout % 4 !== 0) && !paddedCopies.has(w)) {
    paddedCopies.set(w, tf.keep(tf.tidy(() => padAxis(padAxis(w, roundUp4(cin), 2), roundUp4(cout)))));
  }
  if (bias !== null && cout % 4 !== 0 && !paddedCopies.has(bias)) paddedCopies.set(bias, tf.keep(padAxis(bias, roundUp4(cout))));
}

export function releasePadded(...tensors: (tf.Tensor | null)[]): void {
  for (const t of tensors) {
    const copy = t && paddedCopies.get(t);
    if (t && copy) {
      copy.dispose();
      paddedCopies.delete(t);
    }
  }
}

/** Zeros appended along `axis` (default: the last) up to length `to`; `t` itself when none are needed. */
function padAxis<T extends tf.Tensor>(t: T, to: number, axis = t.rank - 1): T {
  const extra = to - t.shape[axis];
  if (extra === 0) return t;
  const pads = t.shape.map((_, i) => (i === axis ? [0, extra] : [0, 0])) as [number, number][];
  return tf.pad(t, pads) as T;
}

/**
 * conv2d(x, w) + bias (+ residual) (then ReLU) in one dispatch. x NHWC, w (kh, kw, in, out).
 * Must run on the webgpu backend; `conv2dPortable` is the same function in stock ops.
 */
export function conv2dFused(
  x: tf.Tensor4D,
  w: tf.Tensor4D,
  bias: tf.Tensor1D | null,
  opts: ConvOptions,
  tile?: ConvTile,
): tf.Tensor4D {
  const [n, h, wd, cin] = x.shape;
  const [kh, kw, wcin, cout] = w.shape;
  if (wcin !== cin) throw new Error(`conv2dFused: input has ${cin} channels, filter expects ${wcin}`);
  const ho = convOutputSize(h, kh, opts.stride, opts.pad);
  const wo = convOutputSize(wd, kw, opts.stride, opts.pad);
  const outShape: [number, number, number, number] = [n, ho, wo, cout];
  const residual = opts.residual === undefined ? 'none' : opts.upsampleResidual ? 'upsample' : 'same';
  if (opts.residual !== undefined) {
    const rs = opts.residual.shape;
    const ok = opts.upsampleResidual
      ? rs[0] === n && rs[3] === cout
      : rs.every((d, i) => d === outShape[i]);
    if (!ok) throw new Error(`conv2dFused: residual shape ${rs} does not fit output ${outShape}`);
  }
  return tf.tidy(() => {
    // Channel counts not divisible by 4 (the RGB stem, the 15-channel RPN predictor) are padded
    // with zeros so every access is a vec4; the extra output channels are sliced off.
    const cinP = roundUp4(cin);
    const coutP = roundUp4(cout);
    const spec: ConvShaderSpec = {
      kh, kw, cin: cinP, cout: coutP, stride: opts.stride, pad: opts.pad, relu: opts.relu,
      hasBias: bias !== null, residual, tile: tile ?? chooseTile(n * ho * wo, coutP),
    };
    const inputs: tf.Tensor[] = [padAxis(x, cinP), paddedCopies.get(w) ?? padAxis(padAxis(w, cinP, 2), coutP)];
    if (bias !== null) inputs.push(paddedCopies.get(bias) ?? padAxis(bias, coutP));
    if (opts.residual !== undefined) inputs.push(padAxis(opts.residual, coutP));
    const out = runProgram<tf.Rank.R4>(new FusedConvProgram(spec, [n, ho, wo, coutP]), inputs);
    return coutP === cout || opts.paddedChannels === true ? out : tf.slice(out, [0, 0, 0, 0], [n, ho, wo, cout]);
  });
}

/**
 * `lateral + nearest-upsample(coarse)` (torch interpolate 'nearest': source index floor(d * in / out)).
 * At exactly 2x (always, with sizes padded to 32) a broadcast add over a (2, 2) sub-grid repeats
 * each coarse value without materialising the upsampled map.
 */
export function addUpsampled(lateral: tf.Tensor4D, coarse: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => {
    const [n, h, w, c] = lateral.shape;
    const [, hc, wc] = coarse.shape;
    if (h === 2 * hc && w === 2 * wc) {
      const sum = tf.add(tf.reshape(lateral, [n, hc, 2, wc, 2, c]), tf.reshape(coarse, [n, hc, 1, wc, 1, c]));
      return tf.reshape(sum, [n, h, w, c]);
    }
    return tf.add(lateral, tf.image.resizeNearestNeighbor(coarse, [h, w], false, false));
  });
}

/**
 * The same function as `conv2dFused` in stock tfjs ops (any backend): tf.fused.conv2d with a
 * numeric (symmetric) pad, then the residual add and ReLU as separate ops when there is a residual.
 */
export function conv2dPortable(
  x: tf.Tensor4D,
  w: tf.Tensor4D,
  bias: tf.Tensor1D | null,
  opts: ConvOptions,
): tf.Tensor4D {
  return convEpilogue(opts, (relu) =>
    tf.fused.conv2d({ x, filter: w, strides: opts.stride, pad: opts.pad, bias: bias ?? undefined, activation: relu ? 'relu' : 'linear' }),
  );
}

/**
 * `conv(relu)` (conv + bias, with the ReLU fused when there is no residual), then the residual
 * (maybe upsampled) and the ReLU as separate ops: conv2dPortable's order, for any convolution.
 */
export function convEpilogue(opts: ConvOptions, conv: (relu: boolean) => tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => {
    const residual = opts.residual;
    let y = conv(opts.relu && residual === undefined);
    if (residual !== undefined) {
      y = opts.upsampleResidual ? addUpsampled(y, residual) : tf.add(y, residual);
      if (opts.relu) y = tf.relu(y);
    }
    return y;
  });
}

/** Reductions from this length on are long (fc6's 12544 inputs; the convolutions' are at most 4608). */
const LONG_REDUCTION = 4096;

/**
 * The tile of a dense layer: chooseTile's, except that a long reduction over few rows (one image's
 * fc6: 1000 x 12544 -> 1024) takes 64x128 tiles with bk 32, which halve the barriers per step of K.
 * One head's fc6 on an H100 (`kernels.mjs --tile-sweep`, 2026-12-07): 1.11 ms against 1.31 with
 * 64x64x16 at 1000 rows; from 8000 rows chooseTile's 128x128x16 stays the fastest. The tile does
 * not change an output's bits (each sums its products in the same order in any tile).
 */
export function chooseLinearTile(rows: number, k: number, cols: number): ConvTile {
  const tile = chooseTile(rows, cols);
  return k >= LONG_REDUCTION && cols >= 128 && tile.bm === 64 && tile.bn === 64 ? { bm: 64, bn: 128, bk: 32 } : tile;
}

/** x (rows, in) @ w (in, out) + bias (then ReLU) with the conv kernel as a 1x1 convolution. */
export function linearFused(x: tf.Tensor2D, w: tf.Tensor2D, bias: tf.Tensor1D | null, relu: boolean, tile?: ConvTile): tf.Tensor2D {
  return tf.tidy(() => {
    const [rows, k] = x.shape;
    const outs = w.shape[1];
    tile ??= chooseLinearTile(rows, k, outs);
    // The padded copies `prepareLinear` keeps, as a filter of 1x1; otherwise conv2dFused pads.
    const filter = (paddedCopies.get(w) as tf.Tensor4D | undefined) ?? tf.reshape(w, [1, 1, k, outs]);
    const b = bias && ((paddedCopies.get(bias) as tf.Tensor1D | undefined) ?? bias);
    const out = conv2dFused(tf.reshape(x, [1, 1, rows, k]), filter, b, { stride: 1, pad: 0, relu }, tile);
    const flat = tf.reshape(out, [rows, filter.shape[3]]) as tf.Tensor2D;
    return filter.shape[3] === outs ? flat : tf.slice2d(flat, [0, 0], [rows, outs]);
  });
}

/**
 * Keeps the vec4-padded copies of a linear layer's weight (in, out) and bias whose outputs are
 * not a multiple of 4 (the class score, 2), as `preparePadded` does for a filter: each call of
 * `linearFused` then skips two pad dispatches. `releasePadded(w, bias)` frees them.
 */
export function prepareLinear(w: tf.Tensor2D, bias: tf.Tensor1D | null): void {
  const [k, outs] = w.shape;
  if (outs % 4 === 0 || paddedCopies.has(w)) return;
  paddedCopies.set(w, tf.keep(tf.tidy(() => padAxis(tf.reshape(w, [1, 1, k, outs]), roundUp4(outs)))));
  if (bias !== null && !paddedCopies.has(bias)) paddedCopies.set(bias, tf.keep(padAxis(bias, roundUp4(outs))));
}

/** The same function as `linearFused` in stock tfjs ops. */
export function linearPortable(x: tf.Tensor2D, w: tf.Tensor2D, bias: tf.Tensor1D | null, relu: boolean): tf.Tensor2D {
  return tf.fused.matMul({ a: x, b: w, bias: bias ?? undefined, activation: relu ? 'relu' : 'linear' }) as tf.Tensor2D;
}
