// Winograd F(4x4, 3x3) for the stride-1 3x3 convolutions on the wasm backend (Lavin & Gray 2016):
// each 4x4 block of output pixels comes from its 6x6 input patch d as
//   Y = A^T [ sum_ci (G g G^T) . (B^T d B) ] A,
// 36 products per block and channel pair instead of 144. Per band of tile rows:
//   1. input transform   V[e] = (B^T d B)[e], 36 matrices [tiles, cin]   (WebAssembly SIMD)
//   2. 36 GEMMs          M[e] = V[e] @ U[e]                               (tf.matMul: XNNPACK)
//   3. output transform  y = A^T M A + bias (+ residual) (ReLU), NHWC    (WebAssembly SIMD)
// U = G g G^T is computed in float64 once per filter, on its first use. The transform matrices are
// src/ops/winograd_f4's, shared with the WebGPU path.
// Why: the stride-1 3x3 convolutions are ~90% of the network's FLOPs on the CPU, and XNNPACK's
// direct convolution and its GEMM run at the same rate (wasm SIMD: 128-bit, no FMA), so 4x fewer
// multiplications is the one large step left. Rounding differs from the direct convolution by
// ~1e-6 relative (the transforms' coefficients 4, 5, 8 and 1/6, 1/24; measured in
// __tests__/winograd_wasm.test.ts). Each image's numbers depend only on its own pixels: tiles
// start at each image's origin, read zeros outside the map, each GEMM row is one tile computed
// alone, and whether a layer takes this path depends on its shape only, never on the batch.
import * as tf from '@tensorflow/tfjs-core';
import { asWasmBackend, heapView, outputInto, unsetTensor, WasmBackend } from './backend';
import { WINOGRAD_F4_WASM } from './winograd_wasm';
import { isReleased, packingActive, releaseUnused, usePacked } from './packed';
import { winogradF4Position, winogradF4Terms } from '../../ops/winograd_f4';

/** Transform positions per tile (6 x 6). */
const POSITIONS = 36;

/**
 * Layers with fewer input channels keep the direct convolution: at 64 channels and stride 4
 * Winograd still wins, below that the GEMMs get too thin. Wider layers (ResNet-18's layer4, 512
 * channels at stride 32) keep it too: their maps have few tiles and U would take 4x the filter's
 * memory (36 x 512 x 512 floats, 38 MB per layer, plus XNNPACK's packed copy) for ~0.1 s.
 */
export const WASM_WINOGRAD_MIN_CHANNELS = 64;
export const WASM_WINOGRAD_MAX_CHANNELS = 256;

/**
 * Most bytes of V and M (36 matrices each) one band of tile rows may take: bounds the extra
 * memory of a layer (the wasm heap keeps its high-water mark) while each GEMM keeps hundreds of rows.
 */
const BAND_BYTES = 16 << 20;

/** Whether a filter (kh, kw, in, out) is one this path takes. Depends on the layer only. */
export function wasmWinogradFits(shape: readonly number[]): boolean {
  const [kh, kw, cin, cout] = shape;
  return kh === 3 && kw === 3 && cin % 4 === 0 && cout % 4 === 0 && cin >= WASM_WINOGRAD_MIN_CHANNELS && cin <= WASM_WINOGRAD_MAX_CHANNELS;
}

// --- the tfjs wasm backend, as far as these kernels use it ---------------------------------------

type OutputTransform = (
  mptrs: number, bias: number, res: number, out: number, H: number, W: number, C: number,
  TH: number, TW: number, rowStart: number, rowCount: number,
) => void;

/** output_<residual><relu>. */
type TransformExports = {
  input(x: number, H: number, W: number, C: number, TH: number, TW: number, rowStart: number, rowCount: number, vptrs: number): void;
  filter_u1(u: number, size: number, t0: number, k0: number): void;
  filter_u3(u: number, size: number, ...tk: number[]): void;
  filter_u9(u: number, size: number, ...tk: number[]): void;
  scale_rows(x: number, n: number, out: number, scale: number): void;
} & Record<'output_00' | 'output_01' | 'output_10' | 'output_11', OutputTransform>;

