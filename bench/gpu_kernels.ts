// Checks and times our WebGPU programs against the portable path (stock tfjs ops) ON THE GPU.
// Bundle (`npm run gpu:bundle`, docs/webgpu.md) and run on the device machine:
//   source .gpu/setup.sh && node .gpu/app/kernels.mjs [--quick] [--json out.json]
// Correctness: random inputs of awkward sizes (not tile multiples), relative error
// ||fused - stock|| / ||stock|| must stay in float32 noise (< 1e-5), no NaN.
// Timing: the model's real layer shapes at 640x1152 input, batch 1 and 8; ms and TFLOP/s.
import * as tf from '@tensorflow/tfjs';
import { Command } from 'commander';
import { writeFileSync } from 'fs';
import {
  ConvOptions,
  ConvTile,
  conv2dFused,
  conv2dPortable,
  linearFused,
  linearPortable,
  chooseTile,
  chooseLinearTile,
} from '../src/kernels/webgpu/conv2d';
import { convOutputSize } from '../src/ops/size';
import { initWebGPUBackend } from '../src/kernels/webgpu/dawn';
import { gpuSync } from '../src/kernels/webgpu/program';
import { roiAlignFused, RoiAlignInputs } from '../src/kernels/webgpu/roi_align';
import { Kernels, useGpuPool } from '../src/kernels/webgpu';
import { conv2dWinograd, F4Input, winogradFilter, WinogradTile, winogradTiles } from '../src/kernels/webgpu/winograd';
import { prepareBatch } from '../src/model/transform';
import { decodeImage } from '../src/io/images';
import * as fsp from 'fs';
import { relErr as relErrHost } from '../__tests__/utils/lcg';
import { ConvCase as ReferenceConvCase, convReference64 as convReferenceHost, roiAlignReference64 } from '../__tests__/utils/kernel_reference';

const opts = new Command('kernels.mjs')
  .description('our WebGPU programs against the stock tfjs ops and float64 references, then timed on the model\'s layer shapes')
  .option('--quick', 'time batch 1 only (checks are the same)', false)
  .option('--json <file>', 'also write checks and timings as JSON')
  .option('--tile-sweep', "also time one head's fc6 GEMM with every tile shape, and check each gives the default tile's bits", false)
  .parse(process.argv)
  .opts<{ quick: boolean; json?: string; tileSweep: boolean }>();

const rnd = (shape: number[], scale = 1): tf.Tensor => tf.randomUniform(shape, -scale, scale, 'float32');

async function relErr(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  const r = tf.tidy(() => {
    const d = tf.sub(a, b);
    return tf.div(tf.sqrt(tf.sum(tf.mul(d, d))), tf.sqrt(tf.sum(tf.mul(b, b))));
  });
  const v = (await r.data())[0];
  r.dispose();
  return v;
}

interface ConvCase extends ReferenceConvCase {
  name: string;
  tile?: ConvTile;
}

const checkCases: ConvCase[] = [
  { name: '3x3 s1 vecA vecB odd spatial', x: [1, 17, 23, 16], k: 3, cout: 20, stride: 1, pad: 1, relu: true },
  { name: '3x3 s2 scalar A/B', x: [2, 19, 21, 5], k: 3, cout: 7, stride: 2, pad: 1, relu: false },
  { name: '7x7 s2 stem (cin 3)', x: [1, 37, 29, 3], k: 7, cout: 64, stride: 2, pad: 3, relu: true },
  { name: '1x1 s2 downsample', x: [2, 13, 11, 64], k: 1, cout: 36, stride: 2, pad: 0, relu: false },
  { name: '1x1 + upsampled residual (FPN)', x: [2, 9, 10, 32], k: 1, cout: 24, stride: 1, pad: 0, relu: false, residual: 'upsample' },
  { name: '1x1 + upsampled residual odd', x: [1, 11, 7, 64], k: 1, cout: 256, stride: 1, pad: 0, relu: false, residual: 'upsample' },
  { name: '3x3 + residual + relu (block)', x: [2, 15, 9, 48], k: 3, cout: 48, stride: 1, pad: 1, relu: true, residual: 'same' },
  { name: '3x3 cin 20 (scalar A) cout 12', x: [3, 10, 14, 20], k: 3, cout: 12, stride: 1, pad: 1, relu: false },
  { name: '3x3 256->256 tile 128x128', x: [1, 21, 37, 256], k: 3, cout: 256, stride: 1, pad: 1, relu: true, tile: { bm: 128, bn: 128 } },
  { name: '3x3 256->256 tile 128x64', x: [1, 21, 37, 256], k: 3, cout: 200, stride: 1, pad: 1, relu: true, tile: { bm: 128, bn: 64 } },
  { name: '3x3 s2 128->72 tile 64x64', x: [2, 23, 19, 128], k: 3, cout: 72, stride: 2, pad: 1, relu: false, tile: { bm: 64, bn: 64 } },
  { name: '1x1 256->3 (rpn cls)', x: [2, 13, 17, 256], k: 1, cout: 3, stride: 1, pad: 0, relu: false },
];

