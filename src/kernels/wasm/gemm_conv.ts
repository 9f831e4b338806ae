// Convolutions on the wasm backend that keep less in XNNPACK's operators. Most as one GEMM: the input's patches (im2col; for a 1x1 filter the
// input itself, subsampled at stride 2) times the filter read as a [kh * kw * in, out] matrix.
// Why: tfjs-wasm's convolution keeps XNNPACK's operator for as long as the filter lives, and that
// operator holds ~2.4x the filter's size plus ~0.8 MB (measured on tfjs-backend-wasm 4.22); a
// fully-connected operator holds ~1.03x. For ResNet-18's layer4 and the 1x1 convolutions that is
// ~60 MB less per thread. The numbers are the same bits: XNNPACK's IGEMM and GEMM microkernels
// both start each output from the bias and add the products in the order (ky, kx, channel), which
// is the patches' column order (checked in __tests__/winograd_wasm.test.ts against the
// convolution); each row is one output pixel computed alone, so a batch equals its images.
import * as tf from '@tensorflow/tfjs-core';
import { asWasmBackend, outputInto } from './backend';
import { convOutputSize } from '../../ops/size';

/** Smallest 3x3 filter (values) this path takes: below it the patches cost more than the operator saves. */
const MIN_SPATIAL_FILTER = 1 << 18;

/** Most bytes of patches one GEMM takes: larger outputs run in bands of output rows, written into one output. */
const BAND_BYTES = 16 << 20;

/** Whether a convolution with this filter (kh, kw, in, out) takes the GEMM path. Depends on the layer only. */
export function gemmConvFits(shape: readonly number[]): boolean {
  const [kh, kw, cin, cout] = shape;
  return kh === kw && kh < STEM_KERNEL && (kh === 1 || kh * kw * cin * cout >= MIN_SPATIAL_FILTER);
}

/**
 * Filters this large (the 7x7 stem) keep XNNPACK's convolution, run in bands of output rows: its
 * operator keeps an indirection buffer of kh * kw pointers per output pixel of the last input it
 * ran on for the life of the filter (34 MB for the stem at 640x1152), and as patches for a GEMM the
 * stem's 3 channels run ~1.4x slower. Each band reads a window of input rows, zeros outside the
 * map, so every band's convolution pads only left and right: one operator, the same bits. The 3x3
 * filters too small for the GEMM path run the same way (Kernels.conv), so that every convolution
 * of the body can compute a band of its rows alone.
 */
export const STEM_KERNEL = 7;

/** Output rows per band of a banded convolution: its indirection buffer is then ~4.5 MB at most. */
const BAND_OUTPUT_PIXELS = 23_040;

const KERNEL = 'Img2PosePatches';
const PLACE_KERNEL = 'Img2PosePlaceRows';
const WINDOW_KERNEL = 'Img2PoseRowWindow';

interface PatchAttrs {
  k: number;
  stride: number;
  pad: number;
  /** Output rows (over n * ho: image, then row) whose pixels' patches are made. */
  rowStart: number;
  rowCount: number;
}

