// End-to-end GPU benchmark (issue 6): Img2PoseModel.predict on the webgpu backend at the default
// sizes (min 640 / max 1400), on the real photo and on mixed sizes, batch sizes 1..16:
// ms/image, images/s, speedup of a batch over one-by-one, GPU memory, results of each batch vs
// one-by-one, and a per-stage breakdown (GPU synchronised around each stage, so the stages add up
// to a bit more than an unsynchronised forward).
// Bundled (`npm run gpu:bundle`, docs/webgpu.md), run from the repo root on the device:
//   node .gpu/app/bench.mjs [--mode webgpu|portable|both] [--batches 1,2,4,8,16] [--json out.json]
//       [--host-threads 8] [--compare-threads] [--overlap 4] [--overlap-sweep 0,2,4]   (worker threads for a batch's host stages; the
//       worker bundle is .gpu/app/worker.mjs unless IMG2POSE_WORKER_SCRIPT names another)
//       [--winograd off|2f|5u] [--winograd-sweep off,2f,5f]   (Winograd 3x3 convs: off, or <levels> with the input
//       transform fused (f) or on its own (u); the sweep alternates settings round by round)
//       [--submit-sweep-e2e 15,64]   (tfjs' dispatches per queue submit, alternated the same way)
//       [--gating-sweep]   (the pose branch for rows above the score filter only, on and off, alternated)
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import './gpu_flags';
import { formulaWeights } from '../src/io/formula_weights';
import { decodeImage } from '../src/io/images';
import { emptyTimings, Img2PoseModel, POSE_GATING_FLAG, PredictOptions, RawDetections, StageTimings, SUBBATCH_OVERLAP } from '../src/model/model';
import { activeRuntime } from '../src/runtime/runtime';
import { gpuMemory, gpuSync, initWebGPUBackend, KernelMode, Kernels, PORTABLE_KERNELS, setWinograd, winogradSettings, WinogradSettings, useGpuPool } from '../src/kernels/webgpu';
import { compareDetections } from './gpu_check';
import { Backbone } from '../src/model/backbone';
import { RegionProposalNetwork } from '../src/model/rpn';
import { multiScaleRoIAlign } from '../src/model/roi_align';
import { RoIHeads } from '../src/model/roi_heads';
import { bilinearTaps, prepareBatch, resizedSize } from '../src/model/transform';
import { postprocessDetections } from '../src/model/postprocess';
import { rulesFor } from '../src/runtime/runtime';
import { Img2PoseWeights } from '../src/model/weights';

const args = process.argv.slice(2);
const arg = (name: string, fallback: string): string => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const GOLDEN = path.join(process.cwd(), '__tests__', 'fixtures', 'golden');
const CONFIG = { minSize: 640, maxSize: 1400 };
// Sub-batch overlap of predict (model.ts); --overlap-sweep measures several.
let OPTS: PredictOptions = { overlap: Number(arg('--overlap', String(SUBBATCH_OVERLAP))) };
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

/** The kernels of the mode being measured (the stage benchmarks build their stages with them). */
let KERNELS: Kernels = PORTABLE_KERNELS;

/**
 * The forward of Img2PoseModel.predict rebuilt from the stage modules with the GPU synchronised
 * after each stage, so each stage's GPU time lands on it. ms per batch (median of 3 after a warm-up).
 */
async function profileStages(weights: Img2PoseWeights, images: tf.Tensor3D[]): Promise<StageTimes> {
  const backbone = new Backbone(weights, KERNELS);
  const rpn = new RegionProposalNetwork(weights, KERNELS);
  const heads = new RoIHeads(weights, { kernels: KERNELS, rules: rulesFor('webgpu') });
  const runs: StageTimes[] = [];
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
  return med;
}

/** Wall time of backbone+FPN (synchronised) against how many dispatches tfjs records per submit. */
async function submitSweep(weights: Img2PoseWeights, images: tf.Tensor3D[], mode: KernelMode): Promise<void> {
  const backbone = new Backbone(weights, KERNELS);
  const batch = prepareBatch(images, CONFIG.minSize, CONFIG.maxSize, KERNELS);
  const before = tf.env().getNumber('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE');
  const parts: string[] = [];
  for (const n of [15, 1, 4, 64, 15]) {
    tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', n);
    const samples: number[] = [];
    for (let rep = 0; rep < 6; rep++) {
      await gpuSync();
      const t0 = performance.now();
      tf.dispose(backbone.forward(batch.images, batch.paddedSizes));
      await gpuSync();
      if (rep > 0) samples.push(performance.now() - t0);
    }
    samples.sort((a, b) => a - b);
    parts.push(`${n}: ${samples[samples.length >> 1].toFixed(1)} ms`);
  }
  tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', before);
  console.log(`submit sweep [${mode}] backbone+FPN batch ${images.length} (dispatches per submit: wall ms): ${parts.join(', ')}`);
  tf.dispose(batch.images);
  backbone.dispose();
}

