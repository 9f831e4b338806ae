/**
 * Issue 5 from the command line: `img2pose detect` with the REAL weights loader and network
 * (the formula weights written as a converted folder, tiny 160/288 sizes). Broken weights give
 * one line on stderr and exit code 1 before any image is looked at; bad images get their own
 * error line among the others' results; nothing prints a stack trace. Most runs call `main`
 * in-process; two run the real `bin/img2pose.js` in a child process, to see exactly what a user
 * sees on stdout and stderr (tfjs' own console output included).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { buildSync } from 'esbuild';
import { CliRun, runCli } from './utils/cli';
import { Img2Pose } from '../src/detector';
import { Img2PoseModel } from '../src/model/model';
import { disposeWeights } from '../src/model/weights';
import {
  BadInputCase,
  OddInputCase,
  patternImage,
  pngBytes,
  writeBadFiles,
  writeBrokenWeights,
  writeOddFiles,
  writeWeightsFolder,
} from '../bench/reliability_cases';
import { formulaWeights } from './utils/formula';

const REPO = path.join(__dirname, '..');
const TINY = ['--min-size', '160', '--max-size', '288', '--backend', 'wasm'];

let tmp: string;
let weightsDir: string;
let good: string;
let badFiles: BadInputCase[];
let oddFiles: OddInputCase[];
let predict: jest.SpyInstance;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-cli-reliability-'));
  badFiles = await writeBadFiles(tmp);
  oddFiles = await writeOddFiles(tmp);
  good = path.join(tmp, 'good.png');
  fs.writeFileSync(good, await pngBytes(patternImage(96, 72, 3)));
  weightsDir = path.join(tmp, 'formula-weights');
  const weights = formulaWeights();
  await writeWeightsFolder(weights, weightsDir);
  disposeWeights(weights);
});

afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

beforeEach(() => {
  predict = jest.spyOn(Img2PoseModel.prototype, 'predict');
});

afterEach(() => {
  predict.mockRestore();
});

const lines = (s: string) => s.split('\n').filter((l) => l.length > 0);

/** One line, prefixed with the program name, and nothing that looks like a stack frame. */
function expectOneLine(stderr: string, pattern: RegExp): void {
  expect(lines(stderr)).toHaveLength(1);
  expect(stderr).toMatch(/^img2pose: /);
  expect(stderr).not.toMatch(/\n\s+at /);
  expect(stderr).toMatch(pattern);
}

describe('detect --weights <broken>: one line on stderr, exit code 1, no inference', () => {
  it('every broken weights source of the catalogue', async () => {
    const cases = writeBrokenWeights(path.join(tmp, 'broken'));
    for (const c of cases) {
      const before = tf.memory().numTensors;
      const r = await runCli(['detect', good, '--weights', c.path, ...TINY]);
      expect([c.label, r.code]).toEqual([c.label, 1]);
      expect(r.stdout).toBe('');
      expectOneLine(r.stderr, c.message);
      // The message names the source (or the file in it that is at fault).
      expect([c.label, r.stderr.includes(c.path)]).toEqual([c.label, true]);
      expect(tf.memory().numTensors).toBe(before);
    }
    expect(predict).not.toHaveBeenCalled();
  });

  it('the formula folder itself loads and detects (the broken ones differ only in what is broken)', async () => {
    const r = await runCli(['detect', good, '--weights', weightsDir, ...TINY, '--threshold', '0.2']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.image).toBe(good);
    expect(out.faces.length).toBeGreaterThan(0);
    expect(predict).toHaveBeenCalledTimes(1);
  });
});

