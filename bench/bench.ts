/**
 * Batch vs one-by-one benchmark: for 1, 2, 4 and 8 images of one size and of mixed sizes, the
 * time per image when each image gets its own forward and when they share one stacked forward,
 * plus a check that both give the same faces. Prints markdown for docs/benchmarks.md.
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
import { BACKEND_CHOICES, BackendChoice, selectBackend } from '../src/runtime/backend';
import { Face, Img2Pose } from '../src/detector';
import { BatchError } from '../src/errors';
import { formulaWeights } from '../src/io/formula_weights';
import { StageTimings, emptyTimings } from '../src/model/model';
import {
  BenchImage,
  FaceDiff,
  SetKind,
  buildModel,
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
  threads: number | 'auto';
}

interface Row {
  kind: SetKind;
  count: number;
  singleMs: number;
  /** NaN when the batch failed (then `batchError` says why). */
  batchMs: number;
  diff?: FaceDiff;
  batchError?: string;
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
    .option('--threads <n>', "CPU threads per batch ('auto' or a count; 1 = one thread)", (v: string) => (v === 'auto' ? 'auto' : positiveInt(v)), 'auto' as number | 'auto')
    .option('--stages', 'print the per-stage time breakdown of the network (ms/image) instead', false);
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
    threads: o.threads,
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
  let batchError: string | undefined;
  for (let r = 0; r < repeats; r++) {
    singleTimes.push(await timeMs(async () => (single = await oneByOne(detector, set))));
    try {
      batchTimes.push(await timeMs(async () => (batch = await detector.detectFaces(set.map((im) => im.tensor)))));
    } catch (e) {
      // A batch too large for the backend (e.g. wasm's 4 GiB heap) is a result, not a crash.
      batchError = rootCause(e);
      break;
    }
  }
  const n = set.length;
  return {
    kind,
    count: n,
    singleMs: median(singleTimes) / n,
    batchMs: batchError ? NaN : median(batchTimes) / n,
    diff: batchError ? undefined : compareFaces(single, batch),
    batchError,
    faces: single.reduce((s, f) => s + f.length, 0),
  };
}

/** The innermost message of an error chain (BatchError -> its first error -> cause ...). */
function rootCause(e: unknown): string {
  let cur: unknown = e;
  for (let depth = 0; depth < 5; depth++) {
    const next =
      cur instanceof BatchError ? cur.errors[0]?.error : cur instanceof Error && cur.cause !== undefined ? cur.cause : undefined;
    if (next === undefined) break;
    cur = next;
  }
  const msg = cur instanceof Error ? cur.message : String(cur);
  return msg.split('\n')[0].slice(0, 160);
}

function report(o: BenchOptions, backend: string, threads: number, rows: Row[], warmupMs: number): string {
  const m = machineInfo();
  const header = [
    `### Batch vs one-by-one, ${backend} backend`,
    '',
    `- machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}`,
    `- backend: ${backend} (asked: ${o.backend}); threads: ${threads} (asked: ${o.threads}); Node ${m.node}; tfjs ${m.tfjs}`,
    `- input transform: min ${o.minSize} / max ${o.maxSize}; weights: ${o.weights ?? 'formula (untrained ResNet-18)'}; ` +
      `faces compared at threshold ${o.threshold}`,
    `- same = ${'crops of one size from teaser.png'}; mixed = fixture images of different sizes (stacked in groups of similar padded size, see Img2PoseModel.predict)`,
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
      r.batchError ? 'failed' : r.batchMs.toFixed(0),
      r.batchError ? '-' : (r.batchMs / r.singleMs).toFixed(2),
      r.batchError ? `batch failed: ${r.batchError.replace(/\|/g, '/')}` : describeDiff(r.diff!),
    ]),
  );
  return `${header.join('\n')}\n${table}\n`;
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
    log(`warm-up ${(warmupMs / 1000).toFixed(1)} s on ${detector.backend}, ${detector.threads} thread(s)`);
    const rows: Row[] = [];
    for (const kind of o.sets) {
      for (const count of o.counts) {
        const row = await measure(detector, kind, sets.get(kind)!.slice(0, count), o.repeats);
        log(
          `${kind} x${count}: one-by-one ${row.singleMs.toFixed(0)} ms/image, batch ${row.batchMs.toFixed(0)} ms/image, ` +
            `${row.batchError ? `batch failed: ${row.batchError}` : describeDiff(row.diff!)}; tensors ${tf.memory().numTensors}`,
        );
        rows.push(row);
      }
    }
    process.stdout.write(report(o, detector.backend, detector.threads, rows, warmupMs));
  } finally {
    for (const s of sets.values()) disposeSet(s);
    await disposeQuietly(detector);
  }
}

