/**
 * The command line (src/cli.ts) in-process: argument parsing, folder expansion, JSON output,
 * per-image errors, exit codes, drawings, the progress bar and the demo. The network is a fake
 * `DetectionModel` behind the real `Img2Pose` (decoding, filtering, keypoints and batching are
 * the library's), injected by mocking `Img2Pose.load`.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PassThrough } from 'stream';
import * as tf from '@tensorflow/tfjs';
import { Jimp } from 'jimp';
import { expandInputs } from '../src/cli';
import { CliRun, runCli } from './utils/cli';
import { DetectionModel, Img2Pose, LoadOptions } from '../src/detector';
import { WeightsError } from '../src/errors';
import { ModelConfig, RawDetections } from '../src/model/model';
import { formulaWeights } from '../src/io/formula_weights';
import { decodeBitmap } from '../src/io/images';
import { Img2PoseWeights } from '../src/model/weights';
import { goldenCase, imagePath } from './utils/golden';

/** Three detections per image, scaled to its size: scores 0.9, 0.3, 0.06 (network order 0.3 first). */
class FakeModel implements DetectionModel {
  readonly batches: { sizes: number[][]; config: ModelConfig }[] = [];
  disposed = false;

  async predict(images: tf.Tensor3D[], config: ModelConfig): Promise<RawDetections[]> {
    this.batches.push({ sizes: images.map((t) => t.shape.slice(0, 2)), config });
    return images.map((t) => {
      const [h, w] = t.shape;
      return {
        boxes: Float32Array.from([1, 1, w - 2, h - 2, 2, 3, w / 2, h / 2, 0, 0, 5, 5]),
        scores: Float32Array.from([0.3, 0.9, 0.06]),
        dofs: Float64Array.from([0, 0.2, 0, 0.1, 0.1, 6, 0.1, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 4]),
      };
    });
  }

  dispose(): void {
    this.disposed = true;
  }
}

const realLoad = Img2Pose.load.bind(Img2Pose);
let tmp: string;
let model: FakeModel;
let loads: LoadOptions[];

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-cli-'));
  const dir = path.join(tmp, 'photos');
  fs.mkdirSync(path.join(dir, 'nested'), { recursive: true });
  const img = (w: number, h: number) => new Jimp({ width: w, height: h, color: 0x406080ff });
  fs.writeFileSync(path.join(dir, 'b.png'), await img(64, 48).getBuffer('image/png'));
  fs.writeFileSync(path.join(dir, 'a.JPG'), await img(40, 30).getBuffer('image/jpeg'));
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'not an image');
  fs.writeFileSync(path.join(dir, 'nested', 'c.png'), await img(20, 20).getBuffer('image/png'));
  fs.writeFileSync(path.join(tmp, 'single.png'), await img(50, 40).getBuffer('image/png'));
  fs.mkdirSync(path.join(tmp, 'empty'));
});

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

beforeEach(() => {
  model = new FakeModel();
  loads = [];
  jest.spyOn(Img2Pose, 'load').mockImplementation(async (options: LoadOptions = {}) => {
    loads.push(options);
    return new Img2Pose(model, options, 'fake');
  });
});

afterEach(() => {
  jest.restoreAllMocks();
});

const p = (...parts: string[]) => path.join(tmp, ...parts);
const lines = (s: string) => s.split('\n').filter((l) => l.length > 0);

/** Error output must be single lines starting with the program name: no stack frames. */
function expectOneLineError(r: CliRun, pattern: RegExp): void {
  expect(lines(r.stderr)).toHaveLength(1);
  expect(r.stderr).toMatch(/^img2pose: /);
  expect(r.stderr).toMatch(pattern);
}

