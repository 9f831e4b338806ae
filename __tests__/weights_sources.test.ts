// Every kind of `weights` Img2Pose.load accepts besides the release: the untrained test weights
// as a folder, in-memory weights made before any backend was chosen (in a fresh process),
// http(s):// and file:// URLs, URL objects, tf.io handlers; and the `img2pose weights` command.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { pathToFileURL } from 'url';
import * as tf from '@tensorflow/tfjs';
import { CliRun, runCli } from './utils/cli';
import { WeightsError } from '../src/errors';
import { FORMULA_NOTE, formulaWeights, writeFormulaWeights } from '../src/io/formula_weights';
import { copyToActiveBackend, onActiveBackend, weightsOnActiveBackend } from '../src/io/tensor_home';
import { Img2PoseWeights, disposeWeights } from '../src/model/weights';
import { loadWeights } from '../src/io/weights_io';
import { loadWeightsFromUrl } from '../src/io/weights_url';
import { openWeights } from '../src/io/weights_source';
import { DEFAULT_POSE_WARNING } from '../converter/convert';
import { TestServer, startServer } from './utils/http_server';
import { goldenCase, imagePath } from './utils/golden';
import { rejectionOf } from './utils/rejection';

let tmp: string;
let dir: string;
let reference: Img2PoseWeights;
let server: TestServer;
let modelUrl: string;
/** Shards the server sends short (to test truncation), by file name. */
const shortShards = new Set<string>();

function expectSameWeights(got: Img2PoseWeights, want: Img2PoseWeights): void {
  expect(got.depth).toBe(want.depth);
  expect(Array.from(got.poseMean)).toEqual(Array.from(want.poseMean));
  expect(Array.from(got.poseStddev)).toEqual(Array.from(want.poseStddev));
  expect([...got.tensors.keys()]).toEqual([...want.tensors.keys()]);
  const differ = [...want.tensors].filter(([name, t]) => {
    const g = got.tensors.get(name) as tf.Tensor;
    return g.shape.join() !== t.shape.join() || !Buffer.from(g.dataSync().buffer).equals(Buffer.from(t.dataSync().buffer));
  });
  expect(differ.map(([n]) => n)).toEqual([]);
}

const rejection = (p: Promise<unknown>): Promise<WeightsError> => rejectionOf(p, WeightsError);

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-sources-'));
  dir = path.join(tmp, 'formula');
  await writeFormulaWeights(dir);
  reference = await loadWeights(dir);
  server = await startServer((_req, res, url) => {
    const name = decodeURIComponent(url.pathname.replace(/^\/w\//, ''));
    if (name === 'not-ours/model.json') return void res.writeHead(200).end(JSON.stringify({ modelTopology: {}, format: 'layers-model' }));
    if (name === 'escape/model.json') {
      const json = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
      json.weightsManifest[0].paths[0] = '../../secret.bin';
      return void res.writeHead(200).end(JSON.stringify(json));
    }
    const file = path.join(dir, name);
    if (!url.pathname.startsWith('/w/') || name.includes('/') || !fs.existsSync(file)) return void res.writeHead(404).end();
    const bytes = fs.readFileSync(file);
    res.writeHead(200, { 'content-type': name.endsWith('.json') ? 'application/json' : 'application/octet-stream' });
    res.end(shortShards.has(path.basename(name)) ? bytes.subarray(0, 100) : bytes);
  });
  modelUrl = `${server.base}/w/model.json`;
});

