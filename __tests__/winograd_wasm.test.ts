// Winograd F(4x4, 3x3) on the wasm backend (src/kernels/wasm/winograd.ts): its WebAssembly SIMD
// transforms and XNNPACK GEMMs against a float64 direct convolution, its error next to tfjs's own
// direct convolution, tile edges, bands, and batch == single bit for bit.
import * as tf from '@tensorflow/tfjs';
import { convReference64 } from './utils/kernel_reference';
import { lcgValues, relErr } from './utils/lcg';
import {
  conv2dWinogradWasm,
  releaseWasmWinograd,
  scaledFilterWasm,
  wasmWinogradAvailable,
  wasmWinogradFilter,
  wasmWinogradFits,
} from '../src/kernels/wasm/winograd';
import { foldFrozenBatchNorm, foldFrozenBatchNormTensors } from '../src/model/layers';
import { winogradF4Filter, WINOGRAD_F4_AT, WINOGRAD_F4_BT, WINOGRAD_F4_G } from '../src/ops/winograd_f4';

/** Direct 3x3 stride-1 pad-1 convolution in float64 (+ a same-size residual) (+ ReLU). */
function direct(
  x: Float32Array, [n, h, w, cin]: number[], f: Float32Array, cout: number, b: Float32Array, relu: boolean, res?: Float32Array,
): Float64Array {
  return convReference64(
    { x: [n, h, w, cin], k: 3, cout, stride: 1, pad: 1, relu, residual: res ? 'same' : undefined },
    { x, w: f, b, res: res ? { data: res, h, w } : undefined },
  );
}

interface Case {
  x: Float32Array;
  f: Float32Array;
  b: Float32Array;
}

function makeCase([n, h, w, cin]: number[], cout: number, seed: number): Case {
  return {
    x: lcgValues(n * h * w * cin, seed),
    f: lcgValues(9 * cin * cout, seed + 1).map((v) => v * Math.sqrt(3 / (9 * cin))),
    b: lcgValues(cout, seed + 2).map((v) => v * 0.1),
  };
}

function runWinograd(c: Case, shape: [number, number, number, number], cout: number, relu: boolean, res?: Float32Array, bandBytes?: number): Float32Array {
  const [n, h, w, cin] = shape;
  const filter = tf.tensor4d(c.f, [3, 3, cin, cout]);
  try {
    return tf.tidy(() => {
      const r = res ? tf.tensor4d(res, [n, h, w, cout]) : undefined;
      const y = conv2dWinogradWasm(tf.tensor4d(c.x, shape), filter, tf.tensor1d(c.b), relu, r, bandBytes);
      return y.dataSync() as Float32Array;
    });
  } finally {
    releaseWasmWinograd(filter);
    filter.dispose();
  }
}