describe('img2pose --help', () => {
  it('lists the commands and the detect options', async () => {
    const top = await runCli(['--help']);
    expect(top.code).toBe(0);
    for (const c of ['detect', 'convert', 'demo']) expect(top.stdout).toContain(c);
    const detect = await runCli(['detect', '--help']);
    expect(detect.code).toBe(0);
    for (const o of ['--weights', '--batch-size', '--threshold', '--max-faces', '--min-size', '--max-size', '--backend', '--json', '--draw']) {
      expect(detect.stdout).toContain(o);
    }
    // --weights is optional: its default (the official weights) is shown.
    expect(detect.stdout).toMatch(/--weights <path>[\s\S]*default: "img2pose_v1"/);
    // What is required is said in so many words.
    expect(detect.stdout).toMatch(/Required: <inputs\.\.\.> \(one or more image files or folders\)\. Every option is optional/);
    expect(Img2Pose.load).not.toHaveBeenCalled();
  });

  it('prints the package version', async () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const r = await runCli([flag]);
      expect(r.code).toBe(0);
      expect(r.stdout.trim()).toBe(pkg.version);
    }
    expect(Img2Pose.load).not.toHaveBeenCalled();
  });

  it('hands `convert` its own arguments', async () => {
    const help = await runCli(['convert', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('--pose-mean');
    const missing = await runCli(['convert', p('nope.pth'), '--out', p('converted')]);
    expect(missing.code).toBe(1);
    expect(lines(missing.stderr)).toHaveLength(1);
    expect(missing.stderr).toContain('nope.pth');
  });
});

describe('the CLI at start', () => {
  it('loads neither jimp (decoding takes its codecs alone) nor the queue packages until a command needs them', () => {
    // The compiled build, as `img2pose` runs it (the suite's global setup keeps dist/ current).
    const script = `require(${JSON.stringify(path.join(__dirname, '..', 'dist', 'src', 'cli.js'))});
      const loaded = Object.keys(require.cache).map((f) => f.split(/node_modules[\\/]/).pop().split(/[\\/]/).slice(0, 2).join('/'));
      process.stdout.write(JSON.stringify([...new Set(loaded)]));`;
    const loaded = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' })) as string[];
    expect(loaded).toContain('@jimp/js-jpeg');
    expect(loaded.filter((m) => /^(jimp|bullmq|ioredis)\b/.test(m))).toEqual([]);
  });
});

describe('expandInputs', () => {
  it('expands folders to their images sorted by name, keeps files and missing paths as given', async () => {
    const got = await expandInputs([p('single.png'), p('photos'), p('missing.jpg')]);
    expect(got).toEqual([p('single.png'), p('photos', 'a.JPG'), p('photos', 'b.png'), p('missing.jpg')]);
  });
});

