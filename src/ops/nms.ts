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
 * The loop itself runs one box at a time (`IncrementalNms`), so `batchedNmsTop` can stop once the
 * first N results are certain.
 */

// Module-level aliases: direct Math.* calls are much slower inside jest's vm contexts.
const f32 = Math.fround;
const floor = Math.floor;

/** v clamped to [lo, hi]. */
function clampInt(v: number, lo: number, hi: number): number {
  return v < lo ? lo : v > hi ? hi : v;
}

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
  const before = (a: number, b: number): boolean => (a !== a && b === b) || a > b;
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
    while (child < (len - 1) >> 1) {
      child = 2 * (child + 1);
      if (before(val[first + child], val[first + child - 1])) child--;
      val[first + hole] = val[first + child];
      idx[first + hole] = idx[first + child];
      hole = child;
    }
    if ((len & 1) === 0 && child === (len - 2) >> 1) {
      child = 2 * (child + 1);
      val[first + hole] = val[first + child - 1];
      idx[first + hole] = idx[first + child - 1];
      hole = child - 1;
    }
    let parent = ((hole - 1) / 2) | 0;
    while (hole > top && before(val[first + parent], v)) {
      val[first + hole] = val[first + parent];
      idx[first + hole] = idx[first + parent];
      hole = parent;
      parent = ((hole - 1) / 2) | 0;
    }
    val[first + hole] = v;
    idx[first + hole] = ix;
  };
  const heapSort = (first: number, last: number): void => {
    const len = last - first;
    if (len >= 2) {
      for (let parent = (len - 2) >> 1; parent >= 0; parent--) {
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
      const mid = first + ((last - first) >> 1);
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

/**
 * Order-preserving unsigned key of a float32 given by its IEEE bits: key(a) < key(b) exactly where
 * a typed-array sort puts a before b (-0 before +0, every NaN last).
 */
export function float32SortKey(bits: number): number {
  // NaN: all exponent bits set and a non-zero mantissa.
  if ((bits & 0x7fffffff) > 0x7f800000) return 0xffffffff;
  // Negative floats: flip all bits (larger magnitude sorts lower); non-negative: set the sign bit.
  return bits >= 0x80000000 ? 0xffffffff - bits : bits + 0x80000000;
}

/** float32SortKey of every value; `out` may be longer than `values`. */
export function float32SortKeys(values: Float32Array, out: Uint32Array = new Uint32Array(values.length)): Uint32Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < values.length; i++) out[i] = float32SortKey(bits[i]);
  return out;
}

const RADIX_BITS = 11;
const RADIX_BINS = 1 << RADIX_BITS;

/** Work arrays of stableArgsortKeys, for callers that sort often: each at least n long. */
export interface ArgsortScratch {
  order: Int32Array;
  next: Int32Array;
}

/**
 * Indices that sort keys[0..n) ascending, equal keys in index order: a least-significant-digit
 * radix sort (three 11-bit passes, each stable), O(n) and free of comparator calls. With
 * `scratch`, the result is one of its arrays (its first n values) and nothing is allocated.
 */
export function stableArgsortKeys(keys: Uint32Array, n: number = keys.length, scratch?: ArgsortScratch): Int32Array {
  let order = scratch ? scratch.order : new Int32Array(n);
  let next = scratch ? scratch.next : new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  const starts = RADIX_STARTS;
  for (let shift = 0; shift < 32; shift += RADIX_BITS) {
    starts.fill(0);
    for (let i = 0; i < n; i++) starts[(keys[i] >>> shift) & (RADIX_BINS - 1)]++;
    let sum = 0;
    let single = false;
    for (let d = 0; d < RADIX_BINS; d++) {
      const c = starts[d];
      if (c === n) single = true;
      starts[d] = sum;
      sum += c;
    }
    // Every key shares this digit: the pass would not move anything.
    if (single) continue;
    for (let i = 0; i < n; i++) {
      const o = order[i];
      next[starts[(keys[o] >>> shift) & (RADIX_BINS - 1)]++] = o;
    }
    const t = order;
    order = next;
    next = t;
  }
  return order;
}

/** The bins of stableArgsortKeys (it runs to completion before any other call can use them). */
const RADIX_STARTS = new Int32Array(RADIX_BINS);

/**
 * Stable descending order of float32 scores by radix sort on reversed float keys (NaN first, -0
 * equal to +0, as the descending comparator has it). Null when a score is not a float32.
 */
function radixStableDescending(scores: ArrayLike<number>): Int32Array | null {
  const n = scores.length;
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = scores[i];
    values[i] = v === 0 ? 0 : v;
    if (v === v && values[i] !== v) return null;
  }
  const keys = float32SortKeys(values);
  for (let i = 0; i < n; i++) keys[i] = 0xffffffff - keys[i];
  return stableArgsortKeys(keys);
}

