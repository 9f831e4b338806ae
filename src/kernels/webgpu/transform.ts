// The input transform (normalise, bilinear resize, zero-pad bottom/right) of a whole batch as one
// WebGPU dispatch. The host keeps what must match torch exactly: the bilinear taps (source indices
// and float32 weights, see transform.ts `bilinearTaps`) and the normalised value of each byte; the
// GPU only gathers and blends. Blending is float32 with an fma where the host rounds a float64 sum
// once, so values can differ from the host path by one float32 ulp.
// One dispatch and two small uploads per batch, not per image: per image, the uploads and bind
// groups cost ~1 ms of host time each while the GPU work is microseconds (docs/webgpu.md).
// Decoded 8-bit samples are uploaded as they are, four to a word, and unpacked by the shader:
// a quarter of a float32 image's bytes and no float copy on the host.
import * as tf from '@tensorflow/tfjs-core';
import type { LinearTaps } from '../../ops/resize';
import { runProgram, WebGPUProgram } from './program';

/**
 * An image's 8-bit samples as decoded, row-major HWC: gray (1 channel, replicated to RGB), RGB (3)
 * or RGBA (4; the alpha is ignored, as PIL's convert('RGB') drops it).
 */
export interface ImageBytes {
  data: Uint8Array | Uint8ClampedArray;
  height: number;
  width: number;
  channels: 1 | 3 | 4;
}

/** Int32 words per image in the header of the taps buffer. */
const HEADER = 8;

/**
 * The shader of both programs: per output value, the bilinear blend of four normalised samples,
 * each read by the program's own `sample(off, W, h, yy, xx, c)` (image start, source width, header
 * word, source row and column, channel).
 */
function blendShader(sampleFn: string): string {
  return `${sampleFn}
fn main(index: i32) {
  if (index >= uniforms.size) { return; }
  let c = index % 3; let p = index / 3;
  let PW = uniforms.outShape.z; let PH = uniforms.outShape.y;
  let x = p % PW; let q = p / PW; let y = q % PH; let n = q / PH;
  let h = n * ${HEADER};
  if (y >= taps[h + 2] || x >= taps[h + 3]) { result[index] = 0.0; return; }
  let off = taps[h]; let W = taps[h + 1];
  let ty = taps[h + 4] + y * 4; let tx = taps[h + 5] + x * 4;
  let y0 = taps[ty]; let y1 = taps[ty + 1]; let yw0 = bitcast<f32>(taps[ty + 2]); let yw1 = bitcast<f32>(taps[ty + 3]);
  let x0 = taps[tx]; let x1 = taps[tx + 1]; let xw0 = bitcast<f32>(taps[tx + 2]); let xw1 = bitcast<f32>(taps[tx + 3]);
  let r0 = fma(sample(off, W, h, y0, x0, c), xw0, sample(off, W, h, y0, x1, c) * xw1);
  let r1 = fma(sample(off, W, h, y1, x0, c), xw0, sample(off, W, h, y1, x1, c) * xw1);
  result[index] = fma(r0, yw0, r1 * yw1);
}`;
}

class NormalizeResizePadBatchProgram implements WebGPUProgram {
  variableNames = ['img', 'taps', 'table'];
  outputShape: number[];
  shaderKey = 'i2pNormalizeResizePadBatch';
  dispatchLayout = { x: [0, 1, 2, 3] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [128, 1, 1];
  size = true;

  constructor(n: number, paddedH: number, paddedW: number) {
    this.outputShape = [n, paddedH, paddedW, 3];
    this.dispatch = [Math.ceil((n * paddedH * paddedW * 3) / this.workgroupSize[0]), 1, 1];
  }

  // taps: per image a header [first value of the image in img, source width, resized h, resized
  // w, y taps offset, x taps offset, channels, -], then the taps, 4 words each: index0, index1,
  // weight0, weight1 (weights as float32 bits).
  getUserCode(): string {
    return blendShader(`
fn sample(off: i32, W: i32, h: i32, yy: i32, xx: i32, c: i32) -> f32 {
  // f32(): tfjs casts int32 to float32 by relabelling the same buffer, so img may hold i32.
  let v = f32(img[off + (yy * W + xx) * 3 + c]);
  // Byte values (the usual case) come from the host's table; anything else is computed.
  if (v >= 0.0 && v <= 255.0 && v == floor(v)) { return table[c * 256 + i32(v)]; }
  return (v / 255.0 - table[768 + c]) / table[771 + c];
}`);
  }
}

/**
 * The same transform reading 8-bit samples packed four to an int32 word (little-endian, as the
 * bytes lie in memory). Header word 0 is the image's first byte, word 6 its channel count. Every
 * sample is a byte, so every value comes from the table: bit for bit the float program's result on
 * the same image.
 */
class NormalizeResizePadBytesProgram extends NormalizeResizePadBatchProgram {
  override shaderKey = 'i2pNormalizeResizePadBytes';

