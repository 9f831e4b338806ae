// loadWeights on converted folders: broken ones are refused with a WeightsError naming the path
// and the problem before any tensor exists. Folders here are synthetic: a real ResNet-18 manifest
// with sparse (all-zero) shards of the right sizes, so they cost no disk and little time.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { loadWeights } from '../src/io/weights_io';
import { WeightsError } from '../src/errors';
import { img2poseSpec, isModelTensor } from '../converter/spec';
import { tfjsShape } from '../converter/axis_order';
import { LAYOUT_DESCRIPTION, SHARD_BYTES, WEIGHTS_FORMAT, Img2PoseModelJson } from '../converter/weights_format';
import { FIXTURES } from './utils/formula';
import { rejectionOf } from './utils/rejection';

const made: string[] = [];
function tmpDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  made.push(dir);
  return dir;
}
afterAll(() => made.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

const POSE_MEAN = [0.1, -0.2, 0.3, 0.01, -0.02, 3.5];
const POSE_STDDEV = [0.3, 0.3, 0.3, 0.1, 0.1, 0.5];

function resnet18ModelJson(): Img2PoseModelJson {
  const weights = img2poseSpec(18)
    .filter((k) => isModelTensor(k.name))
    .map((k) => ({ name: k.name, shape: tfjsShape(k.shape), dtype: 'float32' as const }));
  const bytes = weights.reduce((a, w) => a + w.shape.reduce((x, y) => x * y, 1) * 4, 0);
  const n = Math.ceil(bytes / SHARD_BYTES);
  const shardBytes = Array.from({ length: n }, (_, i) => Math.min(SHARD_BYTES, bytes - i * SHARD_BYTES));
  return {
    format: WEIGHTS_FORMAT,
    generatedBy: 'test',
    convertedBy: 'test',
    img2pose: {
      formatVersion: 1,
      depth: 18,
      layout: LAYOUT_DESCRIPTION,
      poseMean: POSE_MEAN,
      poseStddev: POSE_STDDEV,
      poseStatistics: { mean: 'm.npy', stddev: 's.npy' },
      source: { file: 'x.pth', sha256: '0', format: 'zip', bytes: 0 },
      converterVersion: 'test',
      shardBytes,
    },
    weightsManifest: [{ paths: shardBytes.map((_, i) => `group1-shard${i + 1}of${n}.bin`), weights }],
  };
}

/** A converted-looking folder; `edit` may change model.json before shards are made from it. */
function syntheticFolder(edit: (j: Img2PoseModelJson) => void = () => undefined): { dir: string; json: Img2PoseModelJson } {
  const dir = tmpDir('img2pose-weights-');
  const json = resnet18ModelJson();
  const sizes = json.img2pose.shardBytes;
  json.weightsManifest[0].paths.forEach((p, i) => {
    const f = path.join(dir, p);
    fs.writeFileSync(f, '');
    fs.truncateSync(f, sizes[i]); // sparse zeros
  });
  edit(json);
  fs.writeFileSync(path.join(dir, 'model.json'), JSON.stringify(json));
  return { dir, json };
}

async function refusal(source: string): Promise<WeightsError> {
  const before = tf.memory().numTensors;
  const err = await rejectionOf(loadWeights(source), WeightsError);
  expect(tf.memory().numTensors).toBe(before);
  return err;
}

describe('loadWeights: a converted folder', () => {
  it('loads every tensor in upstream order with tfjs shapes and exact pose statistics; disposes cleanly', async () => {
    const { dir, json } = syntheticFolder();
    const before = tf.memory().numTensors;
    const w = await loadWeights(dir);
    expect(w.depth).toBe(18);
    expect([...w.tensors.keys()]).toEqual(json.weightsManifest[0].weights.map((e) => e.name));
    expect(w.tensors.get('backbone.body.conv1.weight')?.shape).toEqual([7, 7, 3, 64]);
    expect(w.tensors.get('roi_heads.box_head.fc6.weight')?.shape).toEqual([12544, 1024]);
    expect(w.tensors.has('roi_heads.box_predictor.dof_pred.1.num_batches_tracked')).toBe(false);
    expect(Array.from(w.poseMean)).toEqual(POSE_MEAN);
    expect(Array.from(w.poseStddev)).toEqual(POSE_STDDEV);
    expect(tf.memory().numTensors).toBe(before + 140);
    tf.dispose([...w.tensors.values()]);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('loadWeights: refusals name the path and the problem', () => {
  it('a missing folder', async () => {
    const missing = path.join(os.tmpdir(), 'img2pose-no-such-folder');
    const e = await refusal(missing);
    expect(e.path).toBe(missing);
    expect(e.message).toBe(`${missing}: no such weights folder or checkpoint file`);
  });

  it('a folder without model.json', async () => {
    const dir = tmpDir('img2pose-empty-');
    const e = await refusal(dir);
    expect(e.path).toBe(dir);
    expect(e.message).toMatch(/no model\.json in this folder/);
  });

  it('a foreign model.json (a tfjs layers model)', async () => {
    const dir = tmpDir('img2pose-foreign-');
    fs.writeFileSync(
      path.join(dir, 'model.json'),
      JSON.stringify({ format: 'layers-model', modelTopology: {}, weightsManifest: [{ paths: ['group1-shard1of1.bin'], weights: [] }] }),
    );
    const e = await refusal(dir);
    expect(e.path).toBe(path.join(dir, 'model.json'));
    expect(e.message).toMatch(/not an img2pose weights file \(a tfjs model, format 'layers-model'\)/);
  });

  it('model.json that is not JSON', async () => {
    const dir = tmpDir('img2pose-badjson-');
    fs.writeFileSync(path.join(dir, 'model.json'), '{"format": ');
    expect((await refusal(path.join(dir, 'model.json'))).message).toMatch(/model\.json: not valid JSON$/);
  });

  it('a missing shard', async () => {
    const { dir } = syntheticFolder();
    fs.rmSync(path.join(dir, 'group1-shard7of41.bin'));
    const e = await refusal(dir);
    expect(e.path).toBe(path.join(dir, 'group1-shard7of41.bin'));
    expect(e.message).toMatch(/group1-shard7of41\.bin: missing weight shard \(listed in model\.json\)$/);
  });

  it('a truncated shard, with expected and found bytes', async () => {
    const { dir } = syntheticFolder();
    fs.truncateSync(path.join(dir, 'group1-shard3of41.bin'), 1000);
    const e = await refusal(dir);
    expect(e.path).toBe(path.join(dir, 'group1-shard3of41.bin'));
    expect(e.message).toMatch(/truncated weight shard: expected 4194304 bytes, found 1000$/);
  });

  it('shards that do not add up to the manifest (no recorded sizes)', async () => {
    const { dir } = syntheticFolder((j) => {
      j.img2pose.shardBytes = [];
    });
    fs.truncateSync(path.join(dir, 'group1-shard41of41.bin'), 12);
    expect((await refusal(dir)).message).toMatch(/the shards of weight group 1 hold 167772172 bytes but its tensors need 169788276 \(truncated or mismatched shards\)$/);
  });

  it('a depth that does not match the tensors', async () => {
    const { dir } = syntheticFolder((j) => {
      j.img2pose.depth = 50;
    });
    const e = await refusal(dir);
    expect(e.message).toMatch(/the weights manifest \(ResNet-50\) does not match img2pose: \d+ missing: /);
    expect(e.message).toContain('backbone.body.layer1.0.conv1.weight expected [1, 1, 64, 64], found [3, 3, 64, 64]');
    expect(e.message).toMatch(/\(model\.json says ResNet-50 but its tensors are those of ResNet-18\)$/);
  });

  it('a wrongly shaped and an unknown tensor', async () => {
    const { dir } = syntheticFolder((j) => {
      const ws = j.weightsManifest[0].weights;
      const cls = ws.find((w) => w.name === 'rpn.head.cls_logits.weight');
      if (cls) cls.shape = [1, 1, 256, 6];
      ws.push({ name: 'extra.bias', shape: [0], dtype: 'float32' });
    });
    const e = await refusal(dir);
    expect(e.message).toContain('1 unexpected: extra.bias [0]');
    expect(e.message).toContain('rpn.head.cls_logits.weight expected [1, 1, 256, 3], found [1, 1, 256, 6]');
  });

  it('pose statistics that are not 6 numbers', async () => {
    const { dir } = syntheticFolder((j) => {
      j.img2pose.poseStddev = [1, 1, 1];
    });
    expect((await refusal(dir)).message).toMatch(/poseMean and img2pose\.poseStddev must be 6 finite numbers each/);
  });

  it('a broken .pth checkpoint', async () => {
    const file = path.join(FIXTURES, 'checkpoints', 'no_fpn_model_key.pth');
    const e = await refusal(file);
    expect(e.path).toBe(file);
    expect(e.message).toMatch(/no_fpn_model_key\.pth: no 'fpn_model' entry/);
    expect(e.cause).toBeDefined();
  });
});
