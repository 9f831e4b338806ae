// One switch between the portable path (stock tfjs ops, any backend) and our WebGPU programs.
// Stage code calls `kernels.conv` / `kernels.linear` on the `Kernels` it was built with instead of
// tf.conv2d / tf.matMul. Each network holds its own `Kernels`, so two networks in one process
// may run different kernels.
import * as tf from '@tensorflow/tfjs-core';
import { ConvOptions, conv2dFused, conv2dPortable, convEpilogue, linearFused, linearPortable, prepareLinear, preparePadded, releasePadded } from './conv2d';
import { conv2dWinograd, prepareWinograd, releaseWinograd, winogradFilterFor, winogradOptionsFit } from './winograd';
import { conv2dWinogradWasm, releaseWasmWinograd, wasmWinogradAvailable, wasmWinogradFilter, wasmWinogradFits } from '../wasm/winograd';
export { scaledFilterWasm } from '../wasm/winograd';
import { usePacked } from '../wasm/packed';
import { conv2dGemm, conv2dRowBands, gemmConvFits } from '../wasm/gemm_conv';

type ExplicitPads = [[number, number], [number, number], [number, number], [number, number]];

export type KernelMode = 'portable' | 'webgpu';

/**
 * The kernels a network's stages run. Mode 'webgpu' runs our WebGPU programs while the webgpu
 * backend is active; elsewhere, and always in mode 'portable', the stock ops run, except that the
 * stride-1 3x3 convolutions the stages mark for Winograd take our F(4x4, 3x3) on the wasm
 * backend (src/kernels/wasm/winograd.ts), and there the 1x1 and the larger other convolutions run
 * as one GEMM (src/kernels/wasm/gemm_conv.ts).
 */
export class Kernels {
  constructor(readonly mode: KernelMode) {}

  /** True when our WebGPU programs run: mode 'webgpu' and the webgpu backend active. */
  get webgpu(): boolean {
    return this.mode === 'webgpu' && tf.getBackend() === 'webgpu';
  }

  /** Convolution with PyTorch's symmetric padding, bias, optional residual (maybe upsampled) and ReLU. NHWC; w (kh, kw, in, out). */
  conv(x: tf.Tensor4D, w: tf.Tensor4D, bias: tf.Tensor1D | null, opts: ConvOptions): tf.Tensor4D {
    if (!this.webgpu) {
      const rows = opts.rows;
      const bandOnly = opts.bandOnly === true && rows !== undefined;
      const noBandOnly = (): void => {
        if (bandOnly) throw new Error(`Kernels.conv: a band of rows alone is made by the row-band path only, not for a [${w.shape}] filter`);
      };
      if (this.wasmWinograd(w, opts)) {
        noBandOnly();
        return conv2dWinogradWasm(x, w, bias, opts.relu, opts.residual, undefined, rows);
      }
      // On wasm, XNNPACK packs w for this bias, activation and geometry (see ../wasm/packed).
      const activation = opts.relu && opts.residual === undefined ? 'relu' : 'linear';
      const bias_ = `bias ${bias ? bias.id : 'none'}`;
      if (tf.getBackend() === 'wasm' && gemmConvFits(w.shape)) {
        noBandOnly();
        // As one GEMM: XNNPACK's fully-connected operator holds less than its convolution (../wasm/gemm_conv).
        return convEpilogue(opts, (relu) =>
          conv2dGemm(x, w, bias, opts.stride, opts.pad, relu, (run) => usePacked(w, `matMul ${relu ? 'relu' : 'linear'} ${bias_}`, run), undefined, rows),
        );
      }
      if (tf.getBackend() === 'wasm' && w.shape[0] === w.shape[1]) {
        // In bands of output rows, each from a window of input rows: XNNPACK's indirection buffer
        // stays small for the stem, and any band of rows can be computed alone (../wasm/gemm_conv).
        const conv = (window: tf.Tensor4D, pads: ExplicitPads, relu: boolean) =>
          usePacked(w, `conv stride ${opts.stride} pad 0,${opts.pad} ${relu ? 'relu' : 'linear'} ${bias_}`, () =>
            tf.fused.conv2d({ x: window, filter: w, strides: opts.stride, pad: pads, bias: bias ?? undefined, activation: relu ? 'relu' : 'linear' }),
          );
        return convEpilogue(opts, (relu) => conv2dRowBands(x, w, opts.stride, opts.pad, (window, pads) => conv(window, pads, relu), undefined, rows, bandOnly));
      }
      if (rows) throw new Error('Kernels.conv: output rows alone need the wasm backend');
      return usePacked(w, `conv stride ${opts.stride} pad ${opts.pad} ${activation} ${bias_}`, () => conv2dPortable(x, w, bias, opts));
    }
    if (opts.rows) throw new Error('Kernels.conv: output rows alone need the wasm backend');
    const u = winogradFilterFor(w, opts);
    return u ? conv2dWinograd(x, u, bias, opts) : conv2dFused(x, w, bias, opts);
  }

