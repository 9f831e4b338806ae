/**
 * Long-run check: many detections on one detector, of mixed sizes and kinds, with bad
 * inputs in between. Every `--every` calls it prints tf.memory().numTensors and the process RSS;
 * after the warm-up it asserts that the tensor count never changes and that RSS stays flat, and
 * that every good input gives, each time, the faces it gave the first time. Exit code 1 if not.
 *
 *   npm run build && npm run soak -- [--calls 1000] [--every 50] [--warmup 100]
 *       [--min-size 160 --max-size 288] [--backend wasm] [--threads 1] [--rss-slack-mb 64]
 *
 * The defaults use the tiny 160/288 input sizes and small images, so on a 2-core machine with
 * the wasm backend a call costs ~0.1 s (a bad input) to ~4 s (a forward): ~30-40 minutes.
 *
 * `--big` measures instead the peak RSS of detecting on an 8000x8000 JPEG photo (default sizes
 * 640/1400, `--repeat` times), in a fresh process so the peak is the detection's own:
 *
 *   node dist/bench/soak.js --big [--min-size 640 --max-size 1400] [--repeat 3] [--photo <jpg>]
 */
import { fork } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command, Option } from 'commander';
import * as tf from '@tensorflow/tfjs';
import { Jimp } from 'jimp';
import { BACKEND_CHOICES, BackendChoice, selectBackend } from '../src/runtime/backend';
import { Face, Img2Pose } from '../src/detector';
import { Img2PoseError } from '../src/errors';
import { formulaWeights } from '../src/io/formula_weights';
import { ImageInput } from '../src/io/images';
import { disposeWeights } from '../src/model/weights';
import { repoRoot } from './common';
import {
  BadInputCase,
  badValues,
  disposeInput,
  jpegBytes,
  patternImage,
  pngBytes,
  writeBadFiles,
  writeOddFiles,
} from './reliability_cases';

interface SoakOptions {
  calls: number;
  every: number;
  warmup: number;
  minSize: number;
  maxSize: number;
  backend: BackendChoice;
  threads: number | 'auto';
  rssSlackMb: number;
  big: boolean;
  repeat: number;
  photo?: string;
  size: number;
}

function parseOptions(argv: string[]): SoakOptions {
  const int = (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`expected a non-negative integer, got ${v}`);
    return n;
  };
  const program = new Command('soak')
    .option('--calls <n>', 'detectFaces calls', int, 1000)
    .option('--every <n>', 'print a sample every n calls', int, 50)
    .option('--warmup <n>', 'calls before the baseline sample', int, 100)
    .option('--min-size <n>', 'detector minSize (default 160; --big: 640)', int)
    .option('--max-size <n>', 'detector maxSize (default 288; --big: 1400)', int)
    .addOption(new Option('--backend <b>', 'compute backend').choices(BACKEND_CHOICES).default('wasm'))
    .option('--threads <n>', "detector threads ('auto' or a count; the soak's figures were taken with 1)", (v: string) => (v === 'auto' ? 'auto' : int(v)), 1 as number | 'auto')
    .option('--rss-slack-mb <n>', 'allowed RSS growth (MiB) from the baseline to the end', int, 64)
    .option('--big', 'measure the peak RSS of an 8000x8000 JPEG photo instead', false)
    .option('--repeat <n>', '--big: detections on the photo', int, 3)
    .option('--size <n>', '--big: the photo is size x size', int, 8000)
    .option('--photo <file>', '--big: use this JPEG instead of making one');
  program.parse(argv);
  const o = program.opts<Omit<SoakOptions, 'minSize' | 'maxSize'> & { minSize?: number; maxSize?: number }>();
  return { ...o, minSize: o.minSize ?? (o.big ? 640 : 160), maxSize: o.maxSize ?? (o.big ? 1400 : 288) };
}

const MB = 1024 * 1024;
const mb = (bytes: number) => (bytes / MB).toFixed(0);

/** RSS after a full GC when node runs with --expose-gc (garbage is not a leak), else as is. */
function rssNow(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().rss;
}