describe('img2pose detect', () => {
  it('refuses a missing or unreadable input before the model loads, a typed error on stderr', async () => {
    const missing = await runCli(['detect', p('single.png'), p('missing.jpg'), '--weights', 'w']);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toBe('');
    expect(lines(missing.stderr)).toEqual([`img2pose: Input #1 (file "${p('missing.jpg')}"): expected a readable JPEG or PNG image file, found no such file`]);
    expect(loads).toHaveLength(0);
    const unreadable = p('unreadable.png');
    fs.writeFileSync(unreadable, 'x');
    fs.chmodSync(unreadable, 0o000);
    let readable = true;
    try {
      fs.readFileSync(unreadable);
    } catch {
      readable = false;
    }
    const denied = await runCli(['detect', unreadable, '--weights', 'w']);
    fs.unlinkSync(unreadable);
    // root reads any file: then the check has nothing to refuse and the image fails to decode.
    if (!readable) {
      expect(denied.code).toBe(1);
      expect(denied.stderr).toContain('found no permission to read it');
      expect(loads).toHaveLength(0);
    }
  });

  it('prints one JSON line per image in input order, an error line for a bad one, exit code 1', async () => {
    const broken = p('broken.jpg');
    fs.writeFileSync(broken, 'not a jpeg');
    const r = await runCli(['detect', p('photos'), broken, p('single.png'), '--weights', 'w', '--min-size', '160', '--max-size', '288']);
    fs.unlinkSync(broken);
    expect(r.code).toBe(1);
    const out = lines(r.stdout).map((l) => JSON.parse(l));
    expect(out.map((o) => o.image)).toEqual([p('photos', 'a.JPG'), p('photos', 'b.png'), broken, p('single.png')]);
    expect(out[2].faces).toBeUndefined();
    expect(out[2].error).toMatch(/broken\.jpg/);
    // Default threshold 0.5: only the 0.9 detection, with the library's keypoints.
    const b = out[1].faces;
    expect(b).toHaveLength(1);
    expect(b[0].confidence).toBeCloseTo(0.9, 6);
    expect(b[0].box).toEqual([2, 3, 32, 24]);
    expect(b[0].pose).toEqual([0.1, 0, 0, 0, 0, 5]);
    expect(Object.keys(b[0].keypoints)).toEqual(['left_eye', 'right_eye', 'nose', 'mouth_left', 'mouth_right']);
    expect(out[0].faces[0].box).toEqual([2, 3, 20, 15]);
    expect(loads).toHaveLength(1);
    expect(loads[0]).toMatchObject({ weights: 'w', backend: 'auto', minSize: 160, maxSize: 288, scoreThreshold: 0.5, maxFaces: -1, batchSize: 8 });
    // One forward for the decodable images of the chunk, at the sizes asked for.
    expect(model.batches).toHaveLength(1);
    expect(model.batches[0].sizes).toEqual([[30, 40], [48, 64], [40, 50]]);
    expect(model.batches[0].config).toEqual({ minSize: 160, maxSize: 288 });
    expect(model.disposed).toBe(true);
  });

  it('keeps every detection at threshold 0, best first, and cuts to --max-faces', async () => {
    const all = await runCli(['detect', p('single.png'), '--weights', 'w', '--threshold', '0']);
    expect(all.code).toBe(0);
    const faces = JSON.parse(all.stdout).faces;
    expect(faces.map((f: { confidence: number }) => Math.round(f.confidence * 100))).toEqual([90, 30, 6]);
    const two = await runCli(['detect', p('single.png'), '--weights', 'w', '--threshold', '0', '--max-faces', '2']);
    expect(JSON.parse(two.stdout).faces).toHaveLength(2);
  });

  it('batches by --batch-size', async () => {
    const r = await runCli(['detect', p('photos'), p('single.png'), '--weights', 'w', '--batch-size', '2']);
    expect(r.code).toBe(0);
    expect(model.batches.map((b) => b.sizes.length)).toEqual([2, 1]);
    expect(lines(r.stdout)).toHaveLength(3);
  });

  it('writes the results as one JSON array with --json', async () => {
    const file = p('results.json');
    const broken = p('broken.png');
    fs.writeFileSync(broken, 'not a png');
    const r = await runCli(['detect', p('single.png'), broken, p('photos'), '--weights', 'w', '--json', file]);
    fs.unlinkSync(broken);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    const out = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(out.map((o: { image: string }) => o.image)).toEqual([p('single.png'), broken, p('photos', 'a.JPG'), p('photos', 'b.png')]);
    expect(out[0].faces).toHaveLength(1);
    expect(typeof out[1].error).toBe('string');
    expect(r.stderr).toMatch(/wrote 4 results .*1 failed/);
  });

  it('draws each image to --draw as a PNG of its size', async () => {
    const dir = p('drawn');
    const r = await runCli(['detect', p('photos'), '--weights', 'w', '--draw', dir]);
    expect(r.code).toBe(0);
    expect(fs.readdirSync(dir).sort()).toEqual(['a.png', 'b.png']);
    const b = await decodeBitmap(fs.readFileSync(path.join(dir, 'b.png')));
    expect([b.width, b.height]).toEqual([64, 48]);
    // The 0.9 face's box (2, 3)-(32, 24): its left edge is green over the blue-grey background.
    const px = (x: number, y: number) => Array.from(b.data.subarray((y * 64 + x) * 4, (y * 64 + x) * 4 + 3));
    expect(px(2, 20)).toEqual([0, 255, 0]);
    expect(px(50, 40)).toEqual([0x40, 0x60, 0x80]);
  });

  it('shows a progress bar on a terminal stderr for many images', async () => {
    const many = p('many');
    fs.mkdirSync(many);
    for (let i = 0; i < 9; i++) fs.copyFileSync(p('single.png'), path.join(many, `img${i}.png`));
    let drawn = '';
    const tty = Object.assign(new PassThrough(), { isTTY: true, columns: 100 });
    tty.on('data', (d: Buffer) => (drawn += d.toString()));
    const r = await runCli(['detect', many, '--weights', 'w', '--json', p('many.json')], {
      stderrStream: tty as unknown as NodeJS.WriteStream,
    });
    expect(r.code).toBe(0);
    expect(drawn).toContain('9/9 images');
    // Not on a pipe: nothing but the summary.
    const piped = await runCli(['detect', many, '--weights', 'w', '--json', p('many.json')]);
    expect(lines(piped.stderr)).toHaveLength(1);
  });

  it('rejects bad usage with exit code 2 and one line', async () => {
    const cases: [string[], RegExp][] = [
      [['detect', p('single.png'), '--weights', 'w', '--threshold', '1.5'], /threshold.*0\.\.1/],
      [['detect', p('single.png'), '--weights', 'w', '--batch-size', '0'], /batch-size.*positive integer/],
      [['detect', p('single.png'), '--weights', 'w', '--max-faces', '0'], /max-faces/],
      [['detect', p('single.png'), '--weights', 'w', '--backend', 'gpu'], /backend/],
      [['detect', p('single.png'), '--weights', 'w', '--min-size', '500', '--max-size', '400'], /min-size/],
      [['detect', p('empty'), '--weights', 'w'], /no \.jpg, \.jpeg or \.png images/],
      [['detect', '--weights', 'w'], /inputs/],
      [['frobnicate'], /unknown command/],
    ];
    for (const [args, pattern] of cases) {
      const r = await runCli(args);
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expectOneLineError(r, pattern);
    }
    expect(Img2Pose.load).not.toHaveBeenCalled();
  });

  it('detect without --weights asks for the official weights', async () => {
    const r = await runCli(['detect', p('single.png')]);
    expect(r.code).toBe(0);
    expect(loads.map((o) => o.weights)).toEqual(['img2pose_v1']);
  });

  it('reports a load failure in one line with exit code 1', async () => {
    jest.spyOn(Img2Pose, 'load').mockRejectedValue(new WeightsError('Cannot load weights from "w": no model.json'));
    const r = await runCli(['detect', p('single.png'), '--weights', 'w']);
    expect(r.code).toBe(1);
    expect(lines(r.stderr)).toEqual(['img2pose: Cannot load weights from "w": no model.json']);

    jest.spyOn(Img2Pose, 'load').mockRejectedValue(new TypeError('boom\nsecond line'));
    const unexpected = await runCli(['detect', p('single.png'), '--weights', 'w']);
    expect(unexpected.code).toBe(1);
    expect(lines(unexpected.stderr)).toEqual(['img2pose: boom second line']);
  });
});

