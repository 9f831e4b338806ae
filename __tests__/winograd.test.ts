// Winograd F(2x2, 3x3) off the GPU: the transforms, layouts and tile edges of src/kernels/webgpu/winograd.ts
// checked through its host transcription (same three steps as the WGSL) against a float64 direct
// convolution, plus the filter registry's lifetime; F(4x4, 3x3)'s filter transform against the wasm
// path's float64 one, and the tile flag's registry. The WGSL itself runs on a WebGPU device in
// __tests__/webgpu_kernels.test.ts and bench/gpu_kernels.ts against the direct kernel and a
// float64 convolution.
import * as tf from '@tensorflow/tfjs';
import {
  convShaderSource,
  prepareConvFilter,
  releaseConvFilter,
  winogradFilter,
  WINOGRAD_MIN_CHANNELS,
} from '../src/kernels/webgpu';
import { convReference64 } from './utils/kernel_reference';
import { lcgValues, relErr } from './utils/lcg';
import { winogradHost } from './utils/winograd_host';
import {
  prepareWinograd, winogradFilterFits, winogradFilterFor, winogradOptionsFit, winogradTile, WINOGRAD_TILE_FLAG, WINOGRAD_AUTO_F4_MAX_CHANNELS,
} from '../src/kernels/webgpu/winograd';
import { winogradF4Filter } from '../src/ops/winograd_f4';
import { wasmWinogradAvailable } from '../src/kernels/wasm/winograd';

/** Direct 3x3 stride-1 pad-1 convolution in float64. */
function direct(x: Float32Array, [n, h, w, cin]: number[], f: Float32Array, cout: number, b: Float32Array, relu: boolean): Float64Array {
  return convReference64({ x: [n, h, w, cin], k: 3, cout, stride: 1, pad: 1, relu }, { x, w: f, b });
}