describe('Winograd F(4x4, 3x3) on wasm', () => {
  beforeAll(() => expect(wasmWinogradAvailable()).toBe(true));

  it('has transforms that give a 1-D convolution exactly (A^T [(G g) . (B^T d)] = correlation)', () => {
    const d = [0.3, -1.2, 2.5, 0.7, -0.4, 1.9];
    const g = [0.5, -0.25, 1.5];
    const gg = WINOGRAD_F4_G.map((row) => row[0] * g[0] + row[1] * g[1] + row[2] * g[2]);
    const bd = WINOGRAD_F4_BT.map((row) => row.reduce((s: number, v, k) => s + v * d[k], 0));
    const y = WINOGRAD_F4_AT.map((row) => row.reduce((s: number, v, k) => s + v * gg[k] * bd[k], 0));
    y.forEach((v, i) => expect(v).toBeCloseTo(d[i] * g[0] + d[i + 1] * g[1] + d[i + 2] * g[2], 12));
  });

  // Sizes with a last tile 1, 2, 3 or 4 pixels inside, one-pixel maps, batches of several images.
  it.each([
    [[1, 7, 9, 8], 12, true, false],
    [[2, 6, 5, 4], 8, false, true],
    [[3, 1, 4, 12], 4, true, true],
    [[1, 11, 2, 16], 20, false, false],
    [[2, 8, 8, 64], 32, true, false],
  ] as [[number, number, number, number], number, boolean, boolean][])(
    'x %j -> %i channels (relu %s, residual %s) equals the float64 direct convolution',
    (shape, cout, relu, withResidual) => {
      const [n, h, w, cin] = shape;
      const c = makeCase(shape, cout, 21);
      const res = withResidual ? lcgValues(n * h * w * cout, 5) : undefined;
      const want = direct(c.x, shape, c.f, cout, c.b, relu, res);
      const got = runWinograd(c, shape, cout, relu, res);
      expect(relErr(got, want)).toBeLessThan(3e-6);
      // The check can fail: the filter transformed for the wrong tap order is far off.
      const flipped = c.f.slice();
      const tap = cin * cout;
      for (let t = 0; t < 9; t++) flipped.set(c.f.subarray((8 - t) * tap, (9 - t) * tap), t * tap);
      expect(relErr(runWinograd({ ...c, f: flipped }, shape, cout, relu, res), want)).toBeGreaterThan(1e-2);
    },
  );

  it('stays within 5x the error of tfjs\'s direct convolution on a 256-channel layer', () => {
    const shape: [number, number, number, number] = [1, 10, 13, 256];
    const c = makeCase(shape, 256, 7);
    const want = direct(c.x, shape, c.f, 256, c.b, false);
    const got = runWinograd(c, shape, 256, false);
    const ref = tf.tidy(() =>
      tf.fused.conv2d({ x: tf.tensor4d(c.x, shape), filter: tf.tensor4d(c.f, [3, 3, 256, 256]), strides: 1, pad: 1, bias: tf.tensor1d(c.b) }).dataSync(),
    );
    const eDirect = relErr(ref, want);
    const eWinograd = relErr(got, want);
    expect(eWinograd).toBeLessThan(5 * eDirect);
  });

  it('gives the same bits in bands of any height, and each image of a batch its single-image bits', () => {
    const shape: [number, number, number, number] = [3, 9, 10, 8];
    const c = makeCase(shape, 8, 3);
    const whole = runWinograd(c, shape, 8, true);
    // One tile row per band (the smallest band there is).
    expect(Buffer.from(runWinograd(c, shape, 8, true, undefined, 1).buffer)).toEqual(Buffer.from(whole.buffer));
    const per = 9 * 10 * 8;
    for (let i = 0; i < 3; i++) {
      const single = runWinograd({ ...c, x: c.x.subarray(i * per, (i + 1) * per) }, [1, 9, 10, 8], 8, true);
      expect(Buffer.from(single.buffer)).toEqual(Buffer.from(whole.subarray(i * per, (i + 1) * per).slice().buffer));
    }
  });

  it('transforms filters in float64 and takes only 3x3 layers of 64..256 input channels', () => {
    const f = lcgValues(9 * 4 * 4, 9);
    const u = winogradF4Filter(f, 4, 4);
    expect(u).toHaveLength(36);
    // U[0] = g[0][0] / 16 and U[35] = g[2][2]: G's corner entries are 1/4 and 1.
    expect(u[0][5]).toBe(Math.fround(f[5] / 16));
    expect(u[35][5]).toBe(f[8 * 16 + 5]);
    // Every value: 0 + the non-zero products in (a, b) order, in float64, rounded once; zeros of
    // either sign among the taps included.
    const [cin, cout] = [8, 12];
    const g = lcgValues(9 * cin * cout, 10);
    for (let q = 0; q < g.length; q += 7) g[q] = q % 2 ? 0 : -0;
    const got = winogradF4Filter(g, cin, cout);
    for (let i = 0; i < 6; i++) {
      for (let j = 0; j < 6; j++) {
        const want = new Float32Array(cin * cout);
        for (let q = 0; q < cin * cout; q++) {
          let acc = 0;
          for (let a = 0; a < 3; a++) {
            for (let b = 0; b < 3; b++) {
              const k = WINOGRAD_F4_G[i][a] * WINOGRAD_F4_G[j][b];
              if (k !== 0) acc += k * g[(a * 3 + b) * cin * cout + q];
            }
          }
          want[q] = acc;
        }
        expect(Buffer.from(got[6 * i + j].buffer)).toEqual(Buffer.from(want.buffer));
      }
    }
    expect(wasmWinogradFits([3, 3, 256, 256])).toBe(true);
    expect(wasmWinogradFits([3, 3, 64, 64])).toBe(true);
    expect(wasmWinogradFits([3, 3, 512, 512])).toBe(false);
    expect(wasmWinogradFits([3, 3, 32, 64])).toBe(false);
    expect(wasmWinogradFits([1, 1, 256, 256])).toBe(false);
  });

  it('makes U in the heap in WebAssembly SIMD with the host transform\'s bits', () => {
    const [cin, cout] = [64, 12];
    const g = lcgValues(9 * cin * cout, 11).map((v, q) => v * 10 ** ((q % 13) - 6));
    // Zeros of either sign, the largest float32 (its sums overflow to infinity in both), subnormals.
    for (let q = 0; q < g.length; q += 5) g[q] = [0, -0, 3.4e38, -3.4e38, 1e-40, -3e-39][(q / 5) % 6];
    const filter = tf.tensor4d(g, [3, 3, cin, cout]);
    try {
      const got = wasmWinogradFilter(filter).map((u) => u.dataSync() as Float32Array);
      const want = winogradF4Filter(g, cin, cout);
      for (let e = 0; e < 36; e++) expect(Buffer.from(got[e].buffer)).toEqual(Buffer.from(want[e].buffer));
    } finally {
      releaseWasmWinograd(filter);
      filter.dispose();
    }
  });

  it('folds a frozen BatchNorm into a filter in the heap with the host fold\'s bits', () => {
    const shape: [number, number, number, number] = [3, 3, 8, 16];
    const size = shape.reduce((a, b) => a * b, 1);
    const f = lcgValues(size, 12).map((v, q) => v * 10 ** ((q % 11) - 5));
    for (let q = 0; q < size; q += 9) f[q] = [0, -0, 3.4e38, 1e-40][(q / 9) % 4];
    const bn = {
      weight: lcgValues(16, 13).map((v) => v * 4),
      bias: lcgValues(16, 14),
      runningMean: lcgValues(16, 15),
      runningVar: lcgValues(16, 16).map((v) => v * v + 0.5),
    };
    // Two products that are exact ties between two float32s, rounded to even (down, then up):
    // (1 + a)(1 + a) = 1 + 2^-11 + 2^-24 and (1 + 3a)(1 + a) = 1 + 2^-10 + 3 x 2^-24, a = 2^-12,
    // with the scale weight / sqrt(var + eps) = weight (var 1, eps 0).
    const a = 2 ** -12;
    [f[0], f[1]] = [1 + a, 1 + 3 * a];
    bn.weight[0] = bn.weight[1] = 1 + a;
    bn.runningVar[0] = bn.runningVar[1] = 1;
    const want = foldFrozenBatchNorm(f, bn, 0);
    expect([want.filter[0], want.filter[1]]).toEqual([1 + 2 ** -11, 1 + 2 ** -10 + 2 ** -22]);
    const got = foldFrozenBatchNormTensors(f, shape, bn, 0);
    try {
      expect(Buffer.from((got.filter.dataSync() as Float32Array).buffer)).toEqual(Buffer.from(want.filter.buffer));
      expect(Array.from(got.bias.dataSync())).toEqual(Array.from(want.bias));
      // The heap path itself ran (it is null where it does not apply).
      const scaled = scaledFilterWasm(f, Float64Array.from({ length: 16 }, (_, k) => k + 0.5), shape);
      expect(scaled).not.toBeNull();
      expect(scaled?.dataSync()[17]).toBe(Math.fround(f[17] * 1.5));
      scaled?.dispose();
      expect(scaledFilterWasm(f, new Float64Array(16), [3, 3, 16, 8])).toBeNull();
    } finally {
      tf.dispose([got.filter, got.bias]);
    }
  });

  it('frees what it made: the transformed filters on release, every band\'s temporaries at once', () => {
    const shape: [number, number, number, number] = [1, 9, 9, 8];
    const c = makeCase(shape, 8, 4);
    const before = tf.memory().numTensors;
    runWinograd(c, shape, 8, false, undefined, 1);
    expect(tf.memory().numTensors).toBe(before);
  });
});