/** Per tfjs wasm backend: our transforms, instantiated on its memory, and 36 pointers of scratch. */
interface Transforms {
  exports: TransformExports;
  memory: WebAssembly.Memory;
  pointers: number;
}

let moduleCache: WebAssembly.Module | null | undefined;
const instances = new WeakMap<object, Transforms>();

function transformModule(): WebAssembly.Module | null {
  if (moduleCache === undefined) {
    moduleCache = null;
    try {
      if (typeof WebAssembly === 'object' && WebAssembly.validate(WINOGRAD_F4_WASM)) moduleCache = new WebAssembly.Module(WINOGRAD_F4_WASM);
    } catch {
      moduleCache = null;
    }
  }
  return moduleCache;
}

/**
 * Compiles the transforms and instantiates them on the active wasm backend ahead of their first
 * use, without blocking. Browsers refuse to compile or instantiate a module over 4 KB (this one is
 * ~26 KB) synchronously on a page's main thread, where the convolutions would then fall back to
 * the direct path; workers and Node allow it, and there this only moves the work earlier. A no-op
 * on other backends and where WebAssembly SIMD is missing.
 */
export async function prepareWasmWinograd(): Promise<void> {
  if (tf.getBackend() !== 'wasm') return;
  const backend = asWasmBackend(tf.backend());
  if (!backend || instances.has(backend)) return;
  if (moduleCache === undefined) {
    let compiled: WebAssembly.Module | null = null;
    try {
      if (typeof WebAssembly === 'object' && WebAssembly.validate(WINOGRAD_F4_WASM)) compiled = await WebAssembly.compile(WINOGRAD_F4_WASM);
    } catch {
      compiled = null;
    }
    // A synchronous compile may have settled it meanwhile.
    if (moduleCache === undefined) moduleCache = compiled;
  }
  if (!moduleCache) return;
  const memory = backend.wasm.asm.memory;
  const instance = await WebAssembly.instantiate(moduleCache, { env: { memory } });
  if (!instances.has(backend)) instances.set(backend, { exports: instance.exports as unknown as TransformExports, memory, pointers: backend.wasm._malloc(POSITIONS * 4) });
}

function transformsFor(backend: WasmBackend): Transforms {
  let t = instances.get(backend);
  if (!t) {
    const module = transformModule();
    if (!module) throw new Error('Winograd on wasm: this runtime has no WebAssembly SIMD');
    const memory = backend.wasm.asm.memory;
    const exports = new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as TransformExports;
    // 36 i32 pointers, allocated once per backend and kept for its life (144 bytes).
    t = { exports, memory, pointers: backend.wasm._malloc(POSITIONS * 4) };
    instances.set(backend, t);
  }
  return t;
}

function offsetOf(backend: WasmBackend, t: tf.TensorInfo | undefined): number {
  const data = t && backend.dataIdMap.get(t.dataId);
  if (!data) throw new Error('Winograd on wasm: a tensor is not on the wasm backend');
  return data.memoryOffset;
}

function setPointers(tr: Transforms, backend: WasmBackend, tensors: tf.TensorInfo[]): void {
  // A fresh view each time: the memory may have grown (and its buffer changed) since the last call.
  const view = new Int32Array(tr.memory.buffer, tr.pointers, POSITIONS);
  tensors.forEach((t, e) => (view[e] = offsetOf(backend, t)));
}

const INPUT_KERNEL = 'Img2PoseWinogradF4Input';
const OUTPUT_KERNEL = 'Img2PoseWinogradF4Output';

interface BandAttrs {
  rowStart: number;
  rowCount: number;
}

