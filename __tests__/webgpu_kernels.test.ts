/**
 * @jest-environment ./__tests__/utils/webgpu_environment.js
 *
 * Every WGSL program of src/kernels/webgpu on a real WebGPU device (Dawn; SwiftShader in CI) against the
 * portable path (stock tfjs ops on the same backend) and an independent float64 reference, on
 * awkward sizes: odd widths, one-pixel and one-row maps, channel counts that are not multiples of
 * 4, batches whose images have different own sizes. Each program also gives an image inside a
 * batch exactly its single-image numbers. Sizes are small: SwiftShader runs on the CPU.
 */
import * as tf from '@tensorflow/tfjs';
import {
  ConvOptions,
  ConvTile,
  conv2dFused,
  conv2dPortable,
  conv2dWinograd,
  linearFused,
  linearPortable,
  normalizeResizePadBatchWebGPU,
  releaseGpuPool,
  roiAlignFused,
  sizeClass,
  GPU_RECORD_FLAG,
  UPLOAD_CHUNK_FLAG,
  uniformLayout,
  Kernels,
  prepareConvFilter,
  releaseConvFilter,
  winogradEnabled,
  winogradFilter,
  winogradTile,
  winogradTiles,
  F4Input,
  WINOGRAD_FLAG,
  WINOGRAD_TILE_FLAG,
} from '../src/kernels/webgpu';
import { multiScaleRoIAlign, ROI_OUTPUT_SIZE, ROI_SAMPLING_RATIO } from '../src/model/roi_align';
import { ImageBytes, imageTensor, paddedSize, prepareBatch, Size } from '../src/model/transform';
import { decodeImage } from '../src/io/images';
import { imagePath } from './utils/golden';
import { lcgValues, relErr } from './utils/lcg';
import { ConvCase, ConvData, convOutShape, convReference64, RoiCase, roiAlignReference64 } from './utils/kernel_reference';
import { describeWebGPU } from './utils/webgpu';
import { formulaSubset } from './utils/stage_inputs';
import { GPU_BATCH_CANDIDATES_FLAG, RegionProposalNetwork } from '../src/model/rpn';
import { rpnCandidates } from '../src/kernels/webgpu/rpn_candidates';
import { featureSizes } from '../src/ops/anchors';
import { candidateLayout, candidatesOf, ProposalJob, proposalsOf, rankedCandidatesOf, RECORD_WORDS, RPN_CONFIG } from '../src/ops/proposals';

/** Float32 noise of sums of a few hundred products, well below any real indexing or tap error. */
const REL_TOL = 1e-5;

function convData(c: ConvCase, seed: number): ConvData {
  const [n, h, w, cin] = c.x;
  const [, ho, wo] = convOutShape(c);
  const fan = c.k * c.k * cin;
  const d: ConvData = {
    x: lcgValues(n * h * w * cin, seed),
    w: lcgValues(fan * c.cout, seed + 1).map((v) => v * Math.sqrt(6 / fan)),
    b: lcgValues(c.cout, seed + 2).map((v) => v * 0.1),
  };
  if (c.residual === 'same') d.res = { data: lcgValues(n * ho * wo * c.cout, seed + 3), h: ho, w: wo };
  if (c.residual === 'upsample') {
    const [hr, wr] = [Math.ceil(ho / 2), Math.ceil(wo / 2)];
    d.res = { data: lcgValues(n * hr * wr * c.cout, seed + 3), h: hr, w: wr };
  }
  return d;
}

interface ConvTensors {
  x: tf.Tensor4D;
  w: tf.Tensor4D;
  b: tf.Tensor1D;
  opts: ConvOptions;
}

function convTensors(c: ConvCase, d: ConvData): ConvTensors {
  const res = d.res && tf.tensor4d(d.res.data, [c.x[0], d.res.h, d.res.w, c.cout]);
  return {
    x: tf.tensor4d(d.x, c.x),
    w: tf.tensor4d(d.w, [c.k, c.k, c.x[3], c.cout]),
    b: tf.tensor1d(d.b),
    opts: { stride: c.stride, pad: c.pad, relu: c.relu, residual: res, upsampleResidual: c.residual === 'upsample' },
  };
}

function disposeConv(t: ConvTensors): void {
  tf.dispose([t.x, t.w, t.b, ...(t.opts.residual ? [t.opts.residual] : [])]);
}

/**
 * Fills every free buffer of the pool that a tensor of `shape` could get with NaN (at least one is
 * there), so an output that skips elements cannot inherit a right answer, whichever it gets.
 */
function poisonPool(shape: number[]): void {
  tf.fill(shape, NaN).dispose();
  type Internals = { device: GPUDevice; bufferManager: { freeBuffers: Map<string, GPUBuffer[]> }; ensureCommandEncoderReady(): void; endComputePassEncoder(): void; submitQueue(): void };
  const backend = tf.backend() as unknown as Internals;
  // A disposed output's buffer returns to the pool at the next submit.
  backend.ensureCommandEncoderReady();
  backend.endComputePassEncoder();
  backend.submitQueue();
  const bytes = sizeClass(4 * shape.reduce((a, b) => a * b, 1));
  let poisoned = 0;
  for (const [key, free] of backend.bufferManager.freeBuffers) {
    if (!key.startsWith(`${bytes}_`)) continue;
    for (const buffer of free) backend.device.queue.writeBuffer(buffer, 0, new Float32Array(buffer.size / 4).fill(NaN));
    poisoned += free.length;
  }
  expect(poisoned).toBeGreaterThan(0);
}

async function values(t: tf.Tensor): Promise<Float32Array> {
  return (await t.data()) as Float32Array;
}

function expectFinite(a: Float32Array): void {
  const bad = a.findIndex((v) => !Number.isFinite(v));
  expect(bad).toBe(-1);
}

/** Image `i` of a 4-D batch. */
function imageOf(t: tf.Tensor4D, i: number): tf.Tensor4D {
  return tf.slice(t, [i, 0, 0, 0], [1, ...t.shape.slice(1)] as [number, number, number]);
}

async function expectBitEqual(a: tf.Tensor, b: tf.Tensor): Promise<void> {
  expect(a.shape).toEqual(b.shape);
  const [x, y] = [await values(a), await values(b)];
  let differing = 0;
  for (let i = 0; i < x.length; i++) if (!Object.is(x[i], y[i])) differing++;
  expect(differing).toBe(0);
}