function makeConvInputs(c: ConvCase): { x: tf.Tensor4D; w: tf.Tensor4D; b: tf.Tensor1D; res?: tf.Tensor4D } {
  const cin = c.x[3];
  const fan = c.k * c.k * cin;
  const x = rnd(c.x) as tf.Tensor4D;
  const w = rnd([c.k, c.k, cin, c.cout], Math.sqrt(6 / fan)) as tf.Tensor4D;
  const b = rnd([c.cout], 0.1) as tf.Tensor1D;
  const ho = convOutputSize(c.x[1], c.k, c.stride, c.pad);
  const wo = convOutputSize(c.x[2], c.k, c.stride, c.pad);
  let res: tf.Tensor4D | undefined;
  if (c.residual === 'same') res = rnd([c.x[0], ho, wo, c.cout]) as tf.Tensor4D;
  if (c.residual === 'upsample') res = rnd([c.x[0], Math.ceil(ho / 2), Math.ceil(wo / 2), c.cout]) as tf.Tensor4D;
  return { x, w, b, res };
}

function convOpts(c: ConvCase, res?: tf.Tensor4D): ConvOptions {
  return { stride: c.stride, pad: c.pad, relu: c.relu, residual: res, upsampleResidual: c.residual === 'upsample' };
}

/** The float64 reference convolution (PyTorch semantics, __tests__/utils/kernel_reference.ts) of these tensors. */
async function convReference64(x: tf.Tensor4D, w: tf.Tensor4D, b: tf.Tensor1D, c: ConvCase, res?: tf.Tensor4D): Promise<Float64Array> {
  const data = async (t: tf.Tensor): Promise<Float32Array> => (await t.data()) as Float32Array;
  const residual = res && { data: await data(res), h: res.shape[1], w: res.shape[2] };
  return convReferenceHost(c, { x: await data(x), w: await data(w), b: await data(b), res: residual });
}

interface CheckRow {
  name: string;
  relErr: number;
  ok: boolean;
}

const winogradChecks: ConvCase[] = [
  { name: '3x3 128->20 odd spatial', x: [1, 17, 23, 128], k: 3, cout: 20, stride: 1, pad: 1, relu: true },
  { name: '3x3 256->256 batch 3', x: [3, 9, 14, 256], k: 3, cout: 256, stride: 1, pad: 1, relu: true },
  { name: '3x3 128->128 + residual', x: [2, 15, 9, 128], k: 3, cout: 128, stride: 1, pad: 1, relu: true, residual: 'same' },
  { name: '3x3 512->12 one row', x: [2, 1, 5, 512], k: 3, cout: 12, stride: 1, pad: 1, relu: false },
  { name: '3x3 64->64 (ResNet layer1)', x: [1, 33, 31, 64], k: 3, cout: 64, stride: 1, pad: 1, relu: false },
  { name: '3x3 256->256 tile 64x64', x: [1, 21, 37, 256], k: 3, cout: 256, stride: 1, pad: 1, relu: true, tile: { bm: 64, bn: 64 } },
];

/** The Winograd variants checked and timed: F(2x2), F(4x4) with its input transform separate or in the GEMM loads. */
const WINOGRAD_VARIANTS: { name: string; tile: WinogradTile; input: F4Input }[] = [
  { name: 'F(2x2)', tile: 2, input: 'separate' },
  { name: 'F(4x4) sep', tile: 4, input: 'separate' },
  { name: 'F(4x4) fused', tile: 4, input: 'fused' },
];

/**
 * Each Winograd variant against the direct kernel and a float64 convolution; each image of a
 * batch bit-identical to its own single run; a batch run in image chunks bit-identical to one run.
 */
