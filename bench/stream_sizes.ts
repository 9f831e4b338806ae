/**
 * The random image sizes of the stream benchmarks: n [height, width] pairs, each side uniform in
 * 100..2000, from a 32-bit LCG (Numerical Recipes' constants) so that bench/upstream_gpu_stream.py
 * draws the same list.
 */
export function streamSizes(n: number, seed = 1): [number, number][] {
  let x = seed >>> 0;
  const next = (): number => {
    x = (Math.imul(1664525, x) + 1013904223) >>> 0;
    return 100 + (x % 1901);
  };
  return Array.from({ length: n }, () => [next(), next()] as [number, number]);
}