describe('img2pose detect: load progress', () => {
  /** A load that takes a while and downloads the official weights, as the release cache would. */
  function slowReleaseLoad(): void {
    jest.spyOn(Img2Pose, 'load').mockImplementation(async (options: LoadOptions = {}) => {
      loads.push(options);
      const progress = options.release?.progress;
      for (const received of [0, 50e6, 85e6, 170e6]) {
        if (typeof progress === 'function') progress({ phase: 'download', url: 'https://drive', received, total: 170e6 });
        await new Promise((r) => setTimeout(r, 100));
      }
      options.release?.log?.('the weights are CC BY-NC 4.0');
      if (typeof progress === 'function') progress({ phase: 'convert' });
      await new Promise((r) => setTimeout(r, 200));
      return new Img2Pose(model, options, 'fake');
    });
  }
  const jsonLines = (stdout: string): unknown[] => lines(stdout).map((l) => JSON.parse(l) as unknown);

  it('on a terminal: one line redrawn with the phase and the seconds, then where the model runs; stdout stays JSON', async () => {
    slowReleaseLoad();
    const tty = Object.assign(new PassThrough(), { isTTY: true, columns: 100 });
    const r = await runCli(['detect', p('single.png')], { stderrStream: tty as unknown as NodeJS.WriteStream });
    expect(r.code).toBe(0);
    expect(jsonLines(r.stdout)).toHaveLength(1);
    expect(r.stderr).toContain('\r\x1b[Kimg2pose: loading the model (weights img2pose_v1, backend auto)... 0.0 s');
    const shown = r.stderr.split('\r\x1b[K').join('<redraw>');
    expect(shown).toMatch(/<redraw>img2pose: downloading the official weights: \d+ of 170 MB\.\.\. \d\.\d s/);
    expect(r.stderr).toContain('\r\x1b[Kimg2pose: converting the official weights... ');
    // A notice stays on its own line; the last line says where and how long.
    expect(r.stderr).toContain('\r\x1b[Kimg2pose: the weights are CC BY-NC 4.0\n');
    const loaded = /<redraw>img2pose: model loaded on fake \(1 thread\) in (\d+\.\d) s\n$/.exec(shown);
    expect(Number(loaded?.[1])).toBeGreaterThanOrEqual(0.6); // the load's own 0.6 s
  });

  it('--progress on a pipe: a line per phase, per tenth of the download and per batch; without it, none', async () => {
    slowReleaseLoad();
    const r = await runCli(['detect', p('single.png'), p('photos'), '--progress', '--batch-size', '2']);
    expect(r.code).toBe(0);
    expect(jsonLines(r.stdout)).toHaveLength(3);
    expect(lines(r.stderr).map((l) => l.replace(/in \d+\.\d s$/, 'in T s'))).toEqual([
      'img2pose: loading the model (weights img2pose_v1, backend auto)',
      'img2pose: downloading the official weights: 0 of 170 MB',
      'img2pose: downloading the official weights: 50 of 170 MB',
      'img2pose: downloading the official weights: 85 of 170 MB',
      'img2pose: downloading the official weights: 170 of 170 MB',
      'img2pose: the weights are CC BY-NC 4.0',
      'img2pose: converting the official weights',
      'img2pose: model loaded on fake (1 thread) in T s',
      'img2pose: 2/3 images',
      'img2pose: 3/3 images',
    ]);
    expect(r.stderr).not.toContain('\r');

    const quiet = await runCli(['detect', p('single.png'), '--weights', 'w']);
    expect(quiet.stderr).toBe('');
    expect(loads[loads.length - 1].release).toBeUndefined();
  });
});

