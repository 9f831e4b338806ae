// The wasm paths that keep less in XNNPACK's operators (src/kernels/wasm/gemm_conv.ts,
// src/kernels/wasm/packed.ts): convolutions as GEMMs over their patches, in bands or whole, and
// the 7x7 stem in bands of output rows, give the bits of tf.fused.conv2d; a weight kept only as
// packed gives the same numbers as before its own copy was freed and refuses a call it was not
// packed for.
import * as tf from '@tensorflow/tfjs';
import { lcgValues } from './utils/lcg';
import { conv2dGemm, conv2dRowBands, gemmConvFits } from '../src/kernels/wasm/gemm_conv';
import { isReleased, packingRun, usePacked } from '../src/kernels/wasm/packed';
import { Kernels } from '../src/kernels/webgpu';
import { releaseWasmWinograd } from '../src/kernels/wasm/winograd';

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

describe('a band of output rows alone (one image shared by two threads)', () => {
  const kernels = new Kernels('portable');
  const rowsOf = (t: tf.Tensor, [start, end]: readonly [number, number]): Buffer => {
    const [, , w, c] = t.shape;
    return Buffer.from((t.dataSync() as Float32Array).slice(start * w * c, end * w * c).buffer);
  };

  it('gives tf.fused.conv2d bits for small 3x3 filters in bands of rows, stride 1 and 2', () => {
    tf.tidy(() => {
      const x = tensor<tf.Rank.R4>([2, 19, 13, 16], 11);
      const f = tensor<tf.Rank.R4>([3, 3, 16, 24], 12, 0.1);
      const b = tensor<tf.Rank.R1>([24], 13, 0.1);
      for (const stride of [1, 2]) {
        const want = tf.fused.conv2d({ x, filter: f, strides: stride, pad: 1, bias: b, activation: 'relu' });
        for (const bandPixels of [7, 10_000]) {
          const got = conv2dRowBands(
            x,
            f,
            stride,
            1,
            (window, pads) => tf.fused.conv2d({ x: window, filter: f, strides: stride, pad: pads, bias: b, activation: 'relu' }),
            bandPixels,
          );
          expect(bits(got)).toEqual(bits(want));
        }
      }
    });
  });

  it.each([
    // name, kernel, in, out, stride, winograd, residual
    ['F(4x4, 3x3)', 3, 64, 64, 1, true, true],
    ['GEMM, 1x1 stride 2', 1, 16, 24, 2, false, false],
    ['GEMM, large 3x3', 3, 112, 264, 1, false, true],
    ['row bands, small 3x3 stride 2', 3, 16, 24, 2, false, false],
    ['row bands, 7x7 stride 2', 7, 3, 8, 2, false, false],
  ] as [string, number, number, number, number, boolean, boolean][])(
    "Kernels.conv rows alone, %s: each band's rows are the whole map's bits",
    (name, k, cin, cout, stride, winograd, withResidual) => {
      const f = tensor<tf.Rank.R4>([k, k, cin, cout], 21, 0.1);
      try {
        tf.tidy(() => {
          const x = tensor<tf.Rank.R4>([1, 26, 10, cin], 22);
          const b = tensor<tf.Rank.R1>([cout], 23, 0.1);
          const pad = (k - 1) / 2;
          const ho = Math.floor((26 + 2 * pad - k) / stride) + 1;
          const wo = Math.floor((10 + 2 * pad - k) / stride) + 1;
          const residual = withResidual ? tensor<tf.Rank.R4>([1, ho, wo, cout], 24) : undefined;
          const opts = { stride, pad, relu: true, winograd, residual };
          const whole = kernels.conv(x, f, b, opts);
          const align = kernels.rowAlign(f, opts);
          expect(align).toBe(winograd ? 4 : 1);
          for (const cut of [align, 2 * align, ho - (ho % align || align)]) {
            for (const rows of [
              [0, cut],
              [cut, ho],
            ] as [number, number][]) {
              const band = kernels.conv(x, f, b, { ...opts, rows });
              expect(band.shape).toEqual(whole.shape);
              expect(rowsOf(band, rows)).toEqual(rowsOf(whole, rows));
              if (name.startsWith('row bands')) {
                const alone = kernels.conv(x, f, b, { ...opts, rows, bandOnly: true });
                expect(alone.shape).toEqual([1, rows[1] - rows[0], wo, cout]);
                expect(rowsOf(alone, [0, rows[1] - rows[0]])).toEqual(rowsOf(whole, rows));
              }
            }
          }
          if (winograd) expect(() => kernels.conv(x, f, b, { ...opts, rows: [2, ho] })).toThrow(/multiple of 4/);
          if (!name.startsWith('row bands'))
            expect(() => kernels.conv(x, f, b, { ...opts, rows: [0, 4], bandOnly: true })).toThrow(/row-band path only/);
        });
      } finally {
        releaseWasmWinograd(f);
        f.dispose();
      }
    },
  );
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
