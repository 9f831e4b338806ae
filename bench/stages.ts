/**
 * CPU time of one image, ours (tfjs, wasm by default) next to upstream PyTorch on the same
 * machine in the same run, with a per-stage breakdown of both.
 *
 *   npm run build && node dist/bench/stages.js [--image __tests__/fixtures/golden/teaser.png]
 *       [--sizes 160/288,640/1400] [--repeats 5] [--warmup 1] [--weights tmp/formula_tfjs]
 *       [--threads 0,1,2] [--upstream-src /tmp/upstream/src] [--no-upstream] [--winograd on,off]
 *
 * What is timed, both sides: decoded image in memory -> faces above 0.5 (network, post-processing,
 * keypoints); file decoding is not. Ours: `Img2PoseModel.predict` + `processPrediction`; its
 * stage table comes from a second, profiled run per round (`predict`'s `profile` option waits
 * for the device after each stage). Upstream: one `bench/upstream_cpu.py serve` process per
 * --threads value (img2poseModel.predict + Img2Pose._process_prediction; stages via forward
 * hooks). After the warm-up, each round runs every implementation once in turn, never two at
 * once, so load from other jobs on a shared machine spreads over all of them; the 1-minute load
 * average over the rounds is printed with the tables. `--winograd on,off` times ours both ways
 * (the IMG2POSE_WINOGRAD flag: Winograd or direct stride-1 3x3 convolutions), in the same rounds.
 */
import { ChildProcessWithoutNullStreams, spawn } from 'child_process';
import * as os from 'os';
import * as path from 'path';
import * as readline from 'readline';
import { Command } from 'commander';
import * as tf from '@tensorflow/tfjs';
import { BACKEND_CHOICES, BackendChoice, selectBackend } from '../src/runtime/backend';
import { processPrediction } from '../src/detector';
import { decodeImage } from '../src/io/images';
import { Img2PoseModel, StageTimings, emptyTimings } from '../src/model/model';
import { resizedSize } from '../src/model/transform';
import { buildModel, machineInfo, markdownTable, median, repoRoot, timeMs } from './common';
import { WINOGRAD_FLAG } from '../src/kernels/webgpu';

// Upstream's forward hooks see the RPN whole: our proposal filtering is folded into 'rpn' (add()).
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
  winograd: boolean[];
}

const log = (s: string) => process.stderr.write(`${s}\n`);

function parseSizes(v: string): [number, number][] {
  return v.split(',').map((s) => {
    const m = /^\s*(\d+)\/(\d+)\s*$/.exec(s);
    if (!m) throw new Error(`--sizes takes min/max pairs like 160/288,640/1400, got ${s}`);
    return [Number(m[1]), Number(m[2])];
  });
}

