// End-to-end GPU benchmark: Img2PoseModel.predict on the webgpu backend at the default
// sizes (min 640 / max 1400), on the real photo and on mixed sizes, batch sizes 1..16:
// ms/image, images/s, speedup of a batch over one-by-one, GPU memory, results of each batch vs
// one-by-one, and a per-stage breakdown (GPU synchronised around each stage, so the stages add up
// to a bit more than an unsynchronised forward).
// Bundled (`npm run gpu:bundle`, docs/webgpu.md), run from the repo root on the device:
//   node .gpu/app/bench.mjs [options]   (--help lists them; the worker bundle for the host
//   threads is .gpu/app/worker.mjs unless IMG2POSE_WORKER_SCRIPT names another)
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { applyBackendFlags, winogradSetting } from './gpu_flags';
import { formulaWeights } from '../src/io/formula_weights';
import { decodeImage } from '../src/io/images';
import { emptyTimings, Img2PoseModel, POSE_GATING_FLAG, PredictOptions, RawDetections, StageTimings, SUBBATCH_OVERLAP } from '../src/model/model';
import {
  GPU_RECORD_FLAG, gpuMemory, gpuSync, initWebGPUBackend, KernelMode, Kernels, PORTABLE_KERNELS, useGpuPool, WINOGRAD_F4_FUSED_FLAG,
  WINOGRAD_FLAG, WINOGRAD_TILE_FLAG,
} from '../src/kernels/webgpu';
import { activeRuntime, rulesFor } from '../src/runtime/runtime';
import { compareDetections } from './gpu_check';
import { Backbone } from '../src/model/backbone';
import { RegionProposalNetwork } from '../src/model/rpn';
import { multiScaleRoIAlign } from '../src/model/roi_align';
import { RoIHeads } from '../src/model/roi_heads';
import { prepareBatch } from '../src/model/transform';
import { postprocessDetections } from '../src/model/postprocess';
import { Img2PoseWeights } from '../src/model/weights';
import { forwardFlops, FP32_PEAK_TFLOPS, StageFlops, tflops, WGSL_GEMM_TFLOPS } from './stage_flops';

function intList(v: string): number[] {
  const list = v.split(',').map(Number);
  if (list.some((n) => !Number.isInteger(n) || n < 0)) throw new InvalidArgumentError(`expected integers >= 0 separated by commas, got ${v}`);
  return list;
}

