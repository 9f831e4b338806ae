/**
 * Non-maximum suppression as torchvision 0.14 runs it on CPU (`ops.nms`, `ops.batched_nms`), on
 * flat Float32Array boxes (N*4, x1 y1 x2 y2).
 *
 * What decides which boxes survive, reproduced here:
 * - the NMS kernel visits candidates by a STABLE descending sort (equal scores: lower index first);
 * - but `batched_nms` above 1000 boxes re-sorts its survivors with the plain `Tensor.sort`, which in
 *   torch 1.13 on CPU is libstdc++'s unstable `std::sort` (introsort): equal scores come out in that
 *   algorithm's order, which `torchSortDescending` replays step by step;
 * - IoU is float32 arithmetic with signed areas (x2 - x1) * (y2 - y1) (no abs: inverted boxes have
 *   negative area), intersection sides clamped at 0, and a box is suppressed only when
 *   IoU > threshold (0/0 = NaN never suppresses);
 * - `batched_nms` offsets boxes per category by (max coordinate + 1) in float32 when there are at most
 *   1000 boxes, and loops over categories above that.
 * The kernel's pairwise tests are reproduced exactly; from 64 boxes a uniform grid only pairs boxes
 * that can overlap (`nmsGrid`), which returns what the kernel's O(N^2) loop (`nmsExhaustive`) does.
 */

const f32 = Math.fround;

/** libstdc++ `_S_threshold`: partitions at most this long are left to the final insertion sort. */
const INSERTION_THRESHOLD = 16;

/**
 * Indices that sort `scores` descending exactly as torch 1.13's CPU `Tensor.sort(descending=True)`
 * (non-stable) does: libstdc++ `std::sort` over (value, index) pairs that start in index order, with
 * torch's descending comparator (NaN first, then a > b).
 */
