/**
 * Side by side with upstream PyTorch on images and sizes the golden fixtures do not cover.
 *
 * For every --sizes entry it runs upstream (bench/upstream_cpu.py, one image per forward) and our
 * CLI (`img2pose detect --threshold 0 --json`, once with --batch-size 1 and once with
 * --batch-size K over all images, mixed sizes), then compares per image with the fixtures'
 * end-to-end criteria (shared/fixtures/README.md): greedy match by IoU >= 0.95; >= 98% matched
 * both ways among detections scoring >= 0.1; matched scores within 1e-3, rotations within
 * 1e-3 rad, translations within 1e-3 relative, boxes within 1 px; equal counts above 0.5.
 * Our batch run must equal our single run.
 *
 *   npm run build && node dist/bench/compare_upstream.js [--upstream-src /tmp/upstream/src]
 *       [--images tmp/compare/images] [--sizes 640/1400,160/288,320/512] [--batch-size 4]
 *       [--weights tmp/formula_tfjs] [--checkpoint tmp/formula_ckpt/formula.pth]
 *       [--out tmp/compare] [--reuse] [--upstream-batch-size 4]
 *
 * The images are made by `upstream_cpu.py make-images` when --images has none. Upstream's code
 * is only read from --upstream-src, never copied here. Exit code 1 when any case fails.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import type { Face } from '../src/detector';
import { markdownTable, repoRoot } from './common';
import { facesToDets, failures, matchDetections, pct, sci } from './match';

export { facesToDets, failures, matchDetections, TOLERANCE } from './match';
export type { Dets, MatchReport } from './match';

/** Whether two runs of ours gave bit-identical faces (same order, same numbers). */
export function identical(a: readonly Face[], b: readonly Face[]): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

// --- running both sides ---------------------------------------------------------------------------

interface Options {
  upstreamSrc: string;
  python: string;
  images: string;
  sizes: [number, number][];
  batchSize: number;
  weights: string;
  checkpoint: string;
  poseMean: string;
  poseStddev: string;
  out: string;
  reuse: boolean;
  threads: number;
  /** When > 1, also run upstream's own batched path and report how far it is from its single runs. */
  upstreamBatchSize: number;
}

type ImageFaces = { image: string; faces: Face[] } | { image: string; error: string };

function parseSizes(v: string): [number, number][] {
  return v.split(',').map((s) => {
    const m = /^\s*(\d+)\/(\d+)\s*$/.exec(s);
    if (!m) throw new Error(`--sizes takes min/max pairs like 640/1400,160/288, got ${s}`);
    return [Number(m[1]), Number(m[2])];
  });
}

function parseOptions(argv: string[]): Options {
  const root = repoRoot();
  const tmp = (p: string) => path.join(root, 'tmp', p);
  const cmd = new Command('compare_upstream')
    .option('--upstream-src <dir>', 'folder holding the upstream img2pose package', '/tmp/upstream/src')
    .option('--python <exe>', 'python with torch 1.13 / torchvision 0.14', '/usr/bin/python3')
    .option('--images <dir>', 'validation images, PNG or JPEG (made when there are none)', tmp('compare/images'))
    .option('--sizes <list>', 'min/max pairs', parseSizes, parseSizes('640/1400,160/288,320/512'))
    .option('--batch-size <k>', 'batch size of our batch run', (v) => Number(v), 4)
    .option('--weights <dir>', 'our converted weights', tmp('formula_tfjs'))
    .option('--checkpoint <pth>', 'the same weights for upstream', tmp('formula_ckpt/formula.pth'))
    .option('--pose-mean <npy>', '', tmp('formula_ckpt/pose_mean.npy'))
    .option('--pose-stddev <npy>', '', tmp('formula_ckpt/pose_stddev.npy'))
    .option('--out <dir>', 'where the JSON results go', tmp('compare'))
    .option('--threads <n>', 'torch and OpenBLAS threads for upstream (0: their defaults)', (v) => Number(v), 0)
    .option('--upstream-batch-size <k>', "also run upstream's batched path, k images a forward (0: skip)", (v) => Number(v), 0)
    .option('--reuse', 'keep result files that already exist instead of rerunning', false);
  cmd.parse(argv, { from: 'node' });
  return cmd.opts<Options>();
}

