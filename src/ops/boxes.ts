/**
 * Box arithmetic of the detector's post-processing (torchvision `ops/boxes.py` and
 * `GeneralizedRCNNTransform`'s box rescale), on flat Float32Array boxes: N*4 as x1, y1, x2, y2.
 *
 * torch computes these in float32, and a few of them decide outcomes (which proposal is too small,
 * which pair overlaps more than the NMS threshold), so every operation rounds to float32 with
 * Math.fround exactly where a float32 tensor op would. Boxes are not assumed to be well formed:
 * inverted boxes give negative widths and areas, as in torch.
 */

const f32 = Math.fround;

/** Number of boxes in a flat N*4 array. */
export function boxCount(boxes: ArrayLike<number>): number {
  if (boxes.length % 4 !== 0) throw new Error(`boxes length ${boxes.length} is not a multiple of 4`);
  return boxes.length / 4;
}

/** torch `clamp(min, max)`: NaN stays NaN. */
function clamp(v: number, lo: number, hi: number): number {
  if (v < lo) return lo;
  if (v > hi) return hi;
  return v;
}

/** torchvision `clip_boxes_to_image`: x into [0, width], y into [0, height]. Returns a new array. */
export function clipBoxesToImage(boxes: Float32Array, height: number, width: number): Float32Array {
  const out = new Float32Array(boxes.length);
  for (let i = 0; i < boxes.length; i += 4) {
    out[i] = clamp(boxes[i], 0, width);
    out[i + 1] = clamp(boxes[i + 1], 0, height);
    out[i + 2] = clamp(boxes[i + 2], 0, width);
    out[i + 3] = clamp(boxes[i + 3], 0, height);
  }
  return out;
}

/**
 * torchvision `remove_small_boxes`: indices (ascending) of the boxes whose width and height are both
 * >= minSize. torch compares the float32 widths with minSize cast to float32.
 */
export function removeSmallBoxes(boxes: Float32Array, minSize: number): Int32Array {
  const n = boxCount(boxes);
  const min = f32(minSize);
  const keep = new Int32Array(n);
  let k = 0;
  for (let i = 0; i < n; i++) {
    const w = f32(boxes[i * 4 + 2] - boxes[i * 4]);
    const h = f32(boxes[i * 4 + 3] - boxes[i * 4 + 1]);
    if (w >= min && h >= min) keep[k++] = i;
  }
  return keep.slice(0, k);
}

/** torchvision `box_area`: (x2 - x1) * (y2 - y1) in float32, no abs (inverted boxes are negative). */
export function boxArea(boxes: Float32Array): Float32Array {
  const n = boxCount(boxes);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = f32(f32(boxes[i * 4 + 2] - boxes[i * 4]) * f32(boxes[i * 4 + 3] - boxes[i * 4 + 1]));
  }
  return out;
}

/**
 * torchvision `box_iou`: the N x M matrix (row-major) of intersection over union in float32.
 * Intersection sides clamp at 0; the union uses the signed areas, so degenerate boxes give 0/0 = NaN
 * and inverted ones odd values, as torch does.
 */
export function boxIou(boxes1: Float32Array, boxes2: Float32Array): Float32Array {
  const n = boxCount(boxes1);
  const m = boxCount(boxes2);
  const area1 = boxArea(boxes1);
  const area2 = boxArea(boxes2);
  const out = new Float32Array(n * m);
  for (let i = 0; i < n; i++) {
    const ax1 = boxes1[i * 4];
    const ay1 = boxes1[i * 4 + 1];
    const ax2 = boxes1[i * 4 + 2];
    const ay2 = boxes1[i * 4 + 3];
    for (let j = 0; j < m; j++) {
      const w = f32(Math.min(ax2, boxes2[j * 4 + 2]) - Math.max(ax1, boxes2[j * 4]));
      const h = f32(Math.min(ay2, boxes2[j * 4 + 3]) - Math.max(ay1, boxes2[j * 4 + 1]));
      const inter = f32(clamp(w, 0, Infinity) * clamp(h, 0, Infinity));
      const union = f32(f32(area1[i] + area2[j]) - inter);
      out[i * m + j] = inter / union;
    }
  }
  return out;
}

/** Rows `indices` of a row-major array with `stride` values per row (torch `t[indices]`). */
export function gatherRows<T extends Float32Array | Float64Array>(
  values: T,
  indices: ArrayLike<number>,
  stride: number,
): T {
  const out = new (values.constructor as new (n: number) => T)(indices.length * stride);
  for (let k = 0; k < indices.length; k++) {
    const src = indices[k] * stride;
    for (let c = 0; c < stride; c++) out[k * stride + c] = values[src + c];
  }
  return out;
}

/**
 * torchvision `resize_boxes` as used by `GeneralizedRCNNTransform.postprocess`: scale boxes from the
 * resized image back to the original one, per axis, with float32 ratios original / resized.
 */
export function resizeBoxes(
  boxes: Float32Array,
  fromSize: readonly [number, number],
  toSize: readonly [number, number],
): Float32Array {
  const ratioH = f32(toSize[0] / fromSize[0]);
  const ratioW = f32(toSize[1] / fromSize[1]);
  const out = new Float32Array(boxes.length);
  for (let i = 0; i < boxes.length; i += 4) {
    out[i] = boxes[i] * ratioW;
    out[i + 1] = boxes[i + 1] * ratioH;
    out[i + 2] = boxes[i + 2] * ratioW;
    out[i + 3] = boxes[i + 3] * ratioH;
  }
  return out;
}
