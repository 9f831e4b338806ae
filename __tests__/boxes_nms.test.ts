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
} from '../src/ops/boxes';
import {
  GridGeometry,
  IncrementalNms,
  batchedNms,
  batchedNmsTop,
  float32SortKey,
  float32SortKeys,
  nms,
  nmsExhaustive,
  selectKth,
  stableArgsortKeys,
  stableSortDescending,
  torchSortDescending,
} from '../src/ops/nms';
import { seeded } from './utils/lcg';
import { referenceKernel } from './utils/nms_reference';

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

/** Random boxes in a 300x200 field, sides up to `maxSide`, with some inverted and degenerate ones. */
function randomBoxes(n: number, maxSide: number, rnd: () => number): Float32Array {
  const boxes = new Float32Array(n * 4);
  for (let i = 0; i < n; i++) {
    const x = rnd() * 300;
    const y = rnd() * 200;
    let w = 1 + rnd() * maxSide;
    let h = 1 + rnd() * maxSide;
    const odd = rnd();
    if (odd < 0.02) w = -w;
    else if (odd < 0.04) h = 0;
    boxes.set([x, y, x + w, y + h], i * 4);
  }
  return boxes;
}

/** Scores: distinct float32s, few distinct values (ties everywhere), or few values and a NaN. */
function randomScores(n: number, kind: 'distinct' | 'ties' | 'nan', rnd: () => number): Float32Array {
  const scores = Float32Array.from({ length: n }, () => (kind === 'distinct' ? rnd() * 10 - 5 : Math.floor(rnd() * 9) / 8));
  if (kind === 'nan') scores[Math.floor(rnd() * n)] = NaN;
  return scores;
}

/** Indices ordered by torch's stable descending comparator: NaN first, then larger, ties by index. */
function comparatorOrder(scores: ArrayLike<number>): number[] {
  const rank = (v: number): number => (Number.isNaN(v) ? Infinity : v);
  return Array.from({ length: scores.length }, (_, i) => i).sort((i, j) => {
    const a = rank(scores[i]);
    const b = rank(scores[j]);
    return a === b ? i - j : b > a ? 1 : -1;
  });
}

describe('sorting and selection helpers', () => {
  test('float32 sort keys order values exactly as a typed-array sort does', () => {
    const rnd = seeded(3);
    const values = Float32Array.from({ length: 3000 }, () => Math.floor(rnd() * 41 - 20) * 0.25);
    const specials = [0, -0, Infinity, -Infinity, NaN, 1e-45, -1e-45, 3.4028234663852886e38, -3.4028234663852886e38];
    specials.forEach((v, i) => (values[i * 7] = v));
    // A NaN with the sign bit set.
    new Uint32Array(values.buffer)[5] = 0xffc00001;
    const keys = float32SortKeys(values);
    const byKey = Array.from(values.keys()).sort((i, j) => keys[i] - keys[j] || i - j);
    const sorted = Float32Array.from(values).sort();
    byKey.forEach((i, rank) => expect(Object.is(values[i], sorted[rank]) || (Number.isNaN(values[i]) && Number.isNaN(sorted[rank]))).toBe(true));
    const bits = (v: number): number => new Uint32Array(Float32Array.of(v).buffer)[0];
    expect(float32SortKey(bits(-0))).toBeLessThan(float32SortKey(bits(0)));
    expect(float32SortKey(0xffc00001)).toBe(0xffffffff);
    expect(float32SortKey(bits(Infinity))).toBeLessThan(0xffffffff);
  });

  test('stableArgsortKeys is a stable ascending argsort (radix digits, skipped digits, extremes)', () => {
    const rnd = seeded(4);
    for (const [n, spread] of [[0, 1], [1, 1], [2, 1], [3000, 5], [3000, 2 ** 32], [2500, 2 ** 11]] as const) {
      const keys = Uint32Array.from({ length: n }, () => Math.floor(rnd() * spread) * Math.floor(2 ** 32 / spread));
      if (n > 2) keys.set([0xffffffff, 0, 0xffffffff], 0);
      const want = Array.from(keys.keys()).sort((i, j) => keys[i] - keys[j] || i - j);
      expect(Array.from(stableArgsortKeys(keys))).toEqual(want);
    }
  });

  test('selectKth returns the k-th smallest, ties included', () => {
    const rnd = seeded(5);
    for (const [n, distinct] of [[1, 1], [2, 2], [101, 3], [2000, 2000], [2000, 1]] as const) {
      const values = Float64Array.from({ length: n }, () => Math.floor(rnd() * distinct));
      const sorted = Array.from(values).sort((a, b) => a - b);
      for (const k of [0, n >> 1, n - 1]) expect(selectKth(Float64Array.from(values), k)).toBe(sorted[k]);
    }
    expect(() => selectKth(new Float64Array(2), 2)).toThrow(/outside/);
  });

  test('stableSortDescending: presorted, float32, float64 and NaN inputs all give the comparator order', () => {
    const rnd = seeded(6);
    const ties = randomScores(3000, 'ties', rnd);
    ties[10] = -0;
    ties[20] = 0;
    const presorted = Float32Array.from(ties).sort().reverse();
    const float64 = Float64Array.from({ length: 500 }, () => Math.floor(rnd() * 5) + 0.1);
    const inputs: ArrayLike<number>[] = [ties, presorted, randomScores(3000, 'nan', rnd), float64, [3, 1, NaN, 3, -0, 0, NaN], []];
    for (const scores of inputs) expect(Array.from(stableSortDescending(scores))).toEqual(comparatorOrder(scores));
  });
});