export function torchSortDescending(scores: ArrayLike<number>): Int32Array {
  const n = scores.length;
  const val = new Float64Array(n);
  const idx = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    val[i] = scores[i];
    idx[i] = i;
  }
  // comp(a, b): a must come before b.
  const before = (a: number, b: number): boolean => (Number.isNaN(a) && !Number.isNaN(b)) || a > b;
  const swap = (a: number, b: number): void => {
    const v = val[a];
    val[a] = val[b];
    val[b] = v;
    const t = idx[a];
    idx[a] = idx[b];
    idx[b] = t;
  };

  // Heap sort fallback of introsort (std::__partial_sort(first, last, last)).
  const adjustHeap = (first: number, holeStart: number, len: number, v: number, ix: number): void => {
    let hole = holeStart;
    const top = holeStart;
    let child = holeStart;
    while (child < Math.floor((len - 1) / 2)) {
      child = 2 * (child + 1);
      if (before(val[first + child], val[first + child - 1])) child--;
      val[first + hole] = val[first + child];
      idx[first + hole] = idx[first + child];
      hole = child;
    }
    if ((len & 1) === 0 && child === Math.floor((len - 2) / 2)) {
      child = 2 * (child + 1);
      val[first + hole] = val[first + child - 1];
      idx[first + hole] = idx[first + child - 1];
      hole = child - 1;
    }
    let parent = Math.trunc((hole - 1) / 2);
    while (hole > top && before(val[first + parent], v)) {
      val[first + hole] = val[first + parent];
      idx[first + hole] = idx[first + parent];
      hole = parent;
      parent = Math.trunc((hole - 1) / 2);
    }
    val[first + hole] = v;
    idx[first + hole] = ix;
  };
  const heapSort = (first: number, last: number): void => {
    const len = last - first;
    if (len >= 2) {
      for (let parent = Math.floor((len - 2) / 2); parent >= 0; parent--) {
        adjustHeap(first, parent, len, val[first + parent], idx[first + parent]);
      }
    }
    for (let end = last - 1; end - first >= 1; end--) {
      const v = val[end];
      const ix = idx[end];
      val[end] = val[first];
      idx[end] = idx[first];
      adjustHeap(first, 0, end - first, v, ix);
    }
  };

  const moveMedianToFirst = (result: number, a: number, b: number, c: number): void => {
    if (before(val[a], val[b])) {
      if (before(val[b], val[c])) swap(result, b);
      else if (before(val[a], val[c])) swap(result, c);
      else swap(result, a);
    } else if (before(val[a], val[c])) swap(result, a);
    else if (before(val[b], val[c])) swap(result, c);
    else swap(result, b);
  };
  const unguardedPartition = (firstStart: number, lastStart: number, pivot: number): number => {
    let first = firstStart;
    let last = lastStart;
    for (;;) {
      while (before(val[first], val[pivot])) first++;
      last--;
      while (before(val[pivot], val[last])) last--;
      if (!(first < last)) return first;
      swap(first, last);
      first++;
    }
  };
  const introsortLoop = (first: number, lastStart: number, depthStart: number): void => {
    let last = lastStart;
    let depth = depthStart;
    while (last - first > INSERTION_THRESHOLD) {
      if (depth === 0) {
        heapSort(first, last);
        return;
      }
      depth--;
      const mid = first + Math.floor((last - first) / 2);
      moveMedianToFirst(first, first + 1, mid, last - 1);
      const cut = unguardedPartition(first + 1, last, first);
      introsortLoop(cut, last, depth);
      last = cut;
    }
  };
  const unguardedLinearInsert = (pos: number): void => {
    const v = val[pos];
    const ix = idx[pos];
    let last = pos;
    let next = pos - 1;
    while (before(v, val[next])) {
      val[last] = val[next];
      idx[last] = idx[next];
      last = next;
      next--;
    }
    val[last] = v;
    idx[last] = ix;
  };
  const insertionSort = (first: number, last: number): void => {
    if (first === last) return;
    for (let i = first + 1; i < last; i++) {
      if (before(val[i], val[first])) {
        const v = val[i];
        const ix = idx[i];
        for (let k = i; k > first; k--) {
          val[k] = val[k - 1];
          idx[k] = idx[k - 1];
        }
        val[first] = v;
        idx[first] = ix;
      } else {
        unguardedLinearInsert(i);
      }
    }
  };

  if (n > 1) {
    introsortLoop(0, n, 2 * (31 - Math.clz32(n)));
    if (n > INSERTION_THRESHOLD) {
      insertionSort(0, INSERTION_THRESHOLD);
      for (let i = INSERTION_THRESHOLD; i < n; i++) unguardedLinearInsert(i);
    } else {
      insertionSort(0, n);
    }
  }
  return idx;
}

/** NaN first, then larger first: torch's descending comparator. */
function descending(a: number, b: number): number {
  const an = Number.isNaN(a);
  const bn = Number.isNaN(b);
  if (an || bn) return an === bn ? 0 : an ? -1 : 1;
  return a > b ? -1 : a < b ? 1 : 0;
}

/** torch `sort(stable=True, descending=True)` indices: equal scores keep index order. */
export function stableSortDescending(scores: ArrayLike<number>): Int32Array {
  const order = new Int32Array(scores.length);
  for (let i = 0; i < order.length; i++) order[i] = i;
  // The index tie-break makes the comparator a total order, so the result is the stable order.
  return order.sort((i, j) => descending(scores[i], scores[j]) || i - j);
}

/** Boxes laid out in the kernel's visiting order (position o = o-th highest score). */
interface Ordered {
  order: Int32Array;
  x1: Float32Array;
  y1: Float32Array;
  x2: Float32Array;
  y2: Float32Array;
  areas: Float32Array;
}

function orderBoxes(boxes: Float32Array, scores: ArrayLike<number>): Ordered {
  const n = scores.length;
  if (boxes.length !== n * 4) throw new Error(`nms: ${boxes.length / 4} boxes but ${n} scores`);
  const order = stableSortDescending(scores);
  const x1 = new Float32Array(n);
  const y1 = new Float32Array(n);
  const x2 = new Float32Array(n);
  const y2 = new Float32Array(n);
  const areas = new Float32Array(n);
  for (let o = 0; o < n; o++) {
    const b = order[o] * 4;
    x1[o] = boxes[b];
    y1[o] = boxes[b + 1];
    x2[o] = boxes[b + 2];
    y2[o] = boxes[b + 3];
    areas[o] = f32(x2[o] - x1[o]) * f32(y2[o] - y1[o]);
  }
  return { order, x1, y1, x2, y2, areas };
}

