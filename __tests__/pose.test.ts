/**
 * Pose math against scipy 1.10.1 / numpy 1.24 and upstream `_pose_ops.py` / `detector.py`.
 * Hard-coded expectations were computed by running those (unmodified) on the same inputs.
 */
import * as fs from 'fs';
import * as path from 'path';
import { parseNpy } from '../converter/npy';
import {
  bboxIntrinsics,
  expandBboxRectangle,
  imageIntrinsics,
  KEYPOINT_INDICES,
  matrixToQuat,
  matrixToRotvec,
  poseBboxToFullImage,
  poseToBox,
  projectKeypoints,
  projectPoints,
  REFERENCE_POINTS_68,
  rotvecToMatrix,
} from '../src/model/pose';
import { FIXTURES } from './utils/formula';
import { imagePath, manifest } from './utils/golden';

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    if (Math.abs(actual[i] - expected[i]) > tol) {
      throw new Error(`element ${i}: ${actual[i]} vs ${expected[i]} (tol ${tol})`);
    }
  }
}

function pngSize(file: string): { width: number; height: number } {
  const b = fs.readFileSync(file);
  return { width: b.readUInt32BE(16), height: b.readUInt32BE(20) };
}

test('REFERENCE_POINTS_68 is the upstream .npy, bit for bit', () => {
  const file = path.join(FIXTURES, 'weights', 'reference_3d_68_points_trans.npy');
  const npy = parseNpy(fs.readFileSync(file), file);
  expect(npy.shape).toEqual([68, 3]);
  expect(Array.from(REFERENCE_POINTS_68)).toEqual(Array.from(npy.data));
});

describe('scipy 1.10 Rotation.from_matrix on non-orthogonal matrices (Markley, then normalise)', () => {
  // [matrix rows, as_quat (x y z w), as_rotvec] from scipy 1.10.1.
  const cases: [number[][], number[], number[]][] = [
    [
      [[1.0, 0.2, -0.1], [0.05, 0.9, 0.3], [0.1, -0.2, 1.1]], // trace branch
      [-0.12379689211803459, -0.04951875684721384, -0.03713906763541038, 0.9903751369442767],
      [-0.24839120720615096, -0.09935648288246039, -0.0745173621618453],
    ],
    [
      [[0.9, 0.1, 0.35], [0.2, -0.8, 0.1], [0.3, 0.05, -0.7]], // m00 branch, w < 0 flipped by as_rotvec
      [0.9784425872172222, 0.08633316946034314, 0.1870552004974101, -0.014388861576723855],
      [-3.0460250621890084, -0.2687669172519713, -0.5823283207126044],
    ],
    [
      [[-0.9, 0.4, 0.1], [0.3, 0.95, -0.2], [0.1, 0.25, -0.85]], // m11 branch
      [0.18587528348817742, 0.9824836412946523, 0.013276805963441243, 0.0],
      [0.5839444250903784, 3.086563389763429, 0.04171031607788416],
    ],
    [
      [[-0.6, 0.3, 0.2], [0.1, -0.7, 0.45], [0.25, 0.35, 1.2]], // m22 branch
      [0.12417632679808392, 0.22075791430770475, 0.9658158750962083, -0.05518947857692618],
      [-0.37697255912367866, -0.6701734384420954, -2.9320087931841674],
    ],
    [[[2, 0, 0], [0, 2, 0], [0, 0, 2]], [0, 0, 0, 1], [0, 0, 0]], // scaled identity
    [[[0, 0, 0], [0, 0, 0], [0, 0, 1]], [0, 0, 1, 0], [0, 0, Math.PI]], // m22 ties the trace: first wins
  ];
  test.each(cases.map((c, i) => [i, ...c]))('case %i', (_i, rows, quat, rotvec) => {
    const m = (rows as number[][]).flat();
    expectClose(matrixToQuat(m), quat as number[], 1e-15);
    expectClose(matrixToRotvec(m), rotvec as number[], 1e-14);
  });
});

test('rotvecToMatrix matches scipy from_rotvec().as_matrix() (regular and small-angle series)', () => {
  expectClose(rotvecToMatrix([0.1, -0.2, 0.3]), [
    0.9357548032779188, -0.30293271340263705, -0.1805400766943977, 0.2831649605650737, 0.9505806179060914,
    -0.12733457491763026, 0.21019170595074282, 0.06803131640494, 0.9752903089530457,
  ], 1e-15);
  expectClose(rotvecToMatrix([1e-4, 2e-4, -3e-4]), [
    0.999999935000001, 0.0003000099929998834, 0.00019998499533350838, -0.0002999899930001167,
    0.9999999500000007, -0.0001000299976663167, -0.00020001499533315838, 9.996999766701669e-5,
    0.9999999750000004,
  ], 1e-15);
  expectClose(rotvecToMatrix([3.0, 0.5, -1.0]), [
    0.7563167840898538, 0.27369977049103966, -0.5941997624849185, 0.311139947693311, -0.9494657272811687,
    -0.04131302056065152, -0.5754796738837828, -0.15363355216746533, -0.8032557977350813,
  ], 1e-15);
});

