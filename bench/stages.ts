/**
 * CPU time of one image, ours (tfjs, wasm by default) next to upstream PyTorch on the same
 * machine in the same run, with a per-stage breakdown of both.
 *
 *   npm run build && node dist/bench/stages.js [--image __tests__/fixtures/golden/teaser.png]
 *       [--sizes 160/288,640/1400] [--repeats 5] [--warmup 1] [--weights tmp/formula_tfjs]
 *       [--threads 1,2] [--upstream-src /tmp/upstream/src] [--no-upstream]
 *
 * What is timed, both sides: decoded image in memory -> faces above 0.5 (network, post-processing,
 * keypoints); file decoding is not. Ours: `Img2PoseModel.predict` + `processPrediction`, median
 * of --repeats unprofiled runs; the stage table comes from as many further runs with `predict`'s
 * `profile` option (it waits for the device after each stage). Upstream: bench/upstream_cpu.py
 * `bench` (img2poseModel.predict + Img2Pose._process_prediction; stages via forward hooks) once
 * per --threads value. The two sides run one after the other, never at once; the load average
 * before each measurement is printed, since other jobs may share the machine.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command } from 'commander';
import * as tf from '@tensorflow/tfjs';
import { BACKEND_CHOICES, BackendChoice, selectBackend } from '../src/backend';
import { processPrediction } from '../src/detector';
import { formulaWeights } from '../src/formula_weights';
import { decodeImage } from '../src/io';
import { Img2PoseModel, StageTimings, emptyTimings } from '../src/model';
import { resizedSize } from '../src/transform';
import { disposeWeights } from '../src/weights';
import { loadWeights } from '../src/weights_io';
import { machineInfo, markdownTable, median, repoRoot, timeMs } from './common';

const STAGES: (keyof StageTimings)[] = ['transform', 'backbone', 'rpn', 'roiAlign', 'heads', 'postprocess'];

interface Options {
  image: string;
  sizes: [number, number][];
  repeats: number;
  warmup: number;
  backend: BackendChoice;
  weights?: string;
  upstream: boolean;
  upstreamSrc: string;
  python: string;
  checkpoint: string;
  poseMean: string;
  poseStddev: string;
  threads: number[];
}

/** One side's numbers for one size. */
interface Timing {
  label: string;
  medianMs: number;
  minMs: number;
  maxMs: number;
  stages: StageTimings;
  faces: number;
  load: string;
}

/** What upstream_cpu.py bench writes. */
interface UpstreamBench {
  total_ms: number[];
  median_ms: number;
  threads: number;
  torch: string;
  stages_median_ms: StageTimings;
  'faces_t0.5': number;
}

const log = (s: string) => process.stderr.write(`${s}\n`);

function loadAvg(): string {
  return os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
}

function parseSizes(v: string): [number, number][] {
  return v.split(',').map((s) => {
    const m = /^\s*(\d+)\/(\d+)\s*$/.exec(s);
    if (!m) throw new Error(`--sizes takes min/max pairs like 160/288,640/1400, got ${s}`);
    return [Number(m[1]), Number(m[2])];
  });
}

function parseOptions(argv: string[]): Options {
  const root = repoRoot();
  const tmp = (p: string) => path.join(root, 'tmp', p);
  const int = (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`expected a non-negative integer, got ${v}`);
    return n;
  };
  const cmd = new Command('stages')
    .option('--image <file>', 'the image', path.join(root, '__tests__', 'fixtures', 'golden', 'teaser.png'))
    .option('--sizes <list>', 'min/max pairs', parseSizes, parseSizes('160/288,640/1400'))
    .option('--repeats <n>', 'timed runs (median reported)', int, 5)
    .option('--warmup <n>', 'untimed runs first', int, 1)
    .option('--backend <b>', `ours: ${BACKEND_CHOICES.join(', ')}`, 'wasm')
    .option('--weights <path>', 'our converted weights (default: the formula weights built in memory)')
    .option('--no-upstream', 'skip upstream')
    .option('--upstream-src <dir>', 'folder holding the upstream img2pose package', '/tmp/upstream/src')
    .option('--python <exe>', 'python with torch 1.13 / torchvision 0.14', '/usr/bin/python3')
    .option('--checkpoint <pth>', 'the same weights for upstream', tmp('formula_ckpt/formula.pth'))
    .option('--pose-mean <npy>', '', tmp('formula_ckpt/pose_mean.npy'))
    .option('--pose-stddev <npy>', '', tmp('formula_ckpt/pose_stddev.npy'))
    .option('--threads <list>', 'torch thread counts to run upstream with', (v) => v.split(',').map(int), [1, 2]);
  cmd.parse(argv, { from: 'node' });
  const o = cmd.opts<Options>();
  if (!BACKEND_CHOICES.includes(o.backend)) throw new Error(`--backend takes ${BACKEND_CHOICES.join(', ')}`);
  if (o.repeats < 1) throw new Error('--repeats must be at least 1');
  return o;
}