/** GPU time per program class (timestamp queries) of one backbone+FPN forward and one RPN head. */
/** The input transform alone, batch of `images`: GPU time (timestamp queries) and wall per call; and a bare sync's latency. */
async function transformProbe(images: tf.Tensor3D[]): Promise<void> {
  const [h, w] = images[0].shape;
  const [rh, rw] = resizedSize(h, w, CONFIG.minSize, CONFIG.maxSize);
  const time = async (f: () => unknown): Promise<number> => {
    await gpuSync();
    const t0 = performance.now();
    f();
    await gpuSync();
    return performance.now() - t0;
  };
  for (let rep = 0; rep < 6; rep++) {
    const whole = await time(() => tf.dispose(prepareBatch(images, CONFIG.minSize, CONFIG.maxSize, KERNELS).images));
    const taps = await time(() => { for (const _ of images) { bilinearTaps(h, rh); bilinearTaps(w, rw); } });
    const s0 = performance.now();
    await gpuSync();
    console.log(`transform probe batch ${images.length} (wall ms): prepareBatch ${whole.toFixed(2)}, of which taps ${taps.toFixed(2)}; bare sync ${(performance.now() - s0).toFixed(2)}`);
  }
}

async function kernelProfile(weights: Img2PoseWeights, images: tf.Tensor3D[], mode: KernelMode): Promise<void> {
  const backbone = new Backbone(weights, KERNELS);
  const rpn = new RegionProposalNetwork(weights, KERNELS);
  const batch = prepareBatch(images, CONFIG.minSize, CONFIG.maxSize, KERNELS);
  for (let rep = 0; rep < 2; rep++) {
    for (const [name, f] of [
      ['backbone+FPN', () => tf.dispose(backbone.forward(batch.images, batch.paddedSizes))],
      ['RPN head', () => { const feats = backbone.forward(batch.images, batch.paddedSizes); tf.dispose(feats); }],
    ] as [string, () => void][]) {
      if (name === 'RPN head') {
        const feats = backbone.forward(batch.images, batch.paddedSizes);
        await gpuSync();
        const w0 = performance.now();
        const info = await tf.time(() => tf.dispose(rpn.head(feats, batch.paddedSizes)));
        await gpuSync();
        report(mode, name, info, performance.now() - w0, images.length, rep);
        tf.dispose(feats);
        continue;
      }
      await gpuSync();
      const w0 = performance.now();
      const info = await tf.time(f);
      await gpuSync();
      report(mode, name, info, performance.now() - w0, images.length, rep);
    }
  }
  tf.dispose(batch.images);
  backbone.dispose();
  rpn.dispose();
}