/** Each output pixel's k x k window of channel vectors, copied where the tensors lie in the heap (zeros outside the map). */
function patchKernel({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: unknown }): tf.TensorInfo {
  const be = asWasmBackend(backend);
  const x = inputs.x;
  if (!be || !x) throw new Error(`${KERNEL}: a float32 input on the wasm backend`);
  const { k, stride, pad, rowStart, rowCount } = attrs as PatchAttrs;
  const [, h, w, c] = x.shape;
  const ho = convOutputSize(h, k, stride, pad);
  const wo = convOutputSize(w, k, stride, pad);
  const out = be.makeOutput([rowCount * wo, k * k * c], 'float32');
  const from = be.dataIdMap.get(x.dataId)?.memoryOffset;
  const to = be.dataIdMap.get(out.dataId)?.memoryOffset;
  if (from === undefined || to === undefined) throw new Error(`${KERNEL}: tensors not on the wasm backend`);
  // After makeOutput: it may have grown the memory, which replaces the buffer.
  const heap = new Float32Array(be.wasm.asm.memory.buffer);
  const src = from >> 2;
  let dst = to >> 2;
  for (let r = rowStart; r < rowStart + rowCount; r++) {
    const b = Math.floor(r / ho);
    const oy = r % ho;
    {
      for (let ox = 0; ox < wo; ox++) {
        for (let ky = 0; ky < k; ky++) {
          const iy = oy * stride - pad + ky;
          // A run of kx whose columns lie inside the map is one copy (consecutive channel vectors).
          let kx = 0;
          while (kx < k) {
            const ix = ox * stride - pad + kx;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) {
              heap.fill(0, dst, dst + c);
              dst += c;
              kx++;
              continue;
            }
            const run = Math.min(k - kx, w - ix);
            const start = src + ((b * h + iy) * w + ix) * c;
            const count = run * c;
            // Short runs (the RGB stem's 7 x 3 values) copy faster in a loop than through copyWithin.
            if (count < 64) for (let q = 0; q < count; q++) heap[dst + q] = heap[start + q];
            else heap.copyWithin(dst, start, start + count);
            dst += count;
            kx += run;
          }
        }
      }
    }
  }
  return out;
}

/**
 * Copies `part` into rows rowStart.. of `target` (when given: the earlier bands' output, handed back
 * as this kernel's output; no other reference to it exists) or of a new [rows, cols] output.
 */
function placeKernel({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: unknown }): tf.TensorInfo {
  const be = asWasmBackend(backend);
  const part = inputs.part;
  if (!be || !part) throw new Error(`${PLACE_KERNEL}: a float32 input on the wasm backend`);
  const { rowStart, shape } = attrs as { rowStart: number; shape: [number, number] };
  const out = outputInto(be, shape, inputs.target);
  const from = be.dataIdMap.get(part.dataId)?.memoryOffset;
  const to = be.dataIdMap.get(out.dataId)?.memoryOffset;
  if (from === undefined || to === undefined) throw new Error(`${PLACE_KERNEL}: tensors not on the wasm backend`);
  const heap = new Float32Array(be.wasm.asm.memory.buffer);
  heap.copyWithin((to >> 2) + rowStart * shape[1], from >> 2, (from >> 2) + part.shape[0] * shape[1]);
  return out;
}

/** Rows rowStart.. of image `image` of x, [1, rowCount, w, c], zeros for rows outside the map. */
function windowKernel({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: unknown }): tf.TensorInfo {
  const be = asWasmBackend(backend);
  const x = inputs.x;
  if (!be || !x) throw new Error(`${WINDOW_KERNEL}: a float32 input on the wasm backend`);
  const { image, rowStart, rowCount } = attrs as { image: number; rowStart: number; rowCount: number };
  const [, h, w, c] = x.shape;
  const out = be.makeOutput([1, rowCount, w, c], 'float32');
  const from = be.dataIdMap.get(x.dataId)?.memoryOffset;
  const to = be.dataIdMap.get(out.dataId)?.memoryOffset;
  if (from === undefined || to === undefined) throw new Error(`${WINDOW_KERNEL}: tensors not on the wasm backend`);
  const heap = new Float32Array(be.wasm.asm.memory.buffer);
  const row = w * c;
  for (let r = 0; r < rowCount; r++) {
    const iy = rowStart + r;
    const dst = (to >> 2) + r * row;
    if (iy < 0 || iy >= h) heap.fill(0, dst, dst + row);
    else heap.copyWithin(dst, (from >> 2) + (image * h + iy) * row, (from >> 2) + (image * h + iy + 1) * row);
  }
  return out;
}

function register(): void {
  // Once per tfjs instance, also when this module is bundled twice.
  if (!tf.getKernel(WINDOW_KERNEL, 'wasm')) tf.registerKernel({ kernelName: WINDOW_KERNEL, backendName: 'wasm', kernelFunc: windowKernel as unknown as tf.KernelFunc });
  if (!tf.getKernel(KERNEL, 'wasm')) tf.registerKernel({ kernelName: KERNEL, backendName: 'wasm', kernelFunc: patchKernel as unknown as tf.KernelFunc });
  if (!tf.getKernel(PLACE_KERNEL, 'wasm')) tf.registerKernel({ kernelName: PLACE_KERNEL, backendName: 'wasm', kernelFunc: placeKernel as unknown as tf.KernelFunc });
}

