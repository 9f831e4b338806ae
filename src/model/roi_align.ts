/**
 * torchvision MultiScaleRoIAlign as DOFRoIHeads configures it: levels '0'..'3', 7x7 output,
 * sampling_ratio 2, aligned=False (both the box and the class branch use this same pooling).
 *
 * Per box, torchvision's roi_align averages a 2x2 grid of bilinear samples in each of the 7x7
 * bins, with its own boundary rules: a sample beyond the map (y > H or y < -1) contributes 0, one
 * in (H-1, H] reads row H-1, one in [-1, 0] reads row 0. H is the image's OWN map (its own padded
 * size / stride), so an image pools the same in a batch as alone.
 *
 * Two implementations, same numbers:
 * - 'host': the roi_align kernel in JS on the read-back maps (on wasm read, and the pooled rows
 *   written, in place on its heap: the runtime's `tensorMemory`). On wasm/cpu it is more than 10x
 *   faster than the ops below (tfjs-wasm's cropAndResize, concat and gather are slow on 50M elements).
 * - 'ops': tfjs ops every backend has, for GPU backends. The 14x14 sample points of a box are
 *   evenly spaced (start + bin/4 + j*bin/2), so tf.image.cropAndResize onto a 14x14 grid hits
 *   exactly them and a 2x2 average pool finishes the bins. cropAndResize reads 0 beyond its last
 *   row, so the map gets one replicated row/column at the bottom/right to emulate the (H-1, H]
 *   rule. Samples never fall below 0 because proposals are clipped to the image.
 */
import * as tf from '@tensorflow/tfjs-core';
import { featureSizes, roundHalfEven } from '../ops/anchors';
import type { Size } from '../ops/size';
import { roiAlignFused } from '../kernels/webgpu';
import { HeapBoxPooler, SampleAxis, wasmBoxPooler } from '../kernels/wasm/roi_align';
import type { TensorMemory } from './runtime';

export const ROI_OUTPUT_SIZE = 7;
export const ROI_SAMPLING_RATIO = 2;
/** Pooling reads FPN levels '0'..'3' (not 'pool'). */
export const ROI_LEVELS = 4;
const CANONICAL_SCALE = 224;
const CANONICAL_LEVEL = 4;
const LEVEL_EPS = Math.fround(1e-6);
const GRID = ROI_OUTPUT_SIZE * ROI_SAMPLING_RATIO;

const f32 = Math.fround;

/**
 * The spatial scale of each level as torchvision infers it: 2^round(log2(feature height / image
 * height)), with the image's resized (unpadded) height. For ordinary images this is 1/4..1/32.
 */
export function inferScales(levelSizes: Size[], imageSize: Size): number[] {
  return levelSizes.map(([h]) => 2 ** roundHalfEven(f32(Math.log2(f32(h / imageSize[0])))));
}

/** Range [kMin, kMax] of the FPN level mapper, from the first and last level's scale. */
export function levelRange(scales: number[]): [number, number] {
  return [Math.trunc(-Math.log2(scales[0])), Math.trunc(-Math.log2(scales[scales.length - 1]))];
}

/**
 * FPN paper Eqn. (1) as torchvision's LevelMapper computes it in float32:
 * floor(4 + log2(sqrt(area) / 224) + 1e-6) clamped to [kMin, kMax], returned relative to kMin.
 */
export function mapRoiLevels(boxes: Float32Array, kMin: number, kMax: number): Int32Array {
  const n = boxes.length / 4;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const area = f32(f32(boxes[i * 4 + 2] - boxes[i * 4]) * f32(boxes[i * 4 + 3] - boxes[i * 4 + 1]));
    const s = f32(Math.sqrt(area));
    const level = Math.floor(f32(f32(CANONICAL_LEVEL + f32(Math.log2(f32(s / CANONICAL_SCALE)))) + LEVEL_EPS));
    out[i] = Math.min(Math.max(level, kMin), kMax) - kMin;
  }
  return out;
}