/**
 * The kernel's suppression test of position oj by kept position oi, float32 as in C++:
 * std::max(a, b) is (a < b ? b : a) and std::min(a, b) is (b < a ? b : a) (with NaN they return the
 * first argument, unlike Math.max/min). With threshold >= 0, disjoint pairs (IoU 0, -0 or NaN) exit early.
 */
function overlapsAbove(d: Ordered, oi: number, oj: number, iouThreshold: number): boolean {
  const ix1 = d.x1[oi];
  const ix2 = d.x2[oi];
  const xx1 = ix1 < d.x1[oj] ? d.x1[oj] : ix1;
  const xx2 = d.x2[oj] < ix2 ? d.x2[oj] : ix2;
  if (iouThreshold >= 0 && !(xx2 > xx1)) return false;
  const iy1 = d.y1[oi];
  const iy2 = d.y2[oi];
  const yy1 = iy1 < d.y1[oj] ? d.y1[oj] : iy1;
  const yy2 = d.y2[oj] < iy2 ? d.y2[oj] : iy2;
  if (iouThreshold >= 0 && !(yy2 > yy1)) return false;
  const dw = f32(xx2 - xx1);
  const dh = f32(yy2 - yy1);
  const w = 0 < dw ? dw : 0;
  const h = 0 < dh ? dh : 0;
  const inter = f32(w * h);
  const ovr = f32(inter / f32(f32(d.areas[oi] + d.areas[oj]) - inter));
  return ovr > iouThreshold;
}

/** The kernel's loop as written: every kept box against every later unsuppressed one. O(N^2). */
export function nmsExhaustive(boxes: Float32Array, scores: ArrayLike<number>, iouThreshold: number): Int32Array {
  const d = orderBoxes(boxes, scores);
  const n = d.order.length;
  const suppressed = new Uint8Array(n);
  const keep = new Int32Array(n);
  let numKept = 0;
  for (let oi = 0; oi < n; oi++) {
    if (suppressed[oi]) continue;
    keep[numKept++] = d.order[oi];
    for (let oj = oi + 1; oj < n; oj++) {
      if (!suppressed[oj] && overlapsAbove(d, oi, oj, iouThreshold)) suppressed[oj] = 1;
    }
  }
  return keep.slice(0, numKept);
}

/** Below this many boxes the grid costs more than it saves. */
const GRID_MIN_BOXES = 64;
/** Give up on the grid when boxes would register in more cells than this many per box on average. */
const GRID_MAX_CELLS_PER_BOX = 16;

/**
 * Same result as `nmsExhaustive`, but each kept box is only tested against boxes sharing a grid cell
 * with it. Sound because, with threshold >= 0, only pairs whose intersection has positive area can
 * suppress, and such a pair covers a common cell; the tests themselves are the kernel's, and a box's
 * fate depends only on the kept boxes before it, not on the order its tests run in. Inverted and
 * degenerate boxes intersect nothing, so they skip the grid (and are always kept). Returns null when
 * the grid does not apply (negative threshold, non-finite coordinates, boxes too large for the grid).
 */