/**
 * The k-th smallest (0-based) of `values`, which it reorders (Hoare selection, median-of-three
 * pivot): O(n) on average where a sort is O(n log n). Values must not be NaN.
 */
export function selectKth(values: Float64Array, k: number): number {
  if (!(k >= 0 && k < values.length)) throw new Error(`selectKth: k = ${k} outside 0..${values.length - 1}`);
  let lo = 0;
  let hi = values.length - 1;
  while (hi > lo) {
    const a = values[lo];
    const b = values[(lo + hi) >> 1];
    const c = values[hi];
    const pivot = a < b ? (b < c ? b : a < c ? c : a) : a < c ? a : b < c ? c : b;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (values[i] < pivot) i++;
      while (values[j] > pivot) j--;
      if (i <= j) {
        const t = values[i];
        values[i++] = values[j];
        values[j--] = t;
      }
    }
    // [lo, j] <= pivot <= [i, hi], and everything strictly between j and i equals the pivot.
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return values[k];
  }
  return values[k];
}

/** torch `sort(stable=True, descending=True)` indices: equal scores keep index order. */
export function stableSortDescending(scores: ArrayLike<number>): Int32Array {
  const n = scores.length;
  // Scores already in order (the RPN hands each level over best first): the identity, in O(n).
  let inOrder = true;
  for (let i = 1; i < n && inOrder; i++) inOrder = scores[i - 1] >= scores[i];
  if (inOrder) {
    const identity = new Int32Array(n);
    for (let i = 0; i < n; i++) identity[i] = i;
    return identity;
  }
  const radix = radixStableDescending(scores);
  if (radix) return radix;
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  // The index tie-break makes the comparator a total order, so the result is the stable order.
  return order.sort((i, j) => descending(scores[i], scores[j]) || i - j);
}

/** Indices in the kernel's visiting order (stable descending by score), after checking the shapes. */
function visitingOrder(boxes: Float32Array, scores: ArrayLike<number>): Int32Array {
  const n = scores.length;
  if (boxes.length !== n * 4) throw new Error(`nms: ${boxes.length / 4} boxes but ${n} scores`);
  return stableSortDescending(scores);
}

/** Below this many boxes the grid costs more than it saves. */
const GRID_MIN_BOXES = 64;
/** At most this many cells per side. */
export const GRID_MAX_SIDE = 64;
/** Give up on the grid when boxes would register in more cells than this many per box on average. */
const GRID_MAX_CELLS_PER_BOX = 16;

/**
 * A uniform grid of cols x rows cells over [minX, minX + cols / colScale] x [minY, ...]; coordinates
 * outside it map to the border cells. The mapping is monotone in the coordinate, so a point inside
 * a box lands in a cell the box covers, wherever the grid lies and however coarse it is.
 */
export interface GridGeometry {
  minX: number;
  minY: number;
  /** Cells per unit of x (cols / grid width), and of y. */
  colScale: number;
  rowScale: number;
  cols: number;
  rows: number;
}

/** First cell index covering coordinate v (finite) along an axis of `cells` cells. */
function cellIndex(v: number, min: number, scale: number, cells: number): number {
  return clampInt(floor((v - min) * scale), 0, cells - 1);
}

/**
 * A grid for these boxes: their bounding box cut into cells about the median box size. Null when a
 * grid does not apply: non-finite coordinates, or boxes too large for the grid.
 */
