/**
 * `toTfjsLayout` (layout.ts) is the one place that decides the tfjs layout. The converter needs
 * that decision as an axis permutation, so it can transpose while copying a strided checkpoint
 * view straight into a shard; we read the permutation off `toTfjsLayout` itself by probing it
 * with a tensor whose dims are all different and whose values are their own flat indices.
 */
import { toTfjsLayout } from './layout';

const cache = new Map<number, number[]>();
const PROBE_DIMS = [2, 3, 4, 5, 6, 7];

/** `perm` such that tfjs tensor axis `a` is torch axis `perm[a]`, for tensors of rank `rank`. */
export function tfjsAxisOrder(rank: number): number[] {
  const hit = cache.get(rank);
  if (hit) return hit;
  if (rank > PROBE_DIMS.length) throw new Error(`no tfjs layout for rank ${rank}`);
  const shape = PROBE_DIMS.slice(0, rank);
  const numel = shape.reduce((a, b) => a * b, 1);
  const probe = toTfjsLayout({ shape, data: Float32Array.from({ length: numel }, (_, i) => i) });
  const perm = probe.shape.map((n) => shape.indexOf(n));
  if (perm.length !== rank || new Set(perm).size !== rank || perm.some((p) => p < 0)) {
    throw new Error(`toTfjsLayout is not an axis permutation for rank ${rank}`);
  }
  // every probed value must sit where the permutation says
  const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
  const outShape = probe.shape;
  for (let i = 0; i < numel; i++) {
    let rem = i;
    let src = 0;
    for (let a = rank - 1; a >= 0; a--) {
      src += (rem % outShape[a]) * strides[perm[a]];
      rem = Math.floor(rem / outShape[a]);
    }
    if (probe.data[i] !== src) throw new Error(`toTfjsLayout is not an axis permutation for rank ${rank}`);
  }
  cache.set(rank, perm);
  return perm;
}

/** The tfjs-layout shape of a tensor with torch shape `shape`. */
export function tfjsShape(shape: readonly number[]): number[] {
  return tfjsAxisOrder(shape.length).map((a) => shape[a]);
}