function count(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected an integer >= 0, got ${v}`);
  return n;
}

const program = new Command('bench.mjs')
  .description('Img2PoseModel.predict on the webgpu backend: batches vs one by one, stages, memory')
  .addOption(new Option('--mode <mode>', 'kernels: ours (webgpu), stock tfjs ops (portable), or both').choices(['webgpu', 'portable', 'both']).default('webgpu'))
  .option('--batches <list>', 'batch sizes of the photo (0 in --memory: the mixed set)', intList, [1, 2, 4, 8, 16])
  .option('--json <file>', 'also write the table and stages as JSON')
  .option('--host-threads <n>', "worker threads for a batch's host stages", count, 8)
  .option('--compare-threads', 'with --paired: also a model with the host stages in-thread', false)
  .option('--overlap <n>', 'sub-batch size of overlapping forwards (0: off)', count, SUBBATCH_OVERLAP)
  .option('--few-dets', "upstream_gpu.py's fastest case: the class bias set to (6, -6), so that (nearly) no box passes the 0.05 score filter", false)
  .option('--overlap-sweep <list>', 'paired rounds for each of these sub-batch sizes')
  .option('--paired', 'one by one vs batch, alternated round by round', false)
  .option('--memory', "tfjs' buffer pool after three forwards of each batch size", false)
  .option('--stages-only', 'the per-stage replica only (GPU synchronised after each stage)', false)
  .addOption(new Option('--winograd <on|off>', 'Winograd for the stride-1 3x3 convolutions').choices(['on', 'off']).default('on'))
  .option('--winograd-sweep', 'Winograd on and off, alternated round by round', false)
  .option('--winograd-tile-sweep', 'Winograd F(2x2), F(4x4) and by layer (auto), alternated round by round', false)
  .option('--gating-sweep', 'the pose branch only above the score filter, on and off, alternated', false)
  .option('--record-sweep', "our dispatch recording and tfjs' own, alternated round by round", false);
const opts = program.parse(process.argv).opts<{
  mode: KernelMode | 'both';
  batches: number[];
  json?: string;
  hostThreads: number;
  compareThreads: boolean;
  overlap: number;
  overlapSweep?: string;
  fewDets: boolean;
  paired: boolean;
  memory: boolean;
  stagesOnly: boolean;
  winograd: 'on' | 'off';
  winogradSweep: boolean;
  winogradTileSweep: boolean;
  gatingSweep: boolean;
  recordSweep: boolean;
}>();
const GOLDEN = path.join(process.cwd(), '__tests__', 'fixtures', 'golden');
const CONFIG = { minSize: 640, maxSize: 1400 };
// Sub-batch overlap of predict (model.ts); --overlap-sweep measures several.
let OPTS: PredictOptions = { overlap: opts.overlap };
// 'one by one' in --paired rounds: single images, never split.
const PHOTO = 'teaser.png';
const MIXED = ['teaser.png', 'portrait_1.png', 'wide_1.png', 'small_1.png', 'square_1.png', 'gray_1.png', 'rgba_1.png', 'teaser.png'];

interface Row {
  mode: KernelMode;
  images: string;
  batch: number;
  msPerBatch: number;
  msPerImage: number;
  imagesPerSecond: number;
  speedupVsOneByOne: number;
  sameAsOneByOne: boolean;
  /** Bit-identical boxes, scores and dofs. */
  identical: boolean;
  gpuMiB: number;
}

function identical(a: RawDetections, b: RawDetections): boolean {
  const eq = (x: ArrayLike<number>, y: ArrayLike<number>): boolean => x.length === y.length && Array.from(x).every((v, i) => v === y[i]);
  return eq(a.boxes, b.boxes) && eq(a.scores, b.scores) && eq(a.dofs, b.dofs);
}

type StageTimes = Record<string, number>;

/** A replica run's stage times (ms per batch) and the arithmetic its stages did (FLOPs per batch). */
interface StageProfile {
  times: StageTimes;
  flops: StageFlops;
}

/** The kernels of the mode being measured. */
let KERNELS: Kernels = PORTABLE_KERNELS;

/**
 * The forward of Img2PoseModel.predict rebuilt from the stage modules with the GPU synchronised
 * after each stage, so each stage's GPU time lands on it. ms per batch (median of 3 after a warm-up).
 */
async function profileStages(weights: Img2PoseWeights, images: tf.Tensor3D[]): Promise<StageProfile> {
  const backbone = new Backbone(weights, KERNELS);
  const rpn = new RegionProposalNetwork(weights, KERNELS);
  const heads = new RoIHeads(weights, { kernels: KERNELS, rules: rulesFor('webgpu') });
  const runs: StageTimes[] = [];
  let flops: StageFlops = { backbone: 0, fpn: 0, rpnHead: 0, heads: 0, total: 0 };
  try {
    for (let rep = 0; rep < 4; rep++) {
      const t: StageTimes = {};
      let last = performance.now();
      const lap = async (name: string): Promise<void> => {
        await gpuSync();
        const now = performance.now();
        t[name] = now - last;
        last = now;
      };
      const batch = prepareBatch(images, CONFIG.minSize, CONFIG.maxSize, KERNELS);
      await lap('transform');
      const features = backbone.forward(batch.images, batch.paddedSizes);
      await lap('backbone+FPN');
      const proposals = await rpn.forward(features, batch.imageSizes, batch.paddedSizes);
      await lap('RPN (head, readback, proposals)');
      const pooled = await multiScaleRoIAlign(features.slice(0, 4), proposals.map((p) => p.boxes), batch.imageSizes, batch.paddedSizes, KERNELS.webgpu ? 'webgpu' : 'ops');
      await lap('RoIAlign');
      const out = heads.apply(pooled);
      await lap('heads');
      const [logits, dofs] = (await Promise.all([out.classLogits.data(), out.dofRegression.data()])) as Float32Array[];
      await lap('readback');
      let row = 0;
      proposals.forEach((p, i) => {
        const n = p.boxes.length / 4;
        postprocessDetections({
          proposals: p.boxes,
          classLogits: logits.subarray(row * 2, (row + n) * 2),
          dofRegression: dofs.subarray(row * 12, (row + n) * 12),
          imageSize: batch.imageSizes[i],
          originalSize: batch.originalSizes[i],
          poseMean: weights.poseMean,
          poseStddev: weights.poseStddev,
        });
        row += n;
      });
      await lap('post-processing (CPU)');
      // The work done: every image at the stacked (padded) size, both heads on all its rows.
      const [, height, width] = batch.images.shape;
      flops = proposals.map((p) => forwardFlops(weights.depth, height, width, p.boxes.length / 4)).reduce(addFlops);
      tf.dispose([batch.images, ...features, pooled, out.classLogits, out.dofRegression]);
      if (rep > 0) runs.push(t);
    }
  } finally {
    backbone.dispose();
    rpn.dispose();
    heads.dispose();
  }
  const med: StageTimes = {};
  for (const k of Object.keys(runs[0])) {
    const v = runs.map((r) => r[k]).sort((a, b) => a - b);
    med[k] = v[v.length >> 1];
  }
  return { times: med, flops };
}

function addFlops(a: StageFlops, b: StageFlops): StageFlops {
  return { backbone: a.backbone + b.backbone, fpn: a.fpn + b.fpn, rpnHead: a.rpnHead + b.rpnHead, heads: a.heads + b.heads, total: a.total + b.total };
}

/**
 * Achieved TFLOP/s of the replica's arithmetic stages, and the share of the arithmetic floor (the
 * forward's FLOPs at WGSL_GEMM_TFLOPS, and at the card's fp32 peak) that the whole forward reaches.
 */
function throughput({ times, flops }: StageProfile, images: number): string {
  const all = Object.values(times).reduce((x, y) => x + y, 0);
  const floor = flops.total / WGSL_GEMM_TFLOPS / 1e9;
  const peak = flops.total / FP32_PEAK_TFLOPS / 1e9;
  const stage = (name: string, flop: number, ms: number) => `${name} ${(flop / images / 1e9).toFixed(1)} GFLOP ${tflops(flop, ms).toFixed(1)} TFLOP/s`;
  return [
    stage('backbone+FPN', flops.backbone + flops.fpn, times['backbone+FPN']),
    stage('RPN head (stage incl. readback, proposals)', flops.rpnHead, times['RPN (head, readback, proposals)']),
    stage('heads', flops.heads, times['heads']),
    `forward ${(flops.total / images / 1e9).toFixed(1)} GFLOP/image ${tflops(flops.total, all).toFixed(1)} TFLOP/s; ` +
      `floor at ${WGSL_GEMM_TFLOPS} TFLOP/s ${(floor / images).toFixed(2)} ms/image (reached ${((100 * floor) / all).toFixed(0)}%), ` +
      `at the fp32 peak ${FP32_PEAK_TFLOPS} ${(peak / images).toFixed(2)} ms/image (${((100 * peak) / all).toFixed(0)}%)`,
  ].join('; ');
}

async function timeForward(model: Img2PoseModel, images: tf.Tensor3D[], reps: number): Promise<{ ms: number; out: RawDetections[] }> {
  // Warm-up: shader compilation, buffer pool growth, first touches (the first forwards of a
  // process run slower, docs/webgpu.md).
  let out = await model.predict(images, CONFIG, OPTS);
  out = await model.predict(images, CONFIG, OPTS);
  await gpuSync();
  const samples: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    out = await model.predict(images, CONFIG, OPTS);
    samples.push(performance.now() - t0);
  }
  samples.sort((a, b) => a - b);
  return { ms: samples[samples.length >> 1], out };
}

/**
 * Batch vs one by one measured in alternation under the same conditions: each round times the
 * images run one after another, then the same images as one batch; medians over the rounds.
 * (Single-image times wander by 1.5x over a process's life, so separate measurements mislead.)
 */
async function paired(model: Img2PoseModel, images: tf.Tensor3D[], rounds: number, label: string): Promise<void> {
  for (let w = 0; w < 2; w++) {
    for (const img of images) await model.predict([img], CONFIG);
    await model.predict(images, CONFIG, OPTS);
  }
  const seq: number[] = [];
  const bat: number[] = [];
  for (let r = 0; r < rounds; r++) {
    let t0 = performance.now();
    for (const img of images) await model.predict([img], CONFIG);
    seq.push((performance.now() - t0) / images.length);
    t0 = performance.now();
    await model.predict(images, CONFIG, OPTS);
    bat.push((performance.now() - t0) / images.length);
  }
  const med = (v: number[]): number => v.slice().sort((a, b) => a - b)[v.length >> 1];
  console.log(
    `paired ${label}: one by one ${med(seq).toFixed(1)} ms/image, batch ${med(bat).toFixed(1)} ms/image, ` +
      `speedup ${(med(seq) / med(bat)).toFixed(2)}x (median of ${rounds} alternating rounds; one-by-one ${seq.map((v) => v.toFixed(0)).join('/')}, batch ${bat.map((v) => v.toFixed(0)).join('/')})`,
  );
}

/**
 * Settings alternated round by round on the same batch (medians of `rounds`), and whether the
 * detections of each stay within tolerance of the first setting's.
 */
async function alternate(
  model: Img2PoseModel, images: tf.Tensor3D[], settings: { name: string; apply: () => void }[], rounds: number, label: string,
): Promise<void> {
  const run = async (s: { apply: () => void }): Promise<{ ms: number; out: RawDetections[] }> => {
    s.apply();
    const t0 = performance.now();
    const out = await model.predict(images, CONFIG, OPTS);
    return { ms: (performance.now() - t0) / images.length, out };
  };
  for (let w = 0; w < 2; w++) for (const s of settings) await run(s);
  const times = settings.map((): number[] => []);
  const outs: RawDetections[][] = [];
  for (let r = 0; r < rounds; r++) {
    for (const [k, s] of settings.entries()) {
      const { ms, out } = await run(s);
      times[k].push(ms);
      outs[k] = out;
    }
  }
  const med = (v: number[]): number => v.slice().sort((x, y) => x - y)[v.length >> 1];
  const parts = settings.map((s, k) => {
    const same = outs[k].every((d, i) => compareDetections(d, outs[0][i]).ok);
    return `${s.name} ${med(times[k]).toFixed(2)} (${times[k].map((v) => v.toFixed(1)).join('/')})${same ? '' : ' DIFFERS'}`;
  });
  console.log(`${label} ms/image, median of ${rounds} alternating rounds: ${parts.join(' | ')}`);
}

async function main(): Promise<void> {
  const adapter = await initWebGPUBackend((process.env.DAWN_FLAGS ?? '').split(';').filter(Boolean));
  applyBackendFlags();
  // As Img2Pose.load sets it up (IMG2POSE_GPU_POOL=exact keeps tfjs' own pooling).
  if (process.env.IMG2POSE_GPU_POOL !== 'exact') useGpuPool(Number(process.env.IMG2POSE_GPU_POOL_GIB ?? 8) * 2 ** 30);
  if (opts.winograd === 'off') tf.env().set(WINOGRAD_FLAG, false);
  console.log('backend', JSON.stringify(adapter));
  console.log(winogradSetting());
  const modes: KernelMode[] = opts.mode === 'both' ? ['webgpu', 'portable'] : [opts.mode];
  const batches = opts.batches;
  const load = async (name: string): Promise<tf.Tensor3D> => decodeImage(fs.readFileSync(path.join(GOLDEN, name)));
  // Decoded per mode: the host transform (portable mode) reads pixels with dataSync, which the
  // webgpu backend cannot do for a tensor that the GPU transform has already uploaded.
  let photo = await load(PHOTO);
  let mixed = await Promise.all(MIXED.map(load));
  const weights = formulaWeights();
  if (opts.fewDets) {
    const bias = 'roi_heads.class_predictor.cls_score.bias';
    weights.tensors.get(bias)?.dispose();
    weights.tensors.set(bias, tf.tensor1d([6, -6]));
  }
  process.env.IMG2POSE_WORKER_SCRIPT ??= path.join(process.cwd(), '.gpu', 'app', 'worker.mjs');
  const hostThreads = opts.hostThreads;
  const modelFor = (kernels: KernelMode, threads: number): Img2PoseModel => new Img2PoseModel(weights, activeRuntime({ hostThreads: threads, kernels }));
  let model = modelFor(modes[0], hostThreads);
  console.log(`host threads: ${model.usesHostThreads ? hostThreads : 0} (asked ${hostThreads}; worker script ${process.env.IMG2POSE_WORKER_SCRIPT})`);
  let inThread = opts.compareThreads ? modelFor(modes[0], 0) : null;
  const rows: Row[] = [];
  const stages: { mode: KernelMode; batch: number; times: StageTimes }[] = [];
  const throughputs: { mode: KernelMode; batch: number; times: StageTimes; gflop: Record<string, number> }[] = [];
  for (const mode of modes) {
    KERNELS = new Kernels(mode);
    if (mode !== modes[0]) {
      await model.dispose();
      model = modelFor(mode, hostThreads);
      await inThread?.dispose();
      inThread = inThread && modelFor(mode, 0);
    }
    tf.dispose([photo, ...mixed]);
    photo = await load(PHOTO);
    mixed = await Promise.all(MIXED.map(load));
    if (opts.overlapSweep !== undefined) {
      for (const overlap of intList(opts.overlapSweep)) {
        OPTS = { overlap };
        for (const b of batches) await paired(model, Array.from({ length: b }, () => photo), 5, `[${mode}, overlap ${overlap}] photo x${b}`);
        await paired(model, mixed, 5, `[${mode}, overlap ${overlap}] mixed ${mixed.length} (7 sizes)`);
      }
      continue;
    }
    if (opts.memory) {
      // One configuration per process (the pool keeps every buffer size it has seen): the pool
      // after a few forwards of it. Batch 0 means the mixed set.
      for (const b of batches) {
        const imgs = b === 0 ? mixed : Array.from({ length: b }, () => photo);
        for (let r = 0; r < 3; r++) await model.predict(imgs, CONFIG, OPTS);
        const m = gpuMemory();
        console.log(`memory [${mode}, ${winogradSetting()}] ${b === 0 ? 'mixed 8' : `photo x${b}`}: ` +
          `GPU pool ${(m.allocated / 2 ** 30).toFixed(2)} GiB allocated, ${(m.inUse / 2 ** 30).toFixed(2)} GiB in use after the forwards`);
      }
      continue;
    }
    if (opts.winogradTileSweep) {
      // Each filter's U for a tile is made on its first use with that tile (kept after): the
      // warm-up rounds of `alternate` absorb it.
      const before = [tf.env().get(WINOGRAD_TILE_FLAG), tf.env().getBool(WINOGRAD_F4_FUSED_FLAG)] as const;
      const setting = (name: string, tile: 2 | 4 | 'auto', fused: boolean): { name: string; apply: () => void } => ({
        name,
        apply: () => {
          tf.env().set(WINOGRAD_FLAG, true);
          tf.env().set(WINOGRAD_TILE_FLAG, tile);
          tf.env().set(WINOGRAD_F4_FUSED_FLAG, fused);
        },
      });
      const sweep = [setting('F(2x2)', 2, false), setting('F(4x4) separate input', 4, false), setting('by layer (auto)', 'auto', false)];
      for (const b of batches) await alternate(model, Array.from({ length: b }, () => photo), sweep, 5, `[${mode}] photo x${b}`);
      await alternate(model, mixed, sweep, 5, `[${mode}] mixed ${mixed.length} (7 sizes)`);
      tf.env().set(WINOGRAD_TILE_FLAG, before[0]);
      tf.env().set(WINOGRAD_F4_FUSED_FLAG, before[1]);
      continue;
    }
    const flag = opts.gatingSweep ? POSE_GATING_FLAG : opts.winogradSweep ? WINOGRAD_FLAG : opts.recordSweep ? GPU_RECORD_FLAG : null;
    if (flag !== null) {
      const sweep = [true, false].map((on) => ({ name: `${flag} ${on ? 'on' : 'off'}`, apply: () => tf.env().set(flag, on) }));
      const before = tf.env().getBool(flag);
      for (const b of batches) await alternate(model, Array.from({ length: b }, () => photo), sweep, 5, `[${mode}] photo x${b}`);
      await alternate(model, mixed, sweep, 5, `[${mode}] mixed ${mixed.length} (7 sizes)`);
      tf.env().set(flag, before);
      continue;
    }
    if (opts.paired) {
      for (const [m, label] of [[inThread, 'host in-thread'], [model, `host threads ${hostThreads}`]] as const) {
        if (!m) continue;
        for (const b of batches) await paired(m, Array.from({ length: b }, () => photo), 5, `[${mode}, ${label}] photo x${b}`);
        await paired(m, mixed, 5, `[${mode}, ${label}] mixed ${mixed.length} (7 sizes)`);
      }
      continue;
    }
    if (opts.stagesOnly) {
      for (const b of batches) {
        const split = await profileStages(weights, Array.from({ length: b }, () => photo));
        console.log(`stages [${mode}] batch ${b} (ms/image): ${Object.entries(split.times).map(([k, v]) => `${k} ${(v / b).toFixed(2)}`).join(', ')}; total ${(Object.values(split.times).reduce((x, y) => x + y, 0) / b).toFixed(2)}`);
        console.log(`throughput [${mode}] batch ${b}: ${throughput(split, b)}`);
      }
      continue;
    }
    // One-by-one reference: per-image time and results. Measured before and again after the
    // batches; the faster of the two is the baseline (the first forwards of a process run slow).
    const single = await timeForward(model, [photo], 5);
    console.log(`detections on the photo (score >= 0.05): ${single.out[0].scores.length}`);
    const singleMixed: RawDetections[] = [];
    let mixedOneByOneMs = 0;
    for (const img of mixed) {
      const r = await timeForward(model, [img], 3);
      singleMixed.push(r.out[0]);
      mixedOneByOneMs += r.ms;
    }
    const batchRows: { b: number; ms: number; out: RawDetections[]; gpuMiB: number }[] = [];
    for (const b of batches) {
      const imgs = Array.from({ length: b }, () => photo);
      const { ms, out } = await timeForward(model, imgs, b >= 8 ? 7 : 5);
      batchRows.push({ b, ms, out, gpuMiB: gpuMemory().allocated / 2 ** 20 });
    }
    const mixedBatch = await timeForward(model, mixed, 7);
    const mixedGpuMiB = gpuMemory().allocated / 2 ** 20;
    const singleAgain = await timeForward(model, [photo], 5);
    let mixedAgainMs = 0;
    for (const img of mixed) mixedAgainMs += (await timeForward(model, [img], 3)).ms;
    const oneByOneMs = Math.min(single.ms, singleAgain.ms);
    const mixedOneByOne = Math.min(mixedOneByOneMs, mixedAgainMs);
    console.log(`[${mode}] one by one: photo ${single.ms.toFixed(1)} then ${singleAgain.ms.toFixed(1)} ms; mixed 8 ${mixedOneByOneMs.toFixed(1)} then ${mixedAgainMs.toFixed(1)} ms`);
    for (const { b, ms, out, gpuMiB } of batchRows) {
      const row: Row = {
        mode, images: `photo x${b}`, batch: b, msPerBatch: ms, msPerImage: ms / b, imagesPerSecond: (1000 * b) / ms,
        speedupVsOneByOne: oneByOneMs / (ms / b), sameAsOneByOne: out.every((d) => compareDetections(d, single.out[0]).ok),
        identical: out.every((d) => identical(d, single.out[0])), gpuMiB,
      };
      rows.push(row);
      console.log(fmt(row));
    }
    {
      const { ms, out } = mixedBatch;
      const row: Row = {
        mode, images: 'mixed 8 (7 sizes)', batch: mixed.length, msPerBatch: ms, msPerImage: ms / mixed.length,
        imagesPerSecond: (1000 * mixed.length) / ms, speedupVsOneByOne: mixedOneByOne / ms,
        sameAsOneByOne: out.every((d, i) => compareDetections(d, singleMixed[i]).ok),
        identical: out.every((d, i) => identical(d, singleMixed[i])), gpuMiB: mixedGpuMiB,
      };
      rows.push(row);
      console.log(fmt(row));
    }
    // A single image and the large batches, where the arithmetic floor is the yardstick.
    for (const b of [...new Set([1, ...batches.filter((n) => n >= 8)])]) {
      const imgs = Array.from({ length: b }, () => photo);
      // The model's own profile (device settled after each stage; heads include their readback)...
      const reps: StageTimings[] = [];
      for (let r = 0; r < 3; r++) {
        const profile = emptyTimings();
        await model.predict(imgs, CONFIG, { profile });
        reps.push(profile);
      }
      const times: StageTimes = {};
      for (const k of Object.keys(reps[0]) as (keyof StageTimings)[]) times[k] = reps.map((p) => p[k]).sort((x, y) => x - y)[1];
      stages.push({ mode, batch: b, times });
      console.log(`model stages [${mode}] batch ${b} (ms/image): ${Object.entries(times).map(([k, v]) => `${k} ${(v / b).toFixed(2)}`).join(', ')}; total ${(Object.values(times).reduce((x, y) => x + y, 0) / b).toFixed(2)}`);
      // ...and the replica with the readback split out.
      const split = await profileStages(weights, imgs);
      console.log(`stages [${mode}] batch ${b} (ms/image): ${Object.entries(split.times).map(([k, v]) => `${k} ${(v / b).toFixed(2)}`).join(', ')}; total ${(Object.values(split.times).reduce((x, y) => x + y, 0) / b).toFixed(2)}`);
      console.log(`throughput [${mode}] batch ${b}: ${throughput(split, b)}`);
      throughputs.push({ mode, batch: b, times: split.times, gflop: { backbone: split.flops.backbone / 1e9, fpn: split.flops.fpn / 1e9, rpnHead: split.flops.rpnHead / 1e9, heads: split.flops.heads / 1e9 } });
    }
  }
  console.log('\nmode      images              batch  ms/batch  ms/image  images/s  speedup  same  ident  GPU MiB');
  for (const r of rows) console.log(fmt(r));
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ adapter, rows, stages, throughputs }, null, 1));
  await model.dispose();
  await inThread?.dispose();
  tf.dispose([photo, ...mixed, ...weights.tensors.values()]);
  console.log(`tensors alive after disposing everything: ${tf.memory().numTensors}`);
  process.exit(0);
}

function fmt(r: Row): string {
  return `${r.mode.padEnd(9)} ${r.images.padEnd(19)} ${String(r.batch).padStart(5)} ${r.msPerBatch.toFixed(1).padStart(9)} ` +
    `${r.msPerImage.toFixed(2).padStart(9)} ${r.imagesPerSecond.toFixed(1).padStart(9)} ${r.speedupVsOneByOne.toFixed(2).padStart(8)}` +
    `  ${r.sameAsOneByOne ? 'yes' : 'NO '}  ${r.identical ? 'yes' : 'no '}  ${r.gpuMiB.toFixed(0).padStart(8)}`;
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(2);
});