  override getUserCode(): string {
    return blendShader(`
fn sample(off: i32, W: i32, h: i32, yy: i32, xx: i32, c: i32) -> f32 {
  let ch = taps[h + 6];
  let at = off + (yy * W + xx) * ch + select(c, 0, ch == 1);
  let byte = (bitcast<u32>(img[at >> 2u]) >> (u32(at & 3) * 8u)) & 255u;
  return table[c * 256 + i32(byte)];
}`);
  }
}

/** The batch's header and taps in one int32 buffer (float weights stored as their bits). */
function packTaps(images: Array<{ width: number; start: number; channels: number }>, yTaps: LinearTaps[], xTaps: LinearTaps[]): Int32Array {
  const n = images.length;
  const count = yTaps.reduce((s, t) => s + t.index0.length, 0) + xTaps.reduce((s, t) => s + t.index0.length, 0);
  const words = new Int32Array(n * HEADER + 4 * count);
  const bits = new Float32Array(words.buffer);
  let at = n * HEADER;
  const put = (t: LinearTaps): number => {
    const start = at;
    for (let d = 0; d < t.index0.length; d++, at += 4) {
      words[at] = t.index0[d];
      words[at + 1] = t.index1[d];
      bits[at + 2] = t.weight0[d];
      bits[at + 3] = t.weight1[d];
    }
    return start;
  };
  images.forEach((img, i) => {
    const h = i * HEADER;
    words[h] = img.start;
    words[h + 1] = img.width;
    words[h + 2] = yTaps[i].index0.length;
    words[h + 3] = xTaps[i].index0.length;
    words[h + 4] = put(yTaps[i]);
    words[h + 5] = put(xTaps[i]);
    words[h + 6] = img.channels;
  });
  return words;
}

/**
 * The images' samples packed into int32 words, each image starting on a word: a view of the
 * caller's bytes where one word-aligned image is all there is, else one copy of them all.
 */
function packBytes(images: ImageBytes[]): { words: Int32Array; starts: number[] } {
  const only = images.length === 1 ? images[0].data : null;
  if (only && only.byteOffset % 4 === 0 && only.byteLength % 4 === 0) {
    return { words: new Int32Array(only.buffer, only.byteOffset, only.byteLength / 4), starts: [0] };
  }
  const starts: number[] = [];
  let bytes = 0;
  for (const img of images) {
    starts.push(bytes);
    bytes += Math.ceil(img.data.byteLength / 4) * 4;
  }
  const words = new Int32Array(bytes / 4);
  const view = new Uint8Array(words.buffer);
  images.forEach((img, i) => view.set(img.data, starts[i]));
  return { words, starts };
}

function checkTransformArgs(name: string, n: number, yTaps: LinearTaps[], xTaps: LinearTaps[], table: Float32Array): void {
  if (table.length !== 774) throw new Error(`${name}: table must hold 3 x 256 values, 3 means, 3 stds`);
  if (n === 0 || yTaps.length !== n || xTaps.length !== n) {
    throw new Error(`${name}: one y and one x tap set per image, at least one image`);
  }
}

/**
 * HWC RGB images (0..255) -> normalised, each resized with its taps and zero-padded to `padded`
 * [H, W]: (N, H, W, 3) float32. `table`: 3 x 256 normalised byte values, then the 3 means and the
 * 3 standard deviations (float32).
 */
export function normalizeResizePadBatchWebGPU(
  images: tf.Tensor3D[],
  yTaps: LinearTaps[],
  xTaps: LinearTaps[],
  padded: [number, number],
  table: Float32Array,
): tf.Tensor4D {
  checkTransformArgs('normalizeResizePadBatchWebGPU', images.length, yTaps, xTaps, table);
  return tf.tidy(() => {
    const flat = images.map((img) => tf.reshape(img.dtype === 'float32' ? img : tf.cast(img, 'float32'), [-1]));
    let start = 0;
    const layout = images.map((img) => {
      const entry = { width: img.shape[1], start, channels: 3 };
      start += img.size;
      return entry;
    });
    const inputs = [
      flat.length === 1 ? flat[0] : tf.concat(flat),
      tf.tensor1d(packTaps(layout, yTaps, xTaps), 'int32'),
      tf.tensor1d(table),
    ];
    return runProgram<tf.Rank.R4>(new NormalizeResizePadBatchProgram(images.length, padded[0], padded[1]), inputs);
  });
}

/**
 * `normalizeResizePadBatchWebGPU` on decoded 8-bit samples (gray, RGB or RGBA), uploaded as they
 * are: the same result, bit for bit, as on their float32 RGB tensors.
 */
export function normalizeResizePadBytesWebGPU(
  images: ImageBytes[],
  yTaps: LinearTaps[],
  xTaps: LinearTaps[],
  padded: [number, number],
  table: Float32Array,
): tf.Tensor4D {
  checkTransformArgs('normalizeResizePadBytesWebGPU', images.length, yTaps, xTaps, table);
  images.forEach((img, i) => {
    if (img.data.length !== img.height * img.width * img.channels) {
      throw new Error(`normalizeResizePadBytesWebGPU: image ${i} holds ${img.data.length} samples, not ${img.height}x${img.width}x${img.channels}`);
    }
  });
  const { words, starts } = packBytes(images);
  return tf.tidy(() => {
    const layout = images.map((img, i) => ({ width: img.width, start: starts[i], channels: img.channels }));
    const inputs = [tf.tensor1d(words, 'int32'), tf.tensor1d(packTaps(layout, yTaps, xTaps), 'int32'), tf.tensor1d(table)];
    return runProgram<tf.Rank.R4>(new NormalizeResizePadBytesProgram(images.length, padded[0], padded[1]), inputs);
  });
}
