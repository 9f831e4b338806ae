// Full-size conversion: the 170 MB formula checkpoints written by real torch.save (.ci/run makes
// them with tools/make_formula_checkpoint.py) against the formula rebuilt in JS.
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { convertCheckpoint, checkpointToWeights, ConversionReport, Img2PoseModelJson, DEFAULT_POSE_WARNING } from '../converter';
import { toTfjsLayout, HostTensor } from '../converter/layout';
import { loadWeights } from '../src/io/weights_io';
import { Img2PoseWeights } from '../src/model/weights';
import { portableWeights } from '../src/runtime/threaded_model';
import { formulaStateDict, gains } from './utils/formula';

const DIR = path.join(__dirname, '..', 'tmp', 'formula_ckpt');
const ZIP = path.join(DIR, 'formula.pth'); // zip format, keys prefixed 'module.'
const LEGACY = path.join(DIR, 'legacy.pth'); // legacy format, no prefix, with optimizer state
const MEAN = path.join(DIR, 'pose_mean.npy');
const STDDEV = path.join(DIR, 'pose_stddev.npy');
const present = [ZIP, LEGACY, MEAN, STDDEV].every((f) => fs.existsSync(f));
if (!present) {
  console.warn(
    `SKIPPED full-size converter tests: ${DIR} lacks formula.pth/legacy.pth. ` +
      'Run .ci/run, or (needs python3-torch) /usr/bin/python3 tools/make_formula_checkpoint.py tmp/formula_ckpt/formula.pth ' +
        "and the same with tmp/formula_ckpt/legacy.pth --legacy --prefix '' --with-optimizer.",
  );
}
const describeFull = present ? describe : describe.skip;