afterAll(async () => {
  disposeWeights(reference);
  await server.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('the untrained test weights as a folder', () => {
  it('writes a normal converted folder, bit for bit the formula weights, clearly marked untrained', () => {
    const inMemory = formulaWeights();
    try {
      expectSameWeights(reference, inMemory);
    } finally {
      disposeWeights(inMemory);
    }
    expect(fs.readFileSync(path.join(dir, 'UNTRAINED.txt'), 'utf8')).toBe(`${FORMULA_NOTE}\n`);
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
    expect(json.note).toMatch(/^UNTRAINED/);
    expect(json.img2pose.source).toMatchObject({ file: 'formula (untrained test weights)', format: 'generated' });
    expect(json.weightsManifest[0].paths).toHaveLength(41);
  });
});

describe('reading local weights again (a replaced worker thread)', () => {
  it('a folder or its model.json read again give the same weights; URLs and in-memory weights are not read again', async () => {
    const sources = [dir, path.join(dir, 'model.json')];
    for (const source of sources) {
      const first = await openWeights(source, { sharedValues: true });
      try {
        expect(first.reopen).toBeDefined();
        const again = await (first.reopen as NonNullable<typeof first.reopen>)();
        try {
          expectSameWeights(again.weights, reference);
          expect(again.reopen).toBeDefined();
        } finally {
          again.release();
        }
      } finally {
        first.release();
      }
    }
    const inMemory = formulaWeights();
    try {
      const opened = await openWeights(inMemory);
      opened.release();
      expect(opened.reopen).toBeUndefined();
    } finally {
      disposeWeights(inMemory);
    }
    const fetched = await openWeights(modelUrl);
    fetched.release();
    expect(fetched.reopen).toBeUndefined();
  });

  it('refuses files that changed since the first read, naming them', async () => {
    const copy = path.join(tmp, 'changing');
    fs.cpSync(dir, copy, { recursive: true });
    const first = await openWeights(copy);
    const reopen = first.reopen as NonNullable<typeof first.reopen>;
    first.release();
    const shard = path.join(copy, JSON.parse(fs.readFileSync(path.join(copy, 'model.json'), 'utf8')).weightsManifest[0].paths[3]);
    // Same size, a new modification time: what a rewrite in place leaves.
    const later = new Date(fs.statSync(shard).mtimeMs + 5000);
    fs.utimesSync(shard, later, later);
    const e = await rejection(reopen());
    expect(e.message).toBe(`${JSON.stringify(copy)} changed since the detector read it: load the detector again`);
  });
});

describe('in-memory weights made before the backend was chosen', () => {
  // Each source is made in the child before any backend call: in-memory weights, a file:// URL, a
  // tf.io handler (tf.io.fromMemory over the folder's files, with its img2pose metadata).
  const sources: [string, (dir: string) => string][] = [
    ['await loadWeights(dir)', (d) => `await loadWeights(${JSON.stringify(d)})`],
    ['a file:// URL of model.json', (d) => JSON.stringify(pathToFileURL(path.join(d, 'model.json')).href)],
    [
      'a tf.io handler',
      (d) =>
        `(() => { const fs = require('fs'); const p = require('path'); const j = JSON.parse(fs.readFileSync(p.join(${JSON.stringify(d)}, 'model.json'), 'utf8'));` +
        ` const g = j.weightsManifest[0]; const b = Buffer.concat(g.paths.map((f) => fs.readFileSync(p.join(${JSON.stringify(d)}, f))));` +
        ' return tf.io.fromMemory({ weightSpecs: g.weights, weightData: b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength), userDefinedMetadata: { img2pose: j.img2pose } }); })()',
    ],
  ];
  it.each(sources)('in a fresh process, Img2Pose.load({ weights: %s }) with the default backend detects as upstream (image tensors made before it too)', async (_label, source) => {
    const dist = path.join(__dirname, '..', 'dist', 'src', 'index.js');
    const code =
      `const { Img2Pose, loadWeights } = require(${JSON.stringify(dist)});` +
      `const tf = require(${JSON.stringify(require.resolve('@tensorflow/tfjs'))});` +
      `(async () => { const w = ${source(dir)};` +
      // an image tensor made before the detector too (big enough to grow the wasm heap)
      ' const image = tf.zeros([2000, 2000, 3]);' +
      ' const d = await Img2Pose.load({ weights: w, minSize: 160, maxSize: 288 });' +
      ` const faces = await d.detectFaces(${JSON.stringify(imagePath('teaser.png'))});` +
      ' const blank = await d.detectFaces(image);' +
      ' process.stdout.write(JSON.stringify({ backend: d.backend, faces, blank })); await d.dispose(); })()' +
      '.catch((e) => { process.stderr.write(String(e && e.stack)); process.exitCode = 1; });';
    // Default backend choice; one thread (the network in this thread: where tensors made on
    // tfjs' initial backend used to break the wasm backend's kernels).
    const env = { ...process.env, IMG2POSE_THREADS: '1' };
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ['-e', code], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('close', (c) => resolve({ code: c, stdout, stderr }));
    });
    expect(r.stderr).not.toMatch(/detached|WeightsError|TypeError/);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { backend: string; faces: { box: number[]; confidence: number }[]; blank: unknown };
    expect(out.backend).toBe('wasm');
    expect(Array.isArray(out.blank)).toBe(true);
    const expected = goldenCase('tiny_teaser')['faces_t0.5']!;
    expect(out.faces).toHaveLength(expected.length);
    out.faces.forEach((f, i) => {
      f.box.forEach((v, k) => expect(Math.abs(v - expected[i].box[k])).toBeLessThanOrEqual(1));
      expect(Math.abs(f.confidence - expected[i].confidence)).toBeLessThanOrEqual(1e-3);
    });
  });

  it('tensors on another backend are copied onto the active one (the caller keeps theirs), others shared', async () => {
    await tf.setBackend('cpu');
    const elsewhere = tf.tensor([1, 2, 3, 4], [2, 2]);
    await tf.setBackend('wasm');
    const here = tf.tensor([5, 6], [2]);
    try {
      expect([onActiveBackend(elsewhere), onActiveBackend(here)]).toEqual([false, true]);
      const w: Img2PoseWeights = { depth: 18, tensors: new Map([['a', elsewhere], ['b', here]]), poseMean: new Float64Array(6), poseStddev: new Float64Array(6) };
      const { weights, made } = weightsOnActiveBackend(w);
      expect(made).toHaveLength(1);
      expect(weights.tensors.get('b')).toBe(here);
      const moved = weights.tensors.get('a') as tf.Tensor;
      expect(onActiveBackend(moved)).toBe(true);
      expect(Array.from(tf.clone(moved).dataSync())).toEqual([1, 2, 3, 4]);
      tf.dispose(made);
      expect(elsewhere.isDisposed).toBe(false);
      const copy = copyToActiveBackend(elsewhere);
      expect(copy.shape).toEqual([2, 2]);
      copy.dispose();
    } finally {
      tf.dispose([elsewhere, here]);
    }
  });
});

