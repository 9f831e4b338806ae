/**
 * The detector's alignment methods (upstream `align_faces`, `align_faces_batch`,
 * `detect_and_align`): a fake `DetectionModel` behind the real `Img2Pose`, so decoding, filtering
 * and keypoints are the library's; crops must equal the standalone `alignFaces` (itself checked
 * against upstream in align.test.ts).
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { parseNpy } from '../converter/npy';
import { alignFaces } from '../src/align';
import { DetectionModel, Img2Pose } from '../src/detector';
import { AbortError, BatchError, DisposedError, InputError, OptionError } from '../src/errors';
import { ModelConfig, RawDetections } from '../src/model/model';
import { FIXTURES } from './utils/formula';
import { rgbOfPng } from './utils/png';

const PORTRAIT = path.join(FIXTURES, 'golden', 'portrait_1.png');
const POSES = parseNpy(fs.readFileSync(path.join(FIXTURES, 'alignment', 'extra', 'faces_112.poses.npy')));
/** Two heads in view of the portrait photo (from the random-pose references). */
const DOFS = Float32Array.from([...POSES.data.subarray(0, 6), ...POSES.data.subarray(12, 18)]);

const portrait = rgbOfPng(PORTRAIT);

/** Two faces per image (confidence 0.6 and 0.9, network order), the same poses everywhere. */
class FakeModel implements DetectionModel {
  calls = 0;

  async predict(images: tf.Tensor3D[], _config: ModelConfig): Promise<RawDetections[]> {
    this.calls++;
    return images.map(() => ({
      boxes: Float32Array.from([10, 10, 100, 100, 50, 50, 150, 150]),
      scores: Float32Array.from([0.6, 0.9]),
      dofs: DOFS,
    }));
  }

  dispose(): void {}
}

function digest(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex').slice(0, 16);
}

let detector: Img2Pose;

beforeEach(() => {
  detector = new Img2Pose(new FakeModel());
});

afterEach(async () => {
  await detector.dispose();
});

test('alignFaces on the detector equals the standalone alignFaces', async () => {
  const faces = await detector.detectFaces(portrait);
  const a = await detector.alignFaces(portrait, faces, { size: 112 });
  const b = await alignFaces(portrait, faces, { size: 112 });
  expect(a.map((f) => digest(f.image.data))).toEqual(b.map((f) => digest(f.image.data)));
  expect(a.map((f) => f.transform)).toEqual(b.map((f) => f.transform));
});

test('detectAndAlign: detectFaces results, each with its crop, in confidence order', async () => {
  const faces = await detector.detectFaces(portrait);
  const expected = await alignFaces(portrait, faces, { size: 112 });
  const got = await detector.detectAndAlign(portrait, { size: 112 });
  expect(got.map(({ crop: _crop, ...face }) => face)).toEqual(faces);
  expect(got.map((f) => f.confidence)).toEqual([Math.fround(0.9), Math.fround(0.6)]);
  expect(got.map((f) => digest(f.crop.image.data))).toEqual(expected.map((f) => digest(f.image.data)));
  expect(got.map((f) => f.crop.template)).toEqual(expected.map((f) => f.template));
  // The crops are real faces, not black squares.
  for (const f of got) expect(f.crop.image.data.some((v) => v > 0)).toBe(true);
});

test('detectAndAlign: the detection filter and the default size (224) apply', async () => {
  const got = await detector.detectAndAlign(portrait, { scoreThreshold: 0.7 });
  expect(got).toHaveLength(1);
  expect(got[0].crop.image.width).toBe(224);
});

