// The shared memory two threads pass their bands of a map through (src/runtime/row_exchange.ts),
// both sides driven from this thread in an order in which neither has to wait: the rows arrive
// where they belong, and a side that is gone (marked, or silent past the give-up time) is noticed.
import * as tf from '@tensorflow/tfjs';
import { markGone, PartnerGoneError, RowExchange, rowExchangeBuffers } from '../src/runtime/row_exchange';
import { WASM_HEAP } from '../src/runtime/runtime';

const map = (values: number[], rows: number): tf.Tensor4D => tf.tensor4d(values, [1, rows, 2, 1]);
const read = (t: tf.Tensor): number[] => Array.from(t.dataSync());

describe('row exchange', () => {
  it("hands each side the other's rows, step after step, through two regions", () => {
    const buffers = rowExchangeBuffers(8);
    const owner = new RowExchange(buffers, 0, WASM_HEAP);
    const helper = new RowExchange(buffers, 1, WASM_HEAP);
    tf.tidy(() => {
      // Step 1: the image, all of it from the owner.
      const image = map([1, 2, 3, 4, 5, 6, 7, 8], 4);
      const received = map([0, 0, 0, 0, 0, 0, 0, 0], 4);
      expect(owner.exchange(image, [0, 4], [4, 4])).toBe(true);
      expect(helper.exchange(received, [4, 4], [0, 4])).toBe(true);
      expect(read(received)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      // Step 2: rows [0, 1) here, [1, 3) there; the helper publishes first.
      const mine = map([10, 11, -1, -1, -1, -1], 3);
      const theirs = map([-1, -1, 12, 13, 14, 15], 3);
      expect(helper.exchange(theirs, [1, 3], [3, 3])).toBe(true);
      expect(owner.exchange(mine, [0, 1], [1, 3])).toBe(true);
      expect(read(mine)).toEqual([10, 11, 12, 13, 14, 15]);
      // Step 2 went to the other region: step 1's image is still in its own.
      expect(Array.from(new Float32Array(buffers.data, 0, 6))).toEqual([10, 11, 12, 13, 14, 15]);
      expect(Array.from(new Float32Array(buffers.data, 32, 8))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect(() => owner.exchange(map(new Array(18).fill(0), 9), [0, 9], [9, 9])).toThrow(/exceeds the shared 8/);
    });
    expect(owner.alone).toBe(false);
  });

  it('tells the owner its helper is gone (then it goes on alone) and stops the helper when the owner is', () => {
    tf.tidy(() => {
      const declined = rowExchangeBuffers(8);
      const owner = new RowExchange(declined, 0, WASM_HEAP);
      markGone(declined, 1);
      const x = map([1, 2, 3, 4], 2);
      expect(owner.exchange(x, [0, 1], [1, 2])).toBe(false);
      expect(owner.alone).toBe(true);
      expect(owner.exchange(x, [0, 1], [1, 2])).toBe(false);

      const abandoned = rowExchangeBuffers(8);
      const helper = new RowExchange(abandoned, 1, WASM_HEAP);
      new RowExchange(abandoned, 0, WASM_HEAP).leave();
      expect(() => helper.exchange(x, [1, 2], [0, 1])).toThrow(PartnerGoneError);
    });
  });

  it('gives up on a side that never publishes', () => {
    const owner = new RowExchange(rowExchangeBuffers(8), 0, WASM_HEAP, 30);
    const t0 = Date.now();
    tf.tidy(() => expect(owner.exchange(map([1, 2, 3, 4], 2), [0, 1], [1, 2])).toBe(false));
    expect(Date.now() - t0).toBeGreaterThanOrEqual(25);
    expect(owner.alone).toBe(true);
  });
});