function gridFor(boxes: Float32Array): GridGeometry | null {
  const n = boxes.length / 4;
  let minX = Infinity;
  let minY = Infinity;
  let maxX = -Infinity;
  let maxY = -Infinity;
  const widths = new Float64Array(n);
  const heights = new Float64Array(n);
  /** Boxes that can intersect another (x2 > x1, y2 > y1): the only ones a grid registers. */
  const ordinary = new Int32Array(n);
  let numOrdinary = 0;
  for (let i = 0; i < n; i++) {
    const bx1 = boxes[i * 4];
    const by1 = boxes[i * 4 + 1];
    const bx2 = boxes[i * 4 + 2];
    const by2 = boxes[i * 4 + 3];
    // v - v is 0 exactly for finite v (NaN for NaN and +-Infinity).
    if (bx1 - bx1 !== 0 || by1 - by1 !== 0 || bx2 - bx2 !== 0 || by2 - by2 !== 0) return null;
    if (!(bx2 > bx1 && by2 > by1)) continue;
    if (bx1 < minX) minX = bx1;
    if (by1 < minY) minY = by1;
    if (bx2 > maxX) maxX = bx2;
    if (by2 > maxY) maxY = by2;
    ordinary[numOrdinary] = i;
    widths[numOrdinary] = bx2 - bx1;
    heights[numOrdinary++] = by2 - by1;
  }
  if (numOrdinary === 0) return { minX: 0, minY: 0, colScale: 1, rowScale: 1, cols: 1, rows: 1 };
  const medianWidth = selectKth(widths.subarray(0, numOrdinary), numOrdinary >> 1);
  const medianHeight = selectKth(heights.subarray(0, numOrdinary), numOrdinary >> 1);
  const cols = clampInt(floor((maxX - minX) / medianWidth) || 1, 1, GRID_MAX_SIDE);
  const rows = clampInt(floor((maxY - minY) / medianHeight) || 1, 1, GRID_MAX_SIDE);
  const grid = { minX, minY, colScale: cols / (maxX - minX), rowScale: rows / (maxY - minY), cols, rows };
  let entries = 0;
  for (let j = 0; j < numOrdinary; j++) {
    const b = ordinary[j] * 4;
    const spanX = cellIndex(boxes[b + 2], minX, grid.colScale, cols) - cellIndex(boxes[b], minX, grid.colScale, cols) + 1;
    const spanY = cellIndex(boxes[b + 3], minY, grid.rowScale, rows) - cellIndex(boxes[b + 1], minY, grid.rowScale, rows) + 1;
    entries += spanX * spanY;
    if (entries > GRID_MAX_CELLS_PER_BOX * n) return null;
  }
  return grid;
}

/** Values per stored box: x1, y1, x2, y2, area (one box's values side by side: one cache line). */
const STORED = 5;

/**
 * The kernel's test of box b (area `area`) against the stored box at stored[o .. o + 5): whether
 * their IoU is above the threshold, in the kernel's float32 arithmetic (see IncrementalNms).
 */
function suppresses(
  stored: Float32Array,
  o: number,
  bx1: number,
  by1: number,
  bx2: number,
  by2: number,
  area: number,
  iouThreshold: number,
): boolean {
  const kx1 = stored[o];
  const kx2 = stored[o + 2];
  const xx1 = kx1 < bx1 ? bx1 : kx1;
  const xx2 = bx2 < kx2 ? bx2 : kx2;
  // With threshold >= 0, disjoint pairs (IoU 0, -0 or NaN) cannot suppress: skip the arithmetic.
  if (!(xx2 > xx1) && iouThreshold >= 0) return false;
  const ky1 = stored[o + 1];
  const ky2 = stored[o + 3];
  const yy1 = ky1 < by1 ? by1 : ky1;
  const yy2 = by2 < ky2 ? by2 : ky2;
  if (!(yy2 > yy1) && iouThreshold >= 0) return false;
  const dw = f32(xx2 - xx1);
  const dh = f32(yy2 - yy1);
  const inter = f32((0 < dw ? dw : 0) * (0 < dh ? dh : 0));
  return f32(inter / f32(f32(stored[o + 4] + area) - inter)) > iouThreshold;
}