function bytesOf(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

describeFull('full-size formula checkpoint', () => {
  let expected: Map<string, HostTensor>;
  let zipOut: string;
  let legacyOut: string;
  let zipReport: ConversionReport;
  let legacyReport: ConversionReport;
  const legacyWarnings: string[] = [];
  let root: string;

  beforeAll(async () => {
    expected = new Map();
    for (const [name, t] of formulaStateDict(18)) expected.set(name, toTfjsLayout(t));
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-formula-'));
    zipOut = path.join(root, 'zip');
    legacyOut = path.join(root, 'legacy');
    zipReport = await convertCheckpoint({ checkpoint: ZIP, poseMean: MEAN, poseStddev: STDDEV, out: zipOut, warn: () => undefined });
    legacyReport = await convertCheckpoint({ checkpoint: LEGACY, out: legacyOut, warn: (m) => legacyWarnings.push(m) });
  });

  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

  it('reports what it converted', () => {
    expect(zipReport).toMatchObject({ format: 'zip', depth: 18, tensors: 140, values: 42447069, bytes: 42447069 * 4, warnings: [] });
    expect(zipReport.ignored.stateDict).toEqual(['roi_heads.box_predictor.dof_pred.1.num_batches_tracked']);
    expect(legacyReport).toMatchObject({ format: 'legacy', depth: 18, tensors: 140, poseStatistics: 'defaults' });
    expect(legacyReport.ignored.topLevel).toEqual(['optimizer']);
    expect(legacyWarnings).toEqual([DEFAULT_POSE_WARNING]);
  });

  it('writes every tensor bit for bit equal to the formula in tfjs layout, in upstream order, in <= 4 MB shards', () => {
    const json: Img2PoseModelJson = JSON.parse(fs.readFileSync(path.join(zipOut, 'model.json'), 'utf8'));
    expect(json.weightsManifest).toHaveLength(1);
    const [group] = json.weightsManifest;
    expect(group.weights.map((w) => w.name)).toEqual([...expected.keys()]);
    expect(group.paths).toEqual(Array.from({ length: 41 }, (_, i) => `group1-shard${i + 1}of41.bin`));
    const shards = group.paths.map((p) => fs.readFileSync(path.join(zipOut, p)));
    expect(shards.every((s) => s.length <= 4 * 1024 * 1024)).toBe(true);
    expect(shards.slice(0, -1).every((s) => s.length === 4 * 1024 * 1024)).toBe(true);
    const all = Buffer.concat(shards);
    let offset = 0;
    const wrong: string[] = [];
    for (const w of group.weights) {
      const want = expected.get(w.name) as HostTensor;
      expect({ name: w.name, shape: w.shape, dtype: w.dtype }).toEqual({ name: w.name, shape: want.shape, dtype: 'float32' });
      const got = all.subarray(offset, offset + want.data.byteLength);
      if (!got.equals(bytesOf(want.data))) wrong.push(w.name);
      offset += want.data.byteLength;
    }
    expect(wrong).toEqual([]);
    expect(offset).toBe(all.length);
  });

  it('zip (module.-prefixed) and legacy (no prefix, optimizer) give byte-identical shards', () => {
    const a = fs.readdirSync(zipOut).filter((f) => f.endsWith('.bin')).sort();
    expect(fs.readdirSync(legacyOut).filter((f) => f.endsWith('.bin')).sort()).toEqual(a);
    const differ = a.filter((f) => !fs.readFileSync(path.join(zipOut, f)).equals(fs.readFileSync(path.join(legacyOut, f))));
    expect(differ).toEqual([]);
  });

  it('records depth, layout, exact pose statistics, source and version in model.json', () => {
    const json: Img2PoseModelJson = JSON.parse(fs.readFileSync(path.join(zipOut, 'model.json'), 'utf8'));
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8'));
    expect(json.format).toBe('img2pose-tfjs-weights');
    expect(json.generatedBy).toBe(`img2pose-tfjs ${pkg.version}`);
    const m = json.img2pose;
    expect(m.depth).toBe(18);
    expect(m.poseMean).toEqual(gains().POSE_MEAN);
    expect(m.poseStddev).toEqual(gains().POSE_STDDEV);
    expect(m.poseStatistics).toEqual({ mean: 'pose_mean.npy', stddev: 'pose_stddev.npy' });
    expect(m.source).toEqual({
      file: 'formula.pth',
      format: 'zip',
      bytes: fs.statSync(ZIP).size,
      sha256: createHash('sha256').update(fs.readFileSync(ZIP)).digest('hex'),
    });
    expect(m.converterVersion).toBe(pkg.version);
    expect(m.layout.conv).toMatch(/\(kh, kw, in, out\)/);
    const legacy: Img2PoseModelJson = JSON.parse(fs.readFileSync(path.join(legacyOut, 'model.json'), 'utf8'));
    expect(legacy.img2pose.poseStatistics).toBe('defaults');
    expect(legacy.img2pose.poseMean).toEqual([0, 0, 0, 0, 0, 1]);
    expect(legacy.img2pose.poseStddev).toEqual([1, 1, 1, 1, 1, 1]);
  });

  function expectFormula(w: Img2PoseWeights): void {
    expect(w.depth).toBe(18);
    expect([...w.tensors.keys()]).toEqual([...expected.keys()]);
    const wrong: string[] = [];
    for (const [name, t] of w.tensors) {
      const want = expected.get(name) as HostTensor;
      if (t.dtype !== 'float32' || JSON.stringify(t.shape) !== JSON.stringify(want.shape) || !bytesOf(t.dataSync() as Float32Array).equals(bytesOf(want.data))) {
        wrong.push(name);
      }
    }
    expect(wrong).toEqual([]);
  }

  it('loadWeights(folder) round-trips every tensor and the pose statistics; no tensor leaks', async () => {
    const before = tf.memory().numTensors;
    const w = await loadWeights(zipOut);
    expectFormula(w);
    expect(Array.from(w.poseMean)).toEqual(gains().POSE_MEAN);
    expect(Array.from(w.poseStddev)).toEqual(gains().POSE_STDDEV);
    tf.dispose([...w.tensors.values()]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('sharedValues: a folder and a .pth are read straight into one SharedArrayBuffer, handed to workers as they are', async () => {
    const active = tf.getBackend();
    await tf.setBackend('cpu');
    try {
      for (const source of [zipOut, ZIP]) {
        const w = await loadWeights(source, { sharedValues: true, poseMean: MEAN, poseStddev: STDDEV });
        try {
          expectFormula(w);
          const views = [...w.tensors.values()].map((t) => t.dataSync() as Float32Array);
          const buffers = new Set(views.map((v) => v.buffer));
          expect(buffers.size).toBe(1);
          expect([...buffers][0]).toBeInstanceOf(SharedArrayBuffer);
          // The workers get these very arrays: no second copy of the weights in this thread.
          const portable = await portableWeights(w);
          expect(portable.tensors.every((t, i) => t.data === views[i])).toBe(true);
        } finally {
          tf.dispose([...w.tensors.values()]);
        }
      }
      // Without the option: plain arrays, which portableWeights copies into shared memory.
      const plain = await loadWeights(zipOut);
      try {
        const portable = await portableWeights(plain);
        expect(portable.tensors[0].data.buffer).toBeInstanceOf(SharedArrayBuffer);
        expect((plain.tensors.values().next().value as tf.Tensor).dataSync().buffer).not.toBeInstanceOf(SharedArrayBuffer);
      } finally {
        tf.dispose([...plain.tensors.values()]);
      }
    } finally {
      await tf.setBackend(active);
    }
  });

  it('checkpointToWeights / loadWeights(.pth) give the same tensors in memory', async () => {
    const before = tf.memory().numTensors;
    const w = await checkpointToWeights(ZIP, MEAN, STDDEV);
    expectFormula(w);
    expect(Array.from(w.poseStddev)).toEqual(gains().POSE_STDDEV);
    tf.dispose([...w.tensors.values()]);
    const warnings: string[] = [];
    const l = await loadWeights(LEGACY, { warn: (m) => warnings.push(m) });
    expectFormula(l);
    expect(Array.from(l.poseMean)).toEqual([0, 0, 0, 0, 0, 1]);
    expect(warnings).toEqual([DEFAULT_POSE_WARNING]);
    tf.dispose([...l.tensors.values()]);
    expect(tf.memory().numTensors).toBe(before);
  });
});
