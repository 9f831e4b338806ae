// The input transform (normalise, bilinear resize, zero-pad bottom/right) as one WebGPU dispatch
// per image. The host keeps what must match torch exactly: the bilinear taps (source indices and
// float32 weights, see transform.ts `bilinearTaps`) and the normalised value of each byte; the GPU
// only gathers and blends. Blending is float32 with an fma where the host rounds a float64 sum
// once, so values can differ from the host path by one float32 ulp.
import * as tf from '@tensorflow/tfjs';
import type { LinearTaps } from '../transform';
import { runProgram, WebGPUProgram } from './program';

class NormalizeResizePadProgram implements WebGPUProgram {
  variableNames = ['img', 'yIdx', 'yWt', 'xIdx', 'xWt', 'table'];
  variableComponents = [1, 2, 2, 2, 2, 1];
  outputShape: number[];
  shaderKey = 'i2pNormalizeResizePad';
  dispatchLayout = { x: [0, 1, 2] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [128, 1, 1];
  size = true;

  constructor(paddedH: number, paddedW: number) {
    this.outputShape = [paddedH, paddedW, 3];
    this.dispatch = [Math.ceil((paddedH * paddedW * 3) / this.workgroupSize[0]), 1, 1];
  }

  getUserCode(): string {
    return `
fn norm(v: f32, c: i32) -> f32 {
  // Byte values (the usual case) come from the host's table; anything else is computed.
  if (v >= 0.0 && v <= 255.0 && v == floor(v)) { return table[c * 256 + i32(v)]; }
  return (v / 255.0 - table[768 + c]) / table[771 + c];
}
fn main(index: i32) {
  if (index >= uniforms.size) { return; }
  let c = index % 3; let p = index / 3;
  let PW = uniforms.outShape.y; let x = p % PW; let y = p / PW;
  if (y >= uniforms.yIdxShape.x || x >= uniforms.xIdxShape.x) { result[index] = 0.0; return; }
  let W = uniforms.imgShape.y;
  let yi = yIdx[y]; let yw = yWt[y]; let xi = xIdx[x]; let xw = xWt[x];
  let r0 = fma(norm(img[(yi.x * W + xi.x) * 3 + c], c), xw.x, norm(img[(yi.x * W + xi.y) * 3 + c], c) * xw.y);
  let r1 = fma(norm(img[(yi.y * W + xi.x) * 3 + c], c), xw.x, norm(img[(yi.y * W + xi.y) * 3 + c], c) * xw.y);
  result[index] = fma(r0, yw.x, r1 * yw.y);
}`;
  }
}

function interleave<T extends Int32Array | Float32Array>(a: T, b: T, out: T): T {
  for (let i = 0; i < a.length; i++) {
    out[2 * i] = a[i];
    out[2 * i + 1] = b[i];
  }
  return out;
}

/**
 * One HWC RGB image (0..255) -> normalised, resized with the given taps, zero-padded to
 * `padded` [H, W]: (H, W, 3) float32. `table`: 3 x 256 normalised byte values, then the 3 means
 * and the 3 standard deviations (float32).
 */
export function normalizeResizePadWebGPU(
  image: tf.Tensor3D,
  yTaps: LinearTaps,
  xTaps: LinearTaps,
  padded: [number, number],
  table: Float32Array,
): tf.Tensor3D {
  if (table.length !== 774) throw new Error('normalizeResizePadWebGPU: table must hold 3 x 256 values, 3 means, 3 stds');
  return tf.tidy(() => {
    const oh = yTaps.index0.length;
    const ow = xTaps.index0.length;
    const inputs = [
      image.dtype === 'float32' ? image : tf.cast(image, 'float32'),
      tf.tensor2d(interleave(yTaps.index0, yTaps.index1, new Int32Array(2 * oh)), [oh, 2], 'int32'),
      tf.tensor2d(interleave(yTaps.weight0, yTaps.weight1, new Float32Array(2 * oh)), [oh, 2]),
      tf.tensor2d(interleave(xTaps.index0, xTaps.index1, new Int32Array(2 * ow)), [ow, 2], 'int32'),
      tf.tensor2d(interleave(xTaps.weight0, xTaps.weight1, new Float32Array(2 * ow)), [ow, 2]),
      tf.tensor1d(table),
    ];
    return runProgram<tf.Rank.R3>(new NormalizeResizePadProgram(padded[0], padded[1]), inputs);
  });
}