function inputKernel({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: unknown }): tf.TensorInfo[] {
  const be = asWasmBackend(backend);
  if (!be) throw new Error(`${INPUT_KERNEL}: the wasm backend only`);
  const { rowStart, rowCount } = attrs as BandAttrs;
  const x = inputs.x;
  if (!x) throw new Error(`${INPUT_KERNEL}: no input x`);
  const [, h, w, c] = x.shape;
  const th = Math.ceil(h / 4);
  const tw = Math.ceil(w / 4);
  const outs: tf.TensorInfo[] = [];
  for (let e = 0; e < POSITIONS; e++) outs.push(be.makeOutput([rowCount * tw, c], 'float32'));
  const tr = transformsFor(be);
  setPointers(tr, be, outs);
  tr.exports.input(offsetOf(be, x), h, w, c, th, tw, rowStart, rowCount, tr.pointers);
  return outs;
}

interface OutputAttrs extends BandAttrs {
  shape: number[];
  relu: boolean;
}

/**
 * Writes one band of tile rows into `target` (when given: the output of the earlier bands, which
 * this kernel hands back as its output; no other reference to it exists) or into a new map.
 */
function outputKernel({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: unknown }): tf.TensorInfo {
  const be = asWasmBackend(backend);
  if (!be) throw new Error(`${OUTPUT_KERNEL}: the wasm backend only`);
  const { rowStart, rowCount, shape, relu } = attrs as OutputAttrs;
  const [, h, w, c] = shape;
  const out = outputInto(be, shape, inputs.target);
  const ms: tf.TensorInfo[] = [];
  for (let e = 0; e < POSITIONS; e++) {
    const m = inputs[`m${e}`];
    if (!m) throw new Error(`${OUTPUT_KERNEL}: no input m${e}`);
    ms.push(m);
  }
  const tr = transformsFor(be);
  setPointers(tr, be, ms);
  const res = inputs.residual ? offsetOf(be, inputs.residual) : 0;
  const fn = tr.exports[`output_${res ? 1 : 0}${relu ? 1 : 0}` as const];
  fn(tr.pointers, offsetOf(be, inputs.bias), res, offsetOf(be, out), h, w, c, Math.ceil(h / 4), Math.ceil(w / 4), rowStart, rowCount);
  return out;
}

function registerKernels(): void {
  // Once per tfjs instance, also when this module is bundled twice.
  if (!tf.getKernel(INPUT_KERNEL, 'wasm')) {
    tf.registerKernel({ kernelName: INPUT_KERNEL, backendName: 'wasm', kernelFunc: inputKernel as unknown as tf.KernelFunc });
  }
  if (!tf.getKernel(OUTPUT_KERNEL, 'wasm')) {
    tf.registerKernel({ kernelName: OUTPUT_KERNEL, backendName: 'wasm', kernelFunc: outputKernel as unknown as tf.KernelFunc });
  }
}

/** Whether the active backend is tfjs's wasm backend and this runtime runs our WebAssembly SIMD. */
export function wasmWinogradAvailable(): boolean {
  return tf.getBackend() === 'wasm' && asWasmBackend(tf.backend()) !== null && transformModule() !== null;
}

const prepared = new WeakMap<tf.Tensor, tf.Tensor2D[]>();

/**
 * The 36 transformed filters of `filter`, made on first use and kept until `releaseWasmWinograd`
 * (the stage that owns the filter calls it through `releaseConvFilter` when disposed).
 */