/**
 * The cropAndResize box (y1, x1, y2, x2, normalised by the map's last row/column index of the
 * edge-padded map, i.e. by h and w) whose 14x14 grid lands on roi_align's sample points.
 */
export function sampleGridBox(box: ArrayLike<number>, scale: number, mapSize: Size): [number, number, number, number] {
  const axis = (lo: number, hi: number, extent: number): [number, number] => {
    const start = f32(lo * scale);
    const size = Math.max(f32(f32(hi * scale) - start), 1);
    const bin = f32(size / ROI_OUTPUT_SIZE);
    const first = start + bin / (2 * ROI_SAMPLING_RATIO);
    return [first / extent, (first + ((GRID - 1) * bin) / ROI_SAMPLING_RATIO) / extent];
  };
  const [y1, y2] = axis(box[1], box[3], mapSize[0]);
  const [x1, x2] = axis(box[0], box[2], mapSize[1]);
  return [y1, x1, y2, x2];
}

/** One image's own region of a level, with its last row and column repeated once. */
function edgePaddedRegion(feature: tf.Tensor4D, image: number, [h, w]: Size): tf.Tensor4D {
  const [, height, width, channels] = feature.shape;
  checkRegion(image, [h, w], height, width);
  const region = tf.slice(feature, [image, 0, 0, 0], [1, h, w, channels]);
  // 'symmetric' mirroring by one repeats the edge row/column itself.
  return tf.mirrorPad(region, [[0, 0], [0, 1], [0, 1], [0, 0]], 'symmetric');
}

function checkRegion(image: number, [h, w]: Size, height: number, width: number): void {
  if (h > height || w > width) throw new Error(`RoIAlign: image ${image} needs a ${h}x${w} map, batch has ${height}x${width}`);
}

/** Where one image's own region of a level lies in a read-back NHWC batch map. */
export interface MapView {
  data: Float32Array;
  /** Index of the region's (0, 0, channel 0). */
  offset: number;
  /** Elements between rows (batch map width * channels). */
  rowStride: number;
  height: number;
  width: number;
  channels: number;
}

/** One axis of roi_align's sampling: for each of the 14 samples, the two taps and their weights. */
function sampleAxis(lo: number, hi: number, scale: number, extent: number): SampleAxis {
  const low = new Int32Array(GRID);
  const high = new Int32Array(GRID);
  const wLow = new Float32Array(GRID);
  const wHigh = new Float32Array(GRID);
  const start = f32(lo * scale);
  const size = Math.max(f32(f32(hi * scale) - start), 1);
  const bin = f32(size / ROI_OUTPUT_SIZE);
  for (let p = 0; p < ROI_OUTPUT_SIZE; p++) {
    for (let i = 0; i < ROI_SAMPLING_RATIO; i++) {
      const j = p * ROI_SAMPLING_RATIO + i;
      let v = f32(f32(start + f32(p * bin)) + f32(f32((i + 0.5) * bin) / ROI_SAMPLING_RATIO));
      if (v < -1 || v > extent) continue; // contributes 0: both weights stay 0
      if (v <= 0) v = 0;
      let l = Math.trunc(v);
      let h: number;
      if (l >= extent - 1) {
        l = h = extent - 1;
        v = l;
      } else {
        h = l + 1;
      }
      const frac = f32(v - l);
      low[j] = l;
      high[j] = h;
      wLow[j] = f32(1 - frac);
      wHigh[j] = frac;
    }
  }
  return { low, high, wLow, wHigh };
}

/**
 * torchvision's roi_align (aligned=False, sampling_ratio 2, 7x7) of one box on one map: the float32
 * operations of its CPU kernel in its order, so the same bits. Writes 7*7*channels values (NHWC) at
 * out[outOffset]. With `heap`, maps in the wasm heap are pooled there (the same bits).
 */