export function nmsGrid(boxes: Float32Array, scores: ArrayLike<number>, iouThreshold: number): Int32Array | null {
  if (!(iouThreshold >= 0)) return null;
  const d = orderBoxes(boxes, scores);
  const n = d.order.length;
  const { x1, y1, x2, y2 } = d;
  let minX = Infinity;
  let minY = Infinity;
  let maxX = -Infinity;
  let maxY = -Infinity;
  const ordinary = new Uint8Array(n);
  const widths = new Float64Array(n);
  const heights = new Float64Array(n);
  let numOrdinary = 0;
  for (let o = 0; o < n; o++) {
    if (!(Number.isFinite(x1[o]) && Number.isFinite(y1[o]) && Number.isFinite(x2[o]) && Number.isFinite(y2[o]))) {
      return null;
    }
    if (!(x2[o] > x1[o] && y2[o] > y1[o])) continue;
    ordinary[o] = 1;
    minX = Math.min(minX, x1[o]);
    minY = Math.min(minY, y1[o]);
    maxX = Math.max(maxX, x2[o]);
    maxY = Math.max(maxY, y2[o]);
    widths[numOrdinary] = x2[o] - x1[o];
    heights[numOrdinary++] = y2[o] - y1[o];
  }
  // Cells about the median box size: a typical box covers a few cells.
  const median = (v: Float64Array): number => (numOrdinary ? v.subarray(0, numOrdinary).sort()[numOrdinary >> 1] : 1);
  const cols = Math.max(1, Math.min(64, Math.floor((maxX - minX) / median(widths)) || 1));
  const rows = Math.max(1, Math.min(64, Math.floor((maxY - minY) / median(heights)) || 1));
  const cellW = (maxX - minX) / cols;
  const cellH = (maxY - minY) / rows;
  // Monotone in the coordinate, so a point inside a box lands in a cell the box covers.
  const col = (x: number): number => Math.min(cols - 1, Math.max(0, Math.floor((x - minX) / cellW)));
  const row = (y: number): number => Math.min(rows - 1, Math.max(0, Math.floor((y - minY) / cellH)));
  const c0 = new Int32Array(n);
  const c1 = new Int32Array(n);
  const r0 = new Int32Array(n);
  const r1 = new Int32Array(n);
  const counts = new Int32Array(cols * rows + 1);
  let entries = 0;
  for (let o = 0; o < n; o++) {
    if (!ordinary[o]) continue;
    c0[o] = col(x1[o]);
    c1[o] = col(x2[o]);
    r0[o] = row(y1[o]);
    r1[o] = row(y2[o]);
    entries += (c1[o] - c0[o] + 1) * (r1[o] - r0[o] + 1);
    if (entries > GRID_MAX_CELLS_PER_BOX * n) return null;
    for (let r = r0[o]; r <= r1[o]; r++) for (let c = c0[o]; c <= c1[o]; c++) counts[r * cols + c + 1]++;
  }
  for (let k = 1; k < counts.length; k++) counts[k] += counts[k - 1];
  // Cell buckets (CSR), filled in visiting order, so each bucket is sorted by position.
  const fill = counts.slice(0, cols * rows);
  const bucket = new Int32Array(entries);
  for (let o = 0; o < n; o++) {
    if (!ordinary[o]) continue;
    for (let r = r0[o]; r <= r1[o]; r++) for (let c = c0[o]; c <= c1[o]; c++) bucket[fill[r * cols + c]++] = o;
  }

  const cursor = counts.slice(0, cols * rows);
  const suppressed = new Uint8Array(n);
  const tested = new Int32Array(n).fill(-1);
  const keep = new Int32Array(n);
  let numKept = 0;
  for (let oi = 0; oi < n; oi++) {
    if (suppressed[oi]) continue;
    keep[numKept++] = d.order[oi];
    if (!ordinary[oi]) continue;
    for (let r = r0[oi]; r <= r1[oi]; r++) {
      for (let c = c0[oi]; c <= c1[oi]; c++) {
        const cell = r * cols + c;
        const end = counts[cell + 1];
        // Buckets are sorted by position and oi only grows: skip the visited prefix for good.
        let e = cursor[cell];
        while (e < end && bucket[e] <= oi) e++;
        cursor[cell] = e;
        for (; e < end; e++) {
          const oj = bucket[e];
          if (suppressed[oj] || tested[oj] === oi) continue;
          tested[oj] = oi;
          if (overlapsAbove(d, oi, oj, iouThreshold)) suppressed[oj] = 1;
        }
      }
    }
  }
  return keep.slice(0, numKept);
}

/**
 * torchvision `nms` (CPU kernel): indices of the kept boxes, highest score first.
 * `boxes` N*4 float32, `scores` N values (float32 in upstream).
 */
