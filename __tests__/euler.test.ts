/**
 * poseToEuler (src/euler.ts) against scipy 1.10's `Rotation.from_rotvec(r).as_euler('xyz',
 * degrees=True)`, the conversion upstream's README shows: the shared fixture (random rotations,
 * half turns, gimbal lock) and tools/alignment_refs.py's edge cases (half turns about every axis
 * and diagonal, +-0 components, the neighbourhood of gimbal lock, float32 poses).
 */
import * as fs from 'fs';
import * as path from 'path';
import { poseToEuler } from '../src/euler';
import { OptionError } from '../src/errors';
import { FIXTURES } from './utils/formula';

interface EulerReference {
  rotvec: number[][];
  euler_xyz_deg: number[][];
}

function load(file: string): EulerReference {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, 'alignment', file), 'utf8')) as EulerReference;
}

/** Largest difference from scipy over a reference, in degrees, and where. */
function worst(ref: EulerReference): { error: number; at: number } {
  let error = 0;
  let at = -1;
  ref.rotvec.forEach((rv, i) => {
    const { pitch, yaw, roll } = poseToEuler(rv);
    const [x, y, z] = ref.euler_xyz_deg[i];
    const e = Math.max(Math.abs(pitch - x), Math.abs(yaw - y), Math.abs(roll - z));
    if (!(e <= error)) {
      error = e;
      at = i;
    }
  });
  return { error, at };
}

test('matches scipy on the shared fixture (random rotations, half turns, gimbal lock)', () => {
  const ref = load('euler_xyz.json');
  expect(ref.rotvec).toHaveLength(160);
  const { error, at } = worst(ref);
  expect({ error: error < 1e-9, at: error < 1e-9 ? -1 : at }).toEqual({ error: true, at: -1 });
});

test('matches scipy on edge cases: half turns about axes and diagonals, +-0, near gimbal lock', () => {
  // Within 1e-7 rad of gimbal lock the yaw is acos of a value within 1e-14 of +-1, so the last
  // bit of Math.sin/cos (V8's, not glibc's) moves it by up to ~1e-6 degrees; elsewhere the
  // agreement is to float64 rounding.
  const ref = load(path.join('extra', 'euler.json'));
  expect(ref.rotvec.some((rv) => rv.some((v) => Object.is(v, -0)))).toBe(true);
  const { error, at } = worst(ref);
  expect({ error: error < 1e-6, at: error < 1e-6 ? -1 : at }).toEqual({ error: true, at: -1 });
  const far = { ...ref, rotvec: [] as number[][], euler_xyz_deg: [] as number[][] };
  ref.rotvec.forEach((rv, i) => {
    if (Math.abs(Math.abs(ref.euler_xyz_deg[i][1]) - 90) > 1e-3) {
      far.rotvec.push(rv);
      far.euler_xyz_deg.push(ref.euler_xyz_deg[i]);
    }
  });
  expect(far.rotvec.length).toBeGreaterThan(60);
  expect(worst(far).error).toBeLessThan(1e-9);
});

test('half turns land on scipy\'s side of +-180', () => {
  expect(poseToEuler([Math.PI, 0, 0])).toEqual({ pitch: 180, yaw: expect.any(Number), roll: expect.any(Number) });
  const z = poseToEuler([0, 0, Math.PI]);
  expect(z.roll).toBe(180);
  expect(Math.abs(z.pitch)).toBeLessThan(1e-12);
});

test('gimbal lock: yaw +-90, roll set to 0, pitch takes the whole turn', () => {
  for (const sign of [1, -1]) {
    const e = poseToEuler([0, (sign * Math.PI) / 2, 0]);
    expect(e.yaw).toBeCloseTo(sign * 90, 10);
    expect(e.roll).toBe(0);
  }
});

test('a 6-value pose uses its rotation; a frontal face is all zeros', () => {
  expect(poseToEuler([0.1, 0.2, 0.3, 5, 6, 7])).toEqual(poseToEuler([0.1, 0.2, 0.3]));
  const zero = poseToEuler(new Float32Array(6));
  expect([zero.pitch, zero.yaw, zero.roll].map(Math.abs)).toEqual([0, 0, 0]);
});

test('known angles: yaw about y, pitch about x, roll about z', () => {
  const deg = Math.PI / 180;
  expect(poseToEuler([0, 30 * deg, 0]).yaw).toBeCloseTo(30, 12);
  expect(poseToEuler([-20 * deg, 0, 0]).pitch).toBeCloseTo(-20, 12);
  expect(poseToEuler([0, 0, 45 * deg]).roll).toBeCloseTo(45, 12);
});

test.each([
  ['NaN', [0, NaN, 0], /position 1/],
  ['Infinity', [0, 0, 0, 0, 0, Infinity], /position 5/],
  ['4 values', [0, 0, 0, 0], /4 values/],
  ['a string', '0,0,0', /Option pose/],
  ['undefined', undefined, /Option pose/],
])('%s: OptionError', (_what, pose, message) => {
  expect(() => poseToEuler(pose as never)).toThrow(OptionError);
  expect(() => poseToEuler(pose as never)).toThrow(message);
});