describe('img2pose demo', () => {
  it('runs the bundled photo through the detector with the formula weights and writes demo.png + demo.json', async () => {
    const out = p('demo');
    const r = await runCli(['demo', '--out', out, '--min-size', '160', '--max-size', '288']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/UNTRAINED/);
    expect(r.stdout).toMatch(/meaningless/);
    // The detector got the formula weights (ResNet-18, their pose statistics) and the sizes asked for.
    const w = loads[0].weights as Img2PoseWeights;
    expect(typeof w).not.toBe('string');
    {
      expect(w.depth).toBe(18);
      expect(Array.from(w.poseMean)).toEqual([0, 0, 0, 0, 0, 3]);
      for (const t of w.tensors.values()) t.dispose();
    }
    expect(model.batches[0].sizes).toEqual([[718, 1280]]);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'demo.json'), 'utf8'));
    expect(json.faces).toHaveLength(1);
    expect(json.weights).toMatch(/untrained/);
    const png = await decodeBitmap(fs.readFileSync(path.join(out, 'demo.png')));
    expect([png.width, png.height]).toEqual([1280, 718]);
  });
});

describe('img2pose detect with the real network', () => {
  it('gives upstream\'s faces on the tiny teaser case (formula weights, min 160 / max 288)', async () => {
    jest.spyOn(Img2Pose, 'load').mockImplementation((o: LoadOptions = {}) => realLoad({ ...o, weights: formulaWeights() }));
    const r = await runCli(['detect', imagePath('teaser.png'), '--weights', 'formula', '--min-size', '160', '--max-size', '288']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const faces = JSON.parse(r.stdout).faces as { box: number[]; confidence: number; pose: number[] }[];
    const expected = goldenCase('tiny_teaser')['faces_t0.5']!;
    expect(expected.length).toBeGreaterThan(0);
    expect(faces).toHaveLength(expected.length);
    // Fixtures' end-to-end tolerances: boxes within 1 px, scores 1e-3, rotations 1e-3 rad.
    faces.forEach((f, i) => {
      const e = expected[i];
      f.box.forEach((v, k) => expect(Math.abs(v - e.box[k])).toBeLessThanOrEqual(1));
      expect(Math.abs(f.confidence - e.confidence)).toBeLessThanOrEqual(1e-3);
      for (let k = 0; k < 3; k++) expect(Math.abs(f.pose[k] - e.pose[k])).toBeLessThanOrEqual(1e-3);
    });
  });
});
