/**
 * Float64 references for the WGSL programs' checks, written from PyTorch / torchvision semantics
 * (not from our kernels): convolution with symmetric zero padding and a nearest-upsampled residual,
 * and multi-scale RoIAlign (aligned=False, fixed sampling ratio).
 */
import { convOutputSize } from '../../src/kernels/webgpu';

export interface ConvCase {
  x: [number, number, number, number];
  k: number;
  cout: number;
  stride: number;
  pad: number;
  relu: boolean;
  residual?: 'same' | 'upsample';
}

export interface ConvData {
  x: Float32Array;
  w: Float32Array;
  b: Float32Array;
  /** Residual map and its [h, w]. */
  res?: { data: Float32Array; h: number; w: number };
}

export function convOutShape(c: ConvCase): [number, number, number, number] {
  return [c.x[0], convOutputSize(c.x[1], c.k, c.stride, c.pad), convOutputSize(c.x[2], c.k, c.stride, c.pad), c.cout];
}

/** conv + bias (+ residual, nearest-upsampled when smaller: F.interpolate) (+ ReLU), NHWC, w (kh, kw, in, out). */
export function convReference64(c: ConvCase, d: ConvData): Float64Array {
  const [n, h, wd, cin] = c.x;
  const [, ho, wo] = convOutShape(c);
  const out = new Float64Array(n * ho * wo * c.cout);
  for (let bi = 0; bi < n; bi++) for (let oy = 0; oy < ho; oy++) for (let ox = 0; ox < wo; ox++) for (let co = 0; co < c.cout; co++) {
    let s = d.b[co];
    for (let ky = 0; ky < c.k; ky++) for (let kx = 0; kx < c.k; kx++) {
      const iy = oy * c.stride - c.pad + ky;
      const ix = ox * c.stride - c.pad + kx;
      if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
      for (let ci = 0; ci < cin; ci++) s += d.x[((bi * h + iy) * wd + ix) * cin + ci] * d.w[((ky * c.k + kx) * cin + ci) * c.cout + co];
    }
    if (d.res) {
      const { h: hr, w: wr, data } = d.res;
      // torch nearest: source index floor(dst * (in / out)) with the scale in float32.
      const ry = Math.min(Math.floor(oy * Math.fround(hr / ho)), hr - 1);
      const rx = Math.min(Math.floor(ox * Math.fround(wr / wo)), wr - 1);
      s += data[((bi * hr + ry) * wr + rx) * c.cout + co];
    }
    out[((bi * ho + oy) * wo + ox) * c.cout + co] = c.relu ? Math.max(s, 0) : s;
  }
  return out;
}

export interface RoiCase {
  channels: number;
  /** Batch map [h, w] per level. */
  maps: [number, number][];
  /** Per ROI: x1 y1 x2 y2 already times its level's scale. */
  scaledBoxes: Float32Array;
  /** Per ROI: image, level, the image's own map height and width at that level. */
  meta: Int32Array;
}

/**
 * torchvision roi_align (aligned=False) of each ROI from its level, float32 sample coordinates as
 * torch forms them, float64 accumulation: [R, out, out, C].
 */
export function roiAlignReference64(feats: Float32Array[], rc: RoiCase, outSize: number, grid: number): Float64Array {
  const f = Math.fround;
  const c = rc.channels;
  const rois = rc.meta.length / 4;
  const out = new Float64Array(rois * outSize * outSize * c);
  for (let r = 0; r < rois; r++) {
    const [b, lvl, h, w] = rc.meta.subarray(r * 4, r * 4 + 4);
    const [mh, mw] = rc.maps[lvl];
    const data = feats[lvl];
    const [sx, sy, ex, ey] = rc.scaledBoxes.subarray(r * 4, r * 4 + 4);
    const rw = Math.max(f(ex - sx), 1);
    const rh = Math.max(f(ey - sy), 1);
    const bw = f(rw / outSize);
    const bh = f(rh / outSize);
    const base = b * mh * mw;
    for (let ph = 0; ph < outSize; ph++) for (let pw = 0; pw < outSize; pw++) {
      const acc = new Float64Array(c);
      for (let iy = 0; iy < grid; iy++) {
        const y0 = f(f(sy + f(ph * bh)) + f(f((iy + 0.5) * bh) / grid));
        for (let ix = 0; ix < grid; ix++) {
          const x0 = f(f(sx + f(pw * bw)) + f(f((ix + 0.5) * bw) / grid));
          if (y0 < -1 || y0 > h || x0 < -1 || x0 > w) continue;
          let y = Math.max(y0, 0);
          let x = Math.max(x0, 0);
          let yl = Math.trunc(y);
          let xl = Math.trunc(x);
          let yh = yl + 1;
          let xh = xl + 1;
          if (yl >= h - 1) { yl = yh = h - 1; y = yl; }
          if (xl >= w - 1) { xl = xh = w - 1; x = xl; }
          const ly = f(y - yl);
          const lx = f(x - xl);
          const hy = f(1 - ly);
          const hx = f(1 - lx);
          const taps: [number, number, number][] = [[yl, xl, f(hy * hx)], [yl, xh, f(hy * lx)], [yh, xl, f(ly * hx)], [yh, xh, f(ly * lx)]];
          for (const [yy, xx, wt] of taps) {
            const o = (base + yy * mw + xx) * c;
            for (let ch = 0; ch < c; ch++) acc[ch] += wt * data[o + ch];
          }
        }
      }
      const o = ((r * outSize + ph) * outSize + pw) * c;
      for (let ch = 0; ch < c; ch++) out[o + ch] = acc[ch] / (grid * grid);
    }
  }
  return out;
}
