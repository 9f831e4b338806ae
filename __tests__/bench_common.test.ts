import * as tf from '@tensorflow/tfjs';
import { buildSet, compareFaces, describeDiff, disposeSet, machineInfo, markdownTable, parseCounts } from '../bench/common';
import type { Face } from '../src/detector';

const face = (score: number, dx = 0): Face => ({
  box: [10 + dx, 10, 50, 60],
  confidence: score,
  pose: [0.1, 0.2, 0.3, 1, 2, 10 + dx],
  keypoints: { left_eye: [0, 0], right_eye: [0, 0], nose: [0, 0], mouth_left: [0, 0], mouth_right: [0, 0] },
});

describe('bench helpers', () => {
  it('compares two runs face by face', () => {
    const a = [[face(0.9), face(0.6)], [face(0.7)]];
    expect(compareFaces(a, a)).toEqual({ countMismatches: 0, facesCompared: 3, maxBox: 0, maxScore: 0, maxPose: 0 });
    expect(describeDiff(compareFaces(a, a))).toBe('identical (3 faces)');
    const b = [[face(0.9, 0.5), face(0.6)], []];
    const d = compareFaces(a, b);
    expect(d).toEqual({ countMismatches: 1, facesCompared: 2, maxBox: 0.5, maxScore: 0, maxPose: 0.5 });
    expect(describeDiff(d)).toBe('1 image(s) with other face counts; max abs diff box 5.0e-1, score 0, pose 5.0e-1 over 2 faces');
  });

  it('builds same-size sets of distinct crops and mixed-size sets, and frees them', async () => {
    const before = tf.memory().numTensors;
    const same = await buildSet('same', 3, 64, 48);
    expect(same.map((s) => s.tensor.shape)).toEqual([[48, 64, 3], [48, 64, 3], [48, 64, 3]]);
    const sums = same.map((s) => tf.tidy(() => s.tensor.sum().arraySync() as number));
    expect(new Set(sums).size).toBe(3);
    const mixed = await buildSet('mixed', 3);
    expect(mixed.map((s) => s.tensor.shape)).toEqual([[718, 1280, 3], [500, 333, 3], [250, 1000, 3]]);
    disposeSet(same);
    disposeSet(mixed);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('formats the table and parses counts', () => {
    expect(markdownTable(['a', 'b'], [['1', '2']])).toBe('| a | b |\n| --- | --- |\n| 1 | 2 |');
    expect(parseCounts('1, 2,8')).toEqual([1, 2, 8]);
    expect(() => parseCounts('1,0')).toThrow(/counts/);
    const m = machineInfo(['/usr/bin/node', '/x/bench.js', '--counts', '1']);
    expect(m.cores).toBeGreaterThan(0);
    expect(m.command).toMatch(/--counts 1$/);
  });
});