/** One call of the schedule: what it detects on, and a key naming a good input's expected faces. */
interface Call {
  label: string;
  /** Good inputs: the key their faces are remembered under. Undefined: the call must fail. */
  key?: string;
  run(det: Img2Pose): Promise<unknown>;
}

/**
 * The repeating schedule, 10 calls: 5 forwards of different sizes and input kinds (files, bytes,
 * tensors, raw pixels, a list with a bad member) and 5 bad inputs, cycling through the catalogue.
 */
async function schedule(dir: string): Promise<(i: number) => Call> {
  const files: Record<string, string> = {};
  for (const [name, w, h, kind] of [
    ['a-64x48.png', 64, 48, 'png'],
    ['b-300x200.jpg', 300, 200, 'jpeg'],
    ['c-37x211.png', 37, 211, 'png'],
  ] as const) {
    const file = path.join(dir, name);
    const image = patternImage(w, h, name.length);
    fs.writeFileSync(file, kind === 'png' ? await pngBytes(image) : await jpegBytes(image));
    files[name] = file;
  }
  const jpeg = await jpegBytes(patternImage(120, 90, 7));
  const odd = await writeOddFiles(dir);
  const badFiles = await writeBadFiles(path.join(dir, 'bad'));
  const bad: BadInputCase[] = [...badFiles, ...badValues()];
  const tensorSizes: [number, number][] = [[90, 130], [48, 48], [200, 150]];
  const rawSizes: [number, number][] = [[50, 70], [160, 120]];

  /** Runs `make()`'s input through `det`, freeing a tensor input afterwards. */
  const withInput = (make: () => ImageInput, det: Img2Pose, options?: { scoreThreshold: number }) => {
    const input = make();
    return det.detectFaces(input, options).finally(() => disposeInput(input));
  };
  const tensor = ([h, w]: [number, number]) => () =>
    tf.tidy(() => tf.range(0, h * w * 3, 1, 'int32').mod(241).reshape([h, w, 3])) as tf.Tensor3D;
  const raw = ([h, w]: [number, number]) => () => ({
    data: Uint8Array.from({ length: h * w }, (_, k) => (k * 7) & 255),
    width: w,
    height: h,
    channels: 1 as const,
  });

  return (i: number): Call => {
    const cycle = Math.floor(i / 10);
    const badCase = bad[(cycle * 5 + Math.floor((i % 10) / 2)) % bad.length];
    const badCall: Call = { label: `bad: ${badCase.label}`, run: (det) => withInput(() => badCase.make(), det) };
    switch (i % 10) {
      case 0: {
        const name = Object.keys(files)[cycle % 3];
        return { label: name, key: name, run: (det) => det.detectFaces(files[name]) };
      }
      case 2: {
        const size = tensorSizes[cycle % tensorSizes.length];
        return { label: `tensor ${size}`, key: `tensor ${size}`, run: (det) => withInput(tensor(size), det) };
      }
      case 4:
        return { label: 'JPEG bytes 120x90', key: 'jpeg bytes', run: (det) => det.detectFaces(jpeg, { scoreThreshold: 0.3 }) };
      case 6: {
        const size = rawSizes[cycle % rawSizes.length];
        const oddCase = odd[cycle % odd.length];
        // Alternately raw gray pixels and an odd image (1x1, 4000x3, 3x4000, 2x1500).
        return cycle % 2 === 0
          ? { label: `raw gray ${size}`, key: `raw ${size}`, run: (det) => withInput(raw(size), det) }
          : { label: `odd ${oddCase.label}`, key: `odd ${oddCase.label}`, run: (det) => withInput(() => oddCase.make(), det, { scoreThreshold: 0 }) };
      }
      case 8: {
        // A list with a bad member: the good one's faces, the bad one's error, each time.
        const name = Object.keys(files)[(cycle + 1) % 3];
        return {
          label: `list [${name}, ${badCase.label}]`,
          key: `list ${name}`,
          run: async (det) => {
            const input = badCase.make();
            try {
              const settled = await det.detectFacesSettled([files[name], input]);
              if (settled[1].ok) throw new Error(`${badCase.label} was accepted in a list`);
              return settled[0];
            } finally {
              disposeInput(input);
            }
          },
        };
      }
      default:
        return badCall;
    }
  };
}