async function winogradCases(): Promise<CheckRow[]> {
  const rows: CheckRow[] = [];
  for (const c of winogradChecks) {
    const { x, w, b, res } = makeConvInputs(c);
    const opts = convOpts(c, res);
    const direct = conv2dFused(x, w, b, opts);
    const ref = await convReference64(x, w, b, c, res);
    for (const v of WINOGRAD_VARIANTS) {
      const u = winogradFilter(w, v.tile);
      tf.fill([c.x[0], c.x[1], c.x[2], c.cout], NaN).dispose();
      const run = (xs: tf.Tensor4D, o: ConvOptions, chunkBytes?: number): tf.Tensor4D => conv2dWinograd(xs, u, b, o, c.tile, chunkBytes, v.input);
      const wino = run(x, opts);
      const e = await relErr(wino, direct);
      rows.push({ name: `winograd ${v.name} ${c.name} vs direct`, relErr: e, ok: e < 1e-5 && Number.isFinite(e) });
      const e64 = relErrHost(await wino.data(), ref);
      rows.push({ name: `  vs float64 CPU`, relErr: e64, ok: e64 < 1e-5 && Number.isFinite(e64) });
      if (c.x[0] > 1) {
        // Image 1 alone vs inside the batch; the batch in chunks of one image (its V or M) vs at once.
        const [n, h, wd, cin] = c.x;
        const one = tf.slice(x, [1, 0, 0, 0], [1, h, wd, cin]);
        const oneRes = res && tf.slice(res, [1, 0, 0, 0], [1, h, wd, c.cout]);
        const single = run(one, { ...opts, residual: oneRes });
        const inBatch = tf.slice(wino, [1, 0, 0, 0], [1, h, wd, c.cout]);
        const dSingle = tf.tidy(() => tf.max(tf.abs(tf.sub(single, inBatch))));
        const e = (v.tile + 2) ** 2;
        const chunked = run(x, opts, e * winogradTiles(1, h, wd, v.tile) * Math.max(cin, c.cout) * 4);
        const dChunk = tf.tidy(() => tf.max(tf.abs(tf.sub(chunked, wino))));
        const [ds, dc] = [(await dSingle.data())[0], (await dChunk.data())[0]];
        rows.push({ name: `  image 1 of ${n} == single, chunked == whole`, relErr: Math.max(ds, dc), ok: ds === 0 && dc === 0 });
        tf.dispose([one, single, inBatch, dSingle, chunked, dChunk, ...(oneRes ? [oneRes] : [])]);
      }
      tf.dispose([u, wino]);
    }
    tf.dispose([x, w, b, direct, ...(res ? [res] : [])]);
  }
  return rows;
}

async function runChecks(): Promise<CheckRow[]> {
  const rows: CheckRow[] = [];
  for (const c of checkCases) {
    const { x, w, b, res } = makeConvInputs(c);
    const opts = convOpts(c, res);
    // Poison the buffer pool: the fused output must not inherit a stale correct answer.
    const ho = convOutputSize(c.x[1], c.k, c.stride, c.pad);
    const wo = convOutputSize(c.x[2], c.k, c.stride, c.pad);
    tf.fill([c.x[0], ho, wo, c.cout], NaN).dispose();
    const fused = conv2dFused(x, w, b, opts, c.tile);
    const stock = conv2dPortable(x, w, b, opts);
    const e = await relErr(fused, stock);
    rows.push({ name: `conv ${c.name}`, relErr: e, ok: e < 1e-5 && Number.isFinite(e) });
    if (fused.size * c.k * c.k * c.x[3] < 5e6) {
      // Identical summation order can make fused == stock bit for bit; float64 is the independent check.
      const e64 = relErrHost(await fused.data(), await convReference64(x, w, b, c, res));
      rows.push({ name: `  vs float64 CPU`, relErr: e64, ok: e64 < 1e-5 && Number.isFinite(e64) });
    }
    tf.dispose([x, w, b, fused, stock, ...(res ? [res] : [])]);
  }
  for (const r of await winogradCases()) rows.push(r);
  for (const [m, k, n, relu] of [[37, 144, 70, true], [1000, 12544, 2048, true], [333, 1024, 12, false]] as [number, number, number, boolean][]) {
    const x = rnd([m, k]) as tf.Tensor2D;
    const w = rnd([k, n], Math.sqrt(6 / k)) as tf.Tensor2D;
    const b = rnd([n], 0.1) as tf.Tensor1D;
    const fused = linearFused(x, w, b, relu);
    const stock = linearPortable(x, w, b, relu);
    const e = await relErr(fused, stock);
    rows.push({ name: `linear ${m}x${k}x${n}`, relErr: e, ok: e < 1e-5 && Number.isFinite(e) });
    tf.dispose([x, w, b, fused, stock]);
  }
  for (const r of await roiAlignCases()) rows.push(r);
  // Input transform: the GPU path vs the host path (torch-exact taps), a mixed batch of real images.
  const names = ['teaser.png', 'portrait_1.png', 'gray_1.png', 'rgba_1.png'];
  for (const [minSize, maxSize] of [[640, 1400], [160, 288]]) {
    // Fresh (host-resident) images each time: the host path reads them with dataSync.
    const imgs = await Promise.all(names.map((n) => decodeImage(fsp.readFileSync(`__tests__/fixtures/golden/${n}`))));
    const host = prepareBatch(imgs, minSize, maxSize);
    const gpu = prepareBatch(imgs, minSize, maxSize, new Kernels('webgpu'));
    const e = await relErr(gpu.images, host.images);
    const maxAbs = tf.tidy(() => tf.max(tf.abs(tf.sub(gpu.images, host.images))));
    const m = (await maxAbs.data())[0];
    rows.push({ name: `transform ${minSize}/${maxSize} x${imgs.length} (max abs ${m.toExponential(1)})`, relErr: e, ok: e < 1e-6 && m < 1e-5 });
    tf.dispose([host.images, gpu.images, maxAbs, ...imgs]);
  }
  return rows;
}