/** Thresholds from which a box is tested only against the boxes of its probe points' cells (see IncrementalNms). */
const PROBE_MIN_THRESHOLD = 0.35;
/** Boxes narrower or lower than this are tested against every box of every cell they cover. */
const PROBE_MIN_SIDE = 1e-6;

/** A typed array at least `length` long (doubling) holding the same prefix. */
function grownTo<T extends Float32Array | Int32Array>(a: T, length: number): T {
  let n = a.length * 2 || 1;
  while (n < length) n *= 2;
  const out = new (a.constructor as new (n: number) => T)(n);
  out.set(a);
  return out;
}

/**
 * The kernel's greedy loop, fed one box at a time in visiting order (highest score first, ties by
 * index), each box decided as it arrives. The kernel lets every kept box suppress the later boxes
 * it overlaps above the threshold; equivalently, a box is kept exactly when no box kept before it
 * overlaps it so, which is what `push` tests, with the kernel's own test (kept box first). A box's
 * fate thus depends only on the boxes before it: callers may stop early, or feed boxes as they
 * produce them.
 *
 * The kernel's test, float32 as in C++: std::max(a, b) is (a < b ? b : a) and std::min(a, b) is
 * (b < a ? b : a) (with NaN they return the first argument, unlike Math.max/min); areas are signed
 * (x2 - x1) * (y2 - y1); intersection sides clamp at 0; suppression needs IoU > threshold (NaN never).
 *
 * With a grid (threshold >= 0 only, finite coordinates only), a box is only tested against the kept
 * boxes registered in the cells it covers: sound because, with threshold >= 0, only pairs whose
 * intersection has positive area can suppress (disjoint pairs give IoU 0, -0 or NaN), and such a
 * pair covers a common cell. Inverted and degenerate boxes intersect nothing, so they are kept
 * without tests and never registered. Without a grid every kept box is tested: O(N^2).
 */
export class IncrementalNms {
  /** Kept boxes stored for testing later ones, STORED values each (inverted and degenerate ones are not, with a grid). */
  private stored: Float32Array;
  private numStored = 0;
  private numKept = 0;
  /** Boxes pushed so far: the stamp of the box being decided. */
  private pushed = 0;
  /** Per stored box, the last box tested against it (the two may share several cells). */
  private testedBy: Int32Array;
  /**
   * Per cell, its last registered entry; per entry, (stored box, previous entry of its cell). Cells
   * list their boxes newest first, which finds a suppressing box sooner than oldest first.
   */
  private cellHead: Int32Array;
  private entries_: Int32Array;
  private numEntries = 0;
  /**
   * Fractions of a box's width and height whose points (two per axis, four in all) every box that
   * can suppress it covers; 0 where the threshold is too low for that (or there is no grid).
   *
   * Why: the exact IoU of boxes a, b is at most dw / wb (inter = dw dh <= dw hb, union >= area b),
   * and the kernel's float32 IoU exceeds the exact one by less than a relative 1e-5 when b's sides
   * are at least PROBE_MIN_SIDE (all its roundings are then of normal floats). So a box that
   * suppresses b (float32 IoU > t) overlaps it in x over more than t' wb, t' = t / (1 + 1e-5). An
   * interval that long inside b's x range [0, wb] contains q1 wb or q2 wb, for q1 = t' - m,
   * q2 = 1 - t' + m, 0 < m <= (3t' - 1) / 2: if it starts at or before q1 wb it reaches past
   * t' wb > q1 wb; if it starts after, it starts before (1 - t') wb < q2 wb and ends past
   * (q1 + t') wb >= q2 wb. The same holds in y, so the suppressing box covers one of the 4 points
   * (its overlap with b, a rectangle inside both, does), and is registered in that point's cell
   * (the cell mapping is monotone). Testing the boxes of those <= 4 cells, not of every cell b
   * covers, thus finds every box that can suppress b; those it finds intersect b far more often.
   */
  private probeLow = 0;
  private probeHigh = 0;
  private iouThreshold_ = 0;
  private grid: GridGeometry | null = null;