describe('upstream _pose_ops on hand-made inputs (h 480, w 640)', () => {
  const image = imageIntrinsics(480, 640);
  const box = Float32Array.from([10.7, 20.3, 110.2, 140.9]);

  test('image and box intrinsics: integer principal points (int64 matrix truncates the box centre)', () => {
    expect(image).toEqual({ focal: 1120, cx: 320, cy: 240 });
    // left + (right - left) // 2 = 10.7 + 49 = 59.7 -> 59; 20.3 + 60 = 80.3 -> 80.
    expect(bboxIntrinsics(image, box)).toEqual({ focal: 1120, cx: 59, cy: 80 });
  });

  test('pose_bbox_to_full_image', () => {
    const dof = Float32Array.from([0.1, -0.2, 0.3, 0.05, -0.1, 2.5]);
    const global = poseBboxToFullImage(dof, image, box);
    expectClose(global, [
      0.17279684517434848, -0.31906859385964, 0.29527550674087844, -2.914561708590814, -1.9173558386308804,
      12.721490859985352,
    ], 1e-12);
    const lms = projectPoints(global, REFERENCE_POINTS_68, image.focal, image.cx, image.cy);
    expectClose([lms[0], lms[1], lms[66], lms[67]], [6.21535364260431, 17.879672653118032, 66.24468886421063, 79.6514538390712], 1e-9);
    expect(poseToBox(global, image, 640, 480)).toEqual([0, 0, 136, 142]);
  });

  test('expand_bbox_rectangle: forehead side chosen by roll', () => {
    const lms = [100.3, 50.2, 180.9, 170.6, 140.0, 90.0];
    const expected: [number, number[]][] = [
      [0.0, [96, 8, 184, 176]],
      [1.5, [96, 44, 208, 176]],
      [-1.5, [72, 44, 184, 176]],
      [2.6, [96, 44, 184, 212]],
      [-3.0, [96, 44, 184, 212]],
      [1.0, [96, 8, 184, 176]],
      [-1.0, [96, 8, 184, 176]],
      [2.5, [96, 44, 208, 176]],
    ];
    for (const [roll, box4] of expected) expect(expandBboxRectangle(640, 480, lms, roll)).toEqual(box4);
  });

  test('expand_bbox_rectangle: one-sided clamps leave boxes outside the image inverted', () => {
    expect(expandBboxRectangle(640, 480, [-300.5, -80.2, -120.4, 30.7], 0)).toEqual([0, 0, -111, 35]);
    expect(expandBboxRectangle(640, 480, [700.5, 500.2, 900.4, 650.7], 0)).toEqual([690, 447, 640, 480]);
    // int32 cast truncates toward zero: -0.x becomes 0 before the clamp.
    expect(expandBboxRectangle(640, 480, [-10.6, -5.5, 20.2, 30.1], 0)).toEqual([0, 0, 21, 31]);
  });
});

describe('detector keypoints (upstream detector._project_landmarks)', () => {
  test('indices', () => {
    expect(KEYPOINT_INDICES).toEqual({ left_eye: 36, right_eye: 45, nose: 30, mouth_left: 48, mouth_right: 54 });
  });

  test('every golden face: keypoints from its pose with focal w + h, centre (w / 2, h / 2) of the original image', () => {
    let checked = 0;
    for (const c of manifest().cases.filter((k) => k.mode === 'single')) {
      const { width, height } = pngSize(imagePath(c.image as string));
      for (const face of [...(c['faces_t0.5'] ?? []), ...(c['faces_t0.3_max5'] ?? [])]) {
        // The detector projects the float32 dofs of the prediction.
        const kp = projectKeypoints(face.pose.map(Math.fround), width, height);
        for (const name of Object.keys(KEYPOINT_INDICES) as (keyof typeof KEYPOINT_INDICES)[]) {
          expectClose(kp[name], face.keypoints[name], 1e-6);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(100);
  });

  test('projectPoints uses float principal points as given', () => {
    const pose = [0.1, 0.2, -0.3, 0.5, -0.2, 20];
    const a = projectPoints(pose, REFERENCE_POINTS_68, 1000, 320.5, 240.5);
    const b = projectPoints(pose, REFERENCE_POINTS_68, 1000, 320, 240);
    expect(a.length).toBe(136);
    expect(a[0] - b[0]).toBeCloseTo(0.5, 12);
    expect(a[1] - b[1]).toBeCloseTo(0.5, 12);
  });
});
