/**
 * Service soak: a detector whose network runs on worker threads, fed like a service is fed, with
 * random image sizes and kinds, bad inputs mixed in, and now and then a worker killed in the middle
 * of a batch. It checks that
 *   - every good input gets its faces (boxes inside the image) and every bad one its typed error;
 *   - a batch whose worker was killed gets exactly the results it gets with no kill (the worker
 *     is replaced and only that batch's share runs again);
 *   - a fixed sentinel image gives the same faces every time, across worker replacements;
 *   - after the warm-up, tf.memory().numTensors (main thread and every worker) never changes and
 *     RSS ends within `--rss-slack-mb` of its post-warm-up value.
 * Exit code 1 if any of it fails.
 *
 *   npm run build && node --expose-gc dist/bench/service_soak.js [--short] [--calls 1000]
 *       [--threads 2] [--kill-every 100] [--every 50] [--warmup 100] [--seed 1] [--rss-slack-mb 96]
 *       [--min-size 64 --max-size 96] [--max-side 400]
 *
 * `--short` is the bounded version the test suite runs (60 calls, 2 kills). The workers run the
 * compiled fault-injection script (dist/bench/fault_worker.js), so `npm run build` comes first.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as v8 from 'v8';
import * as vm from 'vm';
import { Command } from 'commander';
import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/runtime/backend';
import { Face, Img2Pose, SettledDetection } from '../src/detector';
import { Img2PoseError, InputError } from '../src/errors';
import { formulaWeights } from '../src/io/formula_weights';
import { ImageInput } from '../src/io/images';
import { ThreadedModel } from '../src/runtime/threaded_model';
import { disposeWeights } from '../src/model/weights';
import { seeded } from '../__tests__/utils/lcg';
import { repoRoot } from './common';
import { WorkerKiller } from './fault_worker';
import { BadInputCase, badValues, disposeInput, jpegBytes, patternImage, pngBytes, writeBadFiles } from './reliability_cases';

export interface ServiceSoakOptions {
  calls: number;
  threads: number;
  /** A batch with a worker killed in it every this many calls (0: never). */
  killEvery: number;
  every: number;
  warmup: number;
  seed: number;
  rssSlackMb: number;
  /** Allowed growth of the main thread's JS heap + external memory (after a GC) past the warm-up. */
  heapSlackMb: number;
  minSize: number;
  maxSize: number;
  /** Largest random image side. */
  maxSide: number;
  log: (line: string) => void;
}

/**
 * The bounded version: 60 calls, 2 kills, small images. Sixty calls are too few for the
 * allocators' high-water marks to settle (on 2 cores RSS still climbs a few MiB a call at call 30
 * and is flat from about call 100 on, as the full soak shows), so this version bounds RSS loosely
 * and holds the main thread's heap and external memory, where a leak of ours would show, tightly.
 */
export const SHORT: Partial<ServiceSoakOptions> = { calls: 60, killEvery: 30, every: 10, warmup: 30, maxSide: 160, rssSlackMb: 256 };

export const DEFAULTS: ServiceSoakOptions = {
  calls: 1000,
  threads: 2,
  killEvery: 100,
  every: 50,
  warmup: 100,
  seed: 1,
  rssSlackMb: 96,
  heapSlackMb: 32,
  // Tiny network sizes (a forward ~0.4 s on wasm, 6x less than 160 / 288): the soak is about the
  // service's plumbing, and 1,000 calls end in minutes.
  minSize: 64,
  maxSize: 96,
  maxSide: 400,
  log: (line) => console.log(line),
};

export interface Sample {
  call: number;
  mainTensors: number;
  workerTensors: number[];
  rss: number;
  /** Main thread: V8 heap used + external memory, after a GC where `--expose-gc` allows. */
  heap: number;
  seconds: number;
}

export interface ServiceSoakReport {
  calls: number;
  goodInputs: number;
  badInputs: number;
  kills: number;
  seconds: number;
  samples: Sample[];
  /** The sample the flatness checks start from. */
  baseline: Sample;
  problems: string[];
}

const MB = 1024 * 1024;
const mb = (bytes: number) => (bytes / MB).toFixed(0);

/** A full GC: `--expose-gc`'s, or the same function fetched through V8's flags (under jest). */
function collector(): () => void {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (exposed) return exposed;
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

function memoryNow(): { rss: number; heap: number } {
  collector()();
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed + m.external };
}

