// The FPN's top-down add, a lateral map plus its coarser level nearest-upsampled 2x, in place on
// the wasm heap, in WebAssembly SIMD (tools/upsample_add.wat). Why: tf.add makes a second map the
// size of the lateral's (47 MB at FPN level 0 of a 1152x640 input), and the lateral conv's output
// and that sum alive together set a worker's heap high-water mark. A float32 add per value: the
// bits of tf.add.
import * as tf from '@tensorflow/tfjs-core';
import { asWasmBackend, heapView } from './backend';
import { compiledOnce, onHeap } from './module';
import { UPSAMPLE_ADD_WASM } from './upsample_add_wasm';

const kernel = onHeap<{ row(out: number, src: number, w: number, c: number): void }>(compiledOnce(UPSAMPLE_ADD_WASM));

/**
 * y += coarse nearest-upsampled to y's size, in place, where both lie in the wasm heap, y is
 * exactly twice coarse's height and width and the channels a multiple of 4; false (y untouched)
 * otherwise. y's values must be y's alone (a kernel's fresh output): they change where they lie.
 */
export function addUpsampledInPlace(y: tf.Tensor4D, coarse: tf.Tensor4D): boolean {
  const be = asWasmBackend(tf.backend());
  const [n, h, w, c] = y.shape;
  const [cn, hc, wc, cc] = coarse.shape;
  if (!be || y.dtype !== 'float32' || coarse.dtype !== 'float32' || cn !== n || cc !== c || c % 4 !== 0 || h !== 2 * hc || w !== 2 * wc) return false;
  const add = kernel(be.wasm.asm.memory);
  if (!add) return false;
  const out = heapView(be, y).byteOffset;
  const src = heapView(be, coarse).byteOffset;
  for (let row = 0; row < n * h; row++) {
    // Output row r of an image reads its coarse row floor(r / 2).
    const coarseRow = Math.floor(row / h) * hc + ((row % h) >> 1);
    add.row(out + row * w * c * 4, src + coarseRow * wc * c * 4, w, c);
  }
  return true;
}
