/**
 * ROI-heads post-processing against the upstream run's own tensors, for every single-image golden
 * case: the network outputs (proposals, class_logits, dof_regression) are the reference's, so the
 * whole post-processing must reproduce pose_in_*, pose_out_* and final_*.
 */
import * as fs from 'fs';
import {
  faceScores,
  fmaf,
  postprocessDetections,
  selectCandidates,
  torchExpf,
  transformPoseGlobalProjectBbox,
} from '../src/model/postprocess';
import { golden, GoldenCase, imagePath, manifest, relError } from './utils/golden';

const M = manifest();
const SINGLE = M.cases.filter((c) => c.mode === 'single');

function f32(caseId: string, key: string): Float32Array {
  return Float32Array.from(golden(caseId, key).data);
}

function originalSize(c: GoldenCase): [number, number] {
  const b = fs.readFileSync(imagePath(c.image as string));
  return [b.readUInt32BE(20), b.readUInt32BE(16)];
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

test('there are single-image golden cases with detections', () => {
  expect(SINGLE.length).toBeGreaterThanOrEqual(9);
  expect(SINGLE.some((c) => (c.num_detections ?? 0) > 100)).toBe(true);
});

describe.each(SINGLE.map((c) => [c.id, c] as const))('%s', (id, c) => {
  const hw = c.resized_hw as [number, number];

  test('selectCandidates: clip, score > 0.05, remove small -> pose_in_*', () => {
    const cand = selectCandidates(f32(id, 'proposals'), f32(id, 'class_logits'), f32(id, 'dof_regression'), hw);
    const boxes = golden(id, 'pose_in_boxes').data;
    const dofs = golden(id, 'pose_in_dofs').data;
    expect(cand.boxes.length).toBe(boxes.length);
    expect(cand.scores.length * 4).toBe(boxes.length);
    expect(maxAbsDiff(cand.boxes, boxes)).toBeLessThanOrEqual(1e-3);
    expect(relError(cand.dofs, dofs)).toBeLessThanOrEqual(1e-6);
  });

  test('transformPoseGlobalProjectBbox: pose_in_* -> pose_out_*', () => {
    const out = transformPoseGlobalProjectBbox(
      f32(id, 'pose_in_boxes'),
      f32(id, 'pose_in_dofs'),
      M.pose_mean,
      M.pose_stddev,
      hw,
    );
    const boxes = golden(id, 'pose_out_boxes').data;
    const dofs = golden(id, 'pose_out_dofs').data;
    expect(maxAbsDiff(out.boxes, boxes)).toBeLessThanOrEqual(1);
    expect(relError(out.dofs, dofs)).toBeLessThanOrEqual(1e-4);
  });

  test('postprocessDetections: network outputs -> final_* (original image coordinates)', () => {
    const det = postprocessDetections({
      proposals: f32(id, 'proposals'),
      classLogits: f32(id, 'class_logits'),
      dofRegression: f32(id, 'dof_regression'),
      imageSize: hw,
      originalSize: originalSize(c),
      poseMean: M.pose_mean,
      poseStddev: M.pose_stddev,
    });
    const boxes = golden(id, 'final_boxes').data;
    const scores = golden(id, 'final_scores').data;
    const dofs = golden(id, 'final_dofs').data;
    expect(det.scores.length).toBe(scores.length);
    expect(det.scores.length).toBe(c.num_detections);
    expect(maxAbsDiff(det.boxes, boxes)).toBeLessThanOrEqual(1);
    expect(relError(det.scores, scores)).toBeLessThanOrEqual(1e-4);
    expect(relError(det.dofs, dofs)).toBeLessThanOrEqual(1e-4);
    // The float32 softmax reproduces torch's bits, so the score order (and NMS ties) is upstream's.
    expect(Array.from(det.scores)).toEqual(Array.from(scores));
  });
});

describe('stage details', () => {
  test('transformPoseGlobalProjectBbox on hand-made inputs matches upstream (torch tensors in, h 480 w 640)', () => {
    const out = transformPoseGlobalProjectBbox(
      Float32Array.from([10.7, 20.3, 110.2, 140.9, 300.0, 200.0, 340.5, 251.25, 0.0, 0.0, 639.0, 479.0]),
      Float32Array.from([0.1, -0.2, 0.3, 0.05, -0.1, 2.5, -0.5, 0.4, 1.2, 0.0, 0.2, -0.3, 2.9, 0.1, -0.2, 0.3, 0.3, 1.0]),
      [0, 0, 0, 0, 0, 3.0],
      [0.3, 0.3, 0.3, 0.1, 0.1, 0.5],
      [480, 640],
    );
    expect(Array.from(out.boxes)).toEqual([19, 18, 103, 119, 297, 184, 348, 248, 63, 0, 580, 480]);
    const expected = [
      0.10156819224357605, -0.17676201462745667, 0.08892995119094849, -5.034754753112793, -3.0995047092437744,
      21.62653350830078, -0.14319384098052979, 0.11996185779571533, 0.36087217926979065, 8.055490851460474e-16,
      -0.4459400177001953, 34.79018783569336, 0.870440661907196, 0.02967606671154499, -0.05959391966462135,
      0.026869410648941994, 0.026869410648941994, 3.506261110305786,
    ];
    expect(relError(out.dofs, expected)).toBeLessThanOrEqual(1e-7);
  });

  test('no candidates: empty detections', () => {
    const det = postprocessDetections({
      proposals: Float32Array.from([0, 0, 10, 10]),
      classLogits: Float32Array.from([5, -5]),
      dofRegression: new Float32Array(12),
      imageSize: [100, 100],
      originalSize: [200, 200],
      poseMean: [0, 0, 0, 0, 0, 1],
      poseStddev: [1, 1, 1, 1, 1, 1],
    });
    expect(det.boxes.length + det.scores.length + det.dofs.length).toBe(0);
  });

  test('mismatched input lengths are rejected', () => {
    expect(() =>
      selectCandidates(new Float32Array(8), new Float32Array(4), new Float32Array(12), [10, 10]),
    ).toThrow(/2 proposals/);
  });

  test('torchExpf reproduces torch 1.13 CPU float32 exp bits (SLEEF expf_u10)', () => {
    // [x, torch.exp(x)] from torch; the first six are values where float32(Math.exp(x)) differs.
    const pairs: [number, number][] = [
      [-18.40223503112793, 1.0186168353243374e-8],
      [-1.806885004043579, 0.1641647219657898],
      [-5.272319316864014, 0.005131694488227367],
      [-0.8833277225494385, 0.4134049415588379],
      [-11.637495040893555, 8.828768841340207e-6],
      [-11.957771301269531, 6.409230991266668e-6],
      [0, 1],
      [-1, 0.3678794503211975],
      [-104, 0],
      [-103.9000015258789, 1.401298464324817e-45],
      [-87.5, 9.982351397596697e-39],
      [-100, 3.783505853677006e-44],
      [1, 2.7182817459106445],
    ];
    expect(pairs.slice(0, 6).every(([x, y]) => Math.fround(Math.exp(x)) !== y)).toBe(true);
    for (const [x, y] of pairs) expect(torchExpf(Math.fround(x))).toBe(Math.fround(y));
  });

  test('faceScores: torch F.softmax(class_logits)[:, 1] bits', () => {
    // [logit0, logit1, torch softmax class 1]; the first four are teaser logits where e1 / (e0 + e1)
    // differs from torch's e1 * (1 / (e0 + e1)).
    const rows: [number, number, number][] = [
      [3.5987298488616943, -0.5943055152893066, 0.01487575564533472],
      [1.572683572769165, 0.766202986240387, 0.3086409568786621],
      [3.3315834999084473, -1.9787875413894653, 0.004915808793157339],
      [1.5330567359924316, -2.268493175506592, 0.021848121657967567],
      [4.528514385223389, -1.7107563018798828, 0.001947477925568819],
      [3, -3, 0.00247262348420918],
      [-20, 20, 1],
      [0, 0, 0.5],
      [50, -60, 0],
    ];
    const scores = faceScores(Float32Array.from(rows.flatMap(([a, b]) => [a, b])));
    expect(Array.from(scores)).toEqual(rows.map((r) => r[2]));
  });

  test('fmaf rounds once where a float64 sum would round twice', () => {
    // a * b = 2^-24 - 2^-70 exactly; + c = 1 + 2^-23 lands 2^-70 below the float32 midpoint
    // 1 + 2^-23 + 2^-24. float64 rounds the sum onto the midpoint and ties-to-even then goes up.
    const a = 2 ** -12 * (1 + 2 ** -23);
    const b = 2 ** -12 * (1 - 2 ** -23);
    const c = 1 + 2 ** -23;
    expect([a, b, c].every((v) => Math.fround(v) === v)).toBe(true);
    expect(Math.fround(a * b + c)).toBe(1 + 2 ** -22);
    expect(fmaf(a, b, c)).toBe(1 + 2 ** -23);
    expect(fmaf(a, a, c)).toBe(1 + 2 ** -22);
    expect(fmaf(2, 3, 1)).toBe(7);
  });
});