async function timeOurs(model: Img2PoseModel, image: tf.Tensor3D, minSize: number, maxSize: number, o: Options): Promise<Timing> {
  const config = { minSize, maxSize };
  const [h, w] = image.shape;
  let faces = 0;
  const once = async (profile?: StageTimings) => {
    const [det] = await model.predict([image], config, { profile });
    faces = processPrediction(det, w, h, 0.5, -1).length;
  };
  for (let i = 0; i < o.warmup; i++) await once();
  const load = loadAvg();
  const walls: number[] = [];
  for (let i = 0; i < o.repeats; i++) walls.push(await timeMs(() => once()));
  const profiled: StageTimings[] = [];
  for (let i = 0; i < o.repeats; i++) {
    const t = emptyTimings();
    await once(t);
    profiled.push(t);
  }
  const stages = emptyTimings();
  for (const st of STAGES) stages[st] = median(profiled.map((t) => t[st]));
  return {
    label: `ours, tfjs ${tf.getBackend()}`,
    medianMs: median(walls),
    minMs: Math.min(...walls),
    maxMs: Math.max(...walls),
    stages,
    faces,
    load,
  };
}

function timeUpstream(minSize: number, maxSize: number, threads: number, o: Options, outDir: string): Timing {
  const json = path.join(outDir, `upstream_bench_${minSize}_${maxSize}_t${threads}.json`);
  const load = loadAvg();
  const r = spawnSync(
    o.python,
    [
      path.join(repoRoot(), 'bench', 'upstream_cpu.py'), 'bench', '--upstream', o.upstreamSrc,
      '--checkpoint', o.checkpoint, '--pose-mean', o.poseMean, '--pose-stddev', o.poseStddev,
      '--min-size', String(minSize), '--max-size', String(maxSize), '--threads', String(threads),
      '--image', o.image, '--repeats', String(o.repeats), '--warmup', String(o.warmup), '--json', json,
    ],
    { stdio: ['ignore', 'inherit', 'inherit'] },
  );
  if (r.status !== 0) throw new Error(`upstream_cpu.py bench exited ${r.status ?? r.signal}`);
  const u = JSON.parse(fs.readFileSync(json, 'utf8')) as UpstreamBench;
  return {
    label: `upstream, torch ${u.torch} CPU, ${u.threads} thread${u.threads > 1 ? 's' : ''}`,
    medianMs: u.median_ms,
    minMs: Math.min(...u.total_ms),
    maxMs: Math.max(...u.total_ms),
    stages: u.stages_median_ms,
    faces: u['faces_t0.5'],
    load,
  };
}

function section(minSize: number, maxSize: number, resized: string, timings: Timing[]): string {
  const ours = timings[0];
  const e2e = markdownTable(
    ['implementation', 'median ms/image', 'min-max', 'vs ours', 'faces >= 0.5', 'load avg before (1/5/15 min)'],
    timings.map((t) => [
      t.label,
      t.medianMs.toFixed(0),
      `${t.minMs.toFixed(0)}-${t.maxMs.toFixed(0)}`,
      t === ours ? '1.00' : (t.medianMs / ours.medianMs).toFixed(2),
      String(t.faces),
      t.load,
    ]),
  );
  const stageRows = STAGES.map((st) => [st, ...timings.map((t) => t.stages[st].toFixed(1))]);
  const sums = ['**sum**', ...timings.map((t) => STAGES.reduce((s, st) => s + t.stages[st], 0).toFixed(1))];
  const stages = markdownTable(['stage (median ms)', ...timings.map((t) => t.label)], [...stageRows, sums]);
  return `#### min ${minSize} / max ${maxSize} (network input ${resized})\n\n${e2e}\n\n${stages}\n`;
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv);
  const outDir = path.join(repoRoot(), 'tmp', 'stages');
  fs.mkdirSync(outDir, { recursive: true });
  const backend = await selectBackend(o.backend);
  const weights = o.weights ? await loadWeights(o.weights) : formulaWeights();
  let model: Img2PoseModel;
  try {
    model = new Img2PoseModel(weights);
  } finally {
    disposeWeights(weights); // the model keeps its own folded copies
  }
  const image = await decodeImage(o.image);
  const sections: string[] = [];
  try {
    for (const [minSize, maxSize] of o.sizes) {
      const [rh, rw] = resizedSize(image.shape[0], image.shape[1], minSize, maxSize);
      const resized = `${rw}x${rh}`;
      const timings: Timing[] = [];
      log(`ours ${minSize}/${maxSize} on ${backend}...`);
      timings.push(await timeOurs(model, image, minSize, maxSize, o));
      log(`  ${timings[0].medianMs.toFixed(0)} ms`);
      if (o.upstream) {
        for (const threads of o.threads) {
          log(`upstream ${minSize}/${maxSize}, ${threads} thread(s)...`);
          timings.push(timeUpstream(minSize, maxSize, threads, o, outDir));
        }
      }
      sections.push(section(minSize, maxSize, resized, timings));
    }
  } finally {
    image.dispose();
    model.dispose();
  }
  const m = machineInfo();
  const [h, w] = image.shape;
  process.stdout.write(
    [
      `### One image on CPU: ours vs upstream PyTorch (${path.basename(o.image)}, ${w}x${h})`,
      '',
      `- machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}; Node ${m.node}; tfjs ${m.tfjs}`,
      `- ours: backend ${backend} (single-threaded in Node); weights ${o.weights ?? 'formula (untrained ResNet-18), in memory'}`,
      `- timed: decoded image -> faces above 0.5; ${o.warmup} warm-up run(s), median of ${o.repeats}; stages: median of ${o.repeats} profiled runs`,
      `- date ${m.date}; command: \`${m.command}\``,
      '',
      sections.join('\n'),
    ].join('\n'),
  );
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`stages: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
