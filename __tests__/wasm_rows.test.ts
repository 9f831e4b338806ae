// copyRows (src/kernels/wasm/rows.ts): row and column blocks copied in the wasm heap give the
// bits tf.gather and tf.slice give, and it makes no tensor it does not return.
import * as tf from '@tensorflow/tfjs';
import { lcgValues } from './utils/lcg';
import { copyRows, rowRange } from '../src/kernels/wasm/rows';

describe('copyRows on wasm', () => {
  const x = lcgValues(9 * 12, 3);
  const bits = (t: tf.Tensor): Buffer => Buffer.from((t.dataSync() as Float32Array).slice().buffer);

  it.each([
    ['a run of rows', rowRange(2, 5), 0, 12],
    ['rows in any order, repeated, with runs', [7, 0, 1, 2, 2, 8, 3], 0, 12],
    ['a column block of every row', rowRange(0, 9), 4, 5],
    ['a column block of some rows', [8, 1, 2], 11, 1],
  ] as [string, number[], number, number][])('copies %s as gather + slice do', (_, rows, colStart, colCount) => {
    expect(tf.getBackend()).toBe('wasm');
    tf.tidy(() => {
      const t = tf.tensor2d(x, [9, 12]);
      const want = tf.slice(tf.gather(t, tf.tensor1d(rows, 'int32')), [0, colStart], [rows.length, colCount]);
      const before = tf.memory().numTensors;
      const got = copyRows(t, rows, colStart, colCount);
      expect(tf.memory().numTensors).toBe(before + 1);
      expect(got.shape).toEqual([rows.length, colCount]);
      expect(bits(got)).toEqual(bits(want));
    });
  });

  it('rejects rows and columns outside the matrix', () => {
    tf.tidy(() => {
      const t = tf.tensor2d(x, [9, 12]);
      expect(() => copyRows(t, [9])).toThrow(/row 9 of 9/);
      expect(() => copyRows(t, [0], 10, 3)).toThrow(/columns/);
    });
  });
});
