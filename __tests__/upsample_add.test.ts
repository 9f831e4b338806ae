// The FPN's top-down add in place on the wasm heap (src/kernels/wasm/upsample_add.ts) against
// tfjs' own ops: the same bits, or the map left untouched where it does not apply.
import * as tf from '@tensorflow/tfjs';
import { addUpsampledInPlace } from '../src/kernels/wasm/upsample_add';

/** Values of many magnitudes and signs, a few exact ties, zeros of both signs and non-finite ones. */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    const u = s / 2 ** 32;
    out[i] = (u - 0.5) * 2 ** Math.floor(u * 60 - 30);
  }
  out.set([0, -0, 1, -1, 2 ** 24, 1 + 2 ** -23, Infinity, -Infinity, NaN], 0);
  return out;
}

const bits = (a: Float32Array | Int32Array | Uint8Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('addUpsampledInPlace', () => {
  it.each([
    [1, 6, 10, 8],
    [2, 4, 6, 12],
  ])('adds the nearest-upsampled coarse map in place with the bits of tf.add (batch %i, %ix%i, %i channels)', async (n, h, w, c) => {
    expect(tf.getBackend()).toBe('wasm');
    const lateral = values(n * h * w * c, 1);
    const coarse = values(n * (h / 2) * (w / 2) * c, 7);
    // The coarse value of (r, x) is coarse[floor(r / 2)][floor(x / 2)]: tf.add with resizeNearestNeighbor.
    const expected = tf.tidy(() =>
      tf.add(tf.tensor4d(lateral, [n, h, w, c]), tf.image.resizeNearestNeighbor(tf.tensor4d(coarse, [n, h / 2, w / 2, c]), [h, w], false, false)),
    );
    const y = tf.tensor4d(lateral, [n, h, w, c]);
    const x = tf.tensor4d(coarse, [n, h / 2, w / 2, c]);
    expect(addUpsampledInPlace(y, x)).toBe(true);
    expect(bits((await y.data()) as Float32Array).equals(bits((await expected.data()) as Float32Array))).toBe(true);
    tf.dispose([expected, y, x]);
  });

  it.each([
    ['sizes not exactly 2x', [1, 5, 6, 4], [1, 3, 3, 4]],
    ['channels not a multiple of 4', [1, 4, 6, 6], [1, 2, 3, 6]],
  ])('leaves the map untouched where it does not apply: %s', async (_, shape, coarseShape) => {
    const y = tf.tensor4d(values(shape.reduce((a, b) => a * b, 1), 3), shape as [number, number, number, number]);
    const before = (await y.data()) as Float32Array;
    const x = tf.ones(coarseShape) as tf.Tensor4D;
    expect(addUpsampledInPlace(y, x)).toBe(false);
    expect(bits((await y.data()) as Float32Array).equals(bits(before))).toBe(true);
    tf.dispose([y, x]);
  });
});