function report(mode: KernelMode, name: string, info: tf.TimingInfo, wallMs: number, n: number, rep: number): void {
  if (rep === 0) return; // warm-up: shader compilation
  const extra = (info as unknown as { getExtraProfileInfo?: () => string }).getExtraProfileInfo?.() ?? '';
  const byProgram = new Map<string, { ms: number; count: number }>();
  for (const part of extra.split(', ')) {
    const i = part.lastIndexOf(': ');
    if (i < 0) continue;
    const key = part.slice(0, i);
    const e = byProgram.get(key) ?? { ms: 0, count: 0 };
    e.ms += Number(part.slice(i + 2));
    e.count++;
    byProgram.set(key, e);
  }
  const kernelMs = typeof info.kernelMs === 'number' ? info.kernelMs : 0;
  const top = [...byProgram.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 8)
    .map(([k, v]) => `${k} ${v.ms.toFixed(2)} ms/${v.count}`).join(', ');
  console.log(`kernels [${mode}] ${name} batch ${n}: GPU ${kernelMs.toFixed(2)} ms (${(kernelMs / n).toFixed(2)}/image), wall ${wallMs.toFixed(1)} ms; ${top}`);
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

/** A --winograd-sweep setting: 'off', or levels plus 'f' (fused input transform) / 'u' (own dispatch), e.g. '2f'. */
function winogradSetting(name: string): Partial<WinogradSettings> {
  if (name === 'off') return { enabled: false };
  const m = /^(\d)([fu])$/.exec(name);
  if (!m) throw new Error(`--winograd-sweep: settings are 'off' or <levels>f|u, got '${name}'`);
  return { enabled: true, levels: Number(m[1]), fusedInput: m[2] === 'f' };
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

/**
 * Back-to-back batches vs the same with a forced full GC before each (not timed; needs
 * node --expose-gc): how much the garbage of one batch costs the next.
 */
async function gcProbe(model: Img2PoseModel, images: tf.Tensor3D[], label: string): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('--gc-probe needs node --expose-gc');
  for (let w = 0; w < 3; w++) await model.predict(images, CONFIG, OPTS);
  const plain: number[] = [];
  const collected: number[] = [];
  for (let r = 0; r < 5; r++) {
    for (const [forced, out] of [[false, plain], [true, collected]] as const) {
      for (let k = 0; k < 3; k++) {
        if (forced) gc();
        const t0 = performance.now();
        await model.predict(images, CONFIG, OPTS);
        out.push((performance.now() - t0) / images.length);
      }
    }
  }
  const med = (v: number[]): number => v.slice().sort((x, y) => x - y)[v.length >> 1];
  console.log(`gc probe ${label} ms/image: back to back ${med(plain).toFixed(2)} (${plain.map((v) => v.toFixed(1)).join('/')}), ` +
    `full GC before each ${med(collected).toFixed(2)} (${collected.map((v) => v.toFixed(1)).join('/')})`);
}

/** Timelines of a few forwards (PredictOptions.trace): when each sub-batch passes each phase, ms from the call. */
async function traceForwards(model: Img2PoseModel, images: tf.Tensor3D[], label: string): Promise<void> {
  for (let w = 0; w < 3; w++) await model.predict(images, CONFIG, OPTS);
  for (let rep = 0; rep < 3; rep++) {
    const events: { phase: string; group: string; at: number }[] = [];
    const t0 = performance.now();
    await model.predict(images, CONFIG, { ...OPTS, trace: (phase, group, at) => events.push({ phase, group: `[${group[0]}..${group[group.length - 1]}]`, at: at - t0 }) });
    const total = performance.now() - t0;
    const groups = [...new Set(events.map((e) => e.group))];
    const lines = groups.map((g) => `${g} ${events.filter((e) => e.group === g).map((e) => `${e.phase} ${e.at.toFixed(1)}`).join(', ')}`);
    console.log(`trace ${label} rep ${rep}: total ${total.toFixed(1)} ms; ${lines.join(' | ')}`);
  }
}

async function main(): Promise<void> {
  const adapter = await initWebGPUBackend((process.env.DAWN_FLAGS ?? '').split(';').filter(Boolean));
  // As Img2Pose.load sets it up (IMG2POSE_GPU_POOL=exact keeps tfjs' own pooling).
  if (process.env.IMG2POSE_GPU_POOL !== 'exact') useGpuPool(Number(process.env.IMG2POSE_GPU_POOL_GIB ?? 8) * 2 ** 30);
  if (args.includes('--winograd')) setWinograd(winogradSetting(arg('--winograd', 'off')));
  console.log('backend', JSON.stringify(adapter));
  const modeArg = arg('--mode', 'webgpu');
  const modes: KernelMode[] = modeArg === 'both' ? ['webgpu', 'portable'] : [modeArg as KernelMode];
  const batches = arg('--batches', '1,2,4,8,16').split(',').map(Number);
  const load = async (name: string): Promise<tf.Tensor3D> => decodeImage(fs.readFileSync(path.join(GOLDEN, name)));
  // Decoded per mode: the host transform (portable mode) reads pixels with dataSync, which the
  // webgpu backend cannot do for a tensor that the GPU transform has already uploaded.
  let photo = await load(PHOTO);
  let mixed = await Promise.all(MIXED.map(load));
  const weights = formulaWeights();
  process.env.IMG2POSE_WORKER_SCRIPT ??= path.join(process.cwd(), '.gpu', 'app', 'worker.mjs');
  const hostThreads = Number(arg('--host-threads', '8'));
  const modelFor = (kernels: KernelMode, threads: number): Img2PoseModel => new Img2PoseModel(weights, activeRuntime({ hostThreads: threads, kernels }));
  let model = modelFor(modes[0], hostThreads);
  console.log(`host threads: ${model.usesHostThreads ? hostThreads : 0} (asked ${hostThreads}; worker script ${process.env.IMG2POSE_WORKER_SCRIPT})`);
  let inThread = args.includes('--compare-threads') ? modelFor(modes[0], 0) : null;
  const rows: Row[] = [];
  const stages: { mode: KernelMode; batch: number; times: StageTimes }[] = [];
  for (const mode of modes) {
    KERNELS = new Kernels(mode);
    if (model.runtime.kernels.mode !== mode) {
      model.dispose();
      model = modelFor(mode, hostThreads);
      inThread?.dispose();
      inThread = inThread && modelFor(mode, 0);
    }
    tf.dispose([photo, ...mixed]);
    photo = await load(PHOTO);
    mixed = await Promise.all(MIXED.map(load));
    if (args.includes('--transform-probe')) await transformProbe(Array.from({ length: 8 }, () => photo));
    if (args.includes('--kernel-profile')) await kernelProfile(weights, Array.from({ length: 8 }, () => photo), mode);
    if (args.includes('--submit-sweep')) await submitSweep(weights, Array.from({ length: 8 }, () => photo), mode);
    if (args.includes('--overlap-sweep')) {
      // Comma-separated settings; a setting is a sub-batch size or explicit sizes joined by '+'.
      for (const setting of arg('--overlap-sweep', '0,4').split(',')) {
        const overlap = setting.includes('+') ? setting.split('+').map(Number) : Number(setting);
        OPTS = { overlap };
        for (const b of batches) await paired(model, Array.from({ length: b }, () => photo), 5, `[${mode}, overlap ${overlap}] photo x${b}`);
        await paired(model, mixed, 5, `[${mode}, overlap ${overlap}] mixed ${mixed.length} (7 sizes)`);
      }
      continue;
    }
    if (args.includes('--memory')) {
      // One configuration per process (the pool keeps every buffer size it has seen): the pool
      // after a few forwards of it. Batch 0 means the mixed set.
      for (const b of batches) {
        const imgs = b === 0 ? mixed : Array.from({ length: b }, () => photo);
        for (let r = 0; r < 3; r++) await model.predict(imgs, CONFIG, OPTS);
        const m = gpuMemory();
        console.log(`memory [${mode}, winograd ${winogradSettings().enabled ? 'on' : 'off'}] ${b === 0 ? 'mixed 8' : `photo x${b}`}: ` +
          `GPU pool ${(m.allocated / 2 ** 30).toFixed(2)} GiB allocated, ${(m.inUse / 2 ** 30).toFixed(2)} GiB in use after the forwards`);
      }
      continue;
    }
    if (args.includes('--gc-probe')) {
      for (const b of batches) await gcProbe(model, Array.from({ length: b }, () => photo), `[${mode}] photo x${b}`);
      continue;
    }
    if (args.includes('--trace')) {
      for (const b of batches) await traceForwards(model, Array.from({ length: b }, () => photo), `[${mode}] photo x${b}`);
      continue;
    }
    const sweep = args.includes('--gating-sweep')
      ? [true, false].map((on) => ({ name: `pose gating ${on ? 'on' : 'off'}`, apply: () => tf.env().set(POSE_GATING_FLAG, on) }))
      : args.includes('--winograd-sweep')
      ? arg('--winograd-sweep', 'off,2f').split(',').map((name) => ({ name: `winograd ${name}`, apply: () => setWinograd(winogradSetting(name)) }))
      : args.includes('--submit-sweep-e2e')
        ? arg('--submit-sweep-e2e', '15,64').split(',').map((n) => ({
          name: `submit every ${n}`, apply: () => tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', Number(n)),
        }))
        : null;
    if (sweep) {
      const before = { winograd: winogradSettings(), submit: tf.env().getNumber('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE') };
      for (const b of batches) await alternate(model, Array.from({ length: b }, () => photo), sweep, 5, `[${mode}] photo x${b}`);
      await alternate(model, mixed, sweep, 5, `[${mode}] mixed ${mixed.length} (7 sizes)`);
      setWinograd(before.winograd);
      tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', before.submit);
      continue;
    }
    if (args.includes('--paired')) {
      for (const [m, label] of [[inThread, 'host in-thread'], [model, `host threads ${hostThreads}`]] as const) {
        if (!m) continue;
        for (const b of batches) await paired(m, Array.from({ length: b }, () => photo), 5, `[${mode}, ${label}] photo x${b}`);
        await paired(m, mixed, 5, `[${mode}, ${label}] mixed ${mixed.length} (7 sizes)`);
      }
      continue;
    }
    if (args.includes('--stages-only')) {
      for (const b of batches) {
        const times = await profileStages(weights, Array.from({ length: b }, () => photo));
        console.log(`stages [${mode}] batch ${b} (ms/image): ${Object.entries(times).map(([k, v]) => `${k} ${(v / b).toFixed(2)}`).join(', ')}; total ${(Object.values(times).reduce((x, y) => x + y, 0) / b).toFixed(2)}`);
      }
      continue;
    }
    // One-by-one reference: per-image time and results. Measured before and again after the
    // batches; the faster of the two is the baseline (the first forwards of a process run slow).
    const single = await timeForward(model, [photo], 5);
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
    for (const b of [1, 8]) {
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
      console.log(`stages [${mode}] batch ${b} (ms/image): ${Object.entries(split).map(([k, v]) => `${k} ${(v / b).toFixed(2)}`).join(', ')}; total ${(Object.values(split).reduce((x, y) => x + y, 0) / b).toFixed(2)}`);
    }
  }
  console.log('\nmode      images              batch  ms/batch  ms/image  images/s  speedup  same  ident  GPU MiB');
  for (const r of rows) console.log(fmt(r));
  const json = arg('--json', '');
  if (json) fs.writeFileSync(json, JSON.stringify({ adapter, rows, stages }, null, 1));
  model.dispose();
  inThread?.dispose();
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