export function roiAlignBox(map: MapView, box: ArrayLike<number>, scale: number, out: Float32Array, outOffset: number, heap?: HeapBoxPooler | null): void {
  const { data, offset, rowStride, height, width, channels } = map;
  const ys = sampleAxis(box[1], box[3], scale, height);
  const xs = sampleAxis(box[0], box[2], scale, width);
  if (heap && heap(data, offset, rowStride, channels, ys, xs, out, outOffset)) return;
  const norm = 1 / (ROI_SAMPLING_RATIO * ROI_SAMPLING_RATIO);
  for (let py = 0; py < ROI_OUTPUT_SIZE; py++) {
    for (let px = 0; px < ROI_OUTPUT_SIZE; px++) {
      const o = outOffset + (py * ROI_OUTPUT_SIZE + px) * channels;
      // The bin's samples accumulate from 0, as torchvision's output_val does.
      out.fill(0, o, o + channels);
      for (let iy = 0; iy < ROI_SAMPLING_RATIO; iy++) {
        const sy = py * ROI_SAMPLING_RATIO + iy;
        const rowLow = offset + ys.low[sy] * rowStride;
        const rowHigh = offset + ys.high[sy] * rowStride;
        for (let ix = 0; ix < ROI_SAMPLING_RATIO; ix++) {
          const sx = px * ROI_SAMPLING_RATIO + ix;
          const w1 = f32(ys.wLow[sy] * xs.wLow[sx]);
          const w2 = f32(ys.wLow[sy] * xs.wHigh[sx]);
          const w3 = f32(ys.wHigh[sy] * xs.wLow[sx]);
          const w4 = f32(ys.wHigh[sy] * xs.wHigh[sx]);
          if (w1 === 0 && w2 === 0 && w3 === 0 && w4 === 0) continue;
          const p1 = rowLow + xs.low[sx] * channels;
          const p2 = rowLow + xs.high[sx] * channels;
          const p3 = rowHigh + xs.low[sx] * channels;
          const p4 = rowHigh + xs.high[sx] * channels;
          for (let c = 0; c < channels; c++) {
            out[o + c] += f32(f32(f32(f32(w1 * data[p1 + c]) + f32(w2 * data[p2 + c])) + f32(w3 * data[p3 + c])) + f32(w4 * data[p4 + c]));
          }
        }
      }
      for (let c = 0; c < channels; c++) out[o + c] *= norm;
    }
  }
}

/** Per image: its own level sizes, its inferred scales and each box's level index. */
function assignLevels(boxes: Float32Array[], imageSizes: Size[], paddedSizes: Size[]) {
  return boxes.map((imageBoxes, image) => {
    const own = featureSizes(paddedSizes[image][0], paddedSizes[image][1]).slice(0, ROI_LEVELS);
    const scales = inferScales(own, imageSizes[image]);
    const [kMin, kMax] = levelRange(scales);
    return { own, scales, levels: mapRoiLevels(imageBoxes, kMin, kMax) };
  });
}

export type RoIAlignMethod = 'host' | 'ops' | 'webgpu';

/**
 * Pools every image's boxes (x1, y1, x2, y2 in its resized-image coordinates) from FPN levels
 * '0'..'3' of the batch: [sum of boxes, 7, 7, C], boxes in the given order, image after image.
 * imageSizes: resized sizes (they fix the scales, as in torchvision); paddedSizes: each image's own
 * padded size (it fixes the image's own map size). method: 'webgpu' (one fused dispatch) where
 * our WebGPU kernels run, else 'host' on wasm/cpu, else 'ops' (the model takes it from its runtime).
 */