describe('detect with bad images among good ones', () => {
  it('each bad file gets its own error line (naming it), the good ones their faces, exit code 1', async () => {
    // Left out: a folder given to detect is expanded, not read (next test); a missing file is
    // refused before the model loads (below).
    const bad = badFiles.filter((c) => !c.label.startsWith('folder') && c.label !== 'missing.jpg');
    const inputs = [good, ...bad.map((c) => c.file!), oddFiles[0].file!, good];
    const before = tf.memory().numTensors;
    const r = await runCli(['detect', ...inputs, '--weights', weightsDir, ...TINY, '--threshold', '0', '--batch-size', '4']);
    expect(tf.memory().numTensors).toBe(before);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('');
    const out = lines(r.stdout).map((l) => JSON.parse(l));
    expect(out.map((o) => o.image)).toEqual(inputs);
    bad.forEach((c, k) => {
      const o = out[k + 1];
      expect([c.label, o.faces]).toEqual([c.label, undefined]);
      // Located by its position on the command line and named.
      expect([c.label, o.error]).toEqual([c.label, expect.stringMatching(new RegExp(`^Input #${k + 1} \\(file ${escape(JSON.stringify(c.file))}\\): `))]);
      expect([c.label, o.error]).toEqual([c.label, expect.stringMatching(c.found)]);
    });
    const faces = [out[0], out[out.length - 2], out[out.length - 1]].map((o) => o.faces);
    for (const f of faces) expect(Array.isArray(f)).toBe(true);
    // The first and last inputs are the same file: the same faces, whatever the chunk around them.
    expect(faces[2]).toEqual(faces[0]);
    expect(faces[0].length).toBeGreaterThan(0);
    // Bad files never reach the network: one forward per chunk with a good image (4 chunks of 4).
    const chunks = Math.ceil(inputs.length / 4);
    expect(predict.mock.calls.map((c) => (c[0] as unknown[]).length)).toEqual(
      Array.from({ length: chunks }, (_, i) => inputs.slice(i * 4, i * 4 + 4).filter((f) => f === good || f === oddFiles[0].file).length).filter((n) => n > 0),
    );
  });

  it('folders expand to their image files: a bad one among them is reported, a folder without images is a usage error', async () => {
    const photos = path.join(tmp, 'photos');
    fs.mkdirSync(photos);
    fs.copyFileSync(good, path.join(photos, 'a.png'));
    fs.copyFileSync(badFiles.find((c) => c.label === 'truncated.jpg')!.file!, path.join(photos, 'b.jpg'));
    fs.mkdirSync(path.join(photos, 'c.png')); // a folder with an image name is skipped
    fs.writeFileSync(path.join(photos, 'notes.txt'), 'not listed');
    const r = await runCli(['detect', photos, '--weights', weightsDir, ...TINY]);
    expect(r.code).toBe(1);
    const out = lines(r.stdout).map((l) => JSON.parse(l));
    expect(out.map((o) => path.basename(o.image))).toEqual(['a.png', 'b.jpg']);
    expect(out[1].error).toMatch(/b\.jpg.*truncated or corrupt JPEG data/);

    const empty = path.join(tmp, 'no-images');
    fs.mkdirSync(empty);
    const u = await runCli(['detect', empty, '--weights', weightsDir, ...TINY]);
    expect(u.code).toBe(2);
    expectOneLine(u.stderr, /no \.jpg, \.jpeg or \.png images in .*no-images/);
  });

  it('--json: all results in the file, one summary line on stderr, exit code 1', async () => {
    const file = path.join(tmp, 'results.json');
    const truncated = badFiles.find((c) => c.label === 'truncated.jpg')!.file!;
    const empty = badFiles.find((c) => c.label === 'empty.jpg')!.file!;
    const r = await runCli(['detect', truncated, good, empty, '--weights', weightsDir, ...TINY, '--json', file]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(lines(r.stderr)).toEqual([`img2pose: wrote 3 results to ${file} (2 failed)`]);
    const out = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(out.map((o: { error?: string }) => o.error)).toEqual([
      `Input #0 (file ${JSON.stringify(truncated)}): expected a JPEG or PNG image, found truncated or corrupt JPEG data`,
      undefined,
      `Input #2 (file ${JSON.stringify(empty)}): expected a readable JPEG or PNG image file, found an empty file (0 bytes)`,
    ]);
  });

  it('only bad images: every one reported, no forward at all', async () => {
    const bad = badFiles.filter((c) => !c.label.startsWith('folder') && c.label !== 'missing.jpg').map((c) => c.file!);
    const r = await runCli(['detect', ...bad, '--weights', weightsDir, ...TINY]);
    expect(r.code).toBe(1);
    expect(lines(r.stdout).map((l) => 'error' in JSON.parse(l))).toEqual(bad.map(() => true));
    expect(predict).not.toHaveBeenCalled();
  });

  it('a missing file: one typed error on stderr before the model loads, exit code 1', async () => {
    const missing = badFiles.find((c) => c.label === 'missing.jpg')!.file!;
    const load = jest.spyOn(Img2Pose, 'load');
    const r = await runCli(['detect', good, missing, '--weights', weightsDir, ...TINY]);
    expect(load).not.toHaveBeenCalled();
    load.mockRestore();
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(lines(r.stderr)).toEqual([`img2pose: Input #1 (file ${JSON.stringify(missing)}): expected a readable JPEG or PNG image file, found no such file`]);
  });

  it('odd but valid images: 1x1, 4000x3, 3x4000', async () => {
    const files = oddFiles.filter((c) => c.file !== undefined);
    const r = await runCli(['detect', ...files.map((c) => c.file!), '--weights', weightsDir, ...TINY, '--threshold', '0']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = lines(r.stdout).map((l) => JSON.parse(l));
    out.forEach((o, i) => {
      expect(Array.isArray(o.faces)).toBe(true);
      for (const f of o.faces) {
        expect(f.box[2]).toBeLessThanOrEqual(files[i].width);
        expect(f.box[3]).toBeLessThanOrEqual(files[i].height);
      }
    });
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// ---------------------------------------------------------------------------------------------

describe('the real executable (bin/img2pose.js in a child process)', () => {
  let bin: string;

  beforeAll(() => {
    // bin/img2pose.js loads dist/src/cli.js; build that from the sources into a scratch tree so
    // the test needs no prior `npm run build`. Packages stay external (found via NODE_PATH).
    const root = path.join(tmp, 'install');
    buildSync({
      entryPoints: [path.join(REPO, 'src', 'cli.ts')],
      outfile: path.join(root, 'dist', 'src', 'cli.js'),
      bundle: true,
      platform: 'node',
      packages: 'external',
      logLevel: 'error',
    });
    fs.mkdirSync(path.join(root, 'bin'));
    bin = path.join(root, 'bin', 'img2pose.js');
    fs.copyFileSync(path.join(REPO, 'bin', 'img2pose.js'), bin);
  });

  function exec(args: string[]): CliRun {
    const r = spawnSync(process.execPath, [bin, ...args], {
      encoding: 'utf8',
      env: { ...process.env, NODE_PATH: path.join(REPO, 'node_modules') },
      timeout: 300_000,
    });
    return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  }

  it('broken weights: exactly one stderr line, nothing on stdout, exit code 1', () => {
    const cases = writeBrokenWeights(path.join(tmp, 'broken-exec'));
    for (const label of ['a truncated shard', 'model.json of another tfjs model', 'missing folder']) {
      const c = cases.find((x) => x.label === label)!;
      const r = exec(['detect', good, '--weights', c.path]);
      expect([label, r.code]).toEqual([label, 1]);
      expect(r.stdout).toBe('');
      expectOneLine(r.stderr, c.message);
    }
  });

  it('bad and good images with the default backend: stdout is pure JSON lines, stderr empty, exit code 1', () => {
    const bad = ['corrupt.jpg', 'text.jpg', 'folder.png'].map((l) => badFiles.find((c) => c.label === l)!.file!);
    const r = exec(['detect', good, ...bad, '--weights', weightsDir, '--min-size', '160', '--max-size', '288']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(1);
    const out = lines(r.stdout).map((l) => JSON.parse(l));
    // The folder is expanded (to nothing: it is empty), so three results.
    expect(out.map((o) => o.image)).toEqual([good, bad[0], bad[1]]);
    expect(out.map((o) => ('faces' in o ? 'faces' : o.error.replace(/^Input #\d \(file "[^"]*"\): expected .*, found /, '')))).toEqual([
      'faces',
      'truncated or corrupt JPEG data (a corrupt marker sequence)',
      'data that is not an image (starts with 74 68 65 73 65 20 61 72 ...)',
    ]);
  });
});
