/** torch's bilinear resize (upsample_bilinear2d), as source taps per output index. */

/** For each output index along one axis: the two source indices and their weights. */
export interface LinearTaps {
  index0: Int32Array;
  index1: Int32Array;
  weight0: Float32Array;
  weight1: Float32Array;
}

/**
 * Source taps of torch's bilinear interpolation along one axis (align_corners=False, no
 * antialias), reproduced bit-exactly (checked against torch 1.13 by interpolating one-hot rows):
 * scale = f32(in / out); source = scale * (d + 0.5) - 0.5 evaluated in float64 (torch's CPU
 * accumulate type for float) and clamped at 0; index0 = min(floor(source), in - 1),
 * index1 = index0 + 1 except at the last pixel; weight1 = f32(source - index0) clamped to
 * [0, 1], weight0 = f32(1 - weight1).
 *
 * Why not tf.image.resizeBilinear(halfPixelCenters): on wasm it samples the same points only up
 * to float32 rounding of the source coordinate, which on the tiny_teaser input gives 1.3e-4 max
 * abs error (7e-6 relative); with these taps the error is one float32 ulp (2.4e-7).
 */
export function bilinearTaps(inSize: number, outSize: number): LinearTaps {
  const f32 = Math.fround;
  const scale = f32(inSize / outSize);
  const taps: LinearTaps = {
    index0: new Int32Array(outSize),
    index1: new Int32Array(outSize),
    weight0: new Float32Array(outSize),
    weight1: new Float32Array(outSize),
  };
  for (let d = 0; d < outSize; d++) {
    const source = Math.max(scale * (d + 0.5) - 0.5, 0);
    const i0 = Math.min(Math.floor(source), inSize - 1);
    const w1 = f32(Math.min(Math.max(source - i0, 0), 1));
    taps.index0[d] = i0;
    taps.index1[d] = i0 < inSize - 1 ? i0 + 1 : i0;
    taps.weight1[d] = w1;
    taps.weight0[d] = f32(1 - w1);
  }
  return taps;
}