describe('IncrementalNms (the kernel loop, one box at a time)', () => {
  test('any grid geometry, coarse or fine, covering the boxes or not, keeps what the plain loop keeps', () => {
    const rnd = seeded(7);
    const geometries: GridGeometry[] = [
      { minX: 0, minY: 0, colScale: 1 / 7, rowScale: 1 / 5, cols: 64, rows: 64 },
      { minX: -1000, minY: -1000, colScale: 1e-4, rowScale: 1e-4, cols: 1, rows: 1 },
      { minX: 40, minY: 30, colScale: 0.5, rowScale: 2, cols: 3, rows: 40 },
    ];
    const reused = new IncrementalNms(0.5);
    for (let trial = 0; trial < 6; trial++) {
      const n = 200 + Math.floor(rnd() * 300);
      const boxes = randomBoxes(n, trial % 2 ? 80 : 20, rnd);
      const scores = randomScores(n, trial % 3 ? 'ties' : 'distinct', rnd);
      const order = stableSortDescending(scores);
      for (const thr of [0, 0.4, 0.7]) {
        const want = referenceKernel(boxes, scores, thr);
        expect(Array.from(nmsExhaustive(boxes, scores, thr))).toEqual(want);
        expect(Array.from(nms(boxes, scores, thr))).toEqual(want);
        for (const grid of geometries) {
          // Capacity 1: the kept and cell arrays grow on the way. And one loop reset for each run,
          // its arrays left as earlier runs (other thresholds and grids) grew them.
          const greedy = new IncrementalNms(thr, grid, 1);
          reused.reset(thr, grid);
          for (const loop of [greedy, reused]) {
            const kept = Array.from(order).filter((i) => loop.push(boxes[i * 4], boxes[i * 4 + 1], boxes[i * 4 + 2], boxes[i * 4 + 3]));
            expect(kept).toEqual(want);
            expect(loop.kept).toBe(want.length);
          }
        }
      }
    }
  });

  test('with fine cells, finds a suppressing box wherever it overlaps the new one (the probe points)', () => {
    // A box tested only against the boxes of a few cells must still meet every box that can
    // suppress it: one kept box slid across a 10x10 box in small steps, thin and wide, in x and y,
    // at thresholds around the probes' lowest; each decision against the kernel's own test.
    const grid: GridGeometry = { minX: -20, minY: -20, colScale: 4, rowScale: 4, cols: 200, rows: 200 };
    const target = [0, 0, 10, 10];
    for (const thr of [0.34, 0.36, 0.4, 0.5, 0.7, 0.99]) {
      for (let shift = -12; shift <= 12; shift += 0.5) {
        for (const [w, h] of [[3.4, 10], [4.1, 10], [6, 10], [10, 10], [12, 11], [6, 8], [10, 3.6]]) {
          for (const kept of [
            [shift, 0, shift + w, h],
            [0, shift, h, shift + w],
            [shift, shift / 2, shift + w, shift / 2 + h],
          ]) {
            const boxes = Float32Array.from([...kept, ...target]);
            const want = referenceKernel(boxes, [2, 1], thr);
            const greedy = new IncrementalNms(thr, grid, 2);
            const got = [0, 1].filter((i) => greedy.push(boxes[i * 4], boxes[i * 4 + 1], boxes[i * 4 + 2], boxes[i * 4 + 3]));
            expect([thr, shift, w, h, got]).toEqual([thr, shift, w, h, want]);
          }
        }
      }
    }
  });

  test('refuses a grid with a negative threshold or non-finite coordinates', () => {
    const grid: GridGeometry = { minX: 0, minY: 0, colScale: 1, rowScale: 1, cols: 4, rows: 4 };
    expect(() => new IncrementalNms(-0.1, grid)).toThrow(/threshold/);
    expect(() => new IncrementalNms(0.5, grid).push(0, 0, NaN, 1)).toThrow(/finite/);
    // Without a grid, negative thresholds and NaN follow the kernel.
    const boxes = Float32Array.from([0, 0, 1, 1, 5, 5, 6, 6, 0, 0, NaN, 1]);
    const scores = [3, 2, 1];
    expect(Array.from(nmsExhaustive(boxes, scores, -0.5))).toEqual(referenceKernel(boxes, scores, -0.5));
    expect(Array.from(nmsExhaustive(boxes, scores, 0.5))).toEqual(referenceKernel(boxes, scores, 0.5));
  });
});

