// The host RoIAlign's box kernel in WebAssembly SIMD (tools/roi_align.wat), for maps that lie in
// the tfjs wasm backend's heap. Why: pooling 1000 proposals x 256 channels is ~200M multiply-adds,
// ~0.4 s on one thread in JavaScript against ~0.1 s four lanes at a time, and on one image it
// holds up both threads (the other waits for its share of the rows). Same bits as the JavaScript
// kernel (src/model/roi_align.ts): the float32 operations of torchvision's, in its order.
import * as tf from '@tensorflow/tfjs-core';
import { asWasmBackend, WasmBackend } from './backend';
import { compiledOnce } from './module';
import { ROI_ALIGN_WASM } from './roi_align_wasm';

/** Samples per axis of a box (7 bins x 2) and the bytes of one sample's descriptor. */
const SAMPLES = 14;
const SAMPLE_BYTES = 16;
const BINS = 49;
/** The widest map the output scratch holds (the FPN's 256 channels). */
const MAX_CHANNELS = 256;

/** One axis of a box's samples: the two taps (map rows or columns) and their weights. */
export interface SampleAxis {
  low: Int32Array;
  high: Int32Array;
  wLow: Float32Array;
  wHigh: Float32Array;
}

interface Instance {
  box(map: number, channels: number, rows: number, cols: number, out: number): void;
  memory: WebAssembly.Memory;
  /** 2 x 14 sample descriptors, then one box's output (49 x MAX_CHANNELS floats). */
  scratch: number;
}

/** 564 bytes: small enough for a synchronous compile on a page's main thread. */
const roiAlignModule = compiledOnce(ROI_ALIGN_WASM);
const instances = new WeakMap<object, Instance>();

function instanceFor(backend: WasmBackend): Instance | null {
  let instance = instances.get(backend);
  if (!instance) {
    const module = roiAlignModule();
    if (!module) return null;
    const memory = backend.wasm.asm.memory;
    const exports = new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as Pick<Instance, 'box'>;
    // Allocated once per backend and kept for its life (~50 KB).
    const scratch = backend.wasm._malloc(2 * SAMPLES * SAMPLE_BYTES + BINS * MAX_CHANNELS * 4);
    instance = { box: exports.box, memory, scratch };
    instances.set(backend, instance);
  }
  return instance;
}

/**
 * Pools one box from `data` (the region of an image at element `offset`, `rowStride` elements
 * between rows, NHWC) into the 49 x `channels` values of `out` at `outOffset`; false where it
 * cannot (a map outside the heap: pool it in JavaScript).
 */
export type HeapBoxPooler = (
  data: Float32Array,
  offset: number,
  rowStride: number,
  channels: number,
  ys: SampleAxis,
  xs: SampleAxis,
  out: Float32Array,
  outOffset: number,
) => boolean;

/**
 * The WebAssembly box kernel where the active backend is tfjs' wasm backend and this runtime has
 * WebAssembly SIMD, else null. Call it before taking heap views: its first call on a backend
 * allocates on the heap, which may move it. The pooler writes any `out`, through its scratch where
 * `out` lies outside the heap.
 */
export function wasmBoxPooler(): HeapBoxPooler | null {
  if (tf.getBackend() !== 'wasm') return null;
  const backend = asWasmBackend(tf.backend());
  const instance = backend && instanceFor(backend);
  if (!instance) return null;
  return (data, offset, rowStride, channels, ys, xs, out, outOffset) => {
    const { buffer } = instance.memory;
    if (data.buffer !== buffer || channels % 4 !== 0 || channels > MAX_CHANNELS) return false;
    const rows = instance.scratch;
    const cols = rows + SAMPLES * SAMPLE_BYTES;
    const ints = new Int32Array(buffer, rows, 2 * SAMPLES * 4);
    const floats = new Float32Array(buffer, rows, 2 * SAMPLES * 4);
    for (let j = 0; j < SAMPLES; j++) {
      ints[j * 4] = ys.low[j] * rowStride * 4;
      ints[j * 4 + 1] = ys.high[j] * rowStride * 4;
      floats[j * 4 + 2] = ys.wLow[j];
      floats[j * 4 + 3] = ys.wHigh[j];
      const k = (SAMPLES + j) * 4;
      ints[k] = xs.low[j] * channels * 4;
      ints[k + 1] = xs.high[j] * channels * 4;
      floats[k + 2] = xs.wLow[j];
      floats[k + 3] = xs.wHigh[j];
    }
    const map = data.byteOffset + offset * 4;
    const length = BINS * channels;
    if (out.buffer === buffer) {
      instance.box(map, channels, rows, cols, out.byteOffset + outOffset * 4);
    } else {
      const scratchOut = cols + SAMPLES * SAMPLE_BYTES;
      instance.box(map, channels, rows, cols, scratchOut);
      out.set(new Float32Array(buffer, scratchOut, length), outOffset);
    }
    return true;
  };
}
