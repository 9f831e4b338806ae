// Multi-scale RoIAlign (torchvision MultiScaleRoIAlign + roi_align, aligned=False) as ONE WebGPU
// dispatch over all levels and all ROIs of a batch. One thread computes 4 channels of one output
// bin; consecutive threads take consecutive channels, so every bilinear tap is a coalesced read.
// Sample points, boundary rules and the order of the arithmetic follow torchvision's CPU kernel
// (src/model/roi_align.ts describes them).
//
// Per ROI the caller supplies the box already multiplied by its level's spatial scale (a power of
// two, so the product is the same float32 torch forms) and (image, level, own map height, own
// map width): the boundary rules use the image's OWN map, which in a padded batch is smaller than
// the batch tensor (batch == single).
import * as tf from '@tensorflow/tfjs-core';
import { runProgram, WebGPUProgram } from './program';

function wgslFloat(v: number): string {
  const s = String(v);
  return s.includes('.') || s.includes('e') ? s : `${s}.0`;
}

function levelFunction(level: number, outSize: number, grid: number): string {
  const f = `f${level}`;
  return `
fn pool${level}(box: vec4<f32>, info: vec4<i32>, ph: i32, pw: i32, c4: i32) -> vec4<f32> {
  let MW = uniforms.${f}Shape.z; let C4 = uniforms.${f}Shape.w / 4;
  let base = info.x * uniforms.${f}Shape.y * MW;
  let H = info.z; let W = info.w;
  let rw = max(box.z - box.x, 1.0); let rh = max(box.w - box.y, 1.0);
  let bw = rw / ${wgslFloat(outSize)}; let bh = rh / ${wgslFloat(outSize)};
  var acc = vec4<f32>(0.0);
  for (var iy = 0; iy < ${grid}; iy++) {
    let y = box.y + f32(ph) * bh + (f32(iy) + 0.5) * bh / ${wgslFloat(grid)};
    for (var ix = 0; ix < ${grid}; ix++) {
      let x = box.x + f32(pw) * bw + (f32(ix) + 0.5) * bw / ${wgslFloat(grid)};
      if (y < -1.0 || y > f32(H) || x < -1.0 || x > f32(W)) { continue; }
      var yv = max(y, 0.0); var xv = max(x, 0.0);
      var yl = i32(yv); var xl = i32(xv); var yh = yl + 1; var xh = xl + 1;
      if (yl >= H - 1) { yl = H - 1; yh = H - 1; yv = f32(yl); }
      if (xl >= W - 1) { xl = W - 1; xh = W - 1; xv = f32(xl); }
      let ly = yv - f32(yl); let lx = xv - f32(xl); let hy = 1.0 - ly; let hx = 1.0 - lx;
      let r0 = base + yl * MW; let r1 = base + yh * MW;
      acc = acc + (hy * hx) * ${f}[(r0 + xl) * C4 + c4] + (hy * lx) * ${f}[(r0 + xh) * C4 + c4]
                + (ly * hx) * ${f}[(r1 + xl) * C4 + c4] + (ly * lx) * ${f}[(r1 + xh) * C4 + c4];
    }
  }
  return acc / ${wgslFloat(grid * grid)};
}`;
}

class MultiScaleRoiAlignProgram implements WebGPUProgram {
  variableNames: string[];
  variableComponents: number[];
  outputComponent = 4;
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0, 1, 2, 3] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [128, 1, 1];
  size = true;

  constructor(private readonly levels: number, private readonly outSize: number, private readonly grid: number, rois: number, channels: number) {
    this.variableNames = [...Array.from({ length: levels }, (_, i) => `f${i}`), 'boxes', 'roiInfo'];
    this.variableComponents = [...Array.from({ length: levels }, () => 4), 4, 4];
    this.outputShape = [rois, outSize, outSize, channels];
    const threads = (rois * outSize * outSize * channels) / 4;
    this.dispatch = [Math.ceil(threads / this.workgroupSize[0]), 1, 1];
    this.shaderKey = `i2pRoiAlign_${levels}_${outSize}_${grid}`;
  }

  getUserCode(): string {
    const p = this.outSize;
    const cases = Array.from({ length: this.levels }, (_, i) => `case ${i}: { v = pool${i}(box, info, ph, pw, c4); }`).join('\n    ');
    return `${Array.from({ length: this.levels }, (_, i) => levelFunction(i, p, this.grid)).join('\n')}
fn main(index: i32) {
  if (index >= uniforms.size) { return; }
  let C4 = uniforms.outShape.w / 4;
  let c4 = index % C4; let t = index / C4;
  let pw = t % ${p}; let t2 = t / ${p}; let ph = t2 % ${p}; let r = t2 / ${p};
  let box = boxes[r]; let info = roiInfo[r];
  var v = vec4<f32>(0.0);
  switch (info.y) {
    ${cases}
    default: {}
  }
  result[index] = v;
}`;
  }
}

/** Per-ROI inputs of `roiAlignFused`, built on the host. */
export interface RoiAlignInputs {
  /** (R*4) x1 y1 x2 y2, each already times its level's spatial scale. */
  scaledBoxes: Float32Array;
  /** (R*4) image index, level index, the image's own map height and width at that level. */
  meta: Int32Array;
}

/**
 * Pools every ROI from its level in one dispatch: (R, outputSize, outputSize, C).
 * features: NHWC batch maps per level, same channel count (a multiple of 4).
 */
export function roiAlignFused(
  features: tf.Tensor4D[],
  inputs: RoiAlignInputs,
  outputSize: number,
  samplingRatio: number,
): tf.Tensor4D {
  const channels = features[0].shape[3];
  if (channels % 4 !== 0 || features.some((f) => f.shape[3] !== channels)) {
    throw new Error('roiAlignFused: all levels need the same channel count, a multiple of 4');
  }
  if (samplingRatio <= 0) throw new Error('roiAlignFused: adaptive sampling ratio is not supported');
  const rois = inputs.meta.length / 4;
  if (rois === 0) return tf.zeros([0, outputSize, outputSize, channels]);
  return tf.tidy(() => {
    const boxes = tf.tensor2d(inputs.scaledBoxes, [rois, 4]);
    const meta = tf.tensor2d(inputs.meta, [rois, 4], 'int32');
    const program = new MultiScaleRoiAlignProgram(features.length, outputSize, samplingRatio, rois, channels);
    return runProgram<tf.Rank.R4>(program, [...features, boxes, meta]);
  });
}