export function nms(boxes: Float32Array, scores: ArrayLike<number>, iouThreshold: number): Int32Array {
  if (scores.length === 0) {
    if (boxes.length !== 0) throw new Error(`nms: ${boxes.length / 4} boxes but 0 scores`);
    return new Int32Array(0);
  }
  return (
    (scores.length >= GRID_MIN_BOXES ? nmsGrid(boxes, scores, iouThreshold) : null) ??
    nmsExhaustive(boxes, scores, iouThreshold)
  );
}

/** Above this many boxes torchvision's CPU batched_nms loops over categories (`boxes.numel() > 4000`). */
const COORDINATE_TRICK_MAX_BOXES = 1000;

/**
 * torchvision `batched_nms`: NMS independently within each category `idxs[i]` (the RPN's feature
 * level, the ROI heads' class label). Indices of the kept boxes, highest score first.
 */
export function batchedNms(
  boxes: Float32Array,
  scores: ArrayLike<number>,
  idxs: ArrayLike<number>,
  iouThreshold: number,
): Int32Array {
  const n = scores.length;
  if (idxs.length !== n) throw new Error(`batchedNms: ${idxs.length} category ids for ${n} scores`);
  if (boxes.length !== n * 4) throw new Error(`batchedNms: ${boxes.length / 4} boxes but ${n} scores`);
  if (n === 0) return new Int32Array(0);
  return n > COORDINATE_TRICK_MAX_BOXES
    ? batchedNmsPerCategory(boxes, scores, idxs, iouThreshold)
    : batchedNmsCoordinateTrick(boxes, scores, idxs, iouThreshold);
}

/**
 * Small inputs: shift each category's boxes by idx * (max coordinate + 1) so categories cannot
 * overlap, then one NMS. The shift happens in float32 and so rounds non-integer coordinates; that
 * rounding is part of upstream's result.
 */
export function batchedNmsCoordinateTrick(
  boxes: Float32Array,
  scores: ArrayLike<number>,
  idxs: ArrayLike<number>,
  iouThreshold: number,
): Int32Array {
  const n = scores.length;
  if (n === 0) return new Int32Array(0);
  // torch max() propagates NaN.
  let maxCoordinate = -Infinity;
  for (let i = 0; i < boxes.length; i++) {
    const v = boxes[i];
    if (Number.isNaN(v) || Number.isNaN(maxCoordinate)) maxCoordinate = NaN;
    else if (v > maxCoordinate) maxCoordinate = v;
  }
  const step = f32(maxCoordinate + 1);
  const shifted = new Float32Array(boxes.length);
  for (let i = 0; i < n; i++) {
    const offset = f32(f32(idxs[i]) * step);
    for (let c = 0; c < 4; c++) shifted[i * 4 + c] = boxes[i * 4 + c] + offset;
  }
  return nms(shifted, scores, iouThreshold);
}

/**
 * Large inputs: NMS per category, mark the survivors, then order them by score with torch's
 * (unstable) sort applied to the survivors in index order.
 */
export function batchedNmsPerCategory(
  boxes: Float32Array,
  scores: ArrayLike<number>,
  idxs: ArrayLike<number>,
  iouThreshold: number,
): Int32Array {
  const n = scores.length;
  const members = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    const list = members.get(idxs[i]);
    if (list) list.push(i);
    else members.set(idxs[i], [i]);
  }
  const kept = new Uint8Array(n);
  for (const indices of members.values()) {
    const subBoxes = new Float32Array(indices.length * 4);
    const subScores = new Float64Array(indices.length);
    indices.forEach((src, k) => {
      subBoxes.set(boxes.subarray(src * 4, src * 4 + 4), k * 4);
      subScores[k] = scores[src];
    });
    for (const k of nms(subBoxes, subScores, iouThreshold)) kept[indices[k]] = 1;
  }
  const keepIndices: number[] = [];
  for (let i = 0; i < n; i++) if (kept[i]) keepIndices.push(i);
  const keptScores = keepIndices.map((i) => scores[i]);
  return Int32Array.from(torchSortDescending(keptScores), (k) => keepIndices[k]);
}