/** Patches of output rows rowStart.. (over n * ho), [rowCount * wo, kh * kw * in], columns in (ky, kx, channel) order. */
function patches(x: tf.Tensor4D, k: number, stride: number, pad: number, rowStart: number, rowCount: number): tf.Tensor2D {
  const [n, h, w, cin] = x.shape;
  if (k === 1 && stride === 1 && pad === 0 && rowStart === 0 && rowCount === n * h) return tf.reshape(x, [n * h * w, cin]);
  if (!asWasmBackend(tf.backend()) || x.dtype !== 'float32') throw new Error('conv2dGemm: the wasm backend only');
  register();
  const attrs: PatchAttrs = { k, stride, pad, rowStart, rowCount };
  return tf.engine().runKernel(KERNEL, { x }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

/**
 * conv2d(x, filter, stride, symmetric pad) + bias, then ReLU when `relu`, NHWC, as GEMMs (see the
 * top of this file), in bands of output rows of at most `bandBytes` of patches. `gemm` runs each
 * product (patches [rows, k], the filter as [k, out]); the caller wraps it to track the filter's
 * packing. With `only` (one image), only output rows [start, end) are computed, in a map of the
 * whole output's shape whose other rows are left unset.
 */
export function conv2dGemm(
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  bias: tf.Tensor1D | null,
  stride: number,
  pad: number,
  relu: boolean,
  gemm: (run: () => tf.Tensor2D) => tf.Tensor2D = (run) => run(),
  bandBytes = BAND_BYTES,
  only?: readonly [number, number],
): tf.Tensor4D {
  const [n, h, w] = x.shape;
  const [kh, kw, cin, cout] = filter.shape;
  if (kh !== kw) throw new Error(`conv2dGemm: square filters only, got ${kh}x${kw}`);
  const ho = convOutputSize(h, kh, stride, pad);
  const wo = convOutputSize(w, kw, stride, pad);
  const rows = n * ho;
  const [first, end] = only ? checkedRows(only, n, ho, 'conv2dGemm') : [0, rows];
  const band = kh === 1 && stride === 1 ? rows : Math.max(1, Math.floor(bandBytes / (wo * kh * kw * cin * 4)));
  const product = (rowStart: number, rowCount: number): tf.Tensor2D =>
    tf.tidy(() => {
      const a = patches(x, kh, stride, pad, rowStart, rowCount);
      // The reshaped filter shares the filter's storage: XNNPACK's operator is keyed on it. Made and
      // freed inside `run`, so that the filter is again its storage's only tensor when `gemm` returns.
      return gemm(() =>
        tf.tidy(() => tf.fused.matMul({ a, b: tf.reshape(filter, [kh * kw * cin, cout]), bias: bias ?? undefined, activation: relu ? 'relu' : 'linear' }) as tf.Tensor2D),
      );
    });
  if (band >= rows && !only) return tf.tidy(() => tf.reshape(product(0, rows), [n, ho, wo, cout]));
  let out: tf.Tensor2D | null = null;
  for (let rowStart = first; rowStart < end; rowStart += band) {
    const rowCount = Math.min(band, end - rowStart);
    const next: tf.Tensor2D = tf.tidy(() => {
      const inputs: tf.NamedTensorMap = { part: product(rowStart, rowCount) };
      if (out) inputs.target = out;
      const attrs = { rowStart: rowStart * wo, shape: [rows * wo, cout] };
      return tf.engine().runKernel(PLACE_KERNEL, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
    });
    out?.dispose();
    out = next;
  }
  const whole = out as tf.Tensor2D;
  const y = tf.reshape(whole, [n, ho, wo, cout]);
  whole.dispose();
  return y as tf.Tensor4D;
}

/** `only` as rows [start, end) of one image's `height` output rows, checked. */
function checkedRows(only: readonly [number, number], n: number, height: number, op: string): [number, number] {
  const [start, end] = only;
  if (n !== 1 || !(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start < end && end <= height)) {
    throw new Error(`${op}: rows [${start}, ${end}) of one image's ${height} expected (batch of ${n})`);
  }
  return [start, end];
}

/**
 * conv2d(x, filter, stride, symmetric pad) + bias (then ReLU) with XNNPACK's convolution, in bands
 * of output rows of each image written into one output (see STEM_KERNEL). `conv` runs one band:
 * the window of input rows (already padded above and below) with the filter, padded left and
 * right only; the caller wraps it to track the filter's packing. With `only` (one image), only
 * output rows [start, end) are computed, in a map of the whole output's shape whose other rows are
 * left unset, or with `bandOnly` as a map of those rows alone.
 */
export function conv2dRowBands(
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  stride: number,
  pad: number,
  conv: (window: tf.Tensor4D, pads: [[number, number], [number, number], [number, number], [number, number]]) => tf.Tensor4D,
  bandPixels = BAND_OUTPUT_PIXELS,
  only?: readonly [number, number],
  bandOnly = false,
): tf.Tensor4D {
  const [n, h, w] = x.shape;
  const [kh, kw, , cout] = filter.shape;
  if (kh !== kw) throw new Error(`conv2dRowBands: square filters only, got ${kh}x${kw}`);
  if (!asWasmBackend(tf.backend()) || x.dtype !== 'float32') throw new Error('conv2dRowBands: the wasm backend only');
  register();
  const ho = convOutputSize(h, kh, stride, pad);
  const wo = convOutputSize(w, kw, stride, pad);
  const [first, end] = only ? checkedRows(only, n, ho, 'conv2dRowBands') : [0, ho];
  // Rows [skip, skip + height) of the output's are kept.
  const [skip, height] = only && bandOnly ? [first, end - first] : [0, ho];
  const band = Math.max(1, Math.floor(bandPixels / wo));
  let out: tf.Tensor2D | null = null;
  for (let image = 0; image < n; image++) {
    for (let r0 = first; r0 < end; r0 += band) {
      const rows = Math.min(band, end - r0);
      const next: tf.Tensor2D = tf.tidy(() => {
        const attrs = { image, rowStart: r0 * stride - pad, rowCount: (rows - 1) * stride + kh };
        const window = tf.engine().runKernel(WINDOW_KERNEL, { x }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor4D;
        const part = tf.reshape(conv(window, [[0, 0], [0, 0], [pad, pad], [0, 0]]), [rows * wo, cout]);
        const inputs: tf.NamedTensorMap = { part };
        if (out) inputs.target = out;
        const placed = { rowStart: (image * height + r0 - skip) * wo, shape: [n * height * wo, cout] };
        return tf.engine().runKernel(PLACE_KERNEL, inputs, placed as unknown as tf.NamedAttrMap) as tf.Tensor2D;
      });
      out?.dispose();
      out = next;
    }
  }
  const whole = out as tf.Tensor2D;
  const y = tf.reshape(whole, [n, height, wo, cout]);
  whole.dispose();
  return y as tf.Tensor4D;
}

/**
 * `part` [1, r, w, c] as rows rowStart.. of a new map [1, height, w, c] whose other rows are left
 * unset (a band of a map another thread completes). The wasm backend only.
 */
export function placedRows(part: tf.Tensor4D, rowStart: number, height: number): tf.Tensor4D {
  const [n, r, w, c] = part.shape;
  if (n !== 1 || rowStart < 0 || rowStart + r > height)
    throw new Error(`placedRows: ${r} rows at ${rowStart} of ${height} (batch of ${n})`);
  if (!asWasmBackend(tf.backend()) || part.dtype !== 'float32') throw new Error('placedRows: the wasm backend only');
  register();
  return tf.tidy(() => {
    const attrs = { rowStart: rowStart * w, shape: [height * w, c] };
    const placed = tf
      .engine()
      .runKernel(PLACE_KERNEL, { part: tf.reshape(part, [r * w, c]) }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
    return tf.reshape(placed, [1, height, w, c]);
  });
}