// ---- RoIAlign: CPU reference written from torchvision's roi_align semantics (aligned=False) ----

const ROI_OUT = 7;
const ROI_GRID = 2;
const ROI_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32];

interface RoiFixture {
  batch: number;
  channels: number;
  /** Batch map size per level. */
  maps: [number, number][];
  /** Own map size per image per level (smaller than the batch map for padded images). */
  own: [number, number][][];
  inputs: RoiAlignInputs;
}

/**
 * Random boxes of all sizes (some past the map edge, some degenerate) over a batch whose later
 * images are padded smaller than the batch (own maps smaller than the batch maps).
 */
function randomRoiFixture(batch: number, imgH: number, imgW: number, channels: number, rois: number): RoiFixture {
  const maps = ROI_SCALES.map((s) => [Math.ceil(imgH * s), Math.ceil(imgW * s)] as [number, number]);
  const ownImg = Array.from({ length: batch }, (_, b) => [imgH - 32 * (b % 3), imgW - 32 * ((b + 1) % 3)]);
  const own = ownImg.map(([h, w]) => ROI_SCALES.map((s) => [Math.ceil(h * s), Math.ceil(w * s)] as [number, number]));
  const scaledBoxes = new Float32Array(rois * 4);
  const meta = new Int32Array(rois * 4);
  for (let r = 0; r < rois; r++) {
    const b = r % batch;
    const [ih, iw] = ownImg[b];
    const bw = Math.fround(Math.exp(Math.random() * Math.log(iw * 0.9)) + (r % 17 === 0 ? 0 : 1));
    const bh = Math.fround(Math.exp(Math.random() * Math.log(ih * 0.9)) * (r % 13 === 0 ? 0 : 1));
    const x1 = Math.fround(Math.random() * iw * 1.05 - 8);
    const y1 = Math.fround(Math.random() * ih * 1.05 - 8);
    // torchvision's LevelMapper: floor(4 + log2(sqrt(area) / 224) + 1e-6) clamped to [2, 5], minus 2.
    const lvl = Math.floor(4 + Math.log2(Math.sqrt(bw * bh) / 224) + 1e-6);
    const level = Math.min(5, Math.max(2, Number.isFinite(lvl) ? lvl : 2)) - 2;
    const s = ROI_SCALES[level];
    scaledBoxes.set([x1, y1, Math.fround(x1 + bw), Math.fround(y1 + bh)].map((v) => Math.fround(v * s)), r * 4);
    meta.set([b, level, own[b][level][0], own[b][level][1]], r * 4);
  }
  return { batch, channels, maps, own, inputs: { scaledBoxes, meta } };
}

