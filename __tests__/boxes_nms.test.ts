/**
 * Box ops and NMS against torchvision 0.14.1 / torch 1.13 CPU. Every expected value below was
 * computed with torchvision (`ops.nms`, `ops.boxes.batched_nms`, `box_iou`, `box_area`, `Tensor.sort`)
 * on the same float32 inputs and pasted here.
 */
import {
  boxArea,
  boxIou,
  clipBoxesToImage,
  gatherRows,
  removeSmallBoxes,
  resizeBoxes,
} from '../src/boxes';
import { batchedNms, nms, stableSortDescending, torchSortDescending } from '../src/nms';

/** Inverted, degenerate, duplicated and threshold-edge boxes. */
const EDGE_BOXES = Float32Array.from([
  [0, 0, 10, 10], // 0
  [1, 1, 11, 11], // 1: IoU 0.68 with 0
  [10, 10, 0, 0], // 2: inverted, area +100 yet never intersects
  [20, 0, 20, 10], // 3: zero width
  [20, 0, 20, 10], // 4: same degenerate box: IoU 0/0 = NaN, never suppressed
  [30, 0, 40, -10], // 5: inverted in y, area -100
  [30, -10, 40, 0], // 6: union 0 with 5 -> NaN
  [50, 0, 60, 10], // 7
  [50, 0, 60, 10], // 8: duplicate of 7 with the same score: the lower index wins
  [75, 0, 65, 10], // 9: inverted in x
  [64, 0, 76, 10], // 10
  [80, 0, 90, 10], // 11
  [80, 0, 90, 4], // 12: IoU exactly 0.4 with 11 -> float32 0.4000000059604645 > 0.4
  [100, 0, 110, 10], // 13
  [100, 0, 110, 5], // 14: IoU exactly 0.5 with 13 -> kept at 0.5
].flat());
const EDGE_SCORES = Float32Array.from([
  0.9, 0.8, 0.85, 0.95, 0.7, 0.6, 0.5, 0.65, 0.65, 0.4, 0.3, 0.35, 0.34, 0.33, 0.32,
]);

describe('nms (torchvision CPU kernel)', () => {
  test('inverted and degenerate boxes, ties, threshold edges at 0.4 and 0.5', () => {
    expect(Array.from(nms(EDGE_BOXES, EDGE_SCORES, 0.4))).toEqual([3, 0, 2, 4, 7, 5, 6, 9, 11, 13, 10]);
    expect(Array.from(nms(EDGE_BOXES, EDGE_SCORES, 0.5))).toEqual([3, 0, 2, 4, 7, 5, 6, 9, 11, 12, 13, 14, 10]);
  });

  test('empty input', () => {
    expect(nms(new Float32Array(0), new Float32Array(0), 0.5)).toEqual(new Int32Array(0));
    expect(batchedNms(new Float32Array(0), new Float32Array(0), [], 0.5)).toEqual(new Int32Array(0));
  });

  test('equal scores are visited in index order (stable sort inside the kernel)', () => {
    const boxes = Float32Array.from([0, 0, 10, 10, 0, 0, 10, 10, 0, 0, 10, 10]);
    expect(Array.from(nms(boxes, Float32Array.from([0.5, 0.7, 0.7]), 0.5))).toEqual([1]);
    expect(Array.from(stableSortDescending([1, 3, 3, 1, NaN, 2]))).toEqual([4, 1, 2, 5, 0, 3]);
  });
});

