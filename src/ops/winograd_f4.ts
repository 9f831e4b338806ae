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
 * e = 6 i + j; summed in float64 and rounded once.
 */
export function winogradF4Filter(filter: Float32Array, cin: number, cout: number): Float32Array[] {
  const size = cin * cout;
  if (filter.length !== 9 * size) throw new Error(`winogradF4Filter: ${filter.length} values for a 3x3 ${cin}->${cout} filter`);
  const out: Float32Array[] = [];
  const acc = new Float64Array(size);
  for (let i = 0; i < 6; i++) {
    for (let j = 0; j < 6; j++) {
      acc.fill(0);
      for (let a = 0; a < 3; a++) {
        for (let b = 0; b < 3; b++) {
          const k = WINOGRAD_F4_G[i][a] * WINOGRAD_F4_G[j][b];
          if (k === 0) continue;
          const tap = filter.subarray((a * 3 + b) * size, (a * 3 + b + 1) * size);
          for (let q = 0; q < size; q++) acc[q] += k * tap[q];
        }
      }
      out.push(Float32Array.from(acc));
    }
  }
  return out;
}
