/**
 * Batch vs one-by-one benchmark: for 1, 2, 4 and 8 images of one size and of mixed sizes, the
 * time per image when each image gets its own forward and when they share one stacked forward,
 * plus a check that both give the same faces. Prints markdown for BENCHMARKS.md.
 *
 *   npm run build && npm run bench -- [--backend auto] [--weights <dir|pth>]
 *       [--min-size 640 --max-size 1400] [--counts 1,2,4,8] [--sets same,mixed] [--repeats 1]
 *       [--stages]
 *
 * Without --weights the untrained formula weights are used: timings are the same as with
 * trained weights of the same architecture (ResNet-18), except the cost after the network,
 * which grows with the number of detections.
 */
import { Command, Option } from 'commander';
import * as tf from '@tensorflow/tfjs';
import { BACKEND_CHOICES, BackendChoice, selectBackend } from '../src/backend';
import { Face, Img2Pose } from '../src/detector';
import { formulaWeights } from '../src/formula_weights';
import {
  BenchImage,
  FaceDiff,
  SetKind,
  buildSet,
  compareFaces,
  describeDiff,
  disposeSet,
  machineInfo,
  markdownTable,
  median,
  parseCounts,
  timeMs,
} from './common';

interface BenchOptions {
  backend: BackendChoice;
  weights?: string;
  minSize: number;
  maxSize: number;
  counts: number[];
  sets: SetKind[];
  repeats: number;
  threshold: number;
  stages: boolean;
}

interface Row {
  kind: SetKind;
  count: number;
  singleMs: number;
  batchMs: number;
  diff: FaceDiff;
  faces: number;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`expected a positive integer, got ${v}`);
  return n;
}

function parseSets(v: string): SetKind[] {
  const sets = v.split(',').map((s) => s.trim());
  for (const s of sets) if (s !== 'same' && s !== 'mixed') throw new Error(`--sets takes same and/or mixed, got ${s}`);
  return sets as SetKind[];
}

function parseOptions(argv: string[]): BenchOptions {
  const cmd = new Command('bench')
    .addOption(new Option('--backend <b>', 'compute backend').choices(BACKEND_CHOICES).default('auto'))
    .option('--weights <path>', 'converted weights folder or .pth (default: formula test weights)')
    .option('--min-size <n>', 'input transform min size', positiveInt, 640)
    .option('--max-size <n>', 'input transform max size', positiveInt, 1400)
    .option('--counts <list>', 'batch sizes to measure', parseCounts, [1, 2, 4, 8])
    .option('--sets <list>', 'image sets: same (one size) and/or mixed (several sizes)', parseSets, ['same', 'mixed'] as SetKind[])
    .option('--repeats <n>', 'timed runs per measurement (median reported)', positiveInt, 1)
    .option('--threshold <t>', 'score threshold of the compared faces', Number, 0.5)
    .option('--stages', 'print the per-stage time breakdown of one forward per batch size instead', false);
  cmd.parse(argv, { from: 'node' });
  return cmd.opts<BenchOptions>();
}

const log = (s: string) => process.stderr.write(`${s}\n`);

async function loadDetector(o: BenchOptions, batchSize: number): Promise<Img2Pose> {
  // The backend first, so that in-memory weights are created where they will be used.
  const backend = (await selectBackend(o.backend)) as BackendChoice;
  return Img2Pose.load({
    weights: o.weights ?? formulaWeights(),
    backend,
    minSize: o.minSize,
    maxSize: o.maxSize,
    batchSize,
    scoreThreshold: o.threshold,
  });
}

async function oneByOne(detector: Img2Pose, set: BenchImage[]): Promise<Face[][]> {
  const out: Face[][] = [];
  for (const im of set) out.push(await detector.detectFaces(im.tensor));
  return out;
}

async function measure(detector: Img2Pose, kind: SetKind, set: BenchImage[], repeats: number): Promise<Row> {
  let single: Face[][] = [];
  let batch: Face[][] = [];
  const singleTimes: number[] = [];
  const batchTimes: number[] = [];
  for (let r = 0; r < repeats; r++) {
    singleTimes.push(await timeMs(async () => (single = await oneByOne(detector, set))));
    batchTimes.push(await timeMs(async () => (batch = await detector.detectFaces(set.map((im) => im.tensor)))));
  }
  const n = set.length;
  return {
    kind,
    count: n,
    singleMs: median(singleTimes) / n,
    batchMs: median(batchTimes) / n,
    diff: compareFaces(single, batch),
    faces: single.reduce((s, f) => s + f.length, 0),
  };
}

function report(o: BenchOptions, backend: string, rows: Row[], warmupMs: number): string {
  const m = machineInfo();
  const header = [
    `### Batch vs one-by-one, ${backend} backend`,
    '',
    `- machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}`,
    `- backend: ${backend} (asked: ${o.backend}); Node ${m.node}; tfjs ${m.tfjs}`,
    `- input transform: min ${o.minSize} / max ${o.maxSize}; weights: ${o.weights ?? 'formula (untrained ResNet-18)'}; ` +
      `faces compared at threshold ${o.threshold}`,
    `- same = ${'crops of one size from teaser.png'}; mixed = fixture images of different sizes (padded to the largest in a batch)`,
    `- timings: median of ${o.repeats} run(s) after a warm-up (${(warmupMs / 1000).toFixed(1)} s); date ${m.date}`,
    `- command: \`${m.command}\``,
    '',
  ];
  const table = markdownTable(
    ['images', 'sizes', 'one-by-one ms/image', 'batch ms/image', 'batch / one-by-one', 'batch results vs one-by-one'],
    rows.map((r) => [
      String(r.count),
      r.kind,
      r.singleMs.toFixed(0),
      r.batchMs.toFixed(0),
      (r.batchMs / r.singleMs).toFixed(2),
      describeDiff(r.diff),
    ]),
  );
  return `${header.join('\n')}${table}\n`;
}

