// Nothing the user had is lost: `convert --out D` replaces D only once the new conversion is
// complete, `detect --draw` never writes over an input or an earlier drawing, and `--json`
// keeps what was done when the run stops.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { buildSync } from 'esbuild';
import { runConvert } from '../converter/cli';
import { CliRun, runCli } from './utils/cli';
import { DetectionModel, Img2Pose, LoadOptions } from '../src/detector';
import { ModelConfig, RawDetections } from '../src/model/model';
import { decodeBitmap } from '../src/io/images';
import { uniqueOutputNames } from '../src/output_names';
import { disposeWeights } from '../src/model/weights';
import { patternImage, pngBytes, writeWeightsFolder } from '../bench/reliability_cases';
import { formulaWeights } from './utils/formula';
import { keySpecs } from './utils/formula';
import { SavedTensor, zipCheckpoint, zipRecordDataOffset } from '../bench/torch_save';

const made: string[] = [];
function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-safety-'));
  made.push(dir);
  return dir;
}
afterAll(() => made.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

/** Every file under `dir` (relative path -> contents), to compare a folder before and after. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fs.readdirSync(dir, { recursive: true }) as string[]) {
    const p = path.join(dir, name);
    if (fs.statSync(p).isFile()) out[name] = fs.readFileSync(p).toString('base64');
  }
  return out;
}

async function convert(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runConvert(argv, { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) } });
  return { code, out, err };
}

describe('convert --out D: D is replaced only by a complete conversion', () => {
  // A full-size ResNet-18 checkpoint in torch's zip layout, each tensor a constant (so deflate
  // shrinks its 170 MB to a few hundred KB); the bad copy has an invalid deflate block in the
  // last storage record, which the converter reaches only after writing almost every shard.
  const tensors: SavedTensor[] = keySpecs(18)
    .filter((k) => !k.name.endsWith('num_batches_tracked'))
    .map((k, i) => ({ name: k.name, shape: k.shape, data: new Float32Array(k.shape.reduce((a, b) => a * b, 1)).fill(((i % 13) + 1) / 16) }));
  let root: string;
  let good: string;
  let bad: string;

  beforeAll(() => {
    root = tmpDir();
    const zip = zipCheckpoint(tensors);
    good = path.join(root, 'good.pth');
    fs.writeFileSync(good, zip);
    const corrupt = zip.slice();
    corrupt[zipRecordDataOffset(corrupt, `archive/data/${tensors.length - 1}`)] |= 0x06; // BTYPE 11: reserved
    bad = path.join(root, 'bad.pth');
    fs.writeFileSync(bad, corrupt);
  });

  function oldFolder(): string {
    const d = path.join(root, `w${made.length}-${Math.random().toString(36).slice(2)}`);
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, 'model.json'), '{"old": true}\n');
    fs.writeFileSync(path.join(d, 'group1-shard1of2.bin'), 'old shard 1');
    fs.writeFileSync(path.join(d, 'group1-shard2of2.bin'), 'old shard 2');
    fs.writeFileSync(path.join(d, 'NOTES.txt'), 'the user file');
    return d;
  }

  const leftovers = (): string[] => fs.readdirSync(root).filter((n) => n.startsWith('.'));

  it('a checkpoint that fails late leaves D exactly as it was (and no temporary folder)', async () => {
    const d = oldFolder();
    const before = snapshot(d);
    const r = await convert([bad, '--out', d]);
    expect(r.code).toBe(1);
    const errors = r.err.split('\n').filter((l) => l && !l.includes(': warning: '));
    expect(errors).toEqual([expect.stringMatching(/^img2pose convert: .*bad\.pth: truncated or corrupt zip archive \(record archive\/data\/\d+: invalid deflate data \(invalid block type\)\)$/)]);
    expect(snapshot(d)).toEqual(before);
    expect(leftovers()).toEqual([]);
  });

  it('a good checkpoint replaces model.json and every old shard, keeps the other files', async () => {
    const d = oldFolder();
    const r = await convert([good, '--out', d]);
    expect(r.err).not.toMatch(/error/);
    expect(r.code).toBe(0);
    const names = fs.readdirSync(d).sort();
    expect(names).toContain('NOTES.txt');
    expect(names).not.toContain('group1-shard1of2.bin');
    expect(names.filter((n) => /^group1-shard\d+of41\.bin$/.test(n))).toHaveLength(41);
    expect(fs.readFileSync(path.join(d, 'NOTES.txt'), 'utf8')).toBe('the user file');
    const json = JSON.parse(fs.readFileSync(path.join(d, 'model.json'), 'utf8'));
    expect(json.format).toBe('img2pose-tfjs-weights');
    // the first tensor (conv1, a constant 1/16) opens the first shard
    const first = new Float32Array(fs.readFileSync(path.join(d, 'group1-shard1of41.bin')).buffer.slice(0, 16));
    expect(Array.from(first)).toEqual([1 / 16, 1 / 16, 1 / 16, 1 / 16]);
    expect(leftovers()).toEqual([]);
  });

  it('a new folder is created only on success', async () => {
    const d = path.join(root, 'fresh', 'weights');
    expect((await convert([bad, '--out', d])).code).toBe(1);
    expect(fs.existsSync(d)).toBe(false);
    expect((await convert([good, '--out', d])).code).toBe(0);
    expect(fs.existsSync(path.join(d, 'model.json'))).toBe(true);
    expect(fs.readdirSync(path.dirname(d))).toEqual(['weights']);
  });
});

// --- detect: --draw and --json ------------------------------------------------------------------

/** One detection per image, over its whole frame. */
class FakeModel implements DetectionModel {
  async predict(images: tf.Tensor3D[], _config: ModelConfig): Promise<RawDetections[]> {
    return images.map((t) => {
      const [h, w] = t.shape;
      return { boxes: Float32Array.from([1, 1, w - 2, h - 2]), scores: Float32Array.from([0.9]), dofs: Float64Array.from([0, 0.2, 0, 0.1, 0.1, 6]) };
    });
  }
  dispose(): void {}
}

function detect(args: string[]): Promise<CliRun> {
  return runCli(['detect', ...args, '--weights', 'w']);
}

describe('uniqueOutputNames', () => {
  it('gives colliding stems _2, _3 and avoids names already taken, case-insensitively', () => {
    expect(uniqueOutputNames(['x/a.png', 'y/a.png', 'z/a_2.png'], '.png')).toEqual(['a.png', 'a_2.png', 'a_2_2.png']);
    expect(uniqueOutputNames(['a.jpg', 'b.png', 'A.JPG'], '.png', ['a.png', 'B.PNG'])).toEqual(['a_2.png', 'b_2.png', 'A_3.png']);
    expect(uniqueOutputNames(['/p/.hidden', 'q/c.d.jpeg'], '.png')).toEqual(['.hidden.png', 'c.d.png']);
    expect(uniqueOutputNames([], '.png', ['a.png'])).toEqual([]);
  });
});

describe('detect --draw and --json never lose a file', () => {
  let root: string;
  let loads: number;
  beforeAll(async () => {
    root = tmpDir();
    for (const d of ['x', 'y', 'z']) fs.mkdirSync(path.join(root, d));
    fs.writeFileSync(path.join(root, 'x', 'a.png'), await pngBytes(patternImage(40, 30, 1)));
    fs.writeFileSync(path.join(root, 'x', 'a.jpg'), await pngBytes(patternImage(41, 30, 2)));
    fs.writeFileSync(path.join(root, 'y', 'a.png'), await pngBytes(patternImage(42, 30, 3)));
    fs.writeFileSync(path.join(root, 'z', 'a_2.png'), await pngBytes(patternImage(43, 30, 4)));
  });
  beforeEach(() => {
    loads = 0;
    jest.spyOn(Img2Pose, 'load').mockImplementation(async (options: LoadOptions = {}) => {
      loads++;
      return new Img2Pose(new FakeModel(), options, 'fake');
    });
  });
  afterEach(() => jest.restoreAllMocks());

  const inputs = (): string[] => [path.join(root, 'x'), path.join(root, 'y'), path.join(root, 'z')];

  it('colliding names across folders get distinct drawings; an earlier drawing is never overwritten', async () => {
    const out = path.join(root, `drawn-${Math.random()}`);
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, 'a.png'), 'an earlier drawing');
    const r = await detect([...inputs(), '--draw', out]);
    expect(r.code).toBe(0);
    // x/a.jpg, x/a.png, y/a.png, z/a_2.png: four drawings, none over the earlier file
    expect(fs.readdirSync(out).sort()).toEqual(['a.png', 'a_2.png', 'a_2_2.png', 'a_3.png', 'a_4.png']);
    expect(fs.readFileSync(path.join(out, 'a.png'), 'utf8')).toBe('an earlier drawing');
    const widths = await Promise.all(
      ['a_2.png', 'a_3.png', 'a_4.png', 'a_2_2.png'].map(async (n) => (await decodeBitmap(fs.readFileSync(path.join(out, n)))).width),
    );
    expect(widths).toEqual([41, 40, 42, 43]); // in input order: x/a.jpg, x/a.png, y/a.png, z/a_2.png
  });

  it('a --draw folder holding inputs is refused before the model loads; --draw-into-inputs draws beside them under new names', async () => {
    const x = path.join(root, 'x');
    const before = snapshot(x);
    const r = await detect([x, '--draw', x]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^img2pose: the --draw folder .*x holds input images \(.*a\.jpg, .*a\.png\); .*--draw-into-inputs/);
    expect(loads).toBe(0);
    expect(snapshot(x)).toEqual(before);
    // the same folder named another way is still recognised
    expect((await detect([path.join(root, 'x', 'a.png'), '--draw', path.join(root, 'y', '..', 'x')])).code).toBe(2);

    const copy = path.join(root, 'copy');
    fs.cpSync(x, copy, { recursive: true });
    const kept = snapshot(copy);
    const ok = await detect([copy, '--draw', copy, '--draw-into-inputs']);
    expect(ok.code).toBe(0);
    expect(fs.readdirSync(copy).sort()).toEqual(['a.jpg', 'a.png', 'a_2.png', 'a_3.png']);
    for (const [name, bytes] of Object.entries(kept)) expect(fs.readFileSync(path.join(copy, name)).toString('base64')).toBe(bytes);
  });

  it('--json to a missing folder, a folder or a special file is refused before the model loads', async () => {
    const cases: [string, RegExp][] = [
      [path.join(root, 'nope', 'faces.json'), /nope\/faces\.json: its folder .*nope does not exist/],
      [path.join(root, 'x'), /x: is a folder, expected a file path/],
      ['/dev/null', /\/dev\/null: is not a regular file/],
    ];
    for (const [file, message] of cases) {
      const r = await detect([path.join(root, 'y'), '--json', file]);
      expect({ file, code: r.code, stdout: r.stdout }).toEqual({ file, code: 2, stdout: '' });
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(message);
    }
    expect(loads).toBe(0);
  });

  it('a run that fails before any result leaves an existing --json file as it was', async () => {
    const file = path.join(root, 'keep.json');
    fs.writeFileSync(file, '["earlier results"]\n');
    jest.restoreAllMocks();
    const r = await detect([path.join(root, 'y'), '--json', file, '--weights', path.join(root, 'no-weights')]);
    expect(r.code).toBe(1);
    expect(fs.readFileSync(file, 'utf8')).toBe('["earlier results"]\n');
    expect(fs.readdirSync(root).filter((n) => n.startsWith('.keep.json'))).toEqual([]);
  });

  it('--json holds the results in input order, as JSON.stringify would write them', async () => {
    const file = path.join(root, 'faces.json');
    const r = await detect([...inputs(), '--json', file, '--batch-size', '3']);
    expect(r.code).toBe(0);
    const text = fs.readFileSync(file, 'utf8');
    const parsed = JSON.parse(text) as { image: string }[];
    expect(parsed.map((x) => path.relative(root, x.image))).toEqual(['x/a.jpg', 'x/a.png', 'y/a.png', 'z/a_2.png']);
    expect(text).toBe(`${JSON.stringify(parsed, null, 2)}\n`);
  });
});