describeWebGPU('WGSL programs against the portable path', () => {
  let tensorsBefore = 0;
  beforeAll(() => {
    tensorsBefore = tf.memory().numTensors;
  });
  afterAll(() => {
    // Every check disposes what it made: the programs leak nothing.
    expect(tf.memory().numTensors).toBe(tensorsBefore);
  });

  type Named = ConvCase & { name: string; tile?: ConvTile };
  const convCases: Named[] = [
    { name: '3x3 s1 odd spatial, vec4 channels', x: [1, 17, 23, 16], k: 3, cout: 20, stride: 1, pad: 1, relu: true },
    { name: '3x3 s2 channels 5 -> 7 (padded to vec4)', x: [2, 19, 21, 5], k: 3, cout: 7, stride: 2, pad: 1, relu: false },
    { name: '7x7 s2 stem, RGB input', x: [1, 37, 29, 3], k: 7, cout: 64, stride: 2, pad: 3, relu: true },
    { name: '1x1 s2 downsample', x: [2, 13, 11, 64], k: 1, cout: 36, stride: 2, pad: 0, relu: false },
    { name: '1x1 + upsampled residual (FPN), even', x: [2, 10, 12, 32], k: 1, cout: 24, stride: 1, pad: 0, relu: false, residual: 'upsample' },
    { name: '1x1 + upsampled residual, odd', x: [1, 11, 7, 64], k: 1, cout: 32, stride: 1, pad: 0, relu: false, residual: 'upsample' },
    { name: '3x3 + residual + relu (ResNet block)', x: [2, 15, 9, 48], k: 3, cout: 48, stride: 1, pad: 1, relu: true, residual: 'same' },
    { name: 'one-pixel map, batch 3', x: [3, 1, 1, 8], k: 3, cout: 12, stride: 1, pad: 1, relu: true },
    { name: 'one-row map + residual', x: [2, 1, 9, 16], k: 3, cout: 16, stride: 1, pad: 1, relu: false, residual: 'same' },
    { name: '1x1 256 -> 15 (RPN predictor, padded)', x: [2, 13, 17, 256], k: 1, cout: 15, stride: 1, pad: 0, relu: false },
    { name: 'tile 128x128, partial', x: [1, 5, 7, 256], k: 3, cout: 256, stride: 1, pad: 1, relu: true, tile: { bm: 128, bn: 128 } },
    { name: 'tile 128x64, cout 200', x: [1, 7, 9, 128], k: 3, cout: 200, stride: 1, pad: 1, relu: true, tile: { bm: 128, bn: 64 } },
    { name: 'tile 64x64 s2', x: [2, 9, 7, 128], k: 3, cout: 72, stride: 2, pad: 1, relu: false, tile: { bm: 64, bn: 64 } },
    { name: 'tile 128x128 bk 32', x: [1, 6, 5, 64], k: 3, cout: 128, stride: 1, pad: 1, relu: false, tile: { bm: 128, bn: 128, bk: 32 } },
  ];

  describe('conv2dFused (implicit GEMM)', () => {
    it.each(convCases.map((c, i) => [c.name, c, i] as const))('%s', async (_name, c, i) => {
      const d = convData(c, 100 * i + 1);
      const t = convTensors(c, d);
      poisonPool(convOutShape(c));
      const fused = conv2dFused(t.x, t.w, t.b, t.opts, c.tile);
      const stock = conv2dPortable(t.x, t.w, t.b, t.opts);
      expect(fused.shape).toEqual(convOutShape(c));
      const got = await values(fused);
      expectFinite(got);
      expect(relErr(got, await values(stock))).toBeLessThan(REL_TOL);
      expect(relErr(got, convReference64(c, d))).toBeLessThan(REL_TOL);
      if (c.x[0] > 1) {
        // The last image alone gives exactly its slice of the batch.
        const last = c.x[0] - 1;
        const res = t.opts.residual && imageOf(t.opts.residual, last);
        const x1 = imageOf(t.x, last);
        const single = conv2dFused(x1, t.w, t.b, { ...t.opts, residual: res }, c.tile);
        const inBatch = imageOf(fused, last);
        await expectBitEqual(single, inBatch);
        tf.dispose([x1, single, inBatch, ...(res ? [res] : [])]);
      }
      tf.dispose([fused, stock]);
      disposeConv(t);
    });

    it('the check fails on a wrong answer (a filter with swapped taps)', async () => {
      const c = convCases[0];
      const d = convData(c, 1);
      const t = convTensors(c, d);
      const flipped = tf.reverse(t.w, [0, 1]) as tf.Tensor4D;
      const wrong = conv2dFused(t.x, flipped, t.b, t.opts);
      expect(relErr(await values(wrong), convReference64(c, d))).toBeGreaterThan(1e-2);
      tf.dispose([flipped, wrong]);
      disposeConv(t);
    });
  });

  describe('linearFused (the conv kernel as a GEMM)', () => {
    it.each([
      [37, 144, 70, true],
      [1, 100, 20, false],
      [333, 260, 12, false],
    ] as [number, number, number, boolean][])('%i x %i @ %i x ..., relu %s', async (m, k, n, relu) => {
      const x = tf.tensor2d(lcgValues(m * k, m + k), [m, k]);
      const w = tf.tensor2d(lcgValues(k * n, k + n).map((v) => v * Math.sqrt(6 / k)), [k, n]);
      const b = tf.tensor1d(lcgValues(n, n).map((v) => v * 0.1));
      poisonPool([m, n]);
      const fused = linearFused(x, w, b, relu);
      const stock = linearPortable(x, w, b, relu);
      const got = await values(fused);
      expectFinite(got);
      expect(relErr(got, await values(stock))).toBeLessThan(REL_TOL);
      tf.dispose([x, w, b, fused, stock]);
    });
  });

  describe('conv2dWinograd F(2x2, 3x3)', () => {
    const winoCases: Named[] = [
      { name: 'odd spatial 17x23', x: [1, 17, 23, 64], k: 3, cout: 20, stride: 1, pad: 1, relu: true },
      { name: 'batch 3', x: [3, 9, 14, 64], k: 3, cout: 64, stride: 1, pad: 1, relu: true },
      { name: '+ residual', x: [2, 15, 9, 64], k: 3, cout: 64, stride: 1, pad: 1, relu: true, residual: 'same' },
      { name: 'one row', x: [2, 1, 5, 128], k: 3, cout: 12, stride: 1, pad: 1, relu: false },
      { name: 'one pixel', x: [2, 1, 1, 64], k: 3, cout: 8, stride: 1, pad: 1, relu: true },
      { name: 'tile 64x64, one column', x: [2, 7, 1, 64], k: 3, cout: 64, stride: 1, pad: 1, relu: false, tile: { bm: 64, bn: 64 } },
    ];

    it.each(winoCases.map((c, i) => [c.name, c, i] as const))('%s: equals the direct kernel and float64; batch == single; chunks == whole', async (_name, c, i) => {
      const d = convData(c, 1000 * i + 7);
      const t = convTensors(c, d);
      const u = winogradFilter(t.w);
      poisonPool(convOutShape(c));
      const wino = conv2dWinograd(t.x, u, t.b, t.opts, c.tile);
      const direct = conv2dFused(t.x, t.w, t.b, t.opts);
      const got = await values(wino);
      expectFinite(got);
      expect(relErr(got, await values(direct))).toBeLessThan(REL_TOL);
      expect(relErr(got, convReference64(c, d))).toBeLessThan(REL_TOL);
      const [n, h, w] = c.x;
      if (n > 1) {
        const last = n - 1;
        const res = t.opts.residual && imageOf(t.opts.residual, last);
        const x1 = imageOf(t.x, last);
        const single = conv2dWinograd(x1, u, t.b, { ...t.opts, residual: res }, c.tile);
        const inBatch = imageOf(wino, last);
        await expectBitEqual(single, inBatch);
        // A buffer limit of one image's transformed tiles: the batch runs image by image.
        const oneImage = 16 * Math.ceil(h / 2) * Math.ceil(w / 2) * c.cout * 4;
        const chunked = conv2dWinograd(t.x, u, t.b, t.opts, c.tile, oneImage);
        await expectBitEqual(chunked, wino);
        tf.dispose([x1, single, inBatch, chunked, ...(res ? [res] : [])]);
      }
      tf.dispose([u, wino, direct]);
      disposeConv(t);
    });

    it(`${WINOGRAD_FLAG} picks the path of conv() for a prepared 3x3 filter`, async () => {
      const c: Named = { name: 'flag', x: [2, 6, 10, 64], k: 3, cout: 64, stride: 1, pad: 1, relu: true };
      const t = convTensors(c, convData(c, 4242));
      prepareConvFilter(t.w);
      const kernels = new Kernels('webgpu');
      const saved = tf.env().getBool(WINOGRAD_FLAG);
      try {
        // The tile of conv()'s Winograd path is its own flag's (2 by default).
        const u = winogradFilter(t.w, winogradTile());
        const [wino, direct] = [conv2dWinograd(t.x, u, t.b, t.opts), conv2dFused(t.x, t.w, t.b, t.opts)];
        tf.env().set(WINOGRAD_FLAG, true);
        const on = kernels.conv(t.x, t.w, t.b, { ...t.opts, winograd: winogradEnabled() });
        tf.env().set(WINOGRAD_FLAG, false);
        const off = kernels.conv(t.x, t.w, t.b, { ...t.opts, winograd: winogradEnabled() });
        await expectBitEqual(on, wino);
        await expectBitEqual(off, direct);
        // The two paths round differently, so the bit-equalities above tell them apart.
        expect(relErr(await values(on), await values(off))).toBeGreaterThan(0);
        tf.dispose([u, wino, direct, on, off]);
      } finally {
        tf.env().set(WINOGRAD_FLAG, saved);
        releaseConvFilter(t.w);
        disposeConv(t);
      }
    });
  });

  describe('conv2dWinograd F(4x4, 3x3)', () => {
    // F(4x4)'s transforms (coefficients 4, 5, 8 and 1/6, 1/24) round more than F(2x2)'s: ~1e-6
    // relative to a float64 convolution (as on wasm, __tests__/winograd_wasm.test.ts), still far
    // below a wrong tap or coefficient (> 1e-2).
    const F4_TOL = 3e-6;
    const INPUTS: F4Input[] = ['separate', 'fused'];
    // Maps of 1..9 pixels a side (partial 4x4 tiles at the right and bottom edges), channel counts
    // below one k-tile and not multiples of 16, bias always, ReLU and residual in turn.
    const f4Cases: Named[] = [
      { name: 'one pixel, batch 2', x: [2, 1, 1, 8], k: 3, cout: 8, stride: 1, pad: 1, relu: true },
      { name: '2x3, cin 12 -> 8', x: [1, 2, 3, 12], k: 3, cout: 8, stride: 1, pad: 1, relu: false },
      { name: '3x5 + residual', x: [2, 3, 5, 8], k: 3, cout: 12, stride: 1, pad: 1, relu: false, residual: 'same' },
      { name: '7x5 + residual + relu, batch 3', x: [3, 7, 5, 20], k: 3, cout: 16, stride: 1, pad: 1, relu: true, residual: 'same' },
      { name: '5x1 one column, cout 4', x: [1, 5, 1, 8], k: 3, cout: 4, stride: 1, pad: 1, relu: true },
      { name: '8x4, exact tiles', x: [2, 8, 4, 16], k: 3, cout: 8, stride: 1, pad: 1, relu: false },
      { name: '9x7 cin 64 (4 k-tiles), tile 64x64', x: [1, 9, 7, 64], k: 3, cout: 20, stride: 1, pad: 1, relu: true, tile: { bm: 64, bn: 64 } },
      { name: '6x6 cin 32, tile 128x128', x: [2, 6, 6, 32], k: 3, cout: 24, stride: 1, pad: 1, relu: false, residual: 'same', tile: { bm: 128, bn: 128 } },
    ];

    describe.each(INPUTS)('input transform %s', (input) => {
      it.each(f4Cases.map((c, i) => [c.name, c, i] as const))('%s: equals float64 and the direct kernel; batch == single; chunks == whole', async (_name, c, i) => {
        const d = convData(c, 3000 * i + 11);
        const t = convTensors(c, d);
        const u = winogradFilter(t.w, 4);
        expect(u.shape).toEqual([36, c.x[3], c.cout]);
        poisonPool(convOutShape(c));
        const wino = conv2dWinograd(t.x, u, t.b, t.opts, c.tile, undefined, input);
        const direct = conv2dFused(t.x, t.w, t.b, t.opts);
        expect(wino.shape).toEqual(convOutShape(c));
        const got = await values(wino);
        expectFinite(got);
        expect(relErr(got, convReference64(c, d))).toBeLessThan(F4_TOL);
        expect(relErr(got, await values(direct))).toBeLessThan(F4_TOL);
        const [n, h, w, cin] = c.x;
        if (n > 1) {
          const last = n - 1;
          const res = t.opts.residual && imageOf(t.opts.residual, last);
          const x1 = imageOf(t.x, last);
          const single = conv2dWinograd(x1, u, t.b, { ...t.opts, residual: res }, c.tile, undefined, input);
          const inBatch = imageOf(wino, last);
          await expectBitEqual(single, inBatch);
          // A buffer limit of one image's V or M: the batch runs image by image.
          const oneImage = 36 * winogradTiles(1, h, w, 4) * Math.max(cin, c.cout) * 4;
          const chunked = conv2dWinograd(t.x, u, t.b, t.opts, c.tile, oneImage, input);
          await expectBitEqual(chunked, wino);
          tf.dispose([x1, single, inBatch, chunked, ...(res ? [res] : [])]);
        }
        tf.dispose([u, wino, direct]);
        disposeConv(t);
      });

      it('a batch of images with their own sizes (zero outside): each own region equals that image convolved alone, bit for bit', async () => {
        // As a detector batch: images padded to one size with zeros beyond their own region. The
        // 4x4 tiles start at each image's origin, so an image's tiles read the same pixels (or
        // zeros) as when it is alone, in the same order.
        const own: [number, number][] = [[5, 7], [3, 2], [7, 5]];
        const [hb, wb, cin, cout] = [7, 7, 12, 8];
        const data = lcgValues(own.length * hb * wb * cin, 77);
        own.forEach(([oh, ow], b) => {
          for (let y = 0; y < hb; y++) for (let x = 0; x < wb; x++) {
            if (y >= oh || x >= ow) data.fill(0, ((b * hb + y) * wb + x) * cin, ((b * hb + y) * wb + x + 1) * cin);
          }
        });
        const c: ConvCase = { x: [own.length, hb, wb, cin], k: 3, cout, stride: 1, pad: 1, relu: true };
        const d = { ...convData(c, 78), x: data };
        const t = convTensors(c, d);
        const u = winogradFilter(t.w, 4);
        const batch = conv2dWinograd(t.x, u, t.b, t.opts, undefined, undefined, input);
        for (let b = 0; b < own.length; b++) {
          const [oh, ow] = own[b];
          const alone = tf.slice(t.x, [b, 0, 0, 0], [1, oh, ow, cin]);
          const single = conv2dWinograd(alone, u, t.b, t.opts, undefined, undefined, input);
          const region = tf.slice(batch, [b, 0, 0, 0], [1, oh, ow, cout]);
          await expectBitEqual(region, single);
          const ref = convReference64({ ...c, x: [1, oh, ow, cin] }, { ...d, x: (await values(alone)) });
          expect(relErr(await values(single), ref)).toBeLessThan(F4_TOL);
          tf.dispose([alone, single, region]);
        }
        tf.dispose([u, batch]);
        disposeConv(t);
      });
    });

    it('the check fails on a wrong answer (U of a filter with swapped taps)', async () => {
      const c = f4Cases[3];
      const d = convData(c, 11);
      const t = convTensors(c, d);
      const flipped = tf.reverse(t.w, [0, 1]) as tf.Tensor4D;
      const u = winogradFilter(flipped, 4);
      const wrong = conv2dWinograd(t.x, u, t.b, t.opts);
      expect(relErr(await values(wrong), convReference64(c, d))).toBeGreaterThan(1e-2);
      tf.dispose([flipped, u, wrong]);
      disposeConv(t);
    });

    it(`${WINOGRAD_TILE_FLAG} picks F(2x2) or F(4x4) in conv() for a prepared 3x3 filter`, async () => {
      const c: Named = { name: 'flag', x: [2, 6, 10, 64], k: 3, cout: 64, stride: 1, pad: 1, relu: true };
      const t = convTensors(c, convData(c, 4343));
      const kernels = new Kernels('webgpu');
      const saved = tf.env().get(WINOGRAD_TILE_FLAG);
      const opts = { ...t.opts, winograd: true };
      try {
        tf.env().set(WINOGRAD_TILE_FLAG, 4);
        prepareConvFilter(t.w);
        const [u2, u4] = [winogradFilter(t.w, 2), winogradFilter(t.w, 4)];
        const [f2, f4] = [conv2dWinograd(t.x, u2, t.b, opts), conv2dWinograd(t.x, u4, t.b, opts)];
        const on4 = kernels.conv(t.x, t.w, t.b, opts);
        tf.env().set(WINOGRAD_TILE_FLAG, 2);
        const on2 = kernels.conv(t.x, t.w, t.b, opts);
        await expectBitEqual(on4, f4);
        await expectBitEqual(on2, f2);
        // The two tiles round differently, so the bit-equalities above tell them apart.
        expect(relErr(await values(on4), await values(on2))).toBeGreaterThan(0);
        tf.dispose([u2, u4, f2, f4, on4, on2]);
      } finally {
        tf.env().set(WINOGRAD_TILE_FLAG, saved);
        releaseConvFilter(t.w);
        disposeConv(t);
      }
    });
  });

  describe('roiAlignFused (multi-scale RoIAlign, one dispatch)', () => {
    // Batches whose images have different own sizes (smaller than the padded batch maps), boxes of
    // all sizes: past the map edge, degenerate (zero width or height), on one-pixel maps.
    const SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32];
    const roiCases: [string, Size[], number, number][] = [
      ['one image 96x160, C 8', [[96, 160]], 8, 37],
      ['three mixed sizes, C 12', [[96, 128], [64, 96], [32, 32]], 12, 101],
      ['one-pixel coarsest maps, C 4', [[32, 64], [32, 32]], 4, 29],
    ];

    function roiCase(own: Size[], channels: number, rois: number, seed: number): RoiCase {
      const batchH = Math.max(...own.map((s) => s[0]));
      const batchW = Math.max(...own.map((s) => s[1]));
      const maps = SCALES.map((s) => [Math.ceil(batchH * s), Math.ceil(batchW * s)] as [number, number]);
      const r = lcgValues(rois * 5, seed).map((v) => (v + 1) / 2);
      const scaledBoxes = new Float32Array(rois * 4);
      const meta = new Int32Array(rois * 4);
      for (let k = 0; k < rois; k++) {
        const b = k % own.length;
        const [ih, iw] = own[b];
        const level = Math.floor(r[k * 5] * 4);
        const s = SCALES[level];
        const bw = k % 17 === 0 ? 0 : Math.exp(r[k * 5 + 1] * Math.log(iw * 0.9));
        const bh = k % 13 === 0 ? 0 : Math.exp(r[k * 5 + 2] * Math.log(ih * 0.9));
        const x1 = r[k * 5 + 3] * iw * 1.05 - 8;
        const y1 = r[k * 5 + 4] * ih * 1.05 - 8;
        scaledBoxes.set([x1, y1, x1 + bw, y1 + bh].map((v) => Math.fround(Math.fround(v) * s)), k * 4);
        meta.set([b, level, Math.ceil(ih * s), Math.ceil(iw * s)], k * 4);
      }
      return { channels, maps, scaledBoxes, meta };
    }

    it.each(roiCases.map((c, i) => [...c, i] as const))('%s equals torchvision roi_align in float64', async (_name, own, channels, rois, i) => {
      const rc = roiCase(own, channels, rois, 31 * i + 5);
      const featData = rc.maps.map(([h, w], l) => lcgValues(own.length * h * w * channels, 77 * i + l));
      const feats = featData.map((d, l) => tf.tensor4d(d, [own.length, rc.maps[l][0], rc.maps[l][1], channels]));
      poisonPool([rois, ROI_OUTPUT_SIZE, ROI_OUTPUT_SIZE, channels]);
      const fused = roiAlignFused(feats, { scaledBoxes: rc.scaledBoxes, meta: rc.meta }, ROI_OUTPUT_SIZE, ROI_SAMPLING_RATIO);
      expect(fused.shape).toEqual([rois, ROI_OUTPUT_SIZE, ROI_OUTPUT_SIZE, channels]);
      const got = await values(fused);
      expectFinite(got);
      expect(relErr(got, roiAlignReference64(featData, rc, ROI_OUTPUT_SIZE, ROI_SAMPLING_RATIO))).toBeLessThan(REL_TOL);
      tf.dispose([...feats, fused]);
    });

    it('through multiScaleRoIAlign: equals the host path (torch-exact, as on wasm) on a mixed-size batch', async () => {
      // Resized image sizes and their own padded sizes; the batch is padded to the largest.
      const imageSizes: Size[] = [[150, 97], [61, 160], [20, 31]];
      const paddedSizes = imageSizes.map(paddedSize);
      const batch: Size = [Math.max(...paddedSizes.map((s) => s[0])), Math.max(...paddedSizes.map((s) => s[1]))];
      const channels = 16;
      const feats = [4, 8, 16, 32].map((s, l) => tf.tensor4d(lcgValues(3 * (batch[0] / s) * (batch[1] / s) * channels, 500 + l), [3, batch[0] / s, batch[1] / s, channels]));
      const boxes = imageSizes.map(([h, w], b) => {
        const r = lcgValues(4 * 25, 900 + b).map((v) => (v + 1) / 2);
        const out = new Float32Array(4 * 25);
        for (let k = 0; k < 25; k++) {
          const [x1, y1] = [r[4 * k] * w * 0.9, r[4 * k + 1] * h * 0.9];
          out.set([x1, y1, x1 + 1 + r[4 * k + 2] * (w - x1), y1 + 1 + r[4 * k + 3] * (h - y1)], 4 * k);
        }
        return out;
      });
      const gpu = await multiScaleRoIAlign(feats, boxes, imageSizes, paddedSizes, 'webgpu');
      const host = await multiScaleRoIAlign(feats, boxes, imageSizes, paddedSizes, 'host');
      expect(gpu.shape).toEqual([75, ROI_OUTPUT_SIZE, ROI_OUTPUT_SIZE, channels]);
      expect(relErr(await values(gpu), await values(host))).toBeLessThan(REL_TOL);
      tf.dispose([...feats, gpu, host]);
    });
  });

  describe('normalizeResizePadBatchWebGPU (input transform of a batch)', () => {
    async function expectLikeHost(images: tf.Tensor3D[], minSize: number, maxSize: number): Promise<void> {
      const host = prepareBatch(images, minSize, maxSize);
      const gpu = prepareBatch(images, minSize, maxSize, new Kernels('webgpu'));
      expect(gpu.images.shape).toEqual(host.images.shape);
      expect(gpu.imageSizes).toEqual(host.imageSizes);
      const [g, h] = [await values(gpu.images), await values(host.images)];
      expectFinite(g);
      // Blending in float32 with fma where the host rounds a float64 sum once: ulps apart.
      let maxAbs = 0;
      for (let i = 0; i < h.length; i++) maxAbs = Math.max(maxAbs, Math.abs(g[i] - h[i]));
      expect(maxAbs).toBeLessThan(1e-5);
      expect(relErr(g, h)).toBeLessThan(1e-6);
      tf.dispose([gpu.images, host.images]);
    }

    it('real images of four sizes (RGB, gray, RGBA sources) in one batch', async () => {
      const names = ['teaser.png', 'portrait_1.png', 'gray_1.png', 'rgba_1.png'];
      const images = await Promise.all(names.map((n) => decodeImage(imagePath(n))));
      poisonPool([4, 288, 288, 3]);
      await expectLikeHost(images, 160, 288);
      tf.dispose(images);
    });

    it('one pixel, one row, odd widths, and non-byte float pixels', async () => {
      const shapes: [number, number][] = [[1, 1], [1, 7], [5, 3], [9, 1]];
      const images = shapes.map(([h, w], i) => {
        const v = lcgValues(h * w * 3, 40 + i).map((x) => Math.round((x + 1) * 127.5));
        return tf.tensor3d(v, [h, w, 3], 'int32');
      });
      // Values between bytes take the computed branch of the shader instead of the table.
      images.push(tf.tensor3d(lcgValues(6 * 11 * 3, 49).map((x) => (x + 1) * 127.4 + 0.3), [6, 11, 3], 'float32'));
      await expectLikeHost(images, 32, 64);
      tf.dispose(images);
    });

    it('decoded 8-bit samples (gray, RGB, RGBA; odd sizes; unaligned views) equal their float tensors bit for bit', async () => {
      const shapes: [number, number, 1 | 3 | 4][] = [[1, 1, 3], [5, 3, 1], [9, 7, 4], [13, 11, 3]];
      const images: ImageBytes[] = shapes.map(([height, width, channels], i) => {
        const n = height * width * channels;
        // One byte in, so the samples start off a word boundary and end inside one.
        const backing = new Uint8Array(n + 2);
        backing.set(lcgValues(n, 70 + i).map((x) => Math.round((x + 1) * 127.5)), 1);
        return { data: backing.subarray(1, n + 1), height, width, channels };
      });
      const webgpu = new Kernels('webgpu');
      for (const batch of [images, [images[2]], [images[3]]]) {
        const tensors = batch.map(imageTensor);
        const fromBytes = prepareBatch(batch, 32, 64, webgpu);
        const fromFloats = prepareBatch(tensors, 32, 64, webgpu);
        expect(fromBytes.images.shape).toEqual(fromFloats.images.shape);
        expect(Array.from(await values(fromBytes.images))).toEqual(Array.from(await values(fromFloats.images)));
        tf.dispose([fromBytes.images, fromFloats.images, ...tensors]);
      }
      // A word-aligned single image is uploaded from the caller's own bytes.
      const rgba = { data: new Uint8Array(lcgValues(6 * 10 * 4, 90).map((x) => Math.round((x + 1) * 127.5))), height: 6, width: 10, channels: 4 as const };
      const t = imageTensor(rgba);
      const [a, b] = [prepareBatch([rgba], 32, 64, webgpu), prepareBatch([t], 32, 64, webgpu)];
      expect(Array.from(await values(a.images))).toEqual(Array.from(await values(b.images)));
      tf.dispose([a.images, b.images, t]);
    });

    it('rejects mismatched taps instead of reading past them', () => {
      const img = tf.zeros([2, 2, 3]) as tf.Tensor3D;
      expect(() => normalizeResizePadBatchWebGPU([img], [], [], [32, 32], new Float32Array(774))).toThrow(/one y and one x tap set per image/);
      img.dispose();
    });
  });

  describe('RPN top-k candidates', () => {
    // Two images of different own sizes in one batch; logits with ties, both zeros, infinities
    // and NaN, so the selection's tie and sort-key rules are exercised.
    const padded: Size[] = [[96, 160], [64, 96]];
    const levelSizes = featureSizes(96, 160);
    function headValues(seed: number, quantum: number): Float32Array[] {
      return levelSizes.map(([h, w], level) => {
        const v = lcgValues(padded.length * h * w * 15, seed + level).map((x) => x * 4);
        for (let i = 0; i < v.length; i += 15) {
          // Logits on a grid of `quantum` (ties), and a few special values.
          for (let a = 0; a < 3; a++) v[i + a] = quantum > 0 ? Math.round(v[i + a] / quantum) * quantum : v[i + a];
        }
        const specials = [NaN, -0, 0, Infinity, -Infinity, -NaN];
        specials.forEach((s, j) => (v[(j * 7 + level) * 15 + (j % 3)] = s));
        return v;
      });
    }
    /** Host reference: the anchors of a level whose sort key's top 16 bits reach the k-th largest's. */
    function expectedSet(values: Float32Array, k: number): number[] {
      const key = (v: number): number => {
        if (v !== v) return 0xffffffff;
        const b = new Uint32Array(new Float32Array([v === 0 ? 0 : v]).buffer)[0];
        return b >= 0x80000000 ? 0xffffffff - b : b + 0x80000000;
      };
      const keys = Array.from(values, key);
      const digit = [...keys].sort((a, b) => b - a)[k - 1] >>> 16;
      return keys.flatMap((x, i) => (x >>> 16 >= digit ? [i] : []));
    }

    for (const [name, quantum, topN, slack] of [
      ['continuous logits', 0, 200, 600],
      ['tied logits (grid of 1/8)', 0.125, 150, 4000],
      ['topN above a level\'s anchors', 0.5, 5000, 64],
    ] as Array<[string, number, number, number]>) {
      it(`${name}: exactly the expected candidates, and the host's proposals from them`, async () => {
        const values = headValues(70, quantum);
        const head = values.map((v, l) => tf.tensor4d(v, [padded.length, levelSizes[l][0], levelSizes[l][1], 15]));
        const config = { ...RPN_CONFIG, preNmsTopN: topN, postNmsTopN: 300 };
        const layout = candidateLayout(padded, topN, slack);
        const result = rpnCandidates(head, layout);
        const words = (await result.data()) as Int32Array;
        const rankedResult = rpnCandidates(head, layout, true);
        const rankedWords = (await rankedResult.data()) as Int32Array;
        tf.dispose([...head, result, rankedResult]);
        for (let image = 0; image < padded.length; image++) {
          const candidates = candidatesOf(words, layout, image);
          expect(candidates).not.toBeNull();
          if (!candidates) continue;
          const job: ProposalJob = { levels: values, levelSizes, image, paddedSize: padded[image], imageSize: [padded[image][0] - 5, padded[image][1] - 9], config };
          // The candidate sets, level by level, against the host's reading of the same rule.
          const own = featureSizes(...padded[image]);
          let o = 0;
          own.forEach(([h, w], level) => {
            const [, W] = levelSizes[level];
            const logits = new Float32Array(h * w * 3);
            for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let a = 0; a < 3; a++) logits[(y * w + x) * 3 + a] = values[level][((image * levelSizes[level][0] + y) * W + x) * 15 + a];
            const n = candidates.perLevel[level];
            expect(Array.from(candidates.index.subarray(o, o + n))).toEqual(expectedSet(logits, Math.min(topN, logits.length)));
            o += n;
          });
          const fromCandidates = proposalsOf({ ...job, levels: [], candidates });
          const fromAll = proposalsOf(job);
          expect(fromCandidates.boxes.length).toBeGreaterThan(0);
          expect(Buffer.from(fromCandidates.boxes.buffer)).toEqual(Buffer.from(fromAll.boxes.buffer));
          expect(Buffer.from(fromCandidates.scores.buffer)).toEqual(Buffer.from(fromAll.scores.buffer));
          // Ranked on the GPU: the same candidates, each level in the host's sort order, and the same proposals.
          const ranked = rankedCandidatesOf(rankedWords, layout, image);
          expect(ranked).not.toBeNull();
          if (!ranked) continue;
          expect(ranked.perLevel).toEqual(candidates.perLevel);
          o = 0;
          candidates.perLevel.forEach((n) => {
            const order = hostRanking(candidates.objectness.subarray(o, o + n), candidates.index.subarray(o, o + n));
            expect(Array.from(ranked.index.subarray(o, o + n))).toEqual(order);
            o += n;
          });
          const fromRanked = proposalsOf({ ...job, levels: [], candidates: ranked });
          expect(Buffer.from(fromRanked.boxes.buffer)).toEqual(Buffer.from(fromAll.boxes.buffer));
          expect(Buffer.from(fromRanked.scores.buffer)).toEqual(Buffer.from(fromAll.scores.buffer));
          // Records in anchor order are not a ranking: the check that guards against a faulty GPU result.
          expect(rankedCandidatesOf(words, layout, image)).toBeNull();
        }
      });
    }

    /** The selection's order of a level's candidates (anchors): logit descending, -0 as +0, equal logits by anchor, NaN last. */
    function hostRanking(logits: Float32Array, anchors: Int32Array): number[] {
      const at = Array.from(anchors, (a, i) => i);
      const v = (i: number): number => (logits[i] === 0 ? 0 : logits[i]);
      at.sort((i, j) => {
        const ni = Number.isNaN(v(i));
        const nj = Number.isNaN(v(j));
        if (ni !== nj) return ni ? 1 : -1;
        if (!ni && v(i) !== v(j)) return v(j) - v(i);
        return anchors[i] - anchors[j];
      });
      return at.map((i) => anchors[i]);
    }

    it('a ranking with two records swapped is refused', async () => {
      const values = headValues(70, 0.125);
      const head = values.map((v, l) => tf.tensor4d(v, [padded.length, levelSizes[l][0], levelSizes[l][1], 15]));
      const layout = candidateLayout(padded, 150, 4000);
      const result = rpnCandidates(head, layout, true);
      const words = Int32Array.from((await result.data()) as Int32Array);
      tf.dispose([...head, result]);
      expect(rankedCandidatesOf(words, layout, 1)).not.toBeNull();
      const slot = 1 * layout.levels + 2;
      const a = layout.base[slot] + 3 * RECORD_WORDS;
      const b = layout.base[slot] + 4 * RECORD_WORDS;
      for (let w = 0; w < RECORD_WORDS; w++) [words[a + w], words[b + w]] = [words[b + w], words[a + w]];
      expect(rankedCandidatesOf(words, layout, 1)).toBeNull();
    });

    it('reports a level whose candidates overflow their slots (the caller then reads everything)', async () => {
      const values = headValues(90, 0.5);
      const head = values.map((v, l) => tf.tensor4d(v, [padded.length, levelSizes[l][0], levelSizes[l][1], 15]));
      const layout = candidateLayout(padded, 100, 0);
      const result = rpnCandidates(head, layout);
      const words = (await result.data()) as Int32Array;
      tf.dispose([...head, result]);
      expect(candidatesOf(words, layout, 0)).toBeNull();
    });

    it(`${GPU_BATCH_CANDIDATES_FLAG}: a batch for worker threads up to that size takes the candidates, a larger one the whole head; the same proposals`, async () => {
      const weights = formulaSubset('rpn.');
      const rpn = new RegionProposalNetwork(weights, new Kernels('webgpu'));
      const saved = tf.env().getNumber(GPU_BATCH_CANDIDATES_FLAG);
      const features = featureSizes(96, 160).map(([h, w], level) => tf.tensor4d(lcgValues(2 * h * w * 256, 300 + level), [2, h, w, 256]));
      const jobsWith = async (largest: number): Promise<ProposalJob[]> => {
        tf.env().set(GPU_BATCH_CANDIDATES_FLAG, largest);
        return rpn.predictHead(features, [[90, 150], [60, 90]], padded, true);
      };
      try {
        const withCandidates = await jobsWith(2);
        const whole = await jobsWith(1);
        expect(withCandidates.map((j) => j.candidates !== undefined)).toEqual([true, true]);
        expect(whole.map((j) => j.candidates !== undefined)).toEqual([false, false]);
        for (let image = 0; image < 2; image++) {
          const [a, b] = [proposalsOf(withCandidates[image]), proposalsOf(whole[image])];
          expect(a.boxes.length).toBeGreaterThan(0);
          expect(Buffer.from(a.boxes.buffer)).toEqual(Buffer.from(b.boxes.buffer));
          expect(Buffer.from(a.scores.buffer)).toEqual(Buffer.from(b.scores.buffer));
        }
      } finally {
        tf.env().set(GPU_BATCH_CANDIDATES_FLAG, saved);
        tf.dispose(features);
        rpn.dispose();
        for (const t of weights.tensors.values()) t.dispose();
      }
    });
  });

  describe('dispatch recording (one uniform buffer per submit, kept bind groups)', () => {
    /** A chain of tfjs programs and our kernels: many dispatches, several shapes and pipelines. */
    function chain(seed: number, steps: number): tf.Tensor {
      return tf.tidy(() => {
        const x = tf.tensor4d(lcgValues(2 * 9 * 7 * 16, seed), [2, 9, 7, 16]);
        const w = tf.tensor4d(lcgValues(9 * 16 * 24, seed + 1), [3, 3, 16, 24]);
        const b = tf.tensor1d(lcgValues(24, seed + 2));
        let y: tf.Tensor = conv2dFused(x, w, b, { stride: 1, pad: 1, relu: true });
        for (let i = 0; i < steps; i++) y = tf.add(tf.mul(y, 0.5 + i / 256), tf.slice(y, [0, 0, 0, 0], [2, 9, 7, 24]));
        return tf.concat([tf.reshape(y, [-1]), tf.reshape(tf.sum(y, [1, 2]), [-1])]);
      });
    }

    async function chainWith(record: boolean, seed: number, submitBatch?: number, steps = 40): Promise<Float32Array> {
      const saved = [tf.env().getBool(GPU_RECORD_FLAG), tf.env().getNumber('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE')] as const;
      tf.env().set(GPU_RECORD_FLAG, record);
      if (submitBatch) tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', submitBatch);
      try {
        const out = chain(seed, steps);
        const v = await values(out);
        out.dispose();
        return v;
      } finally {
        tf.env().set(GPU_RECORD_FLAG, saved[0]);
        tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', saved[1]);
      }
    }

    it.each([0, 12, 4096, 1 << 20])('uploads in writes of at most %i bytes (0: one write), every byte in place', async (chunk) => {
      const saved = tf.env().getNumber(UPLOAD_CHUNK_FLAG);
      tf.env().set(UPLOAD_CHUNK_FLAG, chunk);
      try {
        const data = lcgValues(10007, 505 + chunk);
        const t = tf.tensor1d(data);
        // A program reads the uploaded buffer, so the values come from the GPU, not the host copy.
        const doubled = tf.add(t, t);
        const got = await values(doubled);
        tf.dispose([t, doubled]);
        expect(Buffer.from(got.buffer)).toEqual(Buffer.from(data.map((v) => v + v).buffer));
      } finally {
        tf.env().set(UPLOAD_CHUNK_FLAG, saved);
      }
    });

    it.each([
      [5, 9, 37, 'uploaded', true],
      [64, 100, 300, 'uploaded', true],
      [5, 9, 37, 'computed', true],
      [64, 100, 300, 'computed', true],
      [5, 9, 37, 'uploaded', false],
      [64, 100, 300, 'computed', false],
    ])(
      "tfjs' matmul, which reads past its second operand's end, finds no stale NaN there (%i x %i @ .. x %i, %s operand, our recording: %s)",
      async (m, k, n, operand, ourRecording) => {
        const saved = tf.env().getBool(GPU_RECORD_FLAG);
        tf.env().set(GPU_RECORD_FLAG, ourRecording);
        try {
          const [av, bv] = [lcgValues(m * k, m), lcgValues(k * n, n)];
          // The operand's buffer is one of its class that held NaN to its end.
          poisonPool([k, n]);
          const b =
            operand === 'uploaded'
              ? tf.tensor2d(bv, [k, n])
              : tf.tidy(() => {
                  // The first n columns of a [k, 2n] matrix: the slice's output takes a buffer of the poisoned class.
                  const wide = new Float32Array(k * 2 * n);
                  for (let i = 0; i < k; i++) wide.set(bv.subarray(i * n, (i + 1) * n), i * 2 * n);
                  return tf.slice(tf.tensor2d(wide, [k, 2 * n]), [0, 0], [k, n]);
                });
          const a = tf.tensor2d(av, [m, k]);
          const product = tf.matMul(a, b);
          const got = await values(product);
          tf.dispose([a, b, product]);
          expectFinite(got);
          const want = new Float64Array(m * n);
          for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) for (let t = 0; t < k; t++) want[i * n + j] += av[i * k + t] * bv[t * n + j];
          expect(relErr(got, want)).toBeLessThan(REL_TOL);
        } finally {
          tf.env().set(GPU_RECORD_FLAG, saved);
        }
      },
    );

    it("lays uniforms out as WGSL structs (tfjs' layout)", () => {
      const i = (n: number) => ({ type: 'int32' as const, data: new Array<number>(n).fill(1) });
      const f = { type: 'float32' as const, data: [NaN] };
      // NaN, Infinity, a 4-D shape and its strides twice, the size: 16-byte vectors, scalars packed.
      expect(uniformLayout([f, f, i(4), i(3), i(4), i(3), i(1)])).toEqual({ offsets: [0, 4, 16, 32, 48, 64, 76], size: 80 });
      // A pair aligns to 8; anything after a 5- or 6-vector to 16; an empty value takes one slot.
      expect(uniformLayout([i(1), i(2), i(5), i(1), i(0)])).toEqual({ offsets: [0, 8, 16, 48, 52], size: 64 });
      expect(uniformLayout([i(1), i(1)])).toEqual({ offsets: [0, 4], size: 8 });
    });

    it("gives tfjs' own recording's bits, over more dispatches than a submit holds", async () => {
      const ours = await chainWith(true, 501);
      const theirs = await chainWith(false, 501);
      expect(Buffer.from(ours.buffer)).toEqual(Buffer.from(theirs.buffer));
      // And the uniforms do reach the programs: another input gives other numbers.
      expect(Buffer.from((await chainWith(true, 502)).buffer)).not.toEqual(Buffer.from(ours.buffer));
    });

    it('fills its uniform buffer and submits early when a submit would hold more dispatches than it has slots', async () => {
      // One submit for everything: the ~370 dispatches' slots (256 bytes apart) overflow its 64 KiB.
      const ours = await chainWith(true, 503, 10000, 120);
      const theirs = await chainWith(false, 503, undefined, 120);
      expect(Buffer.from(ours.buffer)).toEqual(Buffer.from(theirs.buffer));
    });

    it('records few new bind groups once the same work repeats', async () => {
      const device = (tf.backend() as unknown as { device: GPUDevice }).device;
      const create = device.createBindGroup.bind(device);
      let created = 0;
      device.createBindGroup = (d: GPUBindGroupDescriptor) => {
        created++;
        return create(d);
      };
      try {
        // New buffers (the free ones destroyed) make new bind groups on the first run. The pool
        // then hands every repeat the buffers it had before (the first made of those free), so
        // no new ones; handing out the last released instead makes 124, 124, then 12 per run.
        releaseGpuPool();
        const counts: number[] = [];
        for (let r = 0; r < 4; r++) {
          created = 0;
          await chainWith(true, 504);
          counts.push(created);
        }
        expect(counts[0]).toBeGreaterThan(100);
        expect(counts.slice(1)).toEqual([0, 0, 0]);
        const again = await chainWith(true, 504);
        expect(Buffer.from(again.buffer)).toEqual(Buffer.from((await chainWith(false, 504)).buffer));
      } finally {
        device.createBindGroup = create;
      }
    });
  });
});