  /**
   * The multiple a band of output rows computed alone (`ConvOptions.rows`) must start at for this
   * convolution: 4 where it takes F(4x4, 3x3) on wasm (a band starts at a tile row), else 1.
   */
  rowAlign(w: tf.Tensor4D, opts: ConvOptions): number {
    return !this.webgpu && this.wasmWinograd(w, opts) ? 4 : 1;
  }

  private wasmWinograd(w: tf.Tensor4D, opts: ConvOptions): boolean {
    return winogradOptionsFit(opts) && wasmWinogradFits(w.shape) && wasmWinogradAvailable();
  }

  /** x (rows, in) @ w (in, out) + bias, optional ReLU. */
  linear(x: tf.Tensor2D, w: tf.Tensor2D, bias: tf.Tensor1D | null, relu: boolean): tf.Tensor2D {
    if (this.webgpu) return linearFused(x, w, bias, relu);
    return usePacked(w, `matMul ${relu ? 'relu' : 'linear'} bias ${bias ? bias.id : 'none'}`, () => linearPortable(x, w, bias, relu));
  }
}

/** The stock tfjs ops on every backend. */
export const PORTABLE_KERNELS = new Kernels('portable');

/**
 * Called by a stage for each conv filter (and bias) it owns, once, when it is built: on the webgpu
 * backend, keeps what our kernels' fast paths need (the Winograd-transformed filter for the tile of
 * the IMG2POSE_WINOGRAD_TILE flag, channel-padded copies), whatever the kernel mode is then, so the
 * mode can change later; on the wasm backend, the
 * F(4x4, 3x3) filters of the layers that take it (else made on first use). `releaseConvFilter`
 * frees them.
 */
export function prepareConvFilter(w: tf.Tensor4D, bias: tf.Tensor1D | null = null): void {
  if (tf.getBackend() === 'wasm' && wasmWinogradFits(w.shape) && wasmWinogradAvailable()) wasmWinogradFilter(w);
  if (tf.getBackend() !== 'webgpu') return;
  prepareWinograd(w);
  preparePadded(w, bias);
}

export function releaseConvFilter(w: tf.Tensor4D, bias: tf.Tensor1D | null = null): void {
  releaseWinograd(w);
  releaseWasmWinograd(w);
  releasePadded(w, bias);
}

/**
 * `prepareConvFilter` for a linear layer's weight (in, out) and bias: on the webgpu backend, keeps
 * their channel-padded copies where `out` is not a multiple of 4. `releaseLinearWeight` frees them.
 */
export function prepareLinearWeight(w: tf.Tensor2D, bias: tf.Tensor1D | null = null): void {
  if (tf.getBackend() === 'webgpu') prepareLinear(w, bias);
}

export function releaseLinearWeight(w: tf.Tensor2D, bias: tf.Tensor1D | null = null): void {
  releasePadded(w, bias);
}

export type { ConvOptions, ConvTile, Rows } from './conv2d';
export { packingRun, packStage } from '../wasm/packed';
export { addUpsampled, conv2dFused, conv2dPortable, convShaderSource, linearFused, linearPortable, chooseTile } from './conv2d';
export { convOutputSize } from '../../ops/size';
export { initWebGPUBackend } from './dawn';
export type { WebGPUAdapterSummary } from './dawn';
export { gpuSync, gpuMemory } from './program';
export { DEFAULT_POOL_LIMIT, UPLOAD_CHUNK_FLAG, releaseGpuPool, sizeClass, sizeClassPoolLimit, trimPool, useGpuPool, useSizeClassPool } from './buffer_pool';
export { roiAlignFused } from './roi_align';
export { GPU_RECORD_FLAG, uniformLayout, useFastRecording } from './record';
export {
  conv2dWinograd, winogradEnabled, winogradFilter, winogradTile, winogradTiles, WINOGRAD_F4_FUSED_FLAG, WINOGRAD_FLAG, WINOGRAD_MIN_CHANNELS,
  WINOGRAD_TILE_FLAG,
  WINOGRAD_AUTO_F4_MAX_CHANNELS,
} from './winograd';
export type { F4Input, WinogradTile } from './winograd';
export type { RoiAlignInputs } from './roi_align';
export { normalizeResizePadBatchWebGPU, normalizeResizePadBytesWebGPU } from './transform';
export type { ImageBytes } from './transform';
