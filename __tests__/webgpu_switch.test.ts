// The kernel switch of src/kernels/webgpu on the wasm backend: the portable path (what every stage runs
// unless the WebGPU kernels are switched on) against a float64 reference, the fallback when the
// switch is on but the backend is not webgpu, and the WGSL generator's guards. The WebGPU
// programs themselves are checked on the GPU by bench/gpu_kernels.ts (see docs/webgpu.md).
import * as tf from '@tensorflow/tfjs';
import {
  addUpsampled,
  chooseTile,
  conv2dPortable,
  convOutputSize,
  ConvOptions,
  convShaderSource,
  Kernels,
  PORTABLE_KERNELS,
} from '../src/kernels/webgpu';
import { ConvCase, convReference64 } from './utils/kernel_reference';
import { lcgValues, relErr } from './utils/lcg';

const cases: ConvCase[] = [
  { x: [1, 9, 11, 5], k: 3, cout: 7, stride: 1, pad: 1, relu: true },
  { x: [2, 13, 10, 3], k: 7, cout: 8, stride: 2, pad: 3, relu: true },
  { x: [2, 7, 9, 6], k: 1, cout: 4, stride: 2, pad: 0, relu: false },
  { x: [2, 8, 6, 4], k: 3, cout: 4, stride: 1, pad: 1, relu: true, residual: 'same' },
  { x: [1, 8, 10, 6], k: 1, cout: 5, stride: 1, pad: 0, relu: false, residual: 'upsample' },
  { x: [1, 7, 5, 4], k: 1, cout: 3, stride: 1, pad: 0, relu: false, residual: 'upsample' },
];

describe('kernel switch (src/kernels/webgpu) on wasm', () => {
  it('never runs WebGPU programs off the webgpu backend', () => {
    expect(PORTABLE_KERNELS.mode).toBe('portable');
    expect(PORTABLE_KERNELS.webgpu).toBe(false);
    const kernels = new Kernels('webgpu');
    expect(kernels.mode).toBe('webgpu');
    expect(tf.getBackend()).toBe('wasm');
    expect(kernels.webgpu).toBe(false);
  });

  it.each(cases)('conv %j matches a float64 convolution, in both modes', (c) => {
    const before = tf.memory().numTensors;
    const [n, h, w, cin] = c.x;
    const xd = lcgValues(n * h * w * cin, 1);
    const wdat = lcgValues(c.k * c.k * cin * c.cout, 2).map((v) => v * Math.sqrt(3 / (c.k * c.k * cin)));
    const bd = lcgValues(c.cout, 3).map((v) => v * 0.1);
    const ho = convOutputSize(h, c.k, c.stride, c.pad);
    const wo = convOutputSize(w, c.k, c.stride, c.pad);
    const rh = c.residual === 'upsample' ? Math.ceil(ho / 2) : ho;
    const rw = c.residual === 'upsample' ? Math.ceil(wo / 2) : wo;
    const rd = c.residual ? lcgValues(n * rh * rw * c.cout, 4) : undefined;
    const expected = convReference64(c, { x: xd, w: wdat, b: bd, res: rd && { data: rd, h: rh, w: rw } });
    for (const mode of ['portable', 'webgpu'] as const) {
      const kernels = new Kernels(mode);
      const got = tf.tidy(() => {
        const opts: ConvOptions = {
          stride: c.stride, pad: c.pad, relu: c.relu,
          residual: rd && tf.tensor4d(rd, [n, rh, rw, c.cout]), upsampleResidual: c.residual === 'upsample',
        };
        const y = kernels.conv(tf.tensor4d(xd, c.x), tf.tensor4d(wdat, [c.k, c.k, cin, c.cout]), tf.tensor1d(bd), opts);
        expect(y.shape).toEqual([n, ho, wo, c.cout]);
        return y.dataSync();
      });
      expect(relErr(got, expected)).toBeLessThan(1e-6);
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it('conv2dPortable without bias equals the stock conv', () => {
    tf.tidy(() => {
      const x = tf.tensor4d(lcgValues(2 * 6 * 5 * 4, 5), [2, 6, 5, 4]);
      const w = tf.tensor4d(lcgValues(3 * 3 * 4 * 6, 6), [3, 3, 4, 6]);
      const got = conv2dPortable(x, w, null, { stride: 2, pad: 1, relu: false }).dataSync();
      const want = tf.conv2d(x, w, 2, [[0, 0], [1, 1], [1, 1], [0, 0]]).dataSync();
      expect(relErr(got, want)).toBeLessThan(1e-7);
    });
  });

  it('addUpsampled repeats the coarse map (exact 2x and odd sizes alike)', () => {
    tf.tidy(() => {
      for (const [h, w, hc, wc] of [[4, 6, 2, 3], [5, 7, 3, 4]]) {
        const lateral = tf.tensor4d(lcgValues(h * w * 2, 7), [1, h, w, 2]);
        const coarse = tf.tensor4d(lcgValues(hc * wc * 2, 8), [1, hc, wc, 2]);
        const got = addUpsampled(lateral, coarse).arraySync()[0];
        const l = lateral.arraySync()[0];
        const cc = coarse.arraySync()[0];
        for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let ch = 0; ch < 2; ch++) {
          const sy = Math.min(Math.floor(y * Math.fround(hc / h)), hc - 1);
          const sx = Math.min(Math.floor(x * Math.fround(wc / w)), wc - 1);
          expect(got[y][x][ch]).toBe(Math.fround(l[y][x][ch] + cc[sy][sx][ch]));
        }
      }
    });
  });

  it('linear is x @ w + bias (+ ReLU) off the GPU', () => {
    tf.tidy(() => {
      const x = tf.tensor2d(lcgValues(5 * 7, 9), [5, 7]);
      const w = tf.tensor2d(lcgValues(7 * 3, 10), [7, 3]);
      const b = tf.tensor1d([0.5, -2, 0.1]);
      const xd = x.arraySync();
      const wd = w.arraySync();
      const got = PORTABLE_KERNELS.linear(x, w, b, true).arraySync();
      for (let i = 0; i < 5; i++) for (let j = 0; j < 3; j++) {
        let s = [0.5, -2, 0.1][j];
        for (let k = 0; k < 7; k++) s += xd[i][k] * wd[k][j];
        expect(got[i][j]).toBeCloseTo(Math.max(s, 0), 5);
      }
    });
  });

  it('picks large tiles only when they fill the GPU, and the WGSL generator rejects unpadded channels', () => {
    expect(chooseTile(8 * 160 * 288, 256)).toEqual({ bm: 128, bn: 128 });
    expect(chooseTile(720, 512)).toEqual({ bm: 64, bn: 64 });
    expect(chooseTile(46080, 64)).toEqual({ bm: 128, bn: 64 });
    const spec = { kh: 3, kw: 3, cin: 64, cout: 64, stride: 1, pad: 1, relu: true, hasBias: true, residual: 'same' as const, tile: { bm: 128 as const, bn: 64 as const } };
    const src = convShaderSource(spec);
    expect(src).toContain('const CIN = 64;');
    expect(src).toContain('res[(rrow + n) / 4]');
    expect(() => convShaderSource({ ...spec, cin: 3 })).toThrow(/multiples of 4/);
  });
});