interface Sample {
  call: number;
  numTensors: number;
  tfBytes: number;
  rss: number;
  heapUsed: number;
  seconds: number;
}

async function soak(o: SoakOptions): Promise<boolean> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-soak-'));
  try {
    const backend = await selectBackend(o.backend);
    const weights = formulaWeights();
    const det = await Img2Pose.load({ weights, backend: o.backend, minSize: o.minSize, maxSize: o.maxSize, scoreThreshold: 0.5, threads: o.threads });
    disposeWeights(weights);
    const callAt = await schedule(dir);
    console.log(
      `soak: ${o.calls} calls on ${backend}, minSize ${o.minSize}, maxSize ${o.maxSize}; ` +
        `sample every ${o.every}, baseline at call ${o.warmup}${(globalThis as { gc?: unknown }).gc ? ' (RSS after a forced GC)' : ''}`,
    );
    console.log('| calls | numTensors | tf bytes (MiB) | RSS (MiB) | JS heap (MiB) | elapsed (s) |');
    console.log('|---:|---:|---:|---:|---:|---:|');
    const first = new Map<string, string>();
    const problems: string[] = [];
    const samples: Sample[] = [];
    const started = Date.now();
    const sample = (call: number) => {
      const m = tf.memory();
      const s: Sample = { call, numTensors: m.numTensors, tfBytes: m.numBytes, rss: rssNow(), heapUsed: process.memoryUsage().heapUsed, seconds: (Date.now() - started) / 1000 };
      samples.push(s);
      console.log(`| ${call} | ${s.numTensors} | ${mb(s.tfBytes)} | ${mb(s.rss)} | ${mb(s.heapUsed)} | ${s.seconds.toFixed(0)} |`);
    };
    sample(0);
    let forwards = 0;
    for (let i = 0; i < o.calls; i++) {
      const call = callAt(i);
      let result: string;
      try {
        result = JSON.stringify(await call.run(det));
        if (call.key === undefined) problems.push(`call ${i} (${call.label}) succeeded`);
      } catch (e) {
        if (call.key !== undefined || !(e instanceof Img2PoseError)) problems.push(`call ${i} (${call.label}) failed: ${String(e)}`);
        result = '';
      }
      if (call.key !== undefined) {
        forwards++;
        const seen = first.get(call.key);
        if (seen === undefined) first.set(call.key, result);
        else if (seen !== result) problems.push(`call ${i} (${call.label}): other faces than the first time`);
      }
      if ((i + 1) % o.every === 0 || i + 1 === o.calls) sample(i + 1);
    }
    await det.dispose();

    const base = samples.find((s) => s.call >= o.warmup) ?? samples[samples.length - 1];
    const after = samples.filter((s) => s.call >= base.call);
    const end = samples[samples.length - 1];
    const tensorCounts = new Set(after.map((s) => s.numTensors));
    if (tensorCounts.size !== 1) problems.push(`numTensors changed after warm-up: ${[...tensorCounts].join(', ')}`);
    const growth = end.rss - base.rss;
    const peakAfter = Math.max(...after.map((s) => s.rss));
    if (growth > o.rssSlackMb * MB) problems.push(`RSS grew ${mb(growth)} MiB after warm-up (allowed ${o.rssSlackMb})`);
    // Least-squares slope of RSS over the calls after warm-up, in MiB per 1000 calls.
    const slope = slopePer1000(after.map((s) => [s.call, s.rss / MB]));
    console.log(
      `\nsoak: ${o.calls} calls (${forwards} with a forward, ${o.calls - forwards} bad inputs) in ${end.seconds.toFixed(0)} s; ` +
        `numTensors ${samples[0].numTensors} at start, ${base.numTensors} after warm-up, ${end.numTensors} at the end; ` +
        `RSS ${mb(samples[0].rss)} MiB at start, ${mb(base.rss)} MiB after warm-up (call ${base.call}), ${mb(end.rss)} MiB at the end ` +
        `(max ${mb(peakAfter)} MiB after warm-up, trend ${slope.toFixed(1)} MiB per 1000 calls); ` +
        `${first.size} distinct good inputs, each gave the same faces every time: ${problems.some((p) => p.includes('other faces')) ? 'NO' : 'yes'}`,
    );
    for (const p of problems.slice(0, 20)) console.log(`soak: FAIL ${p}`);
    if (problems.length > 20) console.log(`soak: ... and ${problems.length - 20} more`);
    console.log(problems.length === 0 ? 'soak: PASS' : `soak: FAIL (${problems.length} problems)`);
    return problems.length === 0;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function slopePer1000(points: [number, number][]): number {
  if (points.length < 2) return 0;
  const n = points.length;
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  const sxy = points.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0);
  const sxx = points.reduce((a, [x]) => a + (x - mx) ** 2, 0);
  return sxx === 0 ? 0 : (sxy / sxx) * 1000;
}

