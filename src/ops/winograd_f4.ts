// Winograd F(4x4, 3x3) transforms (Lavin & Gray 2016), shared by the wasm kernels
// (src/kernels/wasm/winograd.ts) and the WebGPU kernels (src/kernels/webgpu/winograd.ts): each 4x4
// block of output pixels comes from its 6x6 input patch d as
//   Y = A^T [ sum_ci (G g G^T) . (B^T d B) ] A.
// Interpolation points 0, +-1, +-2 and infinity. Pure data and arithmetic: no tfjs.

/** B^T of F(4x4, 3x3): the input transform along one axis (points 0, +-1, +-2, infinity). */
export const WINOGRAD_F4_BT = [
  [4, 0, -5, 0, 1, 0],
  [0, -4, -4, 1, 1, 0],
  [0, 4, -4, -1, 1, 0],
  [0, -2, -1, 2, 1, 0],
  [0, 2, -1, -2, 1, 0],
  [0, 4, 0, -5, 0, 1],
] as const;
/** G: the filter transform along one axis. */
export const WINOGRAD_F4_G = [
  [1 / 4, 0, 0],
  [-1 / 6, -1 / 6, -1 / 6],
  [-1 / 6, 1 / 6, -1 / 6],
  [1 / 24, 1 / 12, 1 / 6],
  [1 / 24, -1 / 12, 1 / 6],
  [0, 0, 1],
] as const;
/** A^T: the output transform along one axis. */
export const WINOGRAD_F4_AT = [
  [1, 1, 1, 1, 1, 0],
  [0, 1, -1, 2, -2, 0],
  [0, 1, 1, 4, 4, 0],
  [0, 1, -1, 8, -8, 1],
] as const;

/**
 * U[e] = (G g G^T)[e] for a filter in tfjs layout (3, 3, in, out), as 36 [in, out] arrays,
 * e = 6 i + j: for each value, 0 + the products G[i][a] G[j][b] g[a][b] with a non-zero
 * coefficient, summed in float64 in (a, b) order and rounded once.
 */
export function winogradF4Filter(filter: Float32Array, cin: number, cout: number): Float32Array[] {
  return Array.from({ length: 36 }, (_, e) => winogradF4Position(filter, cin, cout, e, new Float32Array(cin * cout)));
}

/** `winogradF4Filter`'s U[e] alone, written into `out` (cin * cout values; where it lies is the caller's). */
export function winogradF4Position(filter: Float32Array, cin: number, cout: number, e: number, out: Float32Array): Float32Array {
  const size = cin * cout;
  if (filter.length !== 9 * size) throw new Error(`winogradF4Filter: ${filter.length} values for a 3x3 ${cin}->${cout} filter`);
  if (out.length !== size || !(e >= 0 && e < 36)) throw new Error(`winogradF4Position: position ${e} into ${out.length} values of ${size}`);
  const { k, taps } = winogradF4Terms(e);
  return sumOfProducts(
    k,
    taps.map((tap) => filter.subarray(tap * size, (tap + 1) * size)),
    out,
  );
}

/**
 * The terms of U[e]: the non-zero coefficients G[i][a] G[j][b] (float64) and their filter taps
 * a * 3 + b, in (a, b) order, e = 6 i + j; 1, 3 or 9 of them.
 */
export function winogradF4Terms(e: number): { k: number[]; taps: number[] } {
  const [i, j] = [Math.floor(e / 6), e % 6];
  const k: number[] = [];
  const taps: number[] = [];
  for (let a = 0; a < 3; a++) {
    for (let b = 0; b < 3; b++) {
      const c = WINOGRAD_F4_G[i][a] * WINOGRAD_F4_G[j][b];
      if (c !== 0) {
        k.push(c);
        taps.push(a * 3 + b);
      }
    }
  }
  return { k, taps };
}

/**
 * u[q] = 0 + k[0] t[0][q] + k[1] t[1][q] + ... in float64, rounded once to float32. G's rows have
 * 1 or 3 non-zero entries, so 1, 3 or 9 terms, each count with its own loop: the sum stays in a
 * register, where a loop over the terms would pass over an accumulator array once per term (~2x
 * slower; every worker transforms every filter when it builds the network).
 */
function sumOfProducts(k: number[], t: Float32Array[], u: Float32Array): Float32Array {
  const size = u.length;
  if (k.length === 1) {
    const [k0] = k;
    const [t0] = t;
    for (let q = 0; q < size; q++) u[q] = 0 + k0 * t0[q];
  } else if (k.length === 3) {
    const [k0, k1, k2] = k;
    const [t0, t1, t2] = t;
    for (let q = 0; q < size; q++) u[q] = 0 + k0 * t0[q] + k1 * t1[q] + k2 * t2[q];
  } else if (k.length === 9) {
    const [k0, k1, k2, k3, k4, k5, k6, k7, k8] = k;
    const [t0, t1, t2, t3, t4, t5, t6, t7, t8] = t;
    for (let q = 0; q < size; q++) {
      u[q] = 0 + k0 * t0[q] + k1 * t1[q] + k2 * t2[q] + k3 * t3[q] + k4 * t4[q] + k5 * t5[q] + k6 * t6[q] + k7 * t7[q] + k8 * t8[q];
    }
  } else {
    throw new Error(`winogradF4Filter: ${k.length} non-zero coefficients in a transform entry`);
  }
  return u;
}