export async function multiScaleRoIAlign(
  features: tf.Tensor4D[],
  boxes: Float32Array[],
  imageSizes: Size[],
  paddedSizes: Size[],
  method: RoIAlignMethod,
  memory?: TensorMemory,
): Promise<tf.Tensor4D> {
  if (method === 'ops') return multiScaleRoIAlignOps(features, boxes, imageSizes, paddedSizes);
  if (method === 'webgpu') return multiScaleRoIAlignWebGPU(features, boxes, imageSizes, paddedSizes);
  const total = boxes.reduce((n, b) => n + b.length / 4, 0);
  const shape: [number, number, number, number] = [total, ROI_OUTPUT_SIZE, ROI_OUTPUT_SIZE, features[0].shape[3]];
  if (memory) {
    // In place: the box kernel and the pooled tensor are made before the views are taken, and with
    // `memory` multiScaleRoIAlignInto uses them before it first waits, so they stay valid.
    const heap = wasmBoxPooler();
    const pooled = memory.unset<tf.Rank.R4>(shape);
    try {
      await multiScaleRoIAlignInto(features, boxes, imageSizes, paddedSizes, memory.view(pooled), memory, heap);
    } catch (e) {
      pooled.dispose();
      throw e;
    }
    return pooled;
  }
  const out = new Float32Array(shape.reduce((a, b) => a * b, 1));
  await multiScaleRoIAlignInto(features, boxes, imageSizes, paddedSizes, out);
  return tf.tensor4d(out, shape);
}

/**
 * The values of the levels some box is assigned to (null for the others): views in place with
 * `memory`, synchronously (they stay valid only until the backend next runs), else read back.
 */
function levelMaps(features: tf.Tensor4D[], assigned: ReturnType<typeof assignLevels>, memory: TensorMemory): (Float32Array | null)[];
function levelMaps(features: tf.Tensor4D[], assigned: ReturnType<typeof assignLevels>): Promise<(Float32Array | null)[]>;
function levelMaps(features: tf.Tensor4D[], assigned: ReturnType<typeof assignLevels>, memory?: TensorMemory): (Float32Array | null)[] | Promise<(Float32Array | null)[]> {
  const needed = [0, 1, 2, 3].map((level) => assigned.some((a) => a.levels.includes(level)));
  const levels = features.slice(0, ROI_LEVELS);
  if (memory) return levels.map((f, level) => (needed[level] ? memory.view(f) : null));
  return Promise.all(levels.map((f, level) => (needed[level] ? (f.data() as Promise<Float32Array>) : Promise.resolve(null))));
}

/**
 * The host RoIAlign (`multiScaleRoIAlign`'s 'host' method) written into `out`: [sum of boxes, 7,
 * 7, C] values (a tensor's in place, or memory another thread reads). With `memory` the levels are
 * read in place, and every view is used before the returned promise first waits. `heap`: the wasm
 * box kernel (`wasmBoxPooler`, taken here by default), which must be made before a heap view
 * passed as `out`.
 */
export async function multiScaleRoIAlignInto(
  features: tf.Tensor4D[],
  boxes: Float32Array[],
  imageSizes: Size[],
  paddedSizes: Size[],
  out: Float32Array,
  memory?: TensorMemory,
  heap: HeapBoxPooler | null = wasmBoxPooler(),
): Promise<void> {
  const total = boxes.reduce((n, b) => n + b.length / 4, 0);
  const length = total * ROI_OUTPUT_SIZE * ROI_OUTPUT_SIZE * features[0].shape[3];
  if (out.length !== length) throw new Error(`multiScaleRoIAlignInto: ${total} boxes need ${length} values, out holds ${out.length}`);
  const assigned = assignLevels(boxes, imageSizes, paddedSizes);
  const maps = memory ? levelMaps(features, assigned, memory) : await levelMaps(features, assigned);
  poolHost(features, boxes, assigned, maps, out, heap);
}

/** The host RoIAlign of every image's boxes from the maps' values into `out` (NHWC rows, each written whole). */
function poolHost(
  features: tf.Tensor4D[],
  boxes: Float32Array[],
  assigned: ReturnType<typeof assignLevels>,
  maps: (Float32Array | null)[],
  out: Float32Array,
  heap: HeapBoxPooler | null,
): void {
  const channels = features[0].shape[3];
  const cell = ROI_OUTPUT_SIZE * ROI_OUTPUT_SIZE * channels;
  let row = 0;
  boxes.forEach((imageBoxes, image) => {
    const { own, scales, levels } = assigned[image];
    levels.forEach((level, k) => {
      const [, height, width] = features[level].shape;
      checkRegion(image, own[level], height, width);
      const view: MapView = {
        data: maps[level] as Float32Array,
        offset: image * height * width * channels,
        rowStride: width * channels,
        height: own[level][0],
        width: own[level][1],
        channels,
      };
      roiAlignBox(view, imageBoxes.subarray(k * 4, k * 4 + 4), scales[level], out, (row + k) * cell, heap);
    });
    row += imageBoxes.length / 4;
  });
}

