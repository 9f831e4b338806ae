/**
 * End to end against the upstream PyTorch run: image file -> our whole pipeline -> final
 * detections, for every single-image golden case (tiny and default size), and the detector-level
 * faces above 0.5 (and 0.3, max 5).
 */
import * as tf from '@tensorflow/tfjs';
import { decodeImage } from '../src/io/images';
import { Img2PoseModel, RawDetections } from '../src/model/model';
import { processPrediction } from '../src/detector';
import { buildModel } from '../bench/common';
import { golden, GoldenCase, GoldenFace, imagePath, manifest } from './utils/golden';
import { expectWithinTolerance, matchDetections } from './utils/match';

const singleCases = manifest().cases.filter((c) => c.mode === 'single');

let model: Img2PoseModel;

beforeAll(async () => {
  model = await buildModel();
});
afterAll(() => model.dispose());

async function run(c: GoldenCase): Promise<{ det: RawDetections; size: [number, number] }> {
  const image = await decodeImage(imagePath(c.image as string));
  try {
    const before = tf.memory().numTensors;
    const [det] = await model.predict([image], { minSize: c.min_size, maxSize: c.max_size });
    expect(tf.memory().numTensors).toBe(before);
    return { det, size: [image.shape[0], image.shape[1]] };
  } finally {
    image.dispose();
  }
}

function expectFacesEqual(ours: ReturnType<typeof processPrediction>, ref: GoldenFace[]): void {
  expect(ours.length).toBe(ref.length);
  ours.forEach((f, k) => {
    const r = ref[k];
    expect(Math.abs(f.confidence - r.confidence)).toBeLessThanOrEqual(1e-3);
    f.box.forEach((v, i) => expect(Math.abs(v - r.box[i])).toBeLessThanOrEqual(1));
    f.pose.slice(0, 3).forEach((v, i) => expect(Math.abs(v - r.pose[i])).toBeLessThanOrEqual(1e-3));
    f.pose.slice(3).forEach((v, i) => expect(Math.abs(v - r.pose[i + 3])).toBeLessThanOrEqual(1e-3 * Math.max(1, Math.abs(r.pose[i + 3]))));
  });
}

describe.each(singleCases.map((c) => [c.id, c] as const))('end to end: %s', (id, c) => {
  it('final detections match upstream within the fixture tolerances; faces at 0.5 and 0.3/max 5 match', async () => {
    const { det, size } = await run(c);
    const ref = {
      boxes: golden(id, 'final_boxes').data,
      scores: golden(id, 'final_scores').data,
      dofs: golden(id, 'final_dofs').data,
    };
    const report = matchDetections(det, ref);
    // Printed so a regression shows how far off it is, not just that it is.
    console.log(`${id}: ${JSON.stringify(report)}`);
    expectWithinTolerance(report);
    expect(Math.abs(det.scores.length - ref.scores.length)).toBeLessThanOrEqual(Math.max(2, 0.02 * ref.scores.length));

    const faces05 = processPrediction(det, size[1], size[0], 0.5, -1);
    expectFacesEqual(faces05, c['faces_t0.5'] ?? []);
    const faces03 = processPrediction(det, size[1], size[0], 0.3, 5);
    expectFacesEqual(faces03, c['faces_t0.3_max5'] ?? []);
  });
});
