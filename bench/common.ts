/**
 * Helpers of the benchmark script: locating the repository's images, building the image sets,
 * timing, comparing results and printing markdown for docs/benchmarks.md.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import type { Face } from '../src/detector';
import { decodeImage } from '../src/io/images';
import { formulaWeights } from '../src/io/formula_weights';
import { Img2PoseModel } from '../src/model/model';
import { activeRuntime } from '../src/runtime/runtime';
import { disposeWeights } from '../src/model/weights';
import { loadWeights } from '../src/io/weights_io';

/** The repository root (holds package.json), from bench/ (ts) or dist/bench/ (built) alike. */
export function repoRoot(): string {
  let dir = __dirname;
  for (let up = 0; up < 5; up++) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg) && fs.existsSync(path.join(dir, 'assets'))) return dir;
    dir = path.dirname(dir);
  }
  throw new Error('cannot find the repository root (package.json next to assets/) above ' + __dirname);
}

/** The committed images the bench uses: the golden fixtures (lossless PNG) and the demo photo. */
export function benchImagePaths(root = repoRoot()): { photo: string; mixed: string[] } {
  const golden = path.join(root, '__tests__', 'fixtures', 'golden');
  const mixed = ['teaser.png', 'portrait_1.png', 'wide_1.png', 'small_1.png', 'square_1.png', 'gray_1.png', 'rgba_1.png']
    .map((n) => path.join(golden, n))
    .concat(path.join(root, 'assets', 'teaser.jpg'));
  for (const f of mixed) if (!fs.existsSync(f)) throw new Error(`bench image missing: ${f}`);
  return { photo: mixed[0], mixed };
}

export type SetKind = 'same' | 'mixed';

/** One image of a set: a decoded HWC float32 tensor (0..255) and a label for the table. */
export interface BenchImage {
  label: string;
  tensor: tf.Tensor3D;
}

/**
 * `count` images. `same`: crops of one size (`cropW` x `cropH`) from the photo at different
 * offsets, so the content differs but every image pads to the same batch shape. `mixed`: the
 * fixture images of different sizes and aspect ratios, cycled.
 */
export async function buildSet(kind: SetKind, count: number, cropW = 640, cropH = 480): Promise<BenchImage[]> {
  const { photo, mixed } = benchImagePaths();
  if (kind === 'mixed') {
    const out: BenchImage[] = [];
    for (let i = 0; i < count; i++) {
      const file = mixed[i % mixed.length];
      const tensor = await decodeImage(file);
      out.push({ label: `${path.basename(file)} ${tensor.shape[1]}x${tensor.shape[0]}`, tensor });
    }
    return out;
  }
  const full = await decodeImage(photo);
  try {
    const [h, w] = full.shape;
    const cw = Math.min(cropW, w);
    const ch = Math.min(cropH, h);
    const out: BenchImage[] = [];
    for (let i = 0; i < count; i++) {
      // Offsets spread over the photo; deterministic so runs compare.
      const x = Math.round(((i * 0.37) % 1) * (w - cw));
      const y = Math.round(((i * 0.61) % 1) * (h - ch));
      const tensor = tf.slice(full, [y, x, 0], [ch, cw, 3]) as tf.Tensor3D;
      out.push({ label: `crop ${cw}x${ch} @${x},${y}`, tensor });
    }
    return out;
  } finally {
    full.dispose();
  }
}

export function disposeSet(set: BenchImage[]): void {
  for (const im of set) im.tensor.dispose();
}

/** Wall-clock milliseconds of `fn`. */
export async function timeMs(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** How far two runs' faces are apart, image by image (faces paired in confidence order). */
export interface FaceDiff {
  /** Images whose face counts differ. */
  countMismatches: number;
  facesCompared: number;
  maxBox: number;
  maxScore: number;
  maxPose: number;
}

export function compareFaces(a: readonly Face[][], b: readonly Face[][]): FaceDiff {
  const d: FaceDiff = { countMismatches: 0, facesCompared: 0, maxBox: 0, maxScore: 0, maxPose: 0 };
  const maxAbs = (x: readonly number[], y: readonly number[]) => x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i])), 0);
  for (let i = 0; i < a.length; i++) {
    if (a[i].length !== b[i].length) d.countMismatches++;
    const n = Math.min(a[i].length, b[i].length);
    for (let k = 0; k < n; k++) {
      const fa = a[i][k];
      const fb = b[i][k];
      d.facesCompared++;
      d.maxBox = Math.max(d.maxBox, maxAbs(fa.box, fb.box));
      d.maxScore = Math.max(d.maxScore, Math.abs(fa.confidence - fb.confidence));
      d.maxPose = Math.max(d.maxPose, maxAbs(fa.pose, fb.pose));
    }
  }
  return d;
}

export function describeDiff(d: FaceDiff): string {
  const exact = d.countMismatches === 0 && d.maxBox === 0 && d.maxScore === 0 && d.maxPose === 0;
  const nums = `max abs diff box ${fmt(d.maxBox)}, score ${fmt(d.maxScore)}, pose ${fmt(d.maxPose)}`;
  if (exact) return `identical (${d.facesCompared} faces)`;
  const counts = d.countMismatches ? `${d.countMismatches} image(s) with other face counts; ` : '';
  return `${counts}${nums} over ${d.facesCompared} faces`;
}

function fmt(x: number): string {
  return x === 0 ? '0' : x.toExponential(1);
}

/** What the table header says about where the numbers come from. */
export interface MachineInfo {
  cpu: string;
  cores: number;
  os: string;
  memoryGiB: number;
  node: string;
  tfjs: string;
  date: string;
  command: string;
}

export function machineInfo(argv: readonly string[] = process.argv): MachineInfo {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() ?? 'unknown CPU',
    cores: cpus.length,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    tfjs: tf.version_core,
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    command: ['node', ...argv.slice(1).map((a) => path.relative(process.cwd(), a) || a).slice(0, 1), ...argv.slice(2)].join(' '),
  };
}

/** A GitHub markdown table. */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

/** Comma-separated positive integers, e.g. "1,2,4,8". */
export function parseCounts(value: string): number[] {
  const xs = value.split(',').map((s) => Number(s.trim()));
  if (xs.length === 0 || xs.some((x) => !Number.isInteger(x) || x < 1)) throw new Error(`expected counts like 1,2,4,8, got ${value}`);
  return xs;
}

/** The network from converted weights or a .pth, or from the formula test weights when none are given. */
export async function buildModel(weightsPath?: string): Promise<Img2PoseModel> {
  const weights = weightsPath ? await loadWeights(weightsPath) : formulaWeights();
  try {
    return new Img2PoseModel(weights, activeRuntime());
  } finally {
    disposeWeights(weights); // the model keeps its own folded copies
  }
}