  constructor(iouThreshold: number, grid: GridGeometry | null = null, capacity = 64) {
    const c = capacity > 1 ? capacity : 1;
    this.stored = new Float32Array(c * STORED);
    this.testedBy = new Int32Array(grid ? c : 0);
    this.cellHead = new Int32Array(0);
    this.entries_ = new Int32Array(grid ? 8 * c : 0);
    this.reset(iouThreshold, grid);
  }

  /**
   * Starts a new loop (no box decided yet) with this threshold and grid, keeping the arrays: a
   * caller that runs many loops one after another allocates them once.
   */
  reset(iouThreshold: number, grid: GridGeometry | null = null): void {
    if (grid && !(iouThreshold >= 0)) throw new Error(`IncrementalNms: a grid needs a threshold >= 0, got ${iouThreshold}`);
    this.iouThreshold_ = iouThreshold;
    this.grid = grid;
    this.numStored = 0;
    this.numKept = 0;
    this.pushed = 0;
    this.numEntries = 0;
    const cells = grid ? grid.cols * grid.rows : 0;
    if (this.cellHead.length < cells) this.cellHead = new Int32Array(cells);
    this.cellHead.fill(-1, 0, cells);
    if (grid && this.testedBy.length < this.stored.length / STORED) this.testedBy = new Int32Array(this.stored.length / STORED);
    const t = iouThreshold / (1 + 1e-5);
    const probes = grid !== null && t >= PROBE_MIN_THRESHOLD;
    const m = (3 * t - 1) / 4;
    this.probeLow = probes ? t - m : 0;
    this.probeHigh = probes ? 1 - t + m : 0;
  }

  /** IoU above which a box is suppressed. */
  get iouThreshold(): number {
    return this.iouThreshold_;
  }

  /** Boxes kept so far. */
  get kept(): number {
    return this.numKept;
  }

  /** Cell registrations so far (a kept box registers in every cell it covers). */
  get entries(): number {
    return this.numEntries;
  }

  /** Decides the next box in visiting order (float32 coordinates): true when it is kept. */
  push(bx1: number, by1: number, bx2: number, by2: number): boolean {
    const stamp = this.pushed++;
    const area = f32(f32(bx2 - bx1) * f32(by2 - by1));
    const { grid } = this;
    if (!grid) {
      if (this.suppressedByAny(bx1, by1, bx2, by2, area)) return false;
      this.store(bx1, by1, bx2, by2, area);
      return true;
    }
    if (bx1 - bx1 !== 0 || by1 - by1 !== 0 || bx2 - bx2 !== 0 || by2 - by2 !== 0) {
      throw new Error('IncrementalNms: a grid needs finite coordinates');
    }
    if (!(bx2 > bx1 && by2 > by1)) {
      this.numKept++;
      return true;
    }
    const ca = cellIndex(bx1, grid.minX, grid.colScale, grid.cols);
    const cb = cellIndex(bx2, grid.minX, grid.colScale, grid.cols);
    const ra = cellIndex(by1, grid.minY, grid.rowScale, grid.rows);
    const rb = cellIndex(by2, grid.minY, grid.rowScale, grid.rows);
    const cols = grid.cols;
    const w = bx2 - bx1;
    const h = by2 - by1;
    const { probeLow, probeHigh } = this;
    if (probeLow > 0 && w >= PROBE_MIN_SIDE && h >= PROBE_MIN_SIDE) {
      // Only the cells of the probe points can hold a box that suppresses this one (see probeLow).
      const c1 = cellIndex(bx1 + probeLow * w, grid.minX, grid.colScale, grid.cols);
      const c2 = cellIndex(bx1 + probeHigh * w, grid.minX, grid.colScale, grid.cols);
      const r1 = cellIndex(by1 + probeLow * h, grid.minY, grid.rowScale, grid.rows);
      const r2 = cellIndex(by1 + probeHigh * h, grid.minY, grid.rowScale, grid.rows);
      if (this.suppressedInCell(r1 * cols + c1, stamp, bx1, by1, bx2, by2, area)) return false;
      if (c2 !== c1 && this.suppressedInCell(r1 * cols + c2, stamp, bx1, by1, bx2, by2, area)) return false;
      if (r2 !== r1) {
        if (this.suppressedInCell(r2 * cols + c1, stamp, bx1, by1, bx2, by2, area)) return false;
        if (c2 !== c1 && this.suppressedInCell(r2 * cols + c2, stamp, bx1, by1, bx2, by2, area)) return false;
      }
    } else {
      for (let r = ra; r <= rb; r++) {
        for (let c = ca; c <= cb; c++) if (this.suppressedInCell(r * cols + c, stamp, bx1, by1, bx2, by2, area)) return false;
      }
    }
    const k = this.store(bx1, by1, bx2, by2, area);
    const cells = (rb - ra + 1) * (cb - ca + 1);
    if ((this.numEntries + cells) * 2 > this.entries_.length) this.entries_ = grownTo(this.entries_, (this.numEntries + cells) * 2);
    this.register(k, ra, rb, ca, cb, cols);
    return true;
  }

