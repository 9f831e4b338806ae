// Row and column blocks of a matrix, copied where the tensor lies in the wasm backend's memory.
// Why: tfjs-wasm's Slice first copies its whole input out of the heap (readSync) and its Gather
// goes element by element; for the RoI heads' pieces of the pooled features (50 MB for 1000
// boxes) and fc6's input chunks that measured ~0.8 s of a 6.4 s forward, against a few ms here.
// Pure copies: the numbers are the same bits as tf.slice / tf.gather give, on any backend.
import * as tf from '@tensorflow/tfjs-core';
import { asWasmBackend } from './backend';

const KERNEL = 'Img2PoseCopyRows';

interface CopyAttrs {
  /** Source rows, in output order. */
  rows: number[];
  colStart: number;
  colCount: number;
}

function copyKernel({ inputs, backend, attrs }: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: unknown }): tf.TensorInfo {
  const be = asWasmBackend(backend);
  const x = inputs.x;
  if (!be || !x) throw new Error(`${KERNEL}: a float32 input on the wasm backend`);
  const { rows, colStart, colCount } = attrs as CopyAttrs;
  const width = x.shape[1];
  const out = be.makeOutput([rows.length, colCount], 'float32');
  const from = be.dataIdMap.get(x.dataId)?.memoryOffset;
  const to = be.dataIdMap.get(out.dataId)?.memoryOffset;
  if (from === undefined || to === undefined) throw new Error(`${KERNEL}: tensors not on the wasm backend`);
  // After makeOutput: it may have grown the memory, which replaces the buffer.
  const heap = new Float32Array(be.wasm.asm.memory.buffer);
  const src = from >> 2;
  const dst = to >> 2;
  let run = 0;
  for (let i = 0; i < rows.length; i += run) {
    // Consecutive source rows of whole width are one copy.
    run = 1;
    if (colCount === width) while (i + run < rows.length && rows[i + run] === rows[i] + run) run++;
    const start = src + rows[i] * width + colStart;
    heap.copyWithin(dst + i * colCount, start, start + (run - 1) * width + colCount);
  }
  return out;
}

function register(): void {
  // Once per tfjs instance, also when this module is bundled twice.
  if (!tf.getKernel(KERNEL, 'wasm')) tf.registerKernel({ kernelName: KERNEL, backendName: 'wasm', kernelFunc: copyKernel as unknown as tf.KernelFunc });
}

/**
 * `x` [R, K] -> [rows.length, colCount]: row rows[i], columns colStart .. colStart + colCount, for
 * each i. On the wasm backend a copy in its memory; elsewhere tf.gather and tf.slice.
 */
export function copyRows(x: tf.Tensor2D, rows: number[], colStart = 0, colCount = x.shape[1] - colStart): tf.Tensor2D {
  const [r, k] = x.shape;
  if (colStart < 0 || colCount < 0 || colStart + colCount > k) throw new Error(`copyRows: columns ${colStart}+${colCount} of ${k}`);
  for (const row of rows) if (!Number.isInteger(row) || row < 0 || row >= r) throw new Error(`copyRows: row ${row} of ${r}`);
  if (tf.getBackend() === 'wasm' && x.dtype === 'float32' && asWasmBackend(tf.backend())) {
    register();
    const attrs: CopyAttrs = { rows, colStart, colCount };
    return tf.engine().runKernel(KERNEL, { x }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
  }
  return tf.tidy(() => {
    const contiguous = rows.every((row, i) => row === rows[0] + i);
    const picked = contiguous ? tf.slice(x, [rows[0] ?? 0, 0], [rows.length, k]) : tf.gather(x, tf.tensor1d(rows, 'int32'));
    return colStart === 0 && colCount === k ? picked : tf.slice(picked, [0, colStart], [rows.length, colCount]);
  });
}

/** Rows start .. start + count of `x`. */
export function rowRange(start: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => start + i);
}