// --- --big -----------------------------------------------------------------------------------

/** Makes the photo, then measures in a child process so its peak RSS is the detection's alone. */
async function big(o: SoakOptions, argv: string[]): Promise<boolean> {
  if (o.photo === undefined) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-big-'));
    try {
      const photo = path.join(dir, `photo-${o.size}.jpg`);
      const t0 = Date.now();
      const image = await Jimp.read(path.join(repoRoot(), 'assets', 'teaser.jpg'));
      image.resize({ w: o.size, h: o.size });
      fs.writeFileSync(photo, await image.getBuffer('image/jpeg', { quality: 85 }));
      console.log(`big: wrote a ${o.size}x${o.size} JPEG (${mb(fs.statSync(photo).size)} MiB) in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
      const child = fork(__filename, [...argv.slice(2), '--photo', photo], { execArgv: process.execArgv });
      const code = await new Promise<number>((resolve) => child.on('exit', (c) => resolve(c ?? 1)));
      return code === 0;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  const peak = () => process.resourceUsage().maxRSS * 1024;
  const backend = await selectBackend(o.backend);
  console.log(`big: ${o.photo}, ${backend}, minSize ${o.minSize}, maxSize ${o.maxSize}; RSS at start ${mb(rssNow())} MiB`);
  const weights = formulaWeights();
  const det = await Img2Pose.load({ weights, backend: o.backend, minSize: o.minSize, maxSize: o.maxSize, threads: o.threads });
  disposeWeights(weights);
  console.log(`big: detector loaded, RSS ${mb(rssNow())} MiB, peak so far ${mb(peak())} MiB, numTensors ${tf.memory().numTensors}`);
  console.log('| run | seconds | faces | numTensors | RSS after (MiB) | peak RSS so far (MiB) |');
  console.log('|---:|---:|---:|---:|---:|---:|');
  const tensors = tf.memory().numTensors;
  let ok = true;
  let previous: Face[] | undefined;
  for (let r = 1; r <= o.repeat; r++) {
    const t0 = Date.now();
    const faces = await det.detectFaces(o.photo);
    const seconds = (Date.now() - t0) / 1000;
    console.log(`| ${r} | ${seconds.toFixed(1)} | ${faces.length} | ${tf.memory().numTensors} | ${mb(rssNow())} | ${mb(peak())} |`);
    if (tf.memory().numTensors !== tensors) ok = false;
    if (previous !== undefined && JSON.stringify(previous) !== JSON.stringify(faces)) ok = false;
    previous = faces;
  }
  await det.dispose();
  console.log(ok ? 'big: PASS (tensor count constant, same faces each run)' : 'big: FAIL');
  return ok;
}

async function runSoak(argv: string[]): Promise<number> {
  const o = parseOptions(argv);
  return (o.big ? await big(o, argv) : await soak(o)) ? 0 : 1;
}

if (require.main === module) {
  runSoak(process.argv).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      console.error(`soak: ${e instanceof Error ? e.stack : String(e)}`);
      process.exitCode = 1;
    },
  );
}