/** After a failed batch (wasm out of memory) the backend may be unusable; the table still prints. */
async function disposeQuietly(d: { dispose(): void | Promise<void> }): Promise<void> {
  try {
    await d.dispose();
  } catch (e) {
    log(`(dispose failed: ${rootCause(e)})`);
  }
}

// --- --stages --------------------------------------------------------------------------------

const STAGES: (keyof StageTimings)[] = ['transform', 'backbone', 'rpn', 'proposals', 'roiAlign', 'heads', 'postprocess'];

/**
 * Where the time of one forward goes, from Img2PoseModel's own stage timings (`predict`'s
 * `profile` option: it waits for the device after each stage, so the stages add up to a bit
 * more than an unprofiled forward). The network is driven directly, without the detector's
 * decoding and keypoints; numbers are ms per image of one stacked forward of `count` images.
 */
async function runStages(o: BenchOptions): Promise<string> {
  const backend = await selectBackend(o.backend);
  const model = await buildModel(o.weights);
  const config = { minSize: o.minSize, maxSize: o.maxSize };
  const maxCount = Math.max(...o.counts);
  const sections: string[] = [];
  try {
    for (const kind of o.sets) {
      const set = await buildSet(kind, maxCount);
      try {
        await model.predict([set[0].tensor], config); // warm-up
        const columns: { count: number; stages: StageTimings; wallMs: number }[] = [];
        for (const count of o.counts) {
          const images = set.slice(0, count).map((im) => im.tensor);
          const stages = emptyTimings();
          const walls: number[] = [];
          for (let r = 0; r < o.repeats; r++) walls.push(await timeMs(() => model.predict(images, config, { profile: stages })));
          const per = (ms: number) => ms / (count * o.repeats);
          const perImage = emptyTimings();
          for (const st of STAGES) perImage[st] = per(stages[st]);
          columns.push({ count, stages: perImage, wallMs: median(walls) / count });
          log(`stages ${kind} x${count}: ${(median(walls) / count).toFixed(0)} ms/image`);
        }
        const table = markdownTable(
          ['stage (ms/image)', ...columns.map((c) => `${c.count} image${c.count > 1 ? 's' : ''}`)],
          [
            ...STAGES.map((st) => [st, ...columns.map((c) => `${c.stages[st].toFixed(1)} (${pct(c.stages[st], c.stages)})`)]),
            ['**sum of stages**', ...columns.map((c) => sumStages(c.stages).toFixed(1))],
            ['forward wall (median)', ...columns.map((c) => c.wallMs.toFixed(1))],
          ],
        );
        sections.push(`#### ${kind === 'same' ? 'One size (crops of teaser.png)' : 'Mixed sizes (fixture images)'}\n\n${table}\n`);
      } finally {
        disposeSet(set);
      }
    }
  } finally {
    await disposeQuietly(model);
  }
  const m = machineInfo();
  return [
    `### Per-stage time of one forward, ${backend} backend`,
    '',
    `- machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}; Node ${m.node}; tfjs ${m.tfjs}`,
    `- input transform: min ${o.minSize} / max ${o.maxSize}; weights: ${o.weights ?? 'formula (untrained ResNet-18)'}`,
    `- ${o.repeats} profiled run(s) per column after a warm-up; date ${m.date}`,
    `- command: \`${m.command}\``,
    '',
    sections.join('\n'),
  ].join('\n');
}

function sumStages(t: StageTimings): number {
  return STAGES.reduce((s, st) => s + t[st], 0);
}

function pct(ms: number, all: StageTimings): string {
  const total = sumStages(all);
  return total > 0 ? `${Math.round((100 * ms) / total)}%` : '-';
}

export type { BenchOptions };

if (require.main === module) {
  runBench(process.argv).catch((e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