export function wasmWinogradFilter(filter: tf.Tensor4D): tf.Tensor2D[] {
  let u = prepared.get(filter);
  if (!u) {
    // A filter kept only as XNNPACK's packed copy (the Winograd path was off when it was packed)
    // has no values left to transform.
    if (isReleased(filter)) throw new Error('Winograd on wasm: this filter is kept only as packed for the direct convolution; build the network with the Winograd flag as it will run');
    const [, , cin, cout] = filter.shape;
    const backend = asWasmBackend(tf.backend());
    const tr = backend && filterTransformsOn(backend, filter);
    const values = tr ? null : (filter.dataSync() as Float32Array);
    // Kept out of the caller's tidy scope: they live as long as the filter. Made during a
    // packingRun, each is packed (and its own copy freed) before the next is made, which then
    // takes its place in the heap (see ./packed).
    const packing = packingActive();
    u = [];
    for (let e = 0; e < POSITIONS; e++) {
      let ue: tf.Tensor2D;
      if (backend) {
        // Transformed where the tensors lie: no host array to copy into the heap and collect after.
        ue = unsetTensor<tf.Rank.R2>(backend, [cin, cout]);
        if (tr) filterPosition(tr, offsetOf(backend, filter), offsetOf(backend, ue), cin * cout, e);
        else winogradF4Position(values as Float32Array, cin, cout, e, heapView(backend, ue));
      } else {
        ue = tf.tensor2d(winogradF4Position(values as Float32Array, cin, cout, e, new Float32Array(cin * cout)), [cin, cout]);
      }
      u.push(tf.keep(ue));
      if (packing) {
        tf.tidy(() => {
          gemmU(tf.zeros([1, cin]), ue);
        });
      }
    }
    // In a packingRun the filter's own values are not needed any more either (see ./packed).
    if (packing) releaseUnused(filter);
    prepared.set(filter, u);
  }
  return u;
}

/**
 * Our transforms on `backend`, where they can make `filter`'s U in the heap (the filter lies there,
 * and its size is a multiple of the 4 values a step takes), else null (the host's reference then).
 */
function filterTransformsOn(backend: WasmBackend, filter: tf.Tensor4D): Transforms | null {
  if (transformModule() === null || !backend.dataIdMap.get(filter.dataId) || (filter.shape[2] * filter.shape[3]) % 4 !== 0) return null;
  return transformsFor(backend);
}

/**
 * U[e] of the filter at `filter` (tfjs layout (3, 3, in, out), `size` = in * out) into `u`, in
 * WebAssembly SIMD: winogradF4Position's sums, bit for bit (float64, its order, one rounding).
 */
function filterPosition(tr: Transforms, filter: number, u: number, size: number, e: number): void {
  const { k, taps } = winogradF4Terms(e);
  const t = taps.map((tap) => filter + tap * size * 4);
  if (k.length === 1) tr.exports.filter_u1(u, size, t[0], k[0]);
  else if (k.length === 3) tr.exports.filter_u3(u, size, ...t, ...k);
  else if (k.length === 9) tr.exports.filter_u9(u, size, ...t, ...k);
  else throw new Error(`Winograd on wasm: ${k.length} terms in a filter transform position`);
}

/**
 * A new wasm tensor of `shape` (a filter in tfjs layout, the output channel last) holding
 * `values` with output channel k scaled by `scale[k]`, scaled where it lies in WebAssembly SIMD
 * (scale_rows: foldFrozenBatchNorm's products, bit for bit); null when the active backend is not
 * wasm, this runtime has no WebAssembly SIMD, or the channels are not a multiple of 4.
 */
export function scaledFilterWasm(values: Float32Array, scale: Float64Array, shape: [number, number, number, number]): tf.Tensor4D | null {
  const backend = tf.getBackend() === 'wasm' ? asWasmBackend(tf.backend()) : null;
  const out = shape[3];
  if (!backend || transformModule() === null || out % 4 !== 0 || values.length !== shape.reduce((a, b) => a * b, 1) || scale.length !== out) return null;
  const tr = transformsFor(backend);
  const t = unsetTensor<tf.Rank.R4>(backend, shape);
  const scratch = backend.wasm._malloc(out * 8);
  try {
    // Views made after both allocations: either may have grown the heap.
    heapView(backend, t).set(values);
    new Float64Array(tr.memory.buffer, scratch, out).set(scale);
    tr.exports.scale_rows(offsetOf(backend, t), values.length, out, scratch);
  } finally {
    backend.wasm._free(scratch);
  }
  return t;
}