describe('batchedNms above 1000 boxes and batchedNmsTop', () => {
  /** batched_nms's per-category path from the plain kernel loop and torch's sort. */
  function referenceBatched(boxes: Float32Array, scores: Float32Array, idxs: number[], thr: number): number[] {
    const kept = new Uint8Array(scores.length);
    for (const c of new Set(idxs)) {
      const members = idxs.flatMap((v, i) => (v === c ? [i] : []));
      for (const k of referenceKernel(gatherRows(boxes, members, 4), gatherRows(scores, members, 1), thr)) kept[members[k]] = 1;
    }
    const survivors = Array.from(kept.keys()).filter((i) => kept[i]);
    return Array.from(torchSortDescending(survivors.map((i) => scores[i])), (k) => survivors[k]);
  }

  test.each(['distinct', 'ties', 'nan'] as const)('per-category path and its first N (%s scores)', (kind) => {
    const rnd = seeded(kind.length + 10);
    for (let trial = 0; trial < 4; trial++) {
      const n = 1001 + Math.floor(rnd() * 1500);
      const categories = 1 + (trial % 4);
      const boxes = randomBoxes(n, 40, rnd);
      const scores = randomScores(n, kind, rnd);
      // Interleaved categories in one trial, runs (as the RPN's levels) in the others.
      const idxs = Array.from({ length: n }, (_, i) => (trial === 1 ? i % categories : Math.floor((i * categories) / n)));
      const full = Array.from(batchedNms(boxes, scores, idxs, 0.4));
      expect(full).toEqual(referenceBatched(boxes, scores, idxs, 0.4));
      for (const maxKeep of [0, 1, 10, 300, full.length, n + 5, Infinity, 2.5, -3, NaN]) {
        expect([maxKeep, Array.from(batchedNmsTop(boxes, scores, idxs, 0.4, maxKeep))]).toEqual([maxKeep, full.slice(0, maxKeep)]);
      }
    }
  });

  test('batchedNmsTop with tied scores among the first N follows torch\'s unstable sort', () => {
    const rnd = seeded(21);
    const n = 1500;
    const boxes = randomBoxes(n, 40, rnd);
    const scores = randomScores(n, 'distinct', rnd);
    const idxs = Array.from({ length: n }, (_, i) => Math.floor((i * 3) / n));
    // 40 disjoint boxes, all kept, share the best score: their order is the introsort's.
    for (let t = 0; t < 40; t++) {
      const i = Math.floor((t * n) / 40);
      boxes.set([1000 + 30 * t, 0, 1010 + 30 * t, 10], i * 4);
      scores[i] = 100;
    }
    const full = Array.from(batchedNms(boxes, scores, idxs, 0.4));
    const tied = full.slice(0, 40);
    expect(tied.every((i) => scores[i] === 100)).toBe(true);
    expect(tied).not.toEqual([...tied].sort((a, b) => a - b));
    for (const maxKeep of [5, 40, 300]) expect(Array.from(batchedNmsTop(boxes, scores, idxs, 0.4, maxKeep))).toEqual(full.slice(0, maxKeep));
  });

  test('batchedNmsTop at most 1000 boxes is the coordinate-offset path cut', () => {
    const rnd = seeded(20);
    const boxes = randomBoxes(600, 40, rnd);
    const scores = randomScores(600, 'distinct', rnd);
    const idxs = Array.from({ length: 600 }, (_, i) => i % 3);
    expect(Array.from(batchedNmsTop(boxes, scores, idxs, 0.4, 50))).toEqual(Array.from(batchedNms(boxes, scores, idxs, 0.4)).slice(0, 50));
  });
});
