// The checkpoint reader and converter against real torch.save files (fixtures/checkpoints,
// written by torch 1.13) and the architecture key lists (fixtures/weights/keys_resnet*.json).
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CheckpointError, readCheckpoint, valuesAsNumbers, img2poseSpec, detectDepth } from '../converter';
import { runConvert } from '../converter/cli';
import { entryValues, prepareCheckpoint, resolvePoseStatistics } from '../converter/convert';
import { LoadedCheckpoint, TorchStorage, TorchTensor, loadCheckpoint } from '../converter/checkpoint';
import { tfjsAxisOrder } from '../converter/axis_order';
import { toTfjsLayout } from '../converter/layout';
import { TensorValues, firstNonFinite, floatValuesToFloat32, gatherStrided } from '../converter/tensor_data';
import { ZipArchive, recordDataOffset } from '../converter/zip';
import { unpickle, PyDict, PyObject, PySet, PyTuple } from '../converter/pickle';
import { FIXTURES, keySpecs } from './utils/formula';
import { rejectionOf } from './utils/rejection';
import { ResNetDepth } from '../src/model/weights';

const CKPT = path.join(FIXTURES, 'checkpoints');
const ckpt = (name: string): string => path.join(CKPT, name);

interface ExpectedTensor {
  dtype: string;
  shape: number[];
  sha256_le_bytes: string;
  first_values: number[];
}
const expected: { fpn_model_tensors: Record<string, ExpectedTensor>; other_top_level_keys: string[] } = JSON.parse(
  fs.readFileSync(ckpt('tiny_expected.json'), 'utf8'),
);

function sha256(a: ArrayBufferView): string {
  return createHash('sha256').update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)).digest('hex');
}