  /** Whether a box registered in `cell`, not yet tested against box `stamp`, suppresses it. */
  private suppressedInCell(cell: number, stamp: number, bx1: number, by1: number, bx2: number, by2: number, area: number): boolean {
    const { testedBy, stored } = this;
    const iouThreshold = this.iouThreshold_;
    const entries = this.entries_;
    for (let e = this.cellHead[cell]; e >= 0; e = entries[e + 1]) {
      const k = entries[e];
      if (testedBy[k] === stamp) continue;
      testedBy[k] = stamp;
      if (suppresses(stored, k * STORED, bx1, by1, bx2, by2, area, iouThreshold)) return true;
    }
    return false;
  }

  /** Appends stored box k to the lists of the cells [ra, rb] x [ca, cb] (room already made). */
  private register(k: number, ra: number, rb: number, ca: number, cb: number, cols: number): void {
    const { cellHead } = this;
    const entries = this.entries_;
    for (let r = ra; r <= rb; r++) {
      for (let c = ca; c <= cb; c++) {
        const cell = r * cols + c;
        const e = this.numEntries++ * 2;
        entries[e] = k;
        entries[e + 1] = cellHead[cell];
        cellHead[cell] = e;
      }
    }
  }

  /** Whether a kept box overlaps this one above the threshold: the kernel's test against each. */
  private suppressedByAny(bx1: number, by1: number, bx2: number, by2: number, area: number): boolean {
    const { stored, iouThreshold } = this;
    const end = this.numStored * STORED;
    for (let o = 0; o < end; o += STORED) {
      if (suppresses(stored, o, bx1, by1, bx2, by2, area, iouThreshold)) return true;
    }
    return false;
  }

  private store(bx1: number, by1: number, bx2: number, by2: number, area: number): number {
    if ((this.numStored + 1) * STORED > this.stored.length) {
      this.stored = grownTo(this.stored, (this.numStored + 1) * STORED);
      if (this.grid) this.testedBy = grownTo(this.testedBy, this.numStored + 1);
    }
    this.numKept++;
    const k = this.numStored++;
    const o = k * STORED;
    const { stored } = this;
    stored[o] = bx1;
    stored[o + 1] = by1;
    stored[o + 2] = bx2;
    stored[o + 3] = by2;
    stored[o + 4] = area;
    if (this.grid) this.testedBy[k] = -1;
    return k;
  }
}

/** Feeds every box in `order` to `greedy`: the indices of the kept boxes, in visiting order. */
function runGreedy(boxes: Float32Array, order: Int32Array, greedy: IncrementalNms): Int32Array {
  const keep = new Int32Array(order.length);
  let numKept = 0;
  for (let o = 0; o < order.length; o++) {
    const b = order[o] * 4;
    if (greedy.push(boxes[b], boxes[b + 1], boxes[b + 2], boxes[b + 3])) keep[numKept++] = order[o];
  }
  return keep.slice(0, numKept);
}