describe('batchedNms', () => {
  test('<= 1000 boxes: the float32 coordinate offset rounds coordinates, as torchvision does', () => {
    // Class-1 boxes overlap with IoU 0.99402 < 0.995, but shifted by 1e6 + 1 their x coordinates
    // round to the same float32 and the IoU becomes 1.
    const boxes = Float32Array.from([0, 0, 10, 10, 0.03, 0, 10.03, 10, 1e6, 0, 1e6 + 10, 10]);
    const scores = Float32Array.from([0.9, 0.8, 0.7]);
    expect(Array.from(batchedNms(boxes, scores, [1, 1, 0], 0.995))).toEqual([0, 2]);
    expect(Array.from(nms(boxes.subarray(0, 8), scores.subarray(0, 2), 0.995))).toEqual([0, 1]);
    expect(boxIou(boxes.subarray(0, 4), boxes.subarray(4, 8))[0]).toBe(Math.fround(0.994018018245697));
  });

  test('> 1000 boxes: per-category loop, survivors re-sorted by torch 1.13 unstable CPU sort', () => {
    const n = 1100;
    const boxes = new Float32Array(n * 4);
    const scores = new Float32Array(n);
    const levels = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const x = (i % 40) * 20;
      const y = Math.floor(i / 40) * 20;
      boxes.set([x, y, x + 10, y + 10], i * 4);
      scores[i] = ((i * 7) % 5) / 8;
      levels[i] = i % 3;
    }
    const keep = batchedNms(boxes, scores, levels, 0.5);
    expect(keep.length).toBe(1100);
    expect(Array.from(keep.subarray(0, 40))).toEqual([
      487, 317, 147, 952, 782, 722, 377, 152, 947, 842, 257, 157, 942, 727, 372, 522, 162, 937, 477, 582,
      167, 932, 732, 517, 367, 172, 927, 322, 622, 602, 572, 832, 117, 472, 527, 267, 122, 977, 707, 392,
    ]);
    // FNV-1a over the whole order, from the torchvision run.
    let h = 0x811c9dc5;
    for (const v of keep) h = Math.imul(h ^ v, 0x01000193) >>> 0;
    expect(h.toString(16)).toBe('998c6801');
  });
});

describe('torchSortDescending (libstdc++ std::sort as torch 1.13 CPU sort)', () => {
  test('tie order matches torch', () => {
    const scores = Array.from({ length: 40 }, (_, i) => Math.floor(((i * 13) % 7) / 2));
    expect(Array.from(torchSortDescending(scores))).toEqual([
      1, 22, 15, 29, 8, 36, 37, 38, 9, 10, 23, 31, 30, 3, 2, 16, 17, 24, 39, 25, 26, 32, 33, 19, 18, 4, 5, 12,
      11, 0, 21, 6, 35, 34, 7, 13, 14, 28, 27, 20,
    ]);
  });

  test('short inputs (insertion sort only) are stable', () => {
    expect(Array.from(torchSortDescending([1, 2, 2, 1, 3]))).toEqual([4, 1, 2, 0, 3]);
  });
});

describe('box ops (torchvision ops/boxes.py)', () => {
  test('box_area is signed', () => {
    expect(Array.from(boxArea(EDGE_BOXES))).toEqual([
      100, 100, 100, 0, 0, -100, 100, 100, 100, -100, 120, 100, 40, 100, 50,
    ]);
  });

  test('box_iou with inverted and degenerate boxes, NaN and -0 as torch', () => {
    const a = gatherRows(EDGE_BOXES, [0, 2, 3, 5, 11], 4);
    const b = gatherRows(EDGE_BOXES, [1, 4, 6, 12, 14], 4);
    const expected = [
      0.680672287940979, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, NaN, 0, 0, 0, NaN, -0, NaN, -0, -0, 0, 0, 0,
      0.4000000059604645, 0,
    ];
    const iou = Array.from(boxIou(a, b));
    expect(iou.length).toBe(expected.length);
    iou.forEach((v, i) => expect(Object.is(v, expected[i])).toBe(true));
  });

  test('clip_boxes_to_image clamps x to [0, w] and y to [0, h]', () => {
    const boxes = Float32Array.from([-5, -1, 700, 300, 10.5, 20.25, 30, 40]);
    expect(Array.from(clipBoxesToImage(boxes, 240, 640))).toEqual([0, 0, 640, 240, 10.5, 20.25, 30, 40]);
  });

  test('remove_small_boxes compares float32 sides with float32(min_size)', () => {
    // 0.01 in float32 is 0.009999999776482582: a side of exactly that survives min_size 1e-2.
    const side = Math.fround(0.01);
    const boxes = Float32Array.from([
      0, 0, side, 1, // kept: side == float32(0.01)
      0, 0, 0.0099, 1, // dropped
      5, 5, 4, 9, // inverted: dropped
      0, 0, 1, 1,
    ]);
    expect(Array.from(removeSmallBoxes(boxes, 1e-2))).toEqual([0, 3]);
  });

  test('resize_boxes scales by float32 original / resized per axis', () => {
    const out = resizeBoxes(Float32Array.from([100, 200, 300, 400]), [639, 1140], [718, 1280]);
    expect(Array.from(out)).toEqual([112.28070068359375, 224.72613525390625, 336.84210205078125, 449.4522705078125]);
  });
});
