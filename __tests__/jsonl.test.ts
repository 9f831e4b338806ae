/**
 * Resumable local runs (src/io/jsonl.ts): sharding, reading a results file back (a crash's cut line
 * included), the appending writer. The command line's `detect --jsonl --resume --shard` is tested
 * with a real process killed mid-run at the end.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CliRun, runCli } from './utils/cli';
import { OptionError } from '../src/errors';
import { JsonlWriter, inShard, notDone, parseShard, readDone, shardOf, stampOf } from '../src/io/jsonl';
import { disposeWeights } from '../src/model/weights';
import { patternImage, pngBytes, writeWeightsFolder } from '../bench/reliability_cases';
import { formulaWeights } from './utils/formula';

const BIN = path.join(__dirname, '..', 'bin', 'img2pose.js');

let tmp: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-jsonl-'));
});

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('--shard i/n', () => {
  it('parses i/n with 0 <= i < n, refuses the rest', () => {
    expect(parseShard('0/4')).toEqual({ index: 0, count: 4 });
    expect(parseShard(' 3 / 4 ')).toEqual({ index: 3, count: 4 });
    expect(parseShard('0/1')).toEqual({ index: 0, count: 1 });
    for (const bad of ['4/4', '1/0', '-1/4', '1', 'a/b', '1/4/2', '']) {
      expect(() => parseShard(bad)).toThrow(OptionError);
    }
  });

  it('every image in exactly one shard, shares near equal, independent of order and company', () => {
    const images = Array.from({ length: 4000 }, (_, i) => `photos/set${i % 7}/img_${i}.jpg`);
    const shards = [0, 1, 2, 3].map((index) => inShard(images, { index, count: 4 }));
    expect(shards.flat().sort()).toEqual([...images].sort());
    for (const s of shards) expect(Math.abs(s.length - 1000)).toBeLessThan(120);
    // The same image lands in the same shard whatever else is listed, in any order.
    const reversed = [0, 1, 2, 3].map((index) => inShard([...images].reverse(), { index, count: 4 }));
    reversed.forEach((s, k) => expect([...s].sort()).toEqual([...shards[k]].sort()));
    expect(inShard(images.slice(0, 1), { index: shardOf(images[0], 4), count: 4 })).toEqual(images.slice(0, 1));
    // The hash is of the path as given: the first 32 bits of SHA-1 (`printf a.jpg | sha1sum`: 56ceeb90...).
    expect(shardOf('a.jpg', 1000)).toBe(0x56ceeb90 % 1000);
    expect(inShard(images, undefined)).toEqual(images);
  });
});

describe('reading a results file back', () => {
  it('keeps results with their stamps, drops a line cut short, lets a later error supersede', async () => {
    const file = path.join(tmp, 'r1.jsonl');
    const lines = [
      { image: 'a.png', size: 10, mtimeMs: 1, faces: [] },
      { image: 'b.png', size: 20, mtimeMs: 2, faces: [] },
      { image: 'c.png', error: 'Input file "c.png": expected ..., found ...' },
      { image: 'b.png', error: 'now broken' },
    ].map((l) => JSON.stringify(l));
    const whole = `${lines.join('\n')}\n`;
    fs.writeFileSync(file, `${whole}{"image":"d.png","si`);
    const { done, validBytes } = await readDone(file);
    expect([...done]).toEqual([['a.png', { size: 10, mtimeMs: 1 }]]);
    expect(validBytes).toBe(Buffer.byteLength(whole));
  });

  it('a missing file is an empty start; a file that is not ours is refused, naming the line', async () => {
    expect(await readDone(path.join(tmp, 'none.jsonl'))).toEqual({ done: new Map(), validBytes: 0 });
    const file = path.join(tmp, 'other.jsonl');
    fs.writeFileSync(file, '{"image":"a.png","faces":[]}\nhello\n');
    await expect(readDone(file)).rejects.toThrow(/other\.jsonl line 2: not JSON/);
    fs.writeFileSync(file, '{"name":"a.png"}\n');
    await expect(readDone(file)).rejects.toThrow(/line 1: no "image"/);
  });

  it('an image is done only while its file has the recorded size and mtime', async () => {
    const img = path.join(tmp, 'x.png');
    fs.writeFileSync(img, 'abc');
    const stamp = (await stampOf(img))!;
    const other = path.join(tmp, 'y.png');
    const done = new Map([
      [img, stamp],
      [other, { size: 1, mtimeMs: 1 }],
    ]);
    expect(await notDone([img, other, 'missing.png'], done)).toEqual([other, 'missing.png']);
    fs.writeFileSync(img, 'abcd');
    expect(await notDone([img], done)).toEqual([img]);
  });
});

describe('the appending writer', () => {
  it('each line at once; resuming cuts a partial last line before appending', async () => {
    const file = path.join(tmp, 'w.jsonl');
    const w = await JsonlWriter.open(file, undefined, 0);
    await w.append({ image: 'a', faces: [] });
    // Written through at once (a killed process keeps it), before close.
    expect(fs.readFileSync(file, 'utf8')).toBe('{"image":"a","faces":[]}\n');
    await w.close();
    fs.appendFileSync(file, '{"image":"b","fa');
    const { validBytes } = await readDone(file);
    const again = await JsonlWriter.open(file, validBytes);
    await again.append({ image: 'c', faces: [] });
    await again.close();
    expect(fs.readFileSync(file, 'utf8')).toBe('{"image":"a","faces":[]}\n{"image":"c","faces":[]}\n');
    // Without resuming, the file starts anew.
    await (await JsonlWriter.open(file)).close();
    expect(fs.readFileSync(file, 'utf8')).toBe('');
  });
});

describe('detect --jsonl --resume --shard (real network, tiny images)', () => {
  const SETTINGS = ['--backend', 'wasm', '--threads', '1', '--threshold', '0', '--max-faces', '3', '--min-size', '32', '--max-size', '32'];
  let dir: string;
  let weightsDir: string;
  let inputs: string[];
  /** image -> its line of a plain run (stdout), the reference. */
  let reference: Map<string, Record<string, unknown>>;

  function run(args: string[]): Promise<CliRun> {
    return runCli(['detect', dir, '--weights', weightsDir, ...SETTINGS, ...args]);
  }

  function lines(file: string): Record<string, unknown>[] {
    return fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  /**
   * The file's lines are the reference's, one per image (size and mtime aside; an error's input
   * number counts the images of its run, which a shard or a resume narrows).
   */
  function expectReference(got: Record<string, unknown>[], expected: readonly string[]): void {
    expect(got.map((l) => l.image).sort()).toEqual([...expected].sort());
    const unnumbered = (l: Record<string, unknown> | undefined) =>
      l && typeof l.error === 'string' ? { ...l, error: l.error.replace(/^Input #\d+ /, 'Input ') } : l;
    for (const line of got) {
      const { size, mtimeMs, ...result } = line;
      expect(unnumbered(result)).toEqual(unnumbered(reference.get(line.image as string)));
      if ('faces' in line) expect([size, mtimeMs]).toEqual([fs.statSync(line.image as string).size, fs.statSync(line.image as string).mtimeMs]);
    }
  }

  beforeAll(async () => {
    dir = path.join(tmp, 'photos');
    fs.mkdirSync(dir);
    for (let i = 0; i < 12; i++) {
      fs.writeFileSync(path.join(dir, `p${String(i).padStart(2, '0')}.png`), await pngBytes(patternImage(32 + i * 5, 40 + ((i * 17) % 50), i)));
    }
    fs.writeFileSync(path.join(dir, 'zz_bad.png'), 'not a png');
    weightsDir = path.join(tmp, 'weights');
    const weights = formulaWeights();
    await writeWeightsFolder(weights, weightsDir);
    disposeWeights(weights);
    const r = await run([]);
    expect(r.code).toBe(1);
    const all = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    reference = new Map(all.map((l) => [l.image as string, l]));
    inputs = [...reference.keys()];
    expect(inputs).toHaveLength(13);
  }, 300_000);

  it('a run killed with SIGKILL, resumed: every image once, equal to the plain run; a cut line is dropped', async () => {
    const file = path.join(tmp, 'crash.jsonl');
    const child = spawn(process.execPath, [BIN, 'detect', dir, '--weights', weightsDir, ...SETTINGS, '--batch-size', '1', '--jsonl', file], {
      stdio: 'ignore',
      env: { ...process.env, IMG2POSE_THREADS: '1' },
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const deadline = Date.now() + 240_000;
    while (!(fs.existsSync(file) && lines(file).length >= 3)) {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error('no 3 lines within 240 s');
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    child.kill('SIGKILL');
    expect(await exited).toBeNull();
    const before = lines(file);
    expect(before.length).toBeLessThan(13);
    // As if the machine had died in the middle of a line.
    fs.appendFileSync(file, '{"image":"/cut/short","fa');

    const r = await run(['--jsonl', file, '--resume']);
    expect(r.code).toBe(1); // the bad file
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`skipping ${before.filter((l) => 'faces' in l).length} images already in ${file}`);
    expectReference(lines(file), inputs);
    // The first lines are untouched.
    expect(lines(file).slice(0, before.length)).toEqual(before);

    // Resumed again: nothing left but the bad file, which is tried again (and again fails).
    const again = await run(['--jsonl', file, '--resume']);
    expect(again.stderr).toContain(`skipping 12 images already in ${file}`);
    const last = lines(file);
    expect(last).toHaveLength(14);
    expect(last[13].image).toBe(path.join(dir, 'zz_bad.png'));
  }, 300_000);

  it('a changed file is detected again; an existing file is never replaced without --resume', async () => {
    const file = path.join(tmp, 'changed.jsonl');
    expect((await run(['--jsonl', file])).code).toBe(1);
    const changed = path.join(dir, 'p03.png');
    const later = new Date(fs.statSync(changed).mtimeMs + 5000);
    fs.utimesSync(changed, later, later);
    const r = await run(['--jsonl', file, '--resume']);
    expect(r.stderr).toContain(`skipping 11 images already in ${file}`);
    const l = lines(file);
    expect(l.slice(13).map((x) => x.image)).toEqual([changed, path.join(dir, 'zz_bad.png')]);
    // The filesystem keeps the time to the nanosecond: the float ms can differ from the Date's in the last digit.
    expect(Math.abs(Number(l[13].mtimeMs) - later.getTime())).toBeLessThan(0.01);

    const text = fs.readFileSync(file, 'utf8');
    const refused = await run(['--jsonl', file]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/--jsonl: expected a new file, or --resume to continue/);
    expect(fs.readFileSync(file, 'utf8')).toBe(text);
    expect((await run(['--resume'])).stderr).toMatch(/--resume: expected a --jsonl <file> to resume/);
  }, 300_000);

  it('--shard i/n: the shards are disjoint and together the whole run', async () => {
    const got = [];
    for (const i of [0, 1, 2]) {
      const file = path.join(tmp, `shard${i}.jsonl`);
      await run(['--jsonl', file, '--shard', `${i}/3`]);
      const l = lines(file);
      expect(l.map((x) => x.image)).toEqual(inputs.filter((image) => shardOf(image, 3) === i));
      got.push(...l);
    }
    expectReference(got, inputs);
    expect((await run(['--shard', '3/3'])).code).toBe(2);
  }, 300_000);
});