/** The kernel's loop as written: every kept box against every later unsuppressed one. O(N^2). */
export function nmsExhaustive(boxes: Float32Array, scores: ArrayLike<number>, iouThreshold: number): Int32Array {
  const order = visitingOrder(boxes, scores);
  return runGreedy(boxes, order, new IncrementalNms(iouThreshold, null, order.length));
}

/**
 * Same result as `nmsExhaustive`, each box tested only against the kept boxes sharing a grid cell
 * with it (see IncrementalNms). Returns null when the grid does not apply (negative threshold,
 * non-finite coordinates, boxes too large for the grid).
 */
export function nmsGrid(boxes: Float32Array, scores: ArrayLike<number>, iouThreshold: number): Int32Array | null {
  if (!(iouThreshold >= 0)) return null;
  const order = visitingOrder(boxes, scores);
  const grid = gridFor(boxes);
  return grid ? runGreedy(boxes, order, new IncrementalNms(iouThreshold, grid, order.length)) : null;
}

/** The greedy loop for these boxes, with a grid wherever it applies and pays. */
function greedyFor(boxes: Float32Array, n: number, iouThreshold: number): IncrementalNms {
  const grid = iouThreshold >= 0 && n >= GRID_MIN_BOXES ? gridFor(boxes) : null;
  return new IncrementalNms(iouThreshold, grid, n);
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
  const order = visitingOrder(boxes, scores);
  return runGreedy(boxes, order, greedyFor(boxes, order.length, iouThreshold));
}

/** Above this many boxes torchvision's CPU batched_nms loops over categories (`boxes.numel() > 4000`). */
export const COORDINATE_TRICK_MAX_BOXES = 1000;

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

/** One category's greedy loop, on its own boxes and scores (local index k = input index members[k]). */
interface CategoryLoop {
  greedy: IncrementalNms;
  boxes: Float32Array;
  scores: Float64Array;
  members: Int32Array;
  /** Local indices in visiting order, and how many have been decided. */
  order: Int32Array;
  position: number;
}

/** The greedy loop of every category, categories in order of first appearance. */
function categoryLoops(boxes: Float32Array, scores: ArrayLike<number>, idxs: ArrayLike<number>, iouThreshold: number): CategoryLoop[] {
  const n = scores.length;
  const categoryOf = new Int32Array(n);
  const rank = new Map<number, number>();
  const sizes: number[] = [];
  for (let i = 0; i < n; i++) {
    const id = idxs[i];
    let r = rank.get(id);
    if (r === undefined) {
      r = sizes.length;
      rank.set(id, r);
      sizes.push(0);
    }
    categoryOf[i] = r;
    sizes[r]++;
  }
  // Members of each category in index order, CSR-style.
  const starts = new Int32Array(sizes.length + 1);
  for (let c = 0; c < sizes.length; c++) starts[c + 1] = starts[c] + sizes[c];
  const fill = starts.slice(0, sizes.length);
  const allMembers = new Int32Array(n);
  for (let i = 0; i < n; i++) allMembers[fill[categoryOf[i]]++] = i;

  return sizes.map((m, c) => {
    const members = allMembers.subarray(starts[c], starts[c] + m);
    // A category stored as one run (the RPN's levels are) needs no copy of its boxes.
    const contiguous = members[m - 1] - members[0] === m - 1;
    const subBoxes = contiguous ? boxes.subarray(members[0] * 4, (members[0] + m) * 4) : new Float32Array(m * 4);
    const subScores = new Float64Array(m);
    for (let k = 0; k < m; k++) {
      const src = members[k];
      subScores[k] = scores[src];
      if (!contiguous) {
        subBoxes[k * 4] = boxes[src * 4];
        subBoxes[k * 4 + 1] = boxes[src * 4 + 1];
        subBoxes[k * 4 + 2] = boxes[src * 4 + 2];
        subBoxes[k * 4 + 3] = boxes[src * 4 + 3];
      }
    }
    const order = visitingOrder(subBoxes, subScores);
    return { greedy: greedyFor(subBoxes, m, iouThreshold), boxes: subBoxes, scores: subScores, members, order, position: 0 };
  });
}