describe('Winograd F(2x2, 3x3)', () => {
  // Odd and even sizes (a last tile half outside), one pixel wide, batches of several images.
  it.each([
    [[1, 7, 9, 8], 12, true],
    [[2, 6, 5, 4], 8, false],
    [[3, 1, 4, 12], 4, true],
    [[1, 11, 2, 16], 20, false],
  ] as [[number, number, number, number], number, boolean][])('x %j -> %i channels equals the direct convolution', (shape, cout, relu) => {
    const [n, h, w, cin] = shape;
    const x = lcgValues(n * h * w * cin, 11);
    const f = lcgValues(9 * cin * cout, 12).map((v) => v * Math.sqrt(3 / (9 * cin)));
    const b = lcgValues(cout, 13).map((v) => v * 0.1);
    const u = tf.tidy(() => winogradFilter(tf.tensor4d(f, [3, 3, cin, cout])).dataSync() as Float32Array);
    const got = winogradHost(x, shape, u, cout, b, relu);
    const want = direct(x, shape, f, cout, b, relu);
    const e = relErr(got, want);
    expect(e).toBeLessThan(2e-6);
    // The check can fail: a filter transformed for the wrong tap order is far off.
    const flipped = f.slice();
    for (let t = 0; t < 9; t++) flipped.set(f.subarray((8 - t) * cin * cout, (9 - t) * cin * cout), t * cin * cout);
    const uBad = tf.tidy(() => winogradFilter(tf.tensor4d(flipped, [3, 3, cin, cout])).dataSync() as Float32Array);
    expect(relErr(winogradHost(x, shape, uBad, cout, b, relu), want)).toBeGreaterThan(1e-2);
  });

  it('takes only 3x3 stride-1 pad-1 layers with enough channels, decided by the layer alone', () => {
    expect(winogradFilterFits([3, 3, 256, 256])).toBe(true);
    expect(winogradFilterFits([3, 3, WINOGRAD_MIN_CHANNELS, 4])).toBe(true);
    expect(winogradFilterFits([3, 3, WINOGRAD_MIN_CHANNELS - 4, 256])).toBe(false);
    expect(winogradFilterFits([1, 1, 256, 256])).toBe(false);
    expect(winogradFilterFits([7, 7, 256, 256])).toBe(false);
    expect(winogradFilterFits([3, 3, 256, 15])).toBe(false);
    expect(winogradOptionsFit({ stride: 1, pad: 1, relu: true, winograd: true })).toBe(true);
    expect(winogradOptionsFit({ stride: 1, pad: 1, relu: true })).toBe(false); // the caller did not ask
    expect(winogradOptionsFit({ stride: 2, pad: 1, relu: true, winograd: true })).toBe(false);
    expect(winogradOptionsFit({ stride: 1, pad: 0, relu: true, winograd: true })).toBe(false);
  });

  it('keeps one transformed filter per backend path that uses it, made once, freed on release', () => {
    expect(tf.getBackend()).toBe('wasm');
    const w = tf.zeros([3, 3, 256, 256]) as tf.Tensor4D;
    const before = tf.memory().numTensors;
    // On wasm: the wasm path's F(4x4, 3x3) filter, 36 [in, out] matrices (Node runs its module).
    expect(wasmWinogradAvailable()).toBe(true);
    const wasmMatrices = 36;
    prepareConvFilter(w);
    prepareConvFilter(w); // once per filter
    expect(tf.memory().numTensors).toBe(before + wasmMatrices);
    // ...and not the webgpu path's Winograd filter, which only its own preparation makes.
    expect(winogradFilterFor(w, { stride: 1, pad: 1, relu: false, winograd: true })).toBeUndefined();
    prepareWinograd(w);
    prepareWinograd(w); // once per filter
    expect(tf.memory().numTensors).toBe(before + wasmMatrices + 1);
    // For the tile of IMG2POSE_WINOGRAD_TILE (F(2x2) by default).
    expect(winogradFilterFor(w, { stride: 1, pad: 1, relu: false, winograd: true })?.shape).toEqual([(winogradTile() + 2) ** 2, 256, 256]);
    expect(winogradFilterFor(w, { stride: 1, pad: 1, relu: false })).toBeUndefined();
    expect(winogradFilterFor(w, { stride: 2, pad: 1, relu: false, winograd: true })).toBeUndefined();
    releaseConvFilter(w); // both
    expect(tf.memory().numTensors).toBe(before);
    w.dispose();
  });

  it('the batched GEMM reads and writes the z-th matrix', () => {
    const src = convShaderSource({
      kh: 1, kw: 1, cin: 256, cout: 256, stride: 1, pad: 0, relu: false, hasBias: false, residual: 'none',
      tile: { bm: 128, bn: 128 }, batched: true,
    });
    expect(src).toContain('let zb = i32(workgroupId.z); let M = HO * WO;');
    expect(src).toContain('W[((zb * KTOT + k) * COUT');
    expect(src).toContain('result[((zb * M + m) * COUT + n) / 4]');
    expect(() => convShaderSource({
      kh: 3, kw: 3, cin: 256, cout: 256, stride: 1, pad: 1, relu: false, hasBias: false, residual: 'none',
      tile: { bm: 128, bn: 128 }, batched: true,
    })).toThrow(/plain 1x1/);
  });
});