test('detectAndAlign on a list: one list per image; a bad image fails alone (BatchError)', async () => {
  const file = await detector.detectAndAlign([portrait, PORTRAIT], { size: 112 });
  expect(file).toHaveLength(2);
  expect(file[1].map((f) => digest(f.crop.image.data))).toEqual(file[0].map((f) => digest(f.crop.image.data)));

  const err = await detector.detectAndAlign([portrait, '/no/such/image.png', PORTRAIT], { size: 112 }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(BatchError);
  const batch = err as BatchError<unknown>;
  expect(batch.errors.map((e) => [e.index, e.error.constructor.name, (e.error as InputError).index])).toEqual([[1, 'InputError', 1]]);
  expect(batch.results[0]).toHaveLength(2);
  expect(batch.results[1]).toBeUndefined();
  expect(batch.results[2]).toHaveLength(2);
});

test('detectAndAlign on a list runs batchSize images per forward', async () => {
  const model = new FakeModel();
  const small = new Img2Pose(model, { batchSize: 2 });
  const got = await small.detectAndAlign([portrait, portrait, portrait], { size: 112 });
  expect(got).toHaveLength(3);
  expect(model.calls).toBe(2);
  await small.dispose();
});

test('detectAndAlign on a list: onProgress per image as its crops are ready; an abort stops before the next batch', async () => {
  const model = new FakeModel();
  const small = new Img2Pose(model, { batchSize: 2 });
  const before = tf.memory().numTensors;
  const seen: number[][] = [];
  await small.detectAndAlign([portrait, '/no/such/image.png', portrait], { size: 112, onProgress: (done, total) => seen.push([done, total]) }).catch(() => undefined);
  expect(seen).toEqual([[1, 3], [2, 3], [3, 3]]);
  const single: number[][] = [];
  await small.detectAndAlign(portrait, { size: 112, onProgress: (done, total) => single.push([done, total]) });
  expect(single).toEqual([[1, 1]]);

  model.calls = 0;
  const controller = new AbortController();
  const call = small.detectAndAlign([portrait, portrait, portrait], {
    size: 112,
    signal: controller.signal,
    onProgress: () => controller.abort(),
  });
  await expect(call).rejects.toBeInstanceOf(AbortError);
  expect(model.calls).toBe(1);
  await expect(small.detectAndAlign(portrait, { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortError);
  expect(model.calls).toBe(1);
  expect(tf.memory().numTensors).toBe(before);
  await small.dispose();
});

test('detectAndAlign: a single bad image rejects with its own InputError (no index)', async () => {
  const err = await detector.detectAndAlign('/no/such/image.png').catch((e: unknown) => e);
  expect(err).toBeInstanceOf(InputError);
  expect((err as InputError).index).toBeUndefined();
});

test('detectAndAlign takes tensors at call time and leaves no tensor behind', async () => {
  const before = tf.memory().numTensors;
  const t = tf.tensor3d(Int32Array.from(portrait.data), [portrait.height, portrait.width, 3], 'int32');
  const running = detector.detectAndAlign(t, { size: 112 });
  t.dispose();
  const got = await running;
  const expected = await detector.detectAndAlign(portrait, { size: 112 });
  expect(got.map((f) => digest(f.crop.image.data))).toEqual(expected.map((f) => digest(f.crop.image.data)));
  await detector.detectAndAlign([portrait, '/no/such/image.png']).catch(() => undefined);
  expect(tf.memory().numTensors).toBe(before);
});

test('alignFacesBatch: one crop list per image, lengths and poses checked before reading', async () => {
  const faces = await detector.detectFaces(portrait);
  const got = await detector.alignFacesBatch([portrait, PORTRAIT], [faces, faces.slice(1)], { size: 112 });
  expect(got.map((crops) => crops.length)).toEqual([2, 1]);
  expect(digest(got[1][0].image.data)).toBe(digest(got[0][1].image.data));

  await expect(detector.alignFacesBatch([portrait, portrait], [faces])).rejects.toThrow(
    new OptionError('facesPerImage', 'an array of 2 face lists, one per image', [faces]),
  );
  const bad = [{ pose: [0, 0, 0, 0, 0, NaN] }];
  const err = await detector.alignFacesBatch(['/no/such/image.png', portrait], [[], bad]).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(InputError);
  expect([(err as InputError).index, (err as InputError).input]).toEqual([1, 'facesPerImage[1][0].pose']);
  const unreadable = await detector.alignFacesBatch([portrait, '/no/such/image.png'], [faces, faces]).catch((e: unknown) => e);
  expect(unreadable).toBeInstanceOf(InputError);
  expect((unreadable as InputError).index).toBe(1);
});

test('options are checked: size, threshold', async () => {
  await expect(detector.detectAndAlign(portrait, { size: 100 as never })).rejects.toThrow(OptionError);
  await expect(detector.detectAndAlign(portrait, { scoreThreshold: 2 })).rejects.toThrow(OptionError);
  await expect(detector.alignFaces(portrait, [], { size: 0 as never })).rejects.toThrow(OptionError);
});

test('a disposed detector refuses', async () => {
  const d = new Img2Pose(new FakeModel());
  await d.dispose();
  await expect(d.alignFaces(portrait, [])).rejects.toThrow(DisposedError);
  await expect(d.detectAndAlign(portrait)).rejects.toThrow(DisposedError);
  await expect(d.alignFacesBatch([], [])).rejects.toThrow(DisposedError);
});