const made: string[] = [];
function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-conv-'));
  made.push(dir);
  return dir;
}
afterAll(() => made.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

describe('readCheckpoint: tiny torch.save files', () => {
  it.each(['tiny_zip.pth', 'tiny_legacy.pth', 'tiny_noprefix.pth'])('%s: every tensor matches tiny_expected.json', async (name) => {
    const tensors = await readCheckpoint(ckpt(name));
    expect([...tensors.keys()].sort()).toEqual(Object.keys(expected.fpn_model_tensors).sort());
    for (const [key, e] of Object.entries(expected.fpn_model_tensors)) {
      const t = tensors.get(key);
      expect({ key, dtype: t?.dtype, shape: t?.shape }).toEqual({ key, dtype: e.dtype, shape: e.shape });
      if (!t) continue;
      expect({ key, sha: sha256(t.data) }).toEqual({ key, sha: e.sha256_le_bytes });
      expect(valuesAsNumbers(t.data, t.dtype).slice(0, e.first_values.length)).toEqual(e.first_values);
    }
  });

  it('legacy and zip give identical tensors (views, strides, offsets, dtypes)', async () => {
    const zip = await readCheckpoint(ckpt('tiny_zip.pth'));
    const legacy = await readCheckpoint(ckpt('tiny_legacy.pth'));
    expect([...legacy.keys()]).toEqual([...zip.keys()]);
    for (const [k, t] of zip) {
      const l = legacy.get(k);
      expect(l?.dtype).toBe(t.dtype);
      expect(l?.shape).toEqual(t.shape);
      expect(l && sha256(l.data)).toBe(sha256(t.data));
    }
  });

  it('keeps int64 values beyond 2^32 exact', async () => {
    const t = (await readCheckpoint(ckpt('tiny_legacy.pth'))).get('roi_heads.box_predictor.dof_pred.1.num_batches_tracked');
    expect(t?.data).toBeInstanceOf(BigInt64Array);
    expect(t?.data[0]).toBe(123456789012n);
  });

  it('widens float16 and narrows float64 to float32 exactly as torch would', async () => {
    const m = await readCheckpoint(ckpt('tiny_zip.pth'));
    const half = m.get('half');
    const dbl = m.get('double');
    if (!half || !dbl) throw new Error('fixture lacks half/double');
    expect(Array.from(floatValuesToFloat32(half.data, 'float16').slice(0, 4))).toEqual(expected.fpn_model_tensors.half.first_values);
    const f = floatValuesToFloat32(dbl.data, 'float64');
    expect(Array.from(f.slice(0, 4))).toEqual(expected.fpn_model_tensors.double.first_values.map(Math.fround));
  });
});

/** readCheckpoint's result, with the storages read from the file as they are needed (`fromFile`). */
async function readFromFile(file: string, keepFirst = false): Promise<Map<string, { dtype: string; shape: number[]; data: TensorValues }>> {
  const c = await loadCheckpoint(file, { hash: false, fromFile: true });
  try {
    const out = new Map<string, { dtype: string; shape: number[]; data: TensorValues }>();
    let first: { storage: TorchStorage; values: number[] } | undefined;
    for (const [name, t] of c.stateDict) {
      if (keepFirst && first === undefined) {
        // Held, not released, while the next storages are read: they must not land in its bytes.
        first = { storage: t.storage, values: valuesAsNumbers(t.storage.data(), t.dtype) };
        out.set(name, { dtype: t.dtype, shape: t.shape.slice(), data: t.contiguous() });
        continue;
      }
      out.set(name, { dtype: t.dtype, shape: t.shape.slice(), data: t.contiguous() });
      t.storage.release();
    }
    if (first) expect(valuesAsNumbers(first.storage.data(), first.storage.dtype)).toEqual(first.values);
    return out;
  } finally {
    c.close();
  }
}

describe('loadCheckpoint from the file: storages read one by one as converted', () => {
  it.each([false, true])('tiny_zip.pth: every tensor as readCheckpoint gives it (first storage held: %s)', async (keepFirst) => {
    const inMemory = await readCheckpoint(ckpt('tiny_zip.pth'));
    const fromFile = await readFromFile(ckpt('tiny_zip.pth'), keepFirst);
    expect([...fromFile.keys()]).toEqual([...inMemory.keys()]);
    for (const [key, t] of inMemory) {
      const f = fromFile.get(key);
      expect({ key, dtype: f?.dtype, shape: f?.shape, sha: f && sha256(f.data) }).toEqual({ key, dtype: t.dtype, shape: t.shape, sha: sha256(t.data) });
    }
  });

  it('refuses what readCheckpoint refuses, in the same words: a corrupt storage record, a cut file, not a checkpoint', async () => {
    const dir = tmpDir();
    const full = fs.readFileSync(ckpt('tiny_zip.pth'));
    const archive = ZipArchive.open(full);
    const record = [...archive.records.values()].find((r) => /\/data\/\d+$/.test(r.name) && r.size > 0);
    if (!record) throw new Error('fixture lacks a storage record');
    const corrupt = Buffer.from(full);
    const at = recordDataOffset(record, full.subarray(record.localHeaderOffset, record.localHeaderOffset + 30));
    corrupt[at] ^= 0xff;
    const files = {
      'crc.pth': corrupt,
      'cut.pth': full.subarray(0, full.length - 30),
      'text.pth': Buffer.from('hello, not a checkpoint'),
    };
    for (const [name, bytes] of Object.entries(files)) {
      const file = path.join(dir, name);
      fs.writeFileSync(file, bytes);
      const expected = await rejectionOf(readCheckpoint(file), CheckpointError);
      const got = await rejectionOf(readFromFile(file), CheckpointError);
      expect({ name, message: got.message }).toEqual({ name, message: expected.message });
    }
    const crc = await rejectionOf(readFromFile(path.join(dir, 'crc.pth')), CheckpointError);
    expect(crc.problem).toMatch(/is corrupt: CRC-32/);
  });
});

describe('readCheckpoint: broken files are refused with the file and the problem', () => {
  const cases: [string, RegExp][] = [
    ['no_fpn_model_key.pth', /no 'fpn_model' entry \(top-level keys: 'model'\)/],
    ['truncated.pth', /truncated or corrupt zip archive/],
    ['not_a_checkpoint.pth', /not a PyTorch checkpoint/],
  ];
  it.each(cases)('%s', async (name, problem) => {
    const e = await rejectionOf(readCheckpoint(ckpt(name)), CheckpointError);
    expect(e.file).toBe(ckpt(name));
    expect(e.message).toContain(name);
    expect(e.problem).toMatch(problem);
  });

  it('a legacy file cut inside its storages names the truncation', async () => {
    const dir = tmpDir();
    const full = fs.readFileSync(ckpt('tiny_legacy.pth'));
    const cut = path.join(dir, 'cut_legacy.pth');
    fs.writeFileSync(cut, full.subarray(0, full.length - 100));
    await expect(readCheckpoint(cut)).rejects.toThrow(/cut_legacy\.pth: truncated: storage \S+ needs \d+ bytes/);
    const cutPickle = path.join(dir, 'cut_pickle.pth');
    fs.writeFileSync(cutPickle, full.subarray(0, 600));
    await expect(readCheckpoint(cutPickle)).rejects.toThrow(/cut_pickle\.pth: corrupt pickle data: pickle data ends unexpectedly/);
  });

  it('a missing file and an empty file', async () => {
    await expect(readCheckpoint(ckpt('nope.pth'))).rejects.toThrow(/nope\.pth: no such file/);
    const empty = path.join(tmpDir(), 'empty.pth');
    fs.writeFileSync(empty, '');
    await expect(readCheckpoint(empty)).rejects.toThrow(/empty\.pth: empty file/);
  });
});

describe('storage types the model never uses', () => {
  // torch.save({'fpn_model': {'module.a': torch.arange(3.)}, 'optimizer': {'z': torch.zeros(1, dtype=torch.complex64)}},
  //            f, _use_new_zipfile_serialization=False)
  const OPTIMIZER_COMPLEX =
    '80028a0a6cfc9c46f9206aa850192e80024de9032e80027d710028581000000070726f746f636f6c5f76657273696f6e71014de903580d00' +
    '00006c6974746c655f656e6469616e710288580a000000747970655f73697a657371037d710428580500000073686f727471054b02580300' +
    '0000696e7471064b0458040000006c6f6e6771074b0475752e80027d710028580900000066706e5f6d6f64656c71017d710258080000006d' +
    '6f64756c652e61710363746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71042828580700000073746f7261' +
    '6765710563746f7263680a466c6f617453746f726167650a710658090000003535333235383732307107580300000063707571084b034e74' +
    '7109514b004b0385710a4b0185710b8963636f6c6c656374696f6e730a4f726465726564446963740a710c2952710d74710e52710f735809' +
    '0000006f7074696d697a657271107d711158010000007a711268042828680563746f7263680a436f6d706c6578466c6f617453746f726167' +
    '650a71135809000000353533323537323136711468084b014e747115514b004b018571164b0185711789680c2952711874711952711a7375' +
    '2e80025d7100285809000000353533323537323136710158090000003535333235383732307102652e010000000000000000000000000000' +
    '000300000000000000000000000000803f00000040';
  // torch.save({'fpn_model': {'c': torch.zeros(1, dtype=torch.complex64)}}, f, _use_new_zipfile_serialization=False)
  const FPN_COMPLEX =
    '80028a0a6cfc9c46f9206aa850192e80024de9032e80027d710028581000000070726f746f636f6c5f76657273696f6e71014de903580d00' +
    '00006c6974746c655f656e6469616e710288580a000000747970655f73697a657371037d710428580500000073686f727471054b02580300' +
    '0000696e7471064b0458040000006c6f6e6771074b0475752e80027d7100580900000066706e5f6d6f64656c71017d710258010000006371' +
    '0363746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71042828580700000073746f72616765710563746f72' +
    '63680a436f6d706c6578466c6f617453746f726167650a710658090000003535333235373231367107580300000063707571084b014e7471' +
    '09514b004b0185710a4b0185710b8963636f6c6c656374696f6e730a4f726465726564446963740a710c2952710d74710e52710f73732e80' +
    '025d710058090000003535333235373231367101612e01000000000000000000000000000000';

  it('an optimizer state holding complex tensors does not stop reading the weights', async () => {
    const file = path.join(tmpDir(), 'complex_optimizer.pth');
    fs.writeFileSync(file, Buffer.from(OPTIMIZER_COMPLEX, 'hex'));
    const m = await readCheckpoint(file);
    expect([...m.keys()]).toEqual(['a']);
    expect(Array.from(m.get('a')?.data as Float32Array)).toEqual([0, 1, 2]);
  });

  it('a model tensor of such a type is refused by name', async () => {
    const file = path.join(tmpDir(), 'complex_model.pth');
    fs.writeFileSync(file, Buffer.from(FPN_COMPLEX, 'hex'));
    await expect(readCheckpoint(file)).rejects.toThrow(/complex_model\.pth: 'fpn_model' entry 'c' uses an unsupported storage type torch\.ComplexFloatStorage/);
  });
});

describe('unpickler', () => {
  it('reads the optimizer state around the weights: nested dicts, lists, tuples, None, bools, floats', () => {
    // pickle.dumps({'a': [1, (2.5, None), True], 'b': {'lr': 0.001}, 'big': 2**70, 'neg': -3}, protocol=2)
    const bytes = Buffer.from(
      '80027d71002858010000006171015d7102284b014740040000000000004e867103886558010000006271047d710558020000006c72' +
        '7106473f50624dd2f1a9fc73580300000062696771078a0900000000000000004058030000006e656771084afdffffff752e',
      'hex',
    );
    const { value, end } = unpickle(bytes);
    expect(end).toBe(bytes.length);
    if (!(value instanceof PyDict)) throw new Error('not a dict');
    const a = value.get('a') as unknown[];
    expect(a[0]).toBe(1);
    expect(a[1]).toBeInstanceOf(PyTuple);
    expect((a[1] as PyTuple).items).toEqual([2.5, null]);
    expect(a[2]).toBe(true);
    expect((value.get('b') as PyDict).get('lr')).toBe(0.001);
    expect(value.get('big')).toBe(2n ** 70n);
    expect(value.get('neg')).toBe(-3);
  });

  it('reads protocol 5 (frames, memoize, short strings, sets, bytes)', () => {
    // pickle.dumps({'a': [1, (2.5, None), True], 'b': {'lr': 0.001}, 's': {1, 2}, 'by': b'xy', 'big': 2**70, 'neg': -3}, protocol=5)
    const bytes = Buffer.from(
      '80059563000000000000007d94288c0161945d94284b014740040000000000004e869488658c0162947d948c026c7294473f50624d' +
        'd2f1a9fc738c0173948f94284b014b02908c0262799443027879948c03626967948a090000000000000000408c036e6567944afdffffff752e',
      'hex',
    );
    const value = unpickle(bytes).value as PyDict;
    expect(((value.get('a') as unknown[])[1] as PyTuple).items).toEqual([2.5, null]);
    expect((value.get('s') as PySet).items).toEqual([1, 2]);
    expect(Array.from(value.get('by') as Uint8Array)).toEqual([0x78, 0x79]);
    expect(value.get('big')).toBe(2n ** 70n);
    expect(value.get('neg')).toBe(-3);
  });

  it('turns unknown classes into placeholders instead of failing', () => {
    // pickle.dumps(collections.Counter(x=1), protocol=2) uses GLOBAL collections.Counter + REDUCE
    const bytes = Buffer.from('800263636f6c6c656374696f6e730a436f756e7465720a71007d710158010000007871024b01738571035271042e', 'hex');
    const { value } = unpickle(bytes);
    expect(value).toBeInstanceOf(PyObject);
    expect((value as PyObject).className).toBe('collections.Counter');
  });
});

describe('img2pose architecture spec', () => {
  it.each([18, 50, 101] as ResNetDepth[])('ResNet-%i: generated keys, shapes, dtypes and order equal the real state dict', (depth) => {
    expect(img2poseSpec(depth)).toEqual(keySpecs(depth));
  });

  it.each([18, 50, 101] as ResNetDepth[])('detects ResNet-%i from its keys', (depth) => {
    expect(detectDepth(keySpecs(depth).map((k) => k.name))).toEqual({ depth });
  });

  it('names an unknown backbone', () => {
    const r34 = keySpecs(18)
      .map((k) => k.name)
      .concat(['backbone.body.layer3.5.conv1.weight', 'backbone.body.layer2.3.conv1.weight', 'backbone.body.layer1.2.conv1.weight', 'backbone.body.layer4.2.conv1.weight']);
    const r = detectDepth(r34);
    expect('problem' in r && r.problem).toMatch(/basic blocks \[3, 4, 6, 3\]/);
  });
});

describe('tfjs layout while copying', () => {
  function rand(n: number): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = Math.fround(Math.sin(i * 12.9898) * 43758.5453) % 1;
    return a;
  }

  it.each([[[7, 5, 3, 2]], [[12, 9]], [[11]], [[]]])('gathering with tfjsAxisOrder equals toTfjsLayout for shape %j', (shape) => {
    const numel = shape.reduce((a, b) => a * b, 1);
    const data = rand(numel);
    const ref = toTfjsLayout({ shape, data });
    const perm = tfjsAxisOrder(shape.length);
    const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
    const out = new Float32Array(numel);
    // in uneven pieces, as when a tensor spans shard boundaries
    let done = 0;
    for (const piece of [1, 6, 13, numel]) {
      const n = Math.min(piece, numel - done);
      gatherStrided(data, 0, perm.map((a) => shape[a]), perm.map((a) => strides[a]), out, done, done, n);
      done += n;
    }
    expect(perm.map((a) => shape[a])).toEqual(ref.shape);
    expect(Buffer.from(out.buffer).equals(Buffer.from(ref.data.buffer, ref.data.byteOffset, ref.data.byteLength))).toBe(true);
  });

  it.each([[[40, 6, 3, 3]], [[33, 20, 3, 3]], [[37, 21]], [[50, 35]], [[17, 2, 5]]])('a whole tensor in one call (copied by square tiles of its last two axes) equals toTfjsLayout for shape %j', (shape) => {
    const numel = shape.reduce((a, b) => a * b, 1);
    const data = rand(numel + 5);
    const ref = toTfjsLayout({ shape, data: data.subarray(5) });
    const perm = tfjsAxisOrder(shape.length);
    const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
    const out = new Float32Array(numel + 2);
    gatherStrided(data, 5, perm.map((a) => shape[a]), perm.map((a) => strides[a]), out, 2, 0, numel);
    expect(Buffer.from(out.buffer, 8).equals(Buffer.from(ref.data.buffer, ref.data.byteOffset, ref.data.byteLength))).toBe(true);
    expect(Array.from(out.subarray(0, 2))).toEqual([0, 0]);
  });

  it('honours a non-contiguous source with an offset', () => {
    // storage holds a (4, 6) matrix after 3 padding values; view = its transpose (6, 4)
    const storage = Float32Array.from({ length: 27 }, (_, i) => i - 3);
    const out = new Float32Array(24);
    gatherStrided(storage, 3, [6, 4], [1, 6], out, 0, 0, 24);
    const want = Float32Array.from({ length: 24 }, (_, i) => (i % 4) * 6 + Math.floor(i / 4));
    expect(Array.from(out)).toEqual(Array.from(want));
  });
});