function parseSwitches(v: string): boolean[] {
  return v.split(',').map((s) => {
    if (s !== 'on' && s !== 'off') throw new Error(`--winograd takes on and/or off, got ${s}`);
    return s === 'on';
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
    .option(
      '--threads <list>',
      'upstream thread counts, torch and OpenBLAS alike (0: their defaults: torch 1 here, OpenBLAS all cores)',
      (v) => v.split(',').map(int),
      [0, 1, 2],
    )
    .option('--winograd <list>', 'ours with the IMG2POSE_WINOGRAD flag on and/or off, e.g. on,off', parseSwitches, [true]);
  cmd.parse(argv, { from: 'node' });
  const o = cmd.opts<Options>();
  if (!BACKEND_CHOICES.includes(o.backend)) throw new Error(`--backend takes ${BACKEND_CHOICES.join(', ')}`);
  if (o.repeats < 1) throw new Error('--repeats must be at least 1');
  return o;
}

/** A long-lived upstream process (upstream_cpu.py serve) that times one run per request. */
class UpstreamServer {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly waiting: { resolve: (line: string) => void; reject: (e: Error) => void }[] = [];
  private readonly lines: string[] = [];

  private constructor(
    readonly threads: number,
    o: Options,
  ) {
    this.child = spawn(o.python, [
      path.join(repoRoot(), 'bench', 'upstream_cpu.py'), 'serve', '--upstream', o.upstreamSrc,
      '--checkpoint', o.checkpoint, '--pose-mean', o.poseMean, '--pose-stddev', o.poseStddev,
      '--threads', String(threads), '--image', o.image,
    ]);
    this.child.stderr.on('data', (d: Buffer) => process.stderr.write(d));
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      const next = this.waiting.shift();
      if (next) next.resolve(line);
      else this.lines.push(line);
    });
    this.child.on('exit', (code) => {
      for (const w of this.waiting.splice(0)) w.reject(new Error(`upstream_cpu.py serve exited ${code}`));
    });
  }

  /** Starts the process and waits until its model is built; resolves to it and its label. */
  static async start(threads: number, o: Options): Promise<{ server: UpstreamServer; label: string }> {
    const server = new UpstreamServer(threads, o);
    const ready = JSON.parse(await server.nextLine()) as { ready: { torch: string; threads: number; blas_threads: number | null } };
    const { torch, threads: t, blas_threads: blas } = ready.ready;
    const label =
      `upstream, torch ${torch} CPU, ${t} thread${t > 1 ? 's' : ''}` +
      `${blas === null ? '' : ` + OpenBLAS ${blas}`}${threads === 0 ? ' (defaults)' : ''}`;
    return { server, label };
  }

  private nextLine(): Promise<string> {
    const ready = this.lines.shift();
    if (ready !== undefined) return Promise.resolve(ready);
    if (this.child.exitCode !== null) return Promise.reject(new Error(`upstream_cpu.py serve exited ${this.child.exitCode}`));
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  async run(minSize: number, maxSize: number): Promise<Sample> {
    this.child.stdin.write(`${JSON.stringify({ min_size: minSize, max_size: maxSize })}\n`);
    const r = JSON.parse(await this.nextLine()) as { total_ms: number; stages_ms: StageTimings; faces: number };
    return { ms: r.total_ms, stages: r.stages_ms, faces: r.faces };
  }

  close(): void {
    this.child.stdin.end();
  }
}

/** One timed run. */
interface Sample {
  ms: number;
  stages?: StageTimings;
  faces: number;
}

/** One implementation's runs at one size. */
class Series {
  readonly totals: number[] = [];
  readonly stages: StageTimings[] = [];
  faces = 0;

  constructor(readonly label: string) {}

  add(s: Sample): void {
    this.totals.push(s.ms);
    if (s.stages) this.stages.push({ ...s.stages, rpn: s.stages.rpn + (s.stages.proposals ?? 0), proposals: 0 });
    this.faces = s.faces;
  }

  stageMedians(): StageTimings {
    const out = emptyTimings();
    for (const st of STAGES) out[st] = median(this.stages.map((t) => t[st]));
    return out;
  }
}

async function runOurs(model: Img2PoseModel, image: tf.Tensor3D, config: { minSize: number; maxSize: number }, profile?: StageTimings): Promise<Sample> {
  const [h, w] = image.shape;
  let faces = 0;
  const ms = await timeMs(async () => {
    const [det] = await model.predict([image], config, { profile });
    faces = processPrediction(det, w, h, 0.5, -1).length;
  });
  return { ms, stages: profile, faces };
}

function section(minSize: number, maxSize: number, resized: string, series: Series[], loads: number[]): string {
  const ours = series[0].totals;
  // Same-round ratios: both runs of a round saw about the same load from other jobs.
  const roundRatio = (s: Series) => median(s.totals.map((t, r) => t / ours[r]));
  const e2e = markdownTable(
    ['implementation', 'median ms/image', 'min', 'max', 'median / ours', 'same-round ratio (median)', 'faces >= 0.5'],
    series.map((s, i) => [
      s.label,
      median(s.totals).toFixed(0),
      Math.min(...s.totals).toFixed(0),
      Math.max(...s.totals).toFixed(0),
      i === 0 ? '1.00' : (median(s.totals) / median(ours)).toFixed(2),
      i === 0 ? '1.00' : roundRatio(s).toFixed(2),
      String(s.faces),
    ]),
  );
  const medians = series.map((s) => s.stageMedians());
  const stageRows = STAGES.map((st) => [st, ...medians.map((m) => m[st].toFixed(1))]);
  const sums = ['**sum**', ...medians.map((m) => STAGES.reduce((acc, st) => acc + m[st], 0).toFixed(1))];
  const stages = markdownTable(['stage (median ms)', ...series.map((s) => s.label)], [...stageRows, sums]);
  const load = `1-min load average during the rounds: ${Math.min(...loads).toFixed(2)}-${Math.max(...loads).toFixed(2)}`;
  return `#### min ${minSize} / max ${maxSize} (network input ${resized})\n\n${e2e}\n\n${stages}\n\n${load}\n`;
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv);
  const backend = await selectBackend(o.backend);
  // One network per Winograd setting: on wasm a network keeps its weights only in the form its
  // layers ran in when it was built (src/kernels/wasm/packed.ts).
  const models = new Map<boolean, Img2PoseModel>();
  for (const on of o.winograd) {
    tf.env().set(WINOGRAD_FLAG, on);
    models.set(on, await buildModel(o.weights));
  }
  tf.env().set(WINOGRAD_FLAG, true);
  const model = models.get(true) ?? [...models.values()][0];
  const image = await decodeImage(o.image);
  const [h, w] = image.shape;
  const servers: { server: UpstreamServer; label: string }[] = [];
  const sections: string[] = [];
  try {
    if (o.upstream) for (const t of o.threads) servers.push(await UpstreamServer.start(t, o));
    for (const [minSize, maxSize] of o.sizes) {
      const [rh, rw] = resizedSize(h, w, minSize, maxSize);
      const config = { minSize, maxSize };
      const label = (on: boolean) => `ours, tfjs ${tf.getBackend()}${o.winograd.length > 1 ? `, Winograd ${on ? 'on' : 'off'}` : ''}`;
      const ours = o.winograd.map((on) => ({ on, series: new Series(label(on)) }));
      const upstream = servers.map((s) => new Series(s.label));
      log(`${minSize}/${maxSize}: warm-up`);
      for (let i = 0; i < o.warmup; i++) {
        for (const { on } of ours) {
          tf.env().set(WINOGRAD_FLAG, on);
          await runOurs(models.get(on) ?? model, image, config);
        }
        for (const s of servers) await s.server.run(minSize, maxSize);
      }
      // Rounds alternate the implementations, so that a load spike from other jobs on the
      // machine hits all of them alike instead of one whole series.
      const loads: number[] = [];
      for (let r = 0; r < o.repeats; r++) {
        loads.push(os.loadavg()[0]);
        for (const { on, series } of ours) {
          tf.env().set(WINOGRAD_FLAG, on);
          const plain = await runOurs(models.get(on) ?? model, image, config);
          const profiled = await runOurs(models.get(on) ?? model, image, config, emptyTimings());
          series.add({ ms: plain.ms, stages: profiled.stages, faces: plain.faces });
        }
        for (let i = 0; i < servers.length; i++) upstream[i].add(await servers[i].server.run(minSize, maxSize));
        log(`  round ${r + 1}: ours ${ours.map((s) => s.series.totals[r].toFixed(0)).join(', ')} ms; upstream ${upstream.map((u) => u.totals[r].toFixed(0)).join(', ')} ms`);
      }
      tf.env().set(WINOGRAD_FLAG, true);
      sections.push(section(minSize, maxSize, `${rw}x${rh}`, [...ours.map((s) => s.series), ...upstream], loads));
    }
  } finally {
    for (const s of servers) s.server.close();
    image.dispose();
    for (const m of models.values()) await m.dispose();
  }
  const m = machineInfo();
  process.stdout.write(
    [
      `### One image on CPU: ours vs upstream PyTorch (${path.basename(o.image)}, ${w}x${h})`,
      '',
      `- machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}; Node ${m.node}; tfjs ${m.tfjs}`,
      `- ours: backend ${backend} (single-threaded in Node); weights ${o.weights ?? 'formula (untrained ResNet-18), in memory'}`,
      `- timed: decoded image -> faces above 0.5; ${o.warmup} warm-up run(s) each, then ${o.repeats} rounds ` +
        'that run every implementation once in turn; stages of ours from a profiled run in each round',
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