function run(exe: string, args: string[]): void {
  const t0 = Date.now();
  const r = spawnSync(exe, args, { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`${path.basename(exe)} ${args.slice(0, 3).join(' ')} ... exited ${r.status ?? r.signal}`);
  process.stderr.write(`  (${((Date.now() - t0) / 1000).toFixed(1)} s)\n`);
}

/** Our CLI from the same build as this script (dist/ or another outDir alike). */
function runOurCli(args: string[]): void {
  const cli = path.join(__dirname, '..', 'src', 'cli.js');
  const script = `require(${JSON.stringify(cli)}).main(['node', 'img2pose', ...process.argv.slice(1)]).then((c) => { process.exitCode = c; })`;
  run(process.execPath, ['-e', script, ...args]);
}

function readResults(file: string): Map<string, Face[]> {
  const list = JSON.parse(fs.readFileSync(file, 'utf8')) as ImageFaces[];
  const out = new Map<string, Face[]>();
  for (const r of list) {
    if ('error' in r) throw new Error(`${file}: ${r.image} failed: ${r.error}`);
    out.set(path.basename(r.image), r.faces);
  }
  return out;
}

function listImages(o: Options): string[] {
  // PNGs and JPEGs: both programs decode the same file, each with its own decoder (PIL upstream).
  const images = () => (fs.existsSync(o.images) ? fs.readdirSync(o.images).filter((f) => /\.(png|jpe?g)$/i.test(f)).sort() : []);
  if (images().length === 0) {
    const source = path.join(repoRoot(), '__tests__', 'fixtures', 'golden', 'teaser.png');
    run(o.python, [path.join(repoRoot(), 'bench', 'upstream_cpu.py'), 'make-images', '--source', source, '--out', o.images]);
  }
  return images().map((f) => path.join(o.images, f));
}

async function main(): Promise<number> {
  const o = parseOptions(process.argv);
  fs.mkdirSync(o.out, { recursive: true });
  const images = listImages(o);
  const rows: string[][] = [];
  let failed = 0;
  for (const [minSize, maxSize] of o.sizes) {
    const tag = `${minSize}_${maxSize}`;
    const files = {
      upstream: path.join(o.out, `upstream_${tag}.json`),
      single: path.join(o.out, `ours_single_${tag}.json`),
      batch: path.join(o.out, `ours_batch${o.batchSize}_${tag}.json`),
      upstreamBatch: path.join(o.out, `upstream_batch${o.upstreamBatchSize}_${tag}.json`),
    };
    const sizeArgs = ['--min-size', String(minSize), '--max-size', String(maxSize)];
    const fresh = (f: string) => !(o.reuse && fs.existsSync(f));
    const upstreamRuns: [string, number][] = [[files.upstream, 1]];
    if (o.upstreamBatchSize > 1) upstreamRuns.push([files.upstreamBatch, o.upstreamBatchSize]);
    for (const [file, k] of upstreamRuns) {
      if (!fresh(file)) continue;
      process.stderr.write(`upstream ${minSize}/${maxSize} batch ${k}\n`);
      run(o.python, [
        path.join(repoRoot(), 'bench', 'upstream_cpu.py'), 'detect', '--upstream', o.upstreamSrc,
        '--checkpoint', o.checkpoint, '--pose-mean', o.poseMean, '--pose-stddev', o.poseStddev,
        '--threads', String(o.threads), '--threshold', '0', '--batch-size', String(k), ...sizeArgs,
        '--json', file, ...images,
      ]);
    }
    for (const [file, k] of [[files.single, 1], [files.batch, o.batchSize]] as const) {
      if (!fresh(file)) continue;
      process.stderr.write(`ours ${minSize}/${maxSize} batch ${k}\n`);
      runOurCli([
        'detect', ...images, '--weights', o.weights, '--backend', 'wasm', '--threshold', '0',
        ...sizeArgs, '--batch-size', String(k), '--json', file,
      ]);
    }
    const ref = readResults(files.upstream);
    const single = readResults(files.single);
    const batch = readResults(files.batch);
    const upstreamBatch = o.upstreamBatchSize > 1 ? readResults(files.upstreamBatch) : undefined;
    for (const image of images.map((f) => path.basename(f))) {
      const r = matchDetections(facesToDets(single.get(image) ?? []), facesToDets(ref.get(image) ?? []));
      const bad = failures(r);
      const b = batch.get(image) ?? [];
      const s = single.get(image) ?? [];
      const batchSame = identical(b, s);
      const batchBad = batchSame ? [] : failures(matchDetections(facesToDets(b), facesToDets(s)));
      if (bad.length > 0 || batchBad.length > 0) failed++;
      // Upstream's padded batches are allowed to differ from its single runs (docs/benchmarks.md): reported, not judged.
      const upstreamBatchCell = (): string[] => {
        if (!upstreamBatch) return [];
        const u = matchDetections(facesToDets(upstreamBatch.get(image) ?? []), facesToDets(ref.get(image) ?? []));
        const f = failures(u);
        return [identical(upstreamBatch.get(image) ?? [], ref.get(image) ?? []) ? 'identical' : f.length ? f.join(', ') : 'within tolerance'];
      };
      rows.push([
        image,
        `${minSize}/${maxSize}`,
        `${r.ours} / ${r.ref}`,
        `${pct(r.matchedOurs)} / ${pct(r.matchedRef)}`,
        sci(r.maxScoreDiff),
        sci(r.maxRotDiff),
        sci(r.maxTransRel),
        r.maxBoxDiff.toFixed(2),
        `${r.oursAbove05} / ${r.refAbove05}`,
        batchSame ? 'identical' : batchBad.length ? `DIFFERS: ${batchBad.join(', ')}` : 'within tolerance',
        ...upstreamBatchCell(),
        bad.length ? `FAIL: ${bad.join(', ')}` : 'pass',
      ]);
    }
  }
  const header = [
    'image', 'min/max', 'dets ours / upstream', 'matched (>=0.1) ours / upstream', 'max |score|',
    'max |rot| rad', 'max trans rel', 'max box px', 'faces >= 0.5 ours / upstream', `ours batch ${o.batchSize} vs single`,
    ...(o.upstreamBatchSize > 1 ? [`upstream batch ${o.upstreamBatchSize} vs single (not judged)`] : []),
    'verdict',
  ];
  process.stdout.write(`${markdownTable(header, rows)}\n`);
  process.stdout.write(failed ? `\n${failed} case(s) failed\n` : `\nall ${rows.length} cases pass\n`);
  return failed ? 1 : 0;
}

if (require.main === module) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`compare_upstream: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