describe('NaN and infinite weights', () => {
  it('finds the first one, wherever it lies in or between the blocks checked at once', () => {
    const n = 3 * 4096 + 5;
    // Finite values of every kind, negative zero and subnormals included, pass.
    const values = Float32Array.from({ length: n }, (_, i) => [0, -0, 1e-45, -3.4e38, 3.4e38, i / 7][i % 6]);
    expect(firstNonFinite(values)).toBe(-1);
    for (const at of [0, 1, 4095, 4096, 8191, n - 2, n - 1]) {
      for (const bad of [NaN, Infinity, -Infinity]) {
        const v = values.slice();
        v[at] = bad;
        // A later one never hides the first.
        if (at + 3 < n) v[at + 3] = NaN;
        expect(firstNonFinite(v)).toBe(at);
        expect(firstNonFinite(v, at + 1, at + 1)).toBe(-1);
        // A range that ends before it does not see it.
        if (at > 0) expect(firstNonFinite(v, 0, at)).toBe(-1);
        if (at + 3 < n) expect(firstNonFinite(v, at + 1)).toBe(at + 3);
      }
    }
    const v = values.slice();
    v[5000] = NaN;
    expect(firstNonFinite(v, 4097, 6000)).toBe(5000);
    expect(firstNonFinite(v, 5001)).toBe(-1);
  });

  it('refuses a tensor holding one, naming the tensor, the value and the element', () => {
    const storage = new TorchStorage('0', 'float32', 6);
    const source = Float32Array.from([1, 2, 3, 4, Infinity, 6]);
    const entry = { name: 'backbone.fpn.layer_blocks.0.0.bias', shape: [6], storage, offset: 0, strides: [1], numel: 6 };
    expect(() => entryValues(entry, source, 'model.pth')).toThrow(CheckpointError);
    expect(() => entryValues(entry, source, 'model.pth')).toThrow(/tensor 'backbone\.fpn\.layer_blocks\.0\.0\.bias' holds Infinity at element 4 \(NaN or infinite weights/);
    source[4] = 5;
    expect(Array.from(entryValues(entry, source, 'model.pth'))).toEqual([1, 2, 3, 4, 5, 6]);
  });
});

describe('pose statistics (.npy)', () => {
  it('reads float64 (6,) and float32 (1, 6) files', async () => {
    const a = await resolvePoseStatistics(ckpt('pose_mean.npy'), ckpt('pose_stddev.npy'));
    expect(Array.from(a.mean)).toEqual([0, 0, 0, 0, 0, 3]);
    expect(Array.from(a.stddev)).toEqual([0.3, 0.3, 0.3, 0.1, 0.1, 0.5]);
    expect(a.source).toEqual({ mean: 'pose_mean.npy', stddev: 'pose_stddev.npy' });
    const b = await resolvePoseStatistics(ckpt('pose_mean_f32_2d.npy'), ckpt('pose_stddev.npy'));
    expect(Array.from(b.mean)).toEqual([0, 0, 0, 0, 0, 3]);
  });

  it("falls back to upstream's defaults only when neither is given", async () => {
    const d = await resolvePoseStatistics(undefined, undefined);
    expect(Array.from(d.mean)).toEqual([0, 0, 0, 0, 0, 1]);
    expect(Array.from(d.stddev)).toEqual([1, 1, 1, 1, 1, 1]);
    expect(d.source).toBe('defaults');
    await expect(resolvePoseStatistics(ckpt('pose_mean.npy'), undefined)).rejects.toThrow(/give both or neither/);
  });

  it('refuses a file that does not hold 6 values, or is not .npy', async () => {
    const dir = tmpDir();
    const bad = path.join(dir, 'five.npy');
    const src = fs.readFileSync(ckpt('pose_mean.npy'));
    // same header with shape (5,) and one value fewer
    fs.writeFileSync(bad, Buffer.from(src.toString('latin1').replace('(6,)', '(5,)'), 'latin1').subarray(0, src.length - 8));
    await expect(resolvePoseStatistics(bad, ckpt('pose_stddev.npy'))).rejects.toThrow(/five\.npy: pose mean holds 5 values \(shape \(5\)\), expected 6/);
    await expect(resolvePoseStatistics(ckpt('pose_mean.npy'), ckpt('tiny_zip.pth'))).rejects.toThrow(/tiny_zip\.pth: pose stddev: not a \.npy file/);
  });
});

/** A LoadedCheckpoint in memory with the given keys/shapes (storages without data: validation only). */
function fakeCheckpoint(specs: { name: string; shape: number[] }[]): LoadedCheckpoint {
  const stateDict = new Map<string, TorchTensor>();
  for (const s of specs) {
    const numel = s.shape.reduce((a, b) => a * b, 1);
    const strides = s.shape.map((_, d) => s.shape.slice(d + 1).reduce((a, b) => a * b, 1));
    const dtype = s.name.endsWith('num_batches_tracked') ? 'int64' : 'float32';
    stateDict.set(s.name, new TorchTensor(new TorchStorage(s.name, dtype, numel), 0, s.shape, strides));
  }
  return { file: '/x/custom.pth', format: 'zip', sha256: '', byteLength: 0, stateDict, otherKeys: [], close: () => undefined };
}

describe('validation against the architecture', () => {
  it('names missing, unexpected and mis-shaped keys with expected vs found shapes', () => {
    const specs = keySpecs(18)
      .filter((k) => k.name !== 'rpn.head.conv.bias')
      .map((k) => (k.name === 'rpn.head.cls_logits.weight' ? { ...k, shape: [6, 256, 1, 1] } : k))
      .concat([{ name: 'roi_heads.extra.weight', shape: [4], dtype: 'float32' }]);
    let err: unknown;
    try {
      prepareCheckpoint(fakeCheckpoint(specs));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CheckpointError);
    const msg = (err as Error).message;
    expect(msg).toMatch(/^\/x\/custom\.pth: 'fpn_model' \(detected ResNet-18\) does not match img2pose/);
    expect(msg).toContain('1 missing: rpn.head.conv.bias [256]');
    expect(msg).toContain('1 unexpected: roi_heads.extra.weight [4]');
    expect(msg).toContain('rpn.head.cls_logits.weight expected [3, 256, 1, 1], found [6, 256, 1, 1]');
  });

  it('treats num_batches_tracked as optional (never written)', () => {
    const without = prepareCheckpoint(fakeCheckpoint(keySpecs(18).filter((k) => !k.name.endsWith('num_batches_tracked'))));
    const withIt = prepareCheckpoint(fakeCheckpoint(keySpecs(18)));
    expect(without.entries.map((e) => e.name)).toEqual(withIt.entries.map((e) => e.name));
    expect(withIt.entries).toHaveLength(140);
    expect(withIt.skipped).toEqual(['roi_heads.box_predictor.dof_pred.1.num_batches_tracked']);
    expect(without.skipped).toEqual([]);
  });

  it('refuses a backbone that is not ResNet-18/50/101', () => {
    expect(() => prepareCheckpoint(fakeCheckpoint([{ name: 'backbone.body.layer1.0.conv1.weight', shape: [64, 64, 3, 3] }]))).toThrow(
      /custom\.pth: cannot tell which img2pose model this is: the backbone has basic blocks \[1, 0, 0, 0\]/,
    );
  });
});

describe('img2pose convert (CLI, in-process)', () => {
  async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
    let out = '';
    let err = '';
    const code = await runConvert(argv, { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) } });
    return { code, out, err };
  }

  const bad: [string, RegExp][] = [
    ['no_fpn_model_key.pth', /no 'fpn_model' entry/],
    ['truncated.pth', /truncated or corrupt zip archive/],
    ['not_a_checkpoint.pth', /not a PyTorch checkpoint/],
    ['tiny_zip.pth', /cannot tell which img2pose model this is/],
  ];
  it.each(bad)('%s: exit 1, one line on stderr naming file and problem, no stack trace', async (name, problem) => {
    const dir = path.join(tmpDir(), 'out');
    const r = await run([ckpt(name), '--out', dir]);
    expect(r.code).toBe(1);
    expect(r.out).toBe('');
    expect(r.err.split('\n').filter((l) => l.length > 0)).toHaveLength(1);
    expect(r.err).toMatch(/^img2pose convert: /);
    expect(r.err).toContain(ckpt(name));
    expect(r.err).toMatch(problem);
    expect(r.err).not.toMatch(/\n\s+at /);
    expect(fs.existsSync(dir)).toBe(false); // nothing written
  });

  it('usage errors: exit 1 and one line', async () => {
    const r = await run([ckpt('tiny_zip.pth')]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^img2pose convert: required option '--out <dir>' not specified\n$/);
    const r2 = await run(['--out', 'x']);
    expect(r2.code).toBe(1);
    expect(r2.err).toMatch(/missing required argument 'checkpoint'/);
  });

  it('a bad --pose-mean is refused before the checkpoint is read', async () => {
    const r = await run([ckpt('nope.pth'), '--pose-mean', ckpt('missing.npy'), '--pose-stddev', ckpt('pose_stddev.npy'), '--out', tmpDir()]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/missing\.npy: no such file \(pose mean\)/);
  });
});