async function roiAlignCases(): Promise<CheckRow[]> {
  const rows: CheckRow[] = [];
  for (const [batch, imgH, imgW, c, rois] of [[1, 160, 224, 8, 37], [3, 96, 128, 12, 101], [3, 224, 160, 256, 300]]) {
    const fx = randomRoiFixture(batch, imgH, imgW, c, rois);
    const featData = fx.maps.map(([h, w]) => {
      const d = new Float32Array(batch * h * w * c);
      for (let i = 0; i < d.length; i++) d[i] = Math.random() * 2 - 1;
      return d;
    });
    const ref = roiAlignReference64(featData, { channels: fx.channels, maps: fx.maps, ...fx.inputs }, ROI_OUT, ROI_GRID);
    const feats = featData.map((d, i) => tf.tensor4d(d, [batch, fx.maps[i][0], fx.maps[i][1], c]));
    tf.fill([rois, ROI_OUT, ROI_OUT, c], NaN).dispose();
    const fused = roiAlignFused(feats, fx.inputs, ROI_OUT, ROI_GRID);
    const got = await fused.data();
    let num = 0;
    let den = 0;
    let nan = false;
    for (let i = 0; i < ref.length; i++) {
      if (!Number.isFinite(got[i])) nan = true;
      num += (got[i] - ref[i]) ** 2;
      den += ref[i] ** 2;
    }
    const e = Math.sqrt(num / den);
    rows.push({ name: `roiAlign b${batch} ${imgH}x${imgW} c${c} R${rois}`, relErr: e, ok: !nan && e < 1e-5 });
    tf.dispose([...feats, fused]);
  }
  return rows;
}

async function timeRoiAlign(batch: number, time: (f: () => tf.Tensor) => Promise<number>): Promise<{ fusedMs: number }> {
  const fx = randomRoiFixture(batch, 640, 1152, 256, 1000 * batch);
  const feats = fx.maps.map(([h, w]) => rnd([batch, h, w, 256]) as tf.Tensor4D);
  const fusedMs = await time(() => roiAlignFused(feats, fx.inputs, ROI_OUT, ROI_GRID));
  tf.dispose(feats);
  return { fusedMs };
}

/**
 * Median GPU time per call in ms: GPU timestamp queries around each program (tf.time's kernelMs),
 * summed over the programs of one call; wall-clock per call when the device has no timestamps.
 */
async function timeIt(f: () => tf.Tensor, budgetMs = 200): Promise<number> {
  for (let i = 0; i < 2; i++) f().dispose();
  await gpuSync();
  const samples: number[] = [];
  const t0 = performance.now();
  while (samples.length < 3 || (performance.now() - t0 < budgetMs && samples.length < 25)) {
    const w0 = performance.now();
    const t = await tf.time(() => f().dispose());
    await gpuSync();
    const k = typeof t.kernelMs === 'number' ? t.kernelMs : 0;
    samples.push(k > 0 ? k : performance.now() - w0);
  }
  samples.sort((a, b) => a - b);
  return samples[samples.length >> 1];
}

interface TimingRow {
  layer: string;
  batch: number;
  gflop: number;
  stockMs: number;
  fusedMs: number;
  tile: string;
  stockTflops: number;
  fusedTflops: number;
  /** Each of WINOGRAD_VARIANTS for stride-1 3x3 layers (effective TF/s: the direct conv's FLOPs). */
  winoMs?: number[];
}

// ResNet-18 + FPN + RPN at the default 640x1152 (padded) input.
const timedLayers: ConvCase[] = [
  { name: 'stem 7x7/2 3->64 @640x1152', x: [1, 640, 1152, 3], k: 7, cout: 64, stride: 2, pad: 3, relu: true },
  { name: 'layer1 3x3 64->64 @160x288 +res', x: [1, 160, 288, 64], k: 3, cout: 64, stride: 1, pad: 1, relu: true, residual: 'same' },
  { name: 'layer2 3x3/2 64->128 @160x288', x: [1, 160, 288, 64], k: 3, cout: 128, stride: 2, pad: 1, relu: true },
  { name: 'layer2 3x3 128->128 @80x144', x: [1, 80, 144, 128], k: 3, cout: 128, stride: 1, pad: 1, relu: true },
  { name: 'layer2 down 1x1/2 64->128', x: [1, 160, 288, 64], k: 1, cout: 128, stride: 2, pad: 0, relu: false },
  { name: 'layer3 3x3 256->256 @40x72', x: [1, 40, 72, 256], k: 3, cout: 256, stride: 1, pad: 1, relu: true },
  { name: 'layer4 3x3 512->512 @20x36', x: [1, 20, 36, 512], k: 3, cout: 512, stride: 1, pad: 1, relu: true },
  { name: 'fpn inner 1x1 64->256 +up @160x288', x: [1, 160, 288, 64], k: 1, cout: 256, stride: 1, pad: 0, relu: false, residual: 'upsample' },
  { name: 'fpn/rpn 3x3 256->256 @160x288', x: [1, 160, 288, 256], k: 3, cout: 256, stride: 1, pad: 1, relu: true },
  { name: 'fpn/rpn 3x3 256->256 @80x144', x: [1, 80, 144, 256], k: 3, cout: 256, stride: 1, pad: 1, relu: true },
  { name: 'rpn bbox 1x1 256->12 @160x288', x: [1, 160, 288, 256], k: 1, cout: 12, stride: 1, pad: 0, relu: false },
];