/** V[e] @ U[e] (XNNPACK packs U[e] for this call: ./packed). */
function gemmU(v: tf.Tensor2D, u: tf.Tensor2D): tf.Tensor2D {
  return usePacked(u, 'matMul linear bias none', () => tf.matMul(v, u));
}

export function releaseWasmWinograd(filter: tf.Tensor): void {
  const u = prepared.get(filter);
  if (u) {
    tf.dispose(u);
    prepared.delete(filter);
  }
}

/**
 * Stride-1 pad-1 3x3 convolution of x NHWC with filter (3, 3, in, out) through F(4x4, 3x3) (+ bias,
 * + residual of the output's shape, then ReLU). The wasm backend only (`wasmWinogradAvailable`).
 * Runs in bands of tile rows of at most `bandBytes` of V and M; each tile's numbers are the same
 * whatever the band. With `rows` (one image; `start` a multiple of 4), only those output rows are
 * computed, in a map of the whole output's shape whose other rows are left unset.
 */
export function conv2dWinogradWasm(
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  bias: tf.Tensor1D | null,
  relu: boolean,
  residual?: tf.Tensor4D,
  bandBytes = BAND_BYTES,
  rows?: readonly [number, number],
): tf.Tensor4D {
  const [n, h, w, cin] = x.shape;
  const [kh, kw, fcin, cout] = filter.shape;
  if (kh !== 3 || kw !== 3 || fcin !== cin) throw new Error(`conv2dWinogradWasm: a 3x3 filter over ${cin} channels expected, got [${filter.shape}]`);
  if (cin % 4 !== 0 || cout % 4 !== 0) throw new Error(`conv2dWinogradWasm: channels must be multiples of 4, got ${cin} -> ${cout}`);
  const shape: [number, number, number, number] = [n, h, w, cout];
  if (residual !== undefined && !residual.shape.every((d, i) => d === shape[i])) {
    throw new Error(`conv2dWinogradWasm: residual shape ${residual.shape} does not fit output ${shape}`);
  }
  registerKernels();
  const u = wasmWinogradFilter(filter);
  const tw = Math.ceil(w / 4);
  let [first, end] = [0, n * Math.ceil(h / 4)];
  if (rows) {
    const [start, stop] = rows;
    if (n !== 1 || start % 4 !== 0 || !(start >= 0 && start < stop && stop <= h)) {
      throw new Error(
        `conv2dWinogradWasm: rows [${start}, ${stop}) of one image's ${h}, starting at a multiple of 4, expected (batch of ${n})`,
      );
    }
    [first, end] = [start / 4, Math.ceil(stop / 4)];
  }
  const band = Math.max(1, Math.floor(bandBytes / (POSITIONS * tw * (cin + cout) * 4)));
  const b = bias ?? tf.zeros([cout]);
  let out: tf.Tensor4D | null = null;
  try {
    for (let rowStart = first; rowStart < end; rowStart += band) {
      const rowCount = Math.min(band, end - rowStart);
      const next: tf.Tensor4D = tf.tidy(() => {
        const v = tf.engine().runKernel(INPUT_KERNEL, { x }, { rowStart, rowCount } as unknown as tf.NamedAttrMap) as tf.Tensor2D[];
        const inputs: tf.NamedTensorMap = { bias: b };
        v.forEach((ve, e) => {
          inputs[`m${e}`] = gemmU(ve, u[e]);
          ve.dispose();
        });
        if (out) inputs.target = out;
        if (residual) inputs.residual = residual;
        const attrs = { rowStart, rowCount, shape, relu };
        return tf.engine().runKernel(OUTPUT_KERNEL, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor4D;
      });
      out?.dispose();
      out = next;
    }
  } finally {
    if (b !== bias) b.dispose();
  }
  if (!out) throw new Error('conv2dWinogradWasm: empty input');
  return out;
}
