/**
 * The one place that decides how a PyTorch tensor is laid out in our tfjs weights.
 *
 *   conv   (out, in, kh, kw)  ->  (kh, kw, in, out)   what tf.conv2d expects for NHWC input
 *   linear (out, in)          ->  (in, out)           what tf.matMul(x, w) expects
 *   1-D / scalar                  unchanged
 *
 * Frozen BatchNorm is NOT folded here: folding is the model's business (it needs the conv it
 * belongs to), and keeping the raw statistics makes converted files easy to check against the
 * checkpoint. Linear layers keep torch's input order, so roi fc6 still expects (C, 7, 7)
 * flattening; the model reorders it for NHWC features.
 */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

export function toTfjsLayout(t: HostTensor): HostTensor {
  const { shape, data } = t;
  if (shape.length === 4) {
    const [o, i, kh, kw] = shape;
    const out = new Float32Array(data.length);
    // dst[(y, x, c, k)] = src[(k, c, y, x)]
    for (let k = 0; k < o; k++) {
      for (let c = 0; c < i; c++) {
        for (let y = 0; y < kh; y++) {
          const srcRow = ((k * i + c) * kh + y) * kw;
          for (let x = 0; x < kw; x++) {
            out[((y * kw + x) * i + c) * o + k] = data[srcRow + x];
          }
        }
      }
    }
    return { shape: [kh, kw, i, o], data: out };
  }
  if (shape.length === 2) {
    const [o, i] = shape;
    const out = new Float32Array(data.length);
    for (let r = 0; r < o; r++) {
      const src = r * i;
      for (let c = 0; c < i; c++) out[c * o + r] = data[src + c];
    }
    return { shape: [i, o], data: out };
  }
  return { shape: shape.slice(), data };
}