async function runTimings(batches: number[]): Promise<TimingRow[]> {
  const rows: TimingRow[] = [];
  for (const batch of batches) {
    for (const base of timedLayers) {
      const c: ConvCase = { ...base, x: [batch, base.x[1], base.x[2], base.x[3]] };
      const { x, w, b, res } = makeConvInputs(c);
      const opts = convOpts(c, res);
      const ho = convOutputSize(c.x[1], c.k, c.stride, c.pad);
      const wo = convOutputSize(c.x[2], c.k, c.stride, c.pad);
      const gflop = (2 * batch * ho * wo * c.k * c.k * c.x[3] * c.cout) / 1e9;
      const tile = chooseTile(batch * ho * wo, c.cout);
      const fusedMs = await timeIt(() => conv2dFused(x, w, b, opts));
      const stockMs = await timeIt(() => conv2dPortable(x, w, b, opts));
      const again = await timeIt(() => conv2dFused(x, w, b, opts));
      if (Math.abs(again - fusedMs) > 0.1 * fusedMs) console.log(`  (fused time moved: ${fusedMs.toFixed(3)} -> ${again.toFixed(3)} ms)`);
      let winoMs: number[] | undefined;
      if (c.k === 3 && c.stride === 1 && c.x[3] % 4 === 0) {
        winoMs = [];
        for (const v of WINOGRAD_VARIANTS) {
          const u = winogradFilter(w, v.tile);
          winoMs.push(await timeIt(() => conv2dWinograd(x, u, b, opts, undefined, undefined, v.input)));
          u.dispose();
        }
      }
      rows.push({
        layer: c.name, batch, gflop, stockMs, fusedMs, tile: `${tile.bm}x${tile.bn}`,
        stockTflops: gflop / stockMs, fusedTflops: gflop / fusedMs, winoMs,
      });
      tf.dispose([x, w, b, ...(res ? [res] : [])]);
      console.log(fmtTiming(rows[rows.length - 1]));
    }
    // fc6 of both ROI heads as one GEMM: 1000 proposals per image, 12544 -> 2 x 1024.
    const m = 1000 * batch;
    const x = rnd([m, 12544]) as tf.Tensor2D;
    const w = rnd([12544, 2048], 0.02) as tf.Tensor2D;
    const b = rnd([2048], 0.1) as tf.Tensor1D;
    const gflop = (2 * m * 12544 * 2048) / 1e9;
    const fusedMs = await timeIt(() => linearFused(x, w, b, true));
    const stockMs = await timeIt(() => linearPortable(x, w, b, true));
    const tile = chooseLinearTile(m, 12544, 2048);
    rows.push({
      layer: 'fc6 x2 GEMM 12544->2048', batch, gflop, stockMs, fusedMs, tile: `${tile.bm}x${tile.bn}`,
      stockTflops: gflop / stockMs, fusedTflops: gflop / fusedMs,
    });
    console.log(fmtTiming(rows[rows.length - 1]));
    tf.dispose([x, w, b]);
    const roi = await timeRoiAlign(batch, timeIt);
    console.log(`roi_align batch ${batch}: fused ${roi.fusedMs.toFixed(3)} ms`);
  }
  return rows;
}

/** Tile shapes conv2dFused can run (ConvTile). */
const TILES: ConvTile[] = [64, 128].flatMap((bm) => [64, 128].flatMap((bn) => [16, 32].map((bk) => ({ bm, bn, bk }) as ConvTile)));

/**
 * One head's fc6 (1000 proposals per image, 12544 -> 1024, ReLU) with every tile shape: ms, TF/s,
 * and whether its output has the default tile's bits (each output sums its products in the same
 * order in any tile, so the rows do not depend on the batch's size).
 */
