// A host transcription of src/kernels/webgpu/winograd.ts for tests where no GPU is available.
import { WINOGRAD_AT, WINOGRAD_BT } from '../../src/kernels/webgpu/winograd';

/**
 * conv2dWinograd's steps (input transform, 16 GEMMs, output transform) on the host in float32
 * (Math.fround after every operation, sums in the kernels' order), for tests of the transforms
 * and layouts where no GPU is available.
 * x [N, H, W, Cin] flat, u [16, Cin, Cout] flat; returns [N, H, W, Cout].
 */
export function winogradHost(
  x: Float32Array, shape: [number, number, number, number], u: Float32Array, cout: number,
  bias: Float32Array | null, relu: boolean,
): Float32Array {
  const f = Math.fround;
  const [n, h, w, cin] = shape;
  const th = Math.ceil(h / 2);
  const tw = Math.ceil(w / 2);
  const out = new Float32Array(n * h * w * cout);
  const d = new Float32Array(16 * cin);
  const v = new Float32Array(16 * cin);
  const m = new Float32Array(16 * cout);
  for (let b = 0; b < n; b++) for (let ty = 0; ty < th; ty++) for (let tx = 0; tx < tw; tx++) {
    d.fill(0);
    for (let p = 0; p < 4; p++) for (let q = 0; q < 4; q++) {
      const iy = ty * 2 - 1 + p;
      const ix = tx * 2 - 1 + q;
      if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
      for (let c = 0; c < cin; c++) d[(p * 4 + q) * cin + c] = x[((b * h + iy) * w + ix) * cin + c];
    }
    for (let c = 0; c < cin; c++) {
      const s = new Float32Array(16);
      for (let i = 0; i < 4; i++) for (let q = 0; q < 4; q++) s[i * 4 + q] = hostCombine(WINOGRAD_BT[i], (p) => d[(p * 4 + q) * cin + c]);
      for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) v[(i * 4 + j) * cin + c] = hostCombine(WINOGRAD_BT[j], (q) => s[i * 4 + q]);
    }
    m.fill(0);
    for (let e = 0; e < 16; e++) for (let co = 0; co < cout; co++) {
      let acc = 0;
      for (let c = 0; c < cin; c++) acc = f(acc + f(v[e * cin + c] * u[(e * cin + c) * cout + co]));
      m[e * cout + co] = acc;
    }
    for (let co = 0; co < cout; co++) {
      const s = new Float32Array(8);
      for (let r = 0; r < 2; r++) for (let j = 0; j < 4; j++) s[r * 4 + j] = hostCombine(WINOGRAD_AT[r], (i) => m[(i * 4 + j) * cout + co]);
      for (let r = 0; r < 2; r++) for (let c = 0; c < 2; c++) {
        const oy = ty * 2 + r;
        const ox = tx * 2 + c;
        if (oy >= h || ox >= w) continue;
        let y = hostCombine(WINOGRAD_AT[c], (j) => s[r * 4 + j]);
        if (bias) y = f(y + bias[co]);
        out[((b * h + oy) * w + ox) * cout + co] = relu ? Math.max(y, 0) : y;
      }
    }
  }
  return out;
}

function hostCombine(coeffs: readonly number[], term: (k: number) => number): number {
  let s: number | undefined;
  coeffs.forEach((c, k) => {
    if (c === 0) return;
    s = s === undefined ? c * term(k) : Math.fround(s + c * term(k));
  });
  return s ?? 0;
}