/** A good input of the given kind and size, and its dimensions (for the inside-the-image check). */
interface GoodInput {
  label: string;
  width: number;
  height: number;
  make(): Promise<ImageInput>;
}

function goodInput(rand: () => number, maxSide: number, dir: string, n: number): GoodInput {
  const width = 1 + Math.floor(rand() * maxSide);
  const height = 1 + Math.floor(rand() * maxSide);
  const seed = Math.floor(rand() * 1000);
  const kind = Math.floor(rand() * 4);
  const label = `${['PNG file', 'JPEG bytes', 'int32 tensor', 'raw gray'][kind]} ${width}x${height}`;
  const make = async (): Promise<ImageInput> => {
    switch (kind) {
      case 0: {
        const file = path.join(dir, `good-${n}.png`);
        if (!fs.existsSync(file)) fs.writeFileSync(file, await pngBytes(patternImage(width, height, seed)));
        return file;
      }
      case 1:
        return jpegBytes(patternImage(width, height, seed));
      case 2:
        return tf.tidy(() => tf.range(seed, seed + height * width * 3, 1, 'int32').mod(251).reshape([height, width, 3])) as tf.Tensor3D;
      default:
        return { data: Uint8Array.from({ length: width * height }, (_, k) => (k * 7 + seed) & 255), width, height, channels: 1 };
    }
  };
  return { label, width, height, make };
}

function insideImage(faces: Face[], width: number, height: number): boolean {
  const eps = 1e-3;
  return faces.every(({ box: [x1, y1, x2, y2] }) =>
    [x1, y1, x2, y2].every(Number.isFinite) && x1 >= -eps && y1 >= -eps && x2 <= width + eps && y2 <= height + eps && x1 <= x2 && y1 <= y2,
  );
}

