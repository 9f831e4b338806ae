/** Sizes along the two spatial axes, shared by every layer of the network. */

/** [height, width] in pixels (or feature-map cells). */
export type Size = [number, number];

/** Output length of a conv/pool along one axis (PyTorch: symmetric pad, floor rounding). */
export function convOutputSize(size: number, kernel: number, stride: number, pad: number): number {
  return Math.floor((size + 2 * pad - kernel) / stride) + 1;
}