/**
 * multiScaleRoIAlign as one WebGPU dispatch over all levels and boxes (src/kernels/webgpu/roi_align.ts).
 * Boxes go in times their level's scale (a power of two: the same float32 product torch forms),
 * with each box's image, level and the image's own map size.
 */
function multiScaleRoIAlignWebGPU(features: tf.Tensor4D[], boxes: Float32Array[], imageSizes: Size[], paddedSizes: Size[]): tf.Tensor4D {
  const assigned = assignLevels(boxes, imageSizes, paddedSizes);
  const total = boxes.reduce((n, b) => n + b.length / 4, 0);
  const scaledBoxes = new Float32Array(total * 4);
  const meta = new Int32Array(total * 4);
  let row = 0;
  boxes.forEach((imageBoxes, image) => {
    const { own, scales, levels } = assigned[image];
    levels.forEach((level, k) => {
      const [, height, width] = features[level].shape;
      checkRegion(image, own[level], height, width);
      for (let j = 0; j < 4; j++) scaledBoxes[(row + k) * 4 + j] = f32(imageBoxes[k * 4 + j] * scales[level]);
      meta.set([image, level, own[level][0], own[level][1]], (row + k) * 4);
    });
    row += imageBoxes.length / 4;
  });
  return roiAlignFused(features.slice(0, ROI_LEVELS), { scaledBoxes, meta }, ROI_OUTPUT_SIZE, ROI_SAMPLING_RATIO);
}

/** multiScaleRoIAlign with tfjs ops only (cropAndResize + avgPool), for GPU backends. */
export function multiScaleRoIAlignOps(
  features: tf.Tensor4D[],
  boxes: Float32Array[],
  imageSizes: Size[],
  paddedSizes: Size[],
): tf.Tensor4D {
  const channels = features[0].shape[3];
  const pieces: tf.Tensor4D[] = [];
  const sources: number[] = [];
  let first = 0;
  const assigned = assignLevels(boxes, imageSizes, paddedSizes);
  try {
    boxes.forEach((imageBoxes, image) => {
      const { own, scales, levels } = assigned[image];
      for (let level = 0; level < ROI_LEVELS; level++) {
        const members: number[] = [];
        levels.forEach((l, k) => l === level && members.push(k));
        if (members.length === 0) continue;
        const grid = new Float32Array(members.length * 4);
        members.forEach((k, j) => grid.set(sampleGridBox(imageBoxes.subarray(k * 4, k * 4 + 4), scales[level], own[level]), j * 4));
        pieces.push(
          tf.tidy(() => {
            const map = edgePaddedRegion(features[level], image, own[level]);
            const samples = tf.image.cropAndResize(
              map,
              tf.tensor2d(grid, [members.length, 4]),
              tf.zeros([members.length], 'int32'),
              [GRID, GRID],
              'bilinear',
              0,
            );
            return tf.avgPool(samples, ROI_SAMPLING_RATIO, ROI_SAMPLING_RATIO, 'valid');
          }),
        );
        sources.push(...members.map((k) => first + k));
      }
      first += imageBoxes.length / 4;
    });
    if (pieces.length === 0) return tf.zeros([0, ROI_OUTPUT_SIZE, ROI_OUTPUT_SIZE, channels]);
    // Pieces come grouped by image and level; put every box back at its own position.
    const position = new Int32Array(first);
    sources.forEach((k, j) => (position[k] = j));
    return tf.tidy(() => tf.gather(pieces.length === 1 ? pieces[0] : tf.concat(pieces, 0), position));
  } finally {
    tf.dispose(pieces);
  }
}
