/**
 * Convolution helpers shared by the backbone (and usable by the heads): frozen BatchNorm
 * folding, PyTorch-style symmetric padding, and the geometry needed to keep batched images
 * independent of each other (see backbone.ts, "batch == single").
 */
import * as tf from '@tensorflow/tfjs-core';
import { releaseConvFilter, scaledFilterWasm } from '../kernels/webgpu';
import { convOutputSize } from '../ops/size';

/** torchvision's FrozenBatchNorm2d epsilon. */
export const FROZEN_BN_EPS = 1e-5;

export interface FrozenBatchNorm {
  weight: ArrayLike<number>;
  bias: ArrayLike<number>;
  runningMean: ArrayLike<number>;
  runningVar: ArrayLike<number>;
}

/**
 * Fold an eval-mode (frozen) BatchNorm into the convolution before it:
 *   bn(conv(x, W)) = conv(x, W * scale) + shift,  scale = weight / sqrt(var + eps),
 *   shift = bias - mean * scale.
 * `filter` is in tfjs layout (kh, kw, in, out), so the output channel is the fastest axis.
 * Computed in float64 and rounded once.
 */
export function foldFrozenBatchNorm(
  filter: ArrayLike<number>,
  bn: FrozenBatchNorm,
  eps = FROZEN_BN_EPS,
): { filter: Float32Array; bias: Float32Array } {
  const { scale, bias } = frozenBatchNormScale(filter.length, bn, eps);
  return { filter: scaledRows(filter, scale), bias };
}

/** filter[i] * scale[i % out] for every value, row by row of `out` values (without a division each). */
function scaledRows(filter: ArrayLike<number>, scale: Float64Array): Float32Array {
  const out = scale.length;
  const folded = new Float32Array(filter.length);
  for (let row = 0; row < filter.length; row += out) {
    for (let k = 0; k < out; k++) folded[row + k] = filter[row + k] * scale[k];
  }
  return folded;
}

/** foldFrozenBatchNorm's per-channel scale (float64) and folded bias, for a filter of `size` values. */
function frozenBatchNormScale(size: number, bn: FrozenBatchNorm, eps: number): { scale: Float64Array; bias: Float32Array } {
  const out = bn.weight.length;
  if (size % out !== 0) throw new Error(`foldFrozenBatchNorm: filter size ${size} is not a multiple of ${out} channels`);
  const scale = new Float64Array(out);
  const bias = new Float32Array(out);
  for (let k = 0; k < out; k++) {
    scale[k] = bn.weight[k] / Math.sqrt(bn.runningVar[k] + eps);
    bias[k] = bn.bias[k] - bn.runningMean[k] * scale[k];
  }
  return { scale, bias };
}

/**
 * foldFrozenBatchNorm as tensors of the active backend, the same numbers. On wasm the filter is
 * scaled where it lies in the heap (in WebAssembly SIMD, ~10x the host loop's rate), with no
 * host copy to move in and collect after: every worker folds every filter as it builds.
 */
export function foldFrozenBatchNormTensors(
  filter: Float32Array,
  shape: [number, number, number, number],
  bn: FrozenBatchNorm,
  eps = FROZEN_BN_EPS,
): { filter: tf.Tensor4D; bias: tf.Tensor1D } {
  const { scale, bias } = frozenBatchNormScale(filter.length, bn, eps);
  const inHeap = scaledFilterWasm(filter, scale, shape);
  return {
    filter: inHeap ?? tf.tensor4d(scaledRows(filter, scale), shape),
    bias: tf.tensor1d(bias),
  };
}

export { convOutputSize };

/**
 * Whether an op, applied to an image whose valid region along one axis is [0, region), reads
 * at or beyond `region` for some output inside its own output region. If it does and the
 * batch tensor holds non-zero values there, the image's result depends on its batch mates.
 * Example: a 3x3 stride-1 conv (pad 1) reads index `region` for its last output; a 3x3
 * stride-2 conv on an even region does not (its window ends at region - 1).
 */
export function readsBeyondRegion(region: number, kernel: number, stride: number, pad: number): boolean {
  const lastOutput = convOutputSize(region, kernel, stride, pad) - 1;
  return lastOutput * stride - pad + kernel - 1 >= region;
}

/**
 * A convolution with its bias (BatchNorm already folded in) and torch geometry. The pad is
 * symmetric, as PyTorch's, and goes to the conv as a number: TF 'same' would pad only
 * bottom/right at stride 2, and the wasm kernel (XNNPACK) pads internally, as fast as or
 * faster than tf.pad + 'valid' and bit-identical to it.
 */
export interface Conv {
  filter: tf.Tensor4D;
  bias: tf.Tensor1D;
  kernel: number;
  stride: number;
  pad: number;
}

export function makeConv(filter: tf.Tensor4D, bias: tf.Tensor1D, stride: number): Conv {
  const [kh, kw] = filter.shape;
  if (kh !== kw) throw new Error(`makeConv: square kernels only, got ${kh}x${kw}`);
  // Every conv in ResNet/FPN pads (k - 1) / 2 on each side.
  return { filter, bias, kernel: kh, stride, pad: (kh - 1) >> 1 };
}

export function disposeConv(conv: Conv): void {
  releaseConvFilter(conv.filter, conv.bias); // prepared or not
  conv.filter.dispose();
  conv.bias.dispose();
}

/**
 * A stage's own copy of a weight, on the active backend. A weight there is cloned; one on another
 * backend (a worker's weights, made on the cpu backend over shared memory) is copied from its
 * values and left where it is, where tf.clone would first move it to the active backend (into a
 * wasm heap, whose high-water mark stays) until the caller disposes it.
 */
export function ownCopy<T extends tf.Tensor>(weight: T): T {
  if (tf.engine().state.tensorInfo.get(weight.dataId)?.backend === tf.backend()) return tf.clone(weight);
  return tf.tensor(weight.dataSync(), weight.shape, weight.dtype) as T;
}