/** Runs the soak; the returned report's `problems` is empty when everything held. */
export async function serviceSoak(options: Partial<ServiceSoakOptions> = {}): Promise<ServiceSoakReport> {
  const o: ServiceSoakOptions = { ...DEFAULTS, ...options };
  const compiled = path.join(repoRoot(), 'dist', 'bench', 'fault_worker.js');
  if (!fs.existsSync(compiled)) throw new Error(`${compiled} is missing: run \`npm run build\``);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-service-soak-'));
  const killer = new WorkerKiller();
  const problems: string[] = [];
  const samples: Sample[] = [];
  let det: Img2Pose | undefined;
  try {
    await selectBackend('wasm');
    const weights = formulaWeights();
    let model: ThreadedModel;
    try {
      model = await ThreadedModel.start(compiled, weights, 'wasm', o.threads);
    } finally {
      disposeWeights(weights);
    }
    det = new Img2Pose(model, { minSize: o.minSize, maxSize: o.maxSize, scoreThreshold: 0.5, batchSize: 4 }, 'wasm', o.threads);
    const detector = det;
    const bad: BadInputCase[] = [...(await writeBadFiles(path.join(dir, 'bad'))), ...badValues()];
    const sentinel = path.join(dir, 'sentinel.png');
    fs.writeFileSync(sentinel, await pngBytes(patternImage(96, 64, 3)));
    let sentinelFaces: string | undefined;
    const rand = seeded(o.seed);
    let goodInputs = 0;
    let badInputs = 0;
    let kills = 0;
    const started = Date.now();

    const sample = async (call: number) => {
      const s: Sample = { call, mainTensors: tf.memory().numTensors, workerTensors: await model.workerTensors(), ...memoryNow(), seconds: (Date.now() - started) / 1000 };
      samples.push(s);
      o.log(`| ${call} | ${s.mainTensors} | ${s.workerTensors.join(', ')} | ${mb(s.rss)} | ${mb(s.heap)} | ${s.seconds.toFixed(0)} |`);
    };

    /** Checks one settled outcome against what its input was. */
    const check = (i: number, what: string, outcome: SettledDetection, good: GoodInput | undefined) => {
      if (good !== undefined) {
        goodInputs++;
        if (!outcome.ok) problems.push(`call ${i}: ${what}: good input ${good.label} failed: ${outcome.error.message}`);
        else if (!insideImage(outcome.faces, good.width, good.height)) problems.push(`call ${i}: ${what}: ${good.label}: a box outside the image`);
      } else {
        badInputs++;
        if (outcome.ok) problems.push(`call ${i}: ${what}: a bad input was accepted`);
        else if (!(outcome.error instanceof InputError)) problems.push(`call ${i}: ${what}: a bad input gave ${outcome.error.name}, not an InputError: ${outcome.error.message}`);
      }
    };
    const settleOne = async (run: Promise<Face[]>): Promise<SettledDetection> => {
      try {
        return { ok: true, faces: await run };
      } catch (e) {
        if (e instanceof Img2PoseError) return { ok: false, error: e };
        throw e;
      }
    };

    o.log(`service soak: ${o.calls} calls, ${o.threads} wasm worker threads, minSize ${o.minSize} / maxSize ${o.maxSize}, ` +
      `images up to ${o.maxSide}x${o.maxSide}, a worker killed mid-batch every ${o.killEvery || 'never'} calls, seed ${o.seed}`);
    o.log('| calls | main numTensors | worker numTensors | RSS (MiB) | main heap + external (MiB) | elapsed (s) |');
    o.log('|---:|---:|---|---:|---:|---:|');
    await sample(0);
    for (let i = 0; i < o.calls; i++) {
      // Halfway between samples, so no sample is taken right after a worker was replaced.
      const killNow = o.killEvery > 0 && i % o.killEvery === Math.floor(o.killEvery / 2);
      const roll = rand();
      if (killNow) {
        // A batch of good images split over the workers, one bad input among them; one worker
        // dies on receiving its share. Then the same batch again, with no kill: same outcomes.
        const goods = Array.from({ length: 2 * o.threads }, (_, k) => goodInput(rand, o.maxSide, dir, i * 10 + k));
        const badCase = bad[Math.floor(rand() * bad.length)];
        const run = async () => {
          const inputs = [...(await Promise.all(goods.map((g) => g.make()))), badCase.make()];
          try {
            return await detector.detectFacesSettled(inputs);
          } finally {
            inputs.forEach(disposeInput);
          }
        };
        await killer.arm(o.threads);
        const killed = await run();
        if (!killer.fired) problems.push(`call ${i}: the armed worker kill did not happen`);
        kills++;
        killed.forEach((outcome, k) => check(i, 'batch with a killed worker', outcome, goods[k]));
        const again = await run();
        if (JSON.stringify(again.slice(0, goods.length)) !== JSON.stringify(killed.slice(0, goods.length))) {
          problems.push(`call ${i}: the batch with a killed worker gave other faces than the same batch without`);
        }
      } else if (i % 10 === 0) {
        const outcome = await settleOne(detector.detectFaces(sentinel));
        check(i, 'sentinel', outcome, { label: 'sentinel', width: 96, height: 64, make: async () => sentinel });
        const faces = JSON.stringify(outcome.ok ? outcome.faces : outcome.error.message);
        if (sentinelFaces === undefined) sentinelFaces = faces;
        else if (faces !== sentinelFaces) problems.push(`call ${i}: the sentinel image gave other faces than the first time`);
      } else if (roll < 0.45) {
        const good = goodInput(rand, o.maxSide, dir, i * 10);
        const input = await good.make();
        try {
          check(i, good.label, await settleOne(detector.detectFaces(input)), good);
        } finally {
          disposeInput(input);
        }
      } else if (roll < 0.6) {
        // A list: good images with, half the time, a bad one among them.
        const goods = Array.from({ length: 2 + Math.floor(rand() * 2) }, (_, k) => goodInput(rand, o.maxSide, dir, i * 10 + k));
        const badCase = rand() < 0.5 ? bad[Math.floor(rand() * bad.length)] : undefined;
        const inputs = [...(await Promise.all(goods.map((g) => g.make()))), ...(badCase ? [badCase.make()] : [])];
        try {
          const settled = await detector.detectFacesSettled(inputs);
          settled.forEach((outcome, k) => check(i, 'list', outcome, goods[k]));
        } finally {
          inputs.forEach(disposeInput);
        }
      } else {
        const badCase = bad[Math.floor(rand() * bad.length)];
        const input = badCase.make();
        try {
          const outcome = await settleOne(detector.detectFaces(input));
          check(i, `bad: ${badCase.label}`, outcome, undefined);
          if (!outcome.ok && outcome.error instanceof InputError && !badCase.found.test(outcome.error.found)) {
            problems.push(`call ${i}: bad: ${badCase.label}: found "${outcome.error.found}", expected ${badCase.found}`);
          }
        } finally {
          disposeInput(input);
        }
      }
      if ((i + 1) % o.every === 0 || i + 1 === o.calls) await sample(i + 1);
    }

    const baseline = samples.find((s) => s.call >= o.warmup) ?? samples[samples.length - 1];
    const after = samples.filter((s) => s.call >= baseline.call);
    const end = samples[samples.length - 1];
    const counts = new Set(after.map((s) => `${s.mainTensors} / ${s.workerTensors.join(', ')}`));
    if (counts.size !== 1) problems.push(`tensor counts changed after the warm-up: ${[...counts].join('; ')}`);
    if (end.rss - baseline.rss > o.rssSlackMb * MB) problems.push(`RSS grew ${mb(end.rss - baseline.rss)} MiB after the warm-up (allowed ${o.rssSlackMb})`);
    const heapGrowth = Math.max(...after.map((s) => s.heap)) - baseline.heap;
    if (heapGrowth > o.heapSlackMb * MB) problems.push(`the main thread's heap + external memory grew ${mb(heapGrowth)} MiB after the warm-up (allowed ${o.heapSlackMb})`);
    if (o.killEvery > 0 && kills === 0) problems.push('no worker was killed (fewer calls than --kill-every)');
    const report: ServiceSoakReport = { calls: o.calls, goodInputs, badInputs, kills, seconds: end.seconds, samples, baseline, problems };
    o.log(
      `\nservice soak: ${o.calls} calls (${goodInputs} good inputs, ${badInputs} bad, ${kills} batches with a worker killed) in ${end.seconds.toFixed(0)} s; ` +
        `numTensors main ${samples[0].mainTensors} -> ${end.mainTensors}, workers ${samples[0].workerTensors.join(', ')} -> ${end.workerTensors.join(', ')}; ` +
        `RSS ${mb(samples[0].rss)} MiB at start, ${mb(baseline.rss)} MiB after the warm-up (call ${baseline.call}), ${mb(end.rss)} MiB at the end ` +
        `(max ${mb(Math.max(...after.map((s) => s.rss)))} MiB after the warm-up)`,
    );
    for (const p of problems.slice(0, 20)) o.log(`service soak: FAIL ${p}`);
    o.log(problems.length === 0 ? 'service soak: PASS' : `service soak: FAIL (${problems.length} problems)`);
    return report;
  } finally {
    await det?.dispose();
    killer.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function parseOptions(argv: string[]): Partial<ServiceSoakOptions> {
  const int = (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`expected a non-negative integer, got ${v}`);
    return n;
  };
  const program = new Command('service_soak')
    .option('--short', `the bounded version the tests run (${SHORT.calls} calls)`, false)
    .option('--calls <n>', 'calls', int)
    .option('--threads <n>', 'worker threads', int)
    .option('--kill-every <n>', 'a worker killed mid-batch every n calls (0: never)', int)
    .option('--every <n>', 'a sample every n calls', int)
    .option('--warmup <n>', 'calls before the baseline sample', int)
    .option('--seed <n>', 'random schedule seed', int)
    .option('--rss-slack-mb <n>', 'allowed RSS growth (MiB) from the baseline to the end', int)
    .option('--heap-slack-mb <n>', "allowed growth (MiB) of the main thread's heap + external memory past the warm-up", int)
    .option('--max-side <n>', 'largest random image side', int)
    .option('--min-size <n>', 'detector minSize', int)
    .option('--max-size <n>', 'detector maxSize', int);
  program.parse(argv);
  const { short, ...given } = program.opts<{ short: boolean } & Partial<ServiceSoakOptions>>();
  const set = Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined));
  return { ...(short ? SHORT : {}), ...set };
}

if (require.main === module) {
  serviceSoak(parseOptions(process.argv)).then(
    (report) => {
      process.exitCode = report.problems.length === 0 ? 0 : 1;
    },
    (e: unknown) => {
      console.error(`service soak: ${e instanceof Error ? e.stack : String(e)}`);
      process.exitCode = 1;
    },
  );
}