function categoryDone(loop: CategoryLoop): boolean {
  return loop.position >= loop.order.length;
}

/** Decides the next box of a category, marking it in `kept`: its input index when kept, else -1. */
function stepCategory(loop: CategoryLoop, kept: Uint8Array): number {
  const local = loop.order[loop.position++];
  const b = local * 4;
  const { boxes } = loop;
  if (!loop.greedy.push(boxes[b], boxes[b + 1], boxes[b + 2], boxes[b + 3])) return -1;
  kept[loop.members[local]] = 1;
  return loop.members[local];
}

/** The survivors (kept[i] = 1) ordered as batched_nms returns them: torch's unstable sort of them in index order. */
function orderSurvivors(kept: Uint8Array, scores: ArrayLike<number>): Int32Array {
  const n = kept.length;
  let numKept = 0;
  for (let i = 0; i < n; i++) numKept += kept[i];
  const keepIndices = new Int32Array(numKept);
  const keptScores = new Float64Array(numKept);
  for (let i = 0, k = 0; i < n; i++) {
    if (!kept[i]) continue;
    keepIndices[k] = i;
    keptScores[k++] = scores[i];
  }
  const order = torchSortDescending(keptScores);
  for (let k = 0; k < numKept; k++) order[k] = keepIndices[order[k]];
  return order;
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
  const kept = new Uint8Array(scores.length);
  for (const loop of categoryLoops(boxes, scores, idxs, iouThreshold)) {
    while (!categoryDone(loop)) stepCategory(loop, kept);
  }
  return orderSurvivors(kept, scores);
}

/**
 * `batchedNms(boxes, scores, idxs, iouThreshold).slice(0, maxKeep)`, deciding only as many boxes
 * as that needs. Above 1000 boxes the categories' greedy loops run interleaved, highest pending
 * score first, and stop once maxKeep boxes are kept and every undecided box scores below the last
 * of them. Those maxKeep boxes are then the first maxKeep of the full result provided their scores
 * are distinct: any sort, torch's unstable one included, puts distinct values in one order, and
 * nothing undecided can outrank them. Ties among them (whose order torch's introsort decides from
 * the whole survivor list) make the loops run to the end and take the exact path.
 */
export function batchedNmsTop(
  boxes: Float32Array,
  scores: ArrayLike<number>,
  idxs: ArrayLike<number>,
  iouThreshold: number,
  maxKeep: number,
): Int32Array {
  const n = scores.length;
  const limit = floor(maxKeep);
  let anyNaN = false;
  for (let i = 0; i < n && !anyNaN; i++) anyNaN = scores[i] !== scores[i];
  if (n <= COORDINATE_TRICK_MAX_BOXES || !(limit > 0) || anyNaN || idxs.length !== n || boxes.length !== n * 4) {
    return batchedNms(boxes, scores, idxs, iouThreshold).slice(0, maxKeep);
  }
  const loops = categoryLoops(boxes, scores, idxs, iouThreshold);
  const kept = new Uint8Array(n);
  // Input indices of the kept boxes in the order decided: scores non-increasing.
  const taken: number[] = [];
  let bound = -Infinity;
  for (;;) {
    let best: CategoryLoop | null = null;
    let bestScore = -Infinity;
    for (const loop of loops) {
      if (categoryDone(loop)) continue;
      const score = loop.scores[loop.order[loop.position]];
      if (best === null || score > bestScore) {
        best = loop;
        bestScore = score;
      }
    }
    if (best === null || (taken.length >= limit && bestScore < bound)) break;
    const index = stepCategory(best, kept);
    if (index >= 0 && taken.push(index) === limit) bound = bestScore;
  }
  if (loops.some((loop) => !categoryDone(loop))) {
    let distinct = taken.length === limit;
    for (let k = 1; k < taken.length && distinct; k++) distinct = scores[taken[k - 1]] > scores[taken[k]];
    if (distinct) return Int32Array.from(taken);
    for (const loop of loops) while (!categoryDone(loop)) stepCategory(loop, kept);
  }
  return orderSurvivors(kept, scores).slice(0, limit);
}