describe('URLs', () => {
  it('http(s):// model.json: the same tensors as the folder, shards fetched beside it', async () => {
    const before = server.requests.length;
    const w = await loadWeightsFromUrl(modelUrl);
    try {
      expectSameWeights(w, reference);
    } finally {
      disposeWeights(w);
    }
    expect(server.requests.length - before).toBe(42);
  });

  it('file:// URLs and URL objects name a folder, a model.json or a .pth', async () => {
    const w = await loadWeightsFromUrl(pathToFileURL(path.join(dir, 'model.json')).href);
    expectSameWeights(w, reference);
    disposeWeights(w);
    const opened = await openWeights(pathToFileURL(dir));
    expectSameWeights(opened.weights, reference);
    const one = opened.weights.tensors.get('rpn.head.conv.weight') as tf.Tensor;
    opened.release();
    expect(one.isDisposed).toBe(true);
  });

  it('refuses what is not a good URL folder, naming the URL and the problem', async () => {
    expect((await rejection(loadWeightsFromUrl(`${server.base}/w/missing/model.json`))).message).toBe(
      `${server.base}/w/missing/model.json: cannot fetch model.json: HTTP 404 Not Found`,
    );
    expect((await rejection(loadWeightsFromUrl(`${server.base}/w/not-ours/model.json`))).message).toMatch(
      /: not an img2pose weights file \(a tfjs model, format 'layers-model'\); make one with `img2pose convert/,
    );
    const before = server.requests.length;
    expect((await rejection(loadWeightsFromUrl(`${server.base}/w/escape/model.json`))).message).toBe(
      `${server.base}/w/escape/model.json: shard path "../../secret.bin" leaves the folder of model.json`,
    );
    expect(server.requests.slice(before).map((r) => r.path)).toEqual(['/w/escape/model.json']);
    shortShards.add('group1-shard2of41.bin');
    try {
      expect((await rejection(loadWeightsFromUrl(modelUrl))).message).toBe(
        `${server.base}/w/group1-shard2of41.bin: truncated weight shard: expected 4194304 bytes, found 100`,
      );
    } finally {
      shortShards.clear();
    }
    const closed = await startServer(() => undefined);
    await closed.close();
    expect((await rejection(loadWeightsFromUrl(`${closed.base}/model.json`))).message).toBe(`${closed.base}/model.json: cannot fetch model.json (ECONNREFUSED)`);
    expect((await rejection(loadWeightsFromUrl('file:///definitely/not/here'))).message).toBe('/definitely/not/here: no such weights folder or checkpoint file');
  });
});

describe('tf.io handlers', () => {
  function artifacts(meta?: tf.io.ModelArtifacts['userDefinedMetadata']): tf.io.ModelArtifacts {
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
    const group = json.weightsManifest[0];
    const weightData = Buffer.concat(group.paths.map((p: string) => fs.readFileSync(path.join(dir, p))));
    return {
      weightSpecs: group.weights,
      weightData: weightData.buffer.slice(weightData.byteOffset, weightData.byteOffset + weightData.byteLength),
      ...(meta ? { userDefinedMetadata: meta } : {}),
    };
  }

  it('with img2pose metadata: the same weights', async () => {
    const handler = tf.io.fromMemory(artifacts({ img2pose: { depth: 18, poseMean: Array.from(reference.poseMean), poseStddev: Array.from(reference.poseStddev) } }));
    const opened = await openWeights(handler);
    expectSameWeights(opened.weights, reference);
    opened.release();
  });

  it('without: depth from the names, statistics from the options, or the defaults with a warning', async () => {
    const warnings: string[] = [];
    const opened = await openWeights(tf.io.fromMemory(artifacts()), { warn: (m) => warnings.push(m) });
    expect(Array.from(opened.weights.poseMean)).toEqual([0, 0, 0, 0, 0, 1]);
    expect(Array.from(opened.weights.poseStddev)).toEqual([1, 1, 1, 1, 1, 1]);
    expect(warnings).toEqual([DEFAULT_POSE_WARNING]);
    expectSameWeights({ ...opened.weights, poseMean: reference.poseMean, poseStddev: reference.poseStddev }, reference);
    opened.release();
    // weights that are not img2pose's: refused by their names
    const handler = tf.io.fromMemory({ weightSpecs: [], weightData: new ArrayBuffer(0) });
    const e = await rejection(openWeights(handler, { poseMean: [1, 2, 3, 4, 5, 6], poseStddev: [1, 1, 1, 1, 1, 1] }));
    expect(e.message).toMatch(/^tf\.io handler: no backbone\.body\.layer\* convolutions/);
  });

  it('a handler without weights is refused', async () => {
    expect((await rejection(openWeights({ load: async () => ({ modelTopology: {} }) }))).message).toBe('tf.io handler: its artifacts hold no weightSpecs/weightData');
  });
});

describe('img2pose weights ...', () => {
  async function run(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
    const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
    Object.assign(process.env, env);
    try {
      return await runCli(args);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  }

  it('formula --out writes the test weights folder (the same files as writeFormulaWeights)', async () => {
    const out = path.join(tmp, 'cli-formula');
    const r = await run(['weights', 'formula', '--out', out]);
    expect(r).toEqual({ code: 0, stdout: `${out}\n`, stderr: `img2pose: ${FORMULA_NOTE}\n` });
    expect(fs.readdirSync(out).sort()).toEqual(fs.readdirSync(dir).sort());
    for (const name of fs.readdirSync(dir)) expect(fs.readFileSync(path.join(out, name)).equals(fs.readFileSync(path.join(dir, name)))).toBe(true);
  });

  it('path, verify and clear on an empty cache', async () => {
    const cache = path.join(tmp, 'cli-cache');
    expect(await run(['weights', 'path', '--cache-dir', cache])).toEqual({
      code: 0,
      stdout: `${path.join(cache, 'img2pose_v1')}\n`,
      stderr: 'img2pose: not downloaded yet (`img2pose weights download`, or any first load, does it)\n',
    });
    expect(await run(['weights', 'path'], { IMG2POSE_CACHE: cache })).toMatchObject({ stdout: `${path.join(cache, 'img2pose_v1')}\n` });
    expect(await run(['weights', 'verify', '--cache-dir', cache])).toMatchObject({ code: 1, stderr: expect.stringMatching(/^img2pose: no cached weights in /) });
    expect(await run(['weights', 'clear', '--cache-dir', cache])).toEqual({ code: 0, stdout: 'nothing to remove\n', stderr: '' });
    const bad = path.join(tmp, 'not-a-zip.zip');
    fs.writeFileSync(bad, 'hello');
    const installed = await run(['weights', 'install', bad, '--cache-dir', cache]);
    expect(installed.code).toBe(1);
    expect(installed.stderr).toMatch(/^img2pose: .*not-a-zip\.zip: not the release zip: 5 bytes: too short to be a zip archive; found a 5-byte file beginning "hello"\. To install/);
  });

  it('detect without --weights goes for the official weights: offline, it fails at once with the URL and the manual steps', async () => {
    const closed = await startServer(() => undefined);
    await closed.close();
    const url = `${closed.base}/uc?export=download&id=x`;
    const started = Date.now();
    const r = await run(['detect', imagePath('teaser.png'), '--threads', '1', '--backend', 'wasm'], { IMG2POSE_CACHE: path.join(tmp, 'offline-cache'), IMG2POSE_WEIGHTS_URL: url });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`img2pose: Cannot download the img2pose weights from ${url}: cannot connect (ECONNREFUSED). To install the weights by hand`);
    expect(r.stderr.split('\n').filter((l) => l)).toHaveLength(1);
  });
});