export async function runBench(argv: string[]): Promise<void> {
  const o = parseOptions(argv);
  const maxCount = Math.max(...o.counts);
  if (o.stages) {
    process.stdout.write(await runStages(o));
    return;
  }
  const detector = await loadDetector(o, maxCount);
  const sets = new Map<SetKind, BenchImage[]>();
  try {
    for (const kind of o.sets) sets.set(kind, await buildSet(kind, maxCount));
    const warmSet = sets.get(o.sets[0])!;
    // Warm-up: backend initialisation, kernel compilation and the first allocations of both paths.
    const warmupMs = await timeMs(async () => {
      await detector.detectFaces(warmSet[0].tensor);
      if (warmSet.length > 1) await detector.detectFaces([warmSet[0].tensor, warmSet[1].tensor]);
    });
    log(`warm-up ${(warmupMs / 1000).toFixed(1)} s on ${detector.backend}`);
    const rows: Row[] = [];
    for (const kind of o.sets) {
      for (const count of o.counts) {
        const row = await measure(detector, kind, sets.get(kind)!.slice(0, count), o.repeats);
        log(
          `${kind} x${count}: one-by-one ${row.singleMs.toFixed(0)} ms/image, batch ${row.batchMs.toFixed(0)} ms/image, ` +
            `${describeDiff(row.diff)}; tensors ${tf.memory().numTensors}`,
        );
        rows.push(row);
      }
    }
    process.stdout.write(report(o, detector.backend, rows, warmupMs));
  } finally {
    for (const s of sets.values()) disposeSet(s);
    await detector.dispose();
  }
}

// --- --stages --------------------------------------------------------------------------------

interface KernelTotal {
  calls: number;
  ms: number;
}

/**
 * Where the time of one forward goes. Img2PoseModel exposes no per-stage hook, so this is the
 * tfjs kernel profile of a detection, summed per kernel: convolutions are the backbone / FPN /
 * RPN head, MatMul the ROI heads' MLPs, CropAndResize / gathers the ROI pooling, NMS the
 * proposal and final suppression; "outside kernels" is JavaScript (pose post-processing,
 * keypoints) and data transfers.
 */
async function runStages(o: BenchOptions): Promise<string> {
  const detector = await loadDetector(o, Math.max(...o.counts));
  const set = await buildSet('same', Math.max(...o.counts));
  const sections: string[] = [];
  try {
    await detector.detectFaces(set[0].tensor); // warm-up
    for (const count of o.counts) {
      const images = set.slice(0, count).map((im) => im.tensor);
      const totals = new Map<string, KernelTotal>();
      let wallMs = 0;
      const info = await tf.profile(async () => {
        wallMs = await timeMs(async () => {
          await (count === 1 ? detector.detectFaces(images[0]) : detector.detectFaces(images));
        });
      });
      let kernelMs = 0;
      for (const k of info.kernels) {
        const t = await k.kernelTimeMs;
        const ms = typeof t === 'number' ? t : 0;
        kernelMs += ms;
        const e = totals.get(k.name) ?? { calls: 0, ms: 0 };
        e.calls++;
        e.ms += ms;
        totals.set(k.name, e);
      }
      const rows = [...totals.entries()].sort((a, b) => b[1].ms - a[1].ms);
      const top = rows.slice(0, 12);
      const rest = rows.slice(12).reduce((acc, [, e]) => ({ calls: acc.calls + e.calls, ms: acc.ms + e.ms }), { calls: 0, ms: 0 });
      const pct = (ms: number) => `${((100 * ms) / wallMs).toFixed(1)}%`;
      const table = markdownTable(
        ['kernel', 'calls', 'ms', 'share of wall time'],
        [
          ...top.map(([name, e]) => [name, String(e.calls), e.ms.toFixed(1), pct(e.ms)]),
          ...(rest.calls ? [[`${rows.length - 12} other kernels`, String(rest.calls), rest.ms.toFixed(1), pct(rest.ms)]] : []),
          ['outside kernels (JS, transfers)', '', Math.max(0, wallMs - kernelMs).toFixed(1), pct(Math.max(0, wallMs - kernelMs))],
          ['**total (wall)**', '', wallMs.toFixed(1), '100%'],
        ],
      );
      sections.push(`#### ${count} image${count > 1 ? 's' : ''} (${count === 1 ? 'single' : 'one stacked forward'})\n\n${table}\n`);
      log(`stages x${count}: ${wallMs.toFixed(0)} ms wall, ${kernelMs.toFixed(0)} ms in kernels`);
    }
  } finally {
    disposeSet(set);
    await detector.dispose();
  }
  const m = machineInfo();
  return [
    `### Per-kernel time of one detection, ${detector.backend} backend`,
    '',
    `- machine: ${m.cpu}, ${m.cores} cores, ${m.os}; Node ${m.node}; tfjs ${m.tfjs}; date ${m.date}`,
    `- input transform: min ${o.minSize} / max ${o.maxSize}; images: crops of one size from teaser.png`,
    `- command: \`${m.command}\``,
    '',
    sections.join('\n'),
  ].join('\n');
}

export type { BenchOptions };

if (require.main === module) {
  runBench(process.argv).catch((e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