describe('Winograd F(4x4, 3x3) of the WebGPU path, off the GPU', () => {
  it('F(4x4) U made by the WebGPU path (float32 GEMM) equals the wasm path\'s float64 transform to float32 rounding', () => {
    const [cin, cout] = [12, 8];
    const f = lcgValues(9 * cin * cout, 21).map((v) => v * 0.3);
    const want = winogradF4Filter(f, cin, cout);
    const u = tf.tidy(() => winogradFilter(tf.tensor4d(f, [3, 3, cin, cout]), 4).dataSync() as Float32Array);
    expect(u.length).toBe(36 * cin * cout);
    const flat = new Float32Array(36 * cin * cout);
    want.forEach((ue, e) => flat.set(ue, e * cin * cout));
    expect(relErr(u, flat)).toBeLessThan(1e-6);
    // The check can fail: U of F(2x2) laid out as F(4x4) is far off.
    const u2 = tf.tidy(() => winogradFilter(tf.tensor4d(f, [3, 3, cin, cout]), 2).dataSync() as Float32Array);
    expect(relErr(u2, flat.subarray(0, u2.length))).toBeGreaterThan(1e-1);
  });

  it(`${WINOGRAD_TILE_FLAG}: filters are prepared for its tile only; the other tile's U is made on first use; release frees both`, () => {
    const saved = tf.env().get(WINOGRAD_TILE_FLAG);
    const w = tf.zeros([3, 3, 64, 8]) as tf.Tensor4D;
    const opts = { stride: 1, pad: 1, relu: false, winograd: true };
    const before = tf.memory().numTensors;
    try {
      tf.env().set(WINOGRAD_TILE_FLAG, 4);
      expect(winogradTile()).toBe(4);
      prepareWinograd(w);
      prepareWinograd(w); // once per filter and tile
      expect(tf.memory().numTensors).toBe(before + 1);
      expect(winogradFilterFor(w, opts)?.shape).toEqual([36, 64, 8]);
      expect(tf.memory().numTensors).toBe(before + 1); // no F(2x2) U beside it
      tf.env().set(WINOGRAD_TILE_FLAG, 2);
      expect(winogradFilterFor(w, opts)?.shape).toEqual([16, 64, 8]);
      expect(winogradFilterFor(w, opts, 4)?.shape).toEqual([36, 64, 8]);
      expect(tf.memory().numTensors).toBe(before + 2);
      // An unprepared filter stays on the direct path whatever the tile.
      const other = tf.zeros([3, 3, 64, 8]) as tf.Tensor4D;
      expect(winogradFilterFor(other, opts, 4)).toBeUndefined();
      other.dispose();
      releaseConvFilter(w);
      expect(tf.memory().numTensors).toBe(before);
      tf.env().set(WINOGRAD_TILE_FLAG, 3);
      expect(() => winogradTile()).toThrow(/2 or 4/);
    } finally {
      tf.env().set(WINOGRAD_TILE_FLAG, saved);
      w.dispose();
    }
  });

  it(`${WINOGRAD_TILE_FLAG} 'auto' (the default): F(4x4) up to ${WINOGRAD_AUTO_F4_MAX_CHANNELS} input channels, F(2x2) above, by the layer alone`, () => {
    const saved = tf.env().get(WINOGRAD_TILE_FLAG);
    const opts = { stride: 1, pad: 1, relu: false, winograd: true };
    const narrow = tf.zeros([3, 3, WINOGRAD_AUTO_F4_MAX_CHANNELS, 8]) as tf.Tensor4D;
    const wide = tf.zeros([3, 3, 2 * WINOGRAD_AUTO_F4_MAX_CHANNELS, 8]) as tf.Tensor4D;
    try {
      const registry = (tf.env() as unknown as { flagRegistry: Record<string, { evaluationFn: () => unknown }> }).flagRegistry;
      expect(registry[WINOGRAD_TILE_FLAG].evaluationFn()).toBe('auto');
      tf.env().set(WINOGRAD_TILE_FLAG, 'auto');
      expect([winogradTile(64), winogradTile(WINOGRAD_AUTO_F4_MAX_CHANNELS), winogradTile(512)]).toEqual([4, 4, 2]);
      prepareWinograd(narrow);
      prepareWinograd(wide);
      expect(winogradFilterFor(narrow, opts)?.shape).toEqual([36, WINOGRAD_AUTO_F4_MAX_CHANNELS, 8]);
      expect(winogradFilterFor(wide, opts)?.shape).toEqual([16, 2 * WINOGRAD_AUTO_F4_MAX_CHANNELS, 8]);
    } finally {
      releaseConvFilter(narrow);
      releaseConvFilter(wide);
      tf.env().set(WINOGRAD_TILE_FLAG, saved);
      tf.dispose([narrow, wide]);
    }
  });
});
