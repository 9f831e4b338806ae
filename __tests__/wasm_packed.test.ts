// The wasm paths that keep less in XNNPACK's operators (src/kernels/wasm/gemm_conv.ts,
// src/kernels/wasm/packed.ts): convolutions as GEMMs over their patches, in bands or whole, and
// the 7x7 stem in bands of output rows, give the bits of tf.fused.conv2d; a weight kept only as
// packed gives the same numbers as before its own copy was freed and refuses a call it was not
// packed for.
import * as tf from '@tensorflow/tfjs';
import { lcgValues } from './utils/lcg';
import { conv2dGemm, conv2dRowBands, gemmConvFits } from '../src/kernels/wasm/gemm_conv';
import { isReleased, packingRun, usePacked } from '../src/kernels/wasm/packed';

const bits = (t: tf.Tensor): Buffer => Buffer.from((t.dataSync() as Float32Array).slice().buffer);
function tensor<R extends tf.Rank>(shape: number[], seed: number, scale = 1): tf.Tensor<R> {
  const t: tf.Tensor = tf.tensor(Float32Array.from(lcgValues(shape.reduce((a, b) => a * b, 1), seed), (v) => v * scale), shape);
  return t as tf.Tensor<R>;
}

describe('convolutions on wasm with less kept in XNNPACK', () => {
  it('takes the GEMM path for 1x1 and large 3x3 filters only', () => {
    expect(gemmConvFits([1, 1, 64, 256])).toBe(true);
    expect(gemmConvFits([3, 3, 256, 512])).toBe(true);
    expect(gemmConvFits([3, 3, 64, 128])).toBe(false);
    expect(gemmConvFits([7, 7, 3, 64])).toBe(false);
  });

  it.each([
    // kernel, in, out, stride, pad, height, width, band bytes (small: many bands)
    [3, 32, 24, 1, 1, 9, 11, undefined],
    [3, 32, 24, 2, 1, 13, 10, 4000],
    [1, 16, 20, 2, 0, 9, 7, undefined],
    [1, 16, 20, 1, 0, 6, 5, undefined],
  ] as [number, number, number, number, number, number, number, number | undefined][])(
    'conv2dGemm, %i-wide filter, %i->%i channels, stride %i: tf.fused.conv2d bits',
    (k, cin, cout, stride, pad, h, w, band) => {
      expect(tf.getBackend()).toBe('wasm');
      tf.tidy(() => {
        const x = tensor<tf.Rank.R4>([2, h, w, cin], 1);
        const f = tensor<tf.Rank.R4>([k, k, cin, cout], 2, 0.1);
        const b = tensor<tf.Rank.R1>([cout], 3, 0.1);
        for (const relu of [false, true]) {
          const want = tf.fused.conv2d({ x, filter: f, strides: stride, pad, bias: b, activation: relu ? 'relu' : 'linear' });
          const got = conv2dGemm(x, f, b, stride, pad, relu, undefined, band);
          expect(got.shape).toEqual(want.shape);
          expect(bits(got)).toEqual(bits(want));
        }
      });
    },
  );

  it('conv2dRowBands (the 7x7 stem) gives tf.fused.conv2d bits, whatever the band', () => {
    tf.tidy(() => {
      const x = tensor<tf.Rank.R4>([2, 37, 29, 3], 4);
      const f = tensor<tf.Rank.R4>([7, 7, 3, 8], 5, 0.1);
      const b = tensor<tf.Rank.R1>([8], 6, 0.1);
      const want = tf.fused.conv2d({ x, filter: f, strides: 2, pad: 3, bias: b, activation: 'relu' });
      for (const bandPixels of [15, 45, 10_000]) {
        const before = tf.memory().numTensors;
        const got = tf.tidy(() => conv2dRowBands(x, f, 2, 3, (window, pads) => tf.fused.conv2d({ x: window, filter: f, strides: 2, pad: pads, bias: b, activation: 'relu' }), bandPixels));
        expect(tf.memory().numTensors).toBe(before + 1);
        expect(bits(got)).toEqual(bits(want));
      }
    });
  });
});

describe('weights kept only as packed (wasm)', () => {
  it('frees the own copy in a packingRun, gives the same numbers after, and refuses another call', () => {
    const w = tensor<tf.Rank.R2>([64, 48], 7, 0.1);
    const bias = tensor<tf.Rank.R1>([48], 8);
    const x = tensor<tf.Rank.R2>([5, 64], 9);
    try {
      const dense = (): tf.Tensor2D => usePacked(w, 'matMul relu bias b', () => tf.fused.matMul({ a: x, b: w, bias, activation: 'relu' }) as tf.Tensor2D);
      const before = tf.tidy(() => bits(tf.fused.matMul({ a: x, b: w, bias, activation: 'relu' })));
      tf.tidy(() => packingRun(() => dense()));
      expect(isReleased(w)).toBe(true);
      expect(tf.tidy(() => bits(dense()))).toEqual(before);
      expect(() => usePacked(w, 'matMul linear bias none', () => tf.matMul(x, w))).toThrow(/kept only as packed/);
    } finally {
      tf.dispose([w, bias, x]);
    }
  });
});