describe('detect --json, stopped by SIGTERM (the real executable and network)', () => {
  let root: string;
  let bin: string;
  let weightsDir: string;
  const images: string[] = [];

  beforeAll(async () => {
    root = tmpDir();
    buildSync({
      entryPoints: [path.join(__dirname, '..', 'src', 'cli.ts')],
      outfile: path.join(root, 'install', 'dist', 'src', 'cli.js'),
      bundle: true,
      platform: 'node',
      packages: 'external',
      logLevel: 'error',
    });
    fs.mkdirSync(path.join(root, 'install', 'bin'));
    bin = path.join(root, 'install', 'bin', 'img2pose.js');
    fs.copyFileSync(path.join(__dirname, '..', 'bin', 'img2pose.js'), bin);
    weightsDir = path.join(root, 'weights');
    const weights = formulaWeights();
    await writeWeightsFolder(weights, weightsDir);
    disposeWeights(weights);
    fs.mkdirSync(path.join(root, 'photos'));
    for (let i = 0; i < 40; i++) {
      const file = path.join(root, 'photos', `p${String(i).padStart(2, '0')}.png`);
      fs.writeFileSync(file, await pngBytes(patternImage(96, 72, i)));
      images.push(file);
    }
  });

  function readResults(file: string): { image: string }[] | undefined {
    try {
      return JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch {
      return undefined; // not there yet (or caught mid-write)
    }
  }

  it('keeps every finished image in the file, in input order, and says so on stderr', async () => {
    const file = path.join(root, 'faces.json');
    const child = spawn(
      process.execPath,
      [bin, 'detect', path.join(root, 'photos'), '--weights', weightsDir, '--json', file, '--batch-size', '1', '--threads', '1',
        '--min-size', '160', '--max-size', '288', '--backend', 'wasm'],
      { env: { ...process.env, NODE_PATH: path.join(__dirname, '..', 'node_modules') }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on('exit', (code, signal) => resolve({ code, signal })),
    );
    const deadline = Date.now() + 240_000;
    while ((readResults(file)?.length ?? 0) < 3 && Date.now() < deadline && child.exitCode === null) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(child.exitCode).toBeNull(); // still running
    child.kill('SIGTERM');
    const end = await exited;
    expect(end.signal).toBe('SIGTERM');
    const results = readResults(file);
    expect(results).toBeDefined();
    const n = results?.length ?? 0;
    expect(n).toBeGreaterThanOrEqual(3);
    expect(n).toBeLessThan(images.length);
    expect(results?.map((r) => r.image)).toEqual(images.slice(0, n));
    expect(stderr).toContain(`img2pose: stopped by SIGTERM after ${n} of ${images.length} images; ${n} results are in ${file}`);
    expect(stdout).toBe('');
    expect(fs.readdirSync(root).filter((x) => x.endsWith('.tmp'))).toEqual([]);
  });
});