async function tileSweep(batches: number[]): Promise<void> {
  for (const batch of batches) {
    const m = 1000 * batch;
    const x = rnd([m, 12544]) as tf.Tensor2D;
    const w = rnd([12544, 1024], 0.02) as tf.Tensor2D;
    const b = rnd([1024], 0.1) as tf.Tensor1D;
    const gflop = (2 * m * 12544 * 1024) / 1e9;
    const chosen = chooseLinearTile(m, 12544, 1024);
    const reference = linearFused(x, w, b, true);
    const expected = (await reference.data()) as Float32Array;
    reference.dispose();
    for (const tile of TILES) {
      const out = linearFused(x, w, b, true, tile);
      const got = (await out.data()) as Float32Array;
      out.dispose();
      const same = got.every((v, i) => Object.is(v, expected[i]));
      const ms = await timeIt(() => linearFused(x, w, b, true, tile));
      const isDefault = tile.bm === chosen.bm && tile.bn === chosen.bn && (tile.bk ?? 16) === (chosen.bk ?? 16);
      console.log(
        `fc6 one head b${batch} tile ${tile.bm}x${tile.bn}x${tile.bk}${isDefault ? ' (default)' : '          '} ` +
          `${ms.toFixed(3).padStart(8)} ms ${(gflop / ms).toFixed(2).padStart(6)} TF/s  ${same ? 'same bits' : 'BITS DIFFER'}`,
      );
    }
    tf.dispose([x, w, b]);
  }
}

function fmtTiming(r: TimingRow): string {
  return `${r.layer.padEnd(38)} b${String(r.batch).padEnd(2)} ${r.gflop.toFixed(2).padStart(8)} GF  ` +
    `stock ${r.stockMs.toFixed(3).padStart(9)} ms ${r.stockTflops.toFixed(2).padStart(6)} TF/s  ` +
    `fused ${r.fusedMs.toFixed(3).padStart(8)} ms ${r.fusedTflops.toFixed(2).padStart(6)} TF/s  tile ${r.tile}` +
    (r.winoMs ?? []).map((ms, k) => `  ${WINOGRAD_VARIANTS[k].name} ${ms.toFixed(3).padStart(8)} ms ${(r.gflop / ms).toFixed(2).padStart(6)} TF/s eff`).join('');
}

async function main(): Promise<void> {
  const adapter = await initWebGPUBackend((process.env.DAWN_FLAGS ?? '').split(';').filter(Boolean));
  // As Img2Pose.load sets it up (IMG2POSE_GPU_POOL=exact keeps tfjs' own pooling).
  if (process.env.IMG2POSE_GPU_POOL !== 'exact') useGpuPool(Number(process.env.IMG2POSE_GPU_POOL_GIB ?? 8) * 2 ** 30);
  const features = (tf.backend() as unknown as { device: { features: Set<string> } }).device.features;
  console.log('timestamp-query', features.has('timestamp-query'));
  console.log('backend', JSON.stringify(adapter));
  // Smoke test: a few stock ops on the GPU against numbers known exactly.
  const a = tf.tensor2d([1, 2, 3, 4], [2, 2]);
  const smoke = tf.tidy(() => tf.add(tf.matMul(a, a), tf.relu(tf.scalar(-1))));
  console.log('smoke matMul', Array.from(await smoke.data()), '(expect 7,10,15,22)');
  tf.dispose([a, smoke]);

  const checks = await runChecks();
  for (const r of checks) console.log(`${r.ok ? 'PASS' : 'FAIL'} ${r.name.padEnd(44)} rel err ${r.relErr.toExponential(2)}`);
  const timings = await runTimings(opts.quick ? [1] : [1, 8]);
  if (opts.tileSweep) await tileSweep([1, 8, 16]);
  console.log('\nlayer                                  batch   GFLOP   stock ms  TF/s   fused ms  TF/s   tile');
  for (const r of timings) console.log(fmtTiming(r));
  const failed = checks.filter((r) => !r.ok).length;
  console.log(`\nchecks: ${checks.length - failed}/${checks.length} pass; tensors alive ${tf.memory().numTensors}`);
  if (opts.json) writeFileSync(opts.json, JSON.stringify({ adapter, checks, timings }, null, 1));
  process.exit(failed ? 1 : 0);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(2);
});
