// The RPN's top-k preselection on the GPU: for every image and level of a batch, the anchors that
// can be among the level's k best objectness logits, with their logits and box deltas, compacted
// into one small buffer. Reading that back (~0.6 MB an image) replaces reading the whole head
// output (~11 MB at the default size) and the host's pass over every anchor; the host then runs
// the exact selection, decoding and NMS on the candidates alone (src/ops/proposals.ts).
//
// Three dispatches over the batch, all levels at once:
//   1. histogram of each (image, level)'s logits by the top 16 bits of their sort key;
//   2. one workgroup per (image, level) finds the digit D of the k-th largest key;
//   3. every logit whose digit is >= D appends (index, logit, 4 deltas) to its (image, level)'s
//      slots, through an atomic counter (so in no particular order: the host sorts by index).
// The candidates are a superset of the top k, closed under "at least as large": every logit equal
// to the k-th largest is in, which is what the host's tie rules need. Sort keys treat -0 as +0 (the
// host compares logits with ==, so the two must fall in one digit) and every NaN as the largest.
//
// With `ranked`, a fourth dispatch puts each (image, level)'s records in the order the host's
// selection sorts them (logit descending, equal logits by anchor, NaN last): each record's place
// is the number of records that go before it, counted over the slot in tiles of workgroup memory.
// The host then takes a prefix instead of sorting (~1.5 ms of a single image's host time).
import * as tf from '@tensorflow/tfjs-core';
import { CandidateLayout, RECORD_WORDS } from '../../ops/proposals';
import { runProgram, webgpuBackend, WebGPUProgram } from './program';

/**
 * Anchors per feature location and head channels per location (3 logits, 3 x 4 deltas), which a
 * head output may follow with one channel of padding (the vec4 layout of our convolutions).
 */
const ANCHORS = 3;
const CHANNELS = ANCHORS * 5;
const PADDED_CHANNELS = 16;
/** Histogram bins: the top 16 bits of a sort key. */
const BINS = 65536;
/** Anchors per thread in the histogram pass. */
const RUN = 16;
const SORT_KEY_WGSL = `
fn sortKey(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return 0xffffffffu; }
  if (b == 0x80000000u) { return 0x80000000u; }
  if (b >= 0x80000000u) { return 0xffffffffu - b; }
  return b + 0x80000000u;
}`;

/**
 * The per-logit pass over all levels (histogram or compaction). One thread per logit of the batch
 * tensors, levels laid end to end; logits outside an image's own region are skipped.
 */
class LogitPassProgram implements WebGPUProgram {
  variableNames: string[];
  variableComponents: number[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [256, 1, 1];
  atomic = true;
  uniforms = 'total : i32, start1 : i32, start2 : i32, start3 : i32, start4 : i32,';

  constructor(private readonly levels: number, private readonly compact: boolean, outputSize: number, total: number) {
    this.variableNames = [...Array.from({ length: levels }, (_, l) => `h${l}`), 'info', ...(compact ? ['digits'] : [])];
    this.variableComponents = [...Array.from({ length: levels }, () => 1), 4, ...(compact ? [1] : [])];
    this.outputShape = [outputSize];
    this.dispatch = [Math.ceil(total / this.workgroupSize[0]), 1, 1];
    this.shaderKey = `i2pRpnCandidates_${levels}_${compact ? 'compact' : 'histogram'}`;
  }

  private visit(level: number): string {
    const h = `h${level}`;
    const locate = `
  let a = i % ${ANCHORS}; let t = i / ${ANCHORS}; let x = t % W; let t2 = t / W; let y = t2 % H; let n = t2 / H;
  let slot = n * ${this.levels} + ${level};
  let own = info[slot * 2];`;
    if (!this.compact) {
      // A run of RUN consecutive anchors per thread, one atomic per run of equal bins: neighbouring
      // anchors often share a digit, and atomics on one address serialise.
      return `
fn visit${level}(run: i32) {
  let H = uniforms.${h}Shape.y; let W = uniforms.${h}Shape.z; let C = uniforms.${h}Shape.w;
  let count = uniforms.${h}Shape.x * H * W * ${ANCHORS};
  var bin = -1; var same = 0;
  for (var i = run * ${RUN}; i < min(count, (run + 1) * ${RUN}); i++) {
    ${locate}
    var b = -1;
    if (y < own.x && x < own.y) {
      b = slot * ${BINS} + i32(sortKey(${h}[((n * H + y) * W + x) * C + a]) >> 16u);
    }
    if (b != bin) {
      if (bin >= 0) { atomicAdd(&result[bin], same); }
      bin = b; same = 0;
    }
    same++;
  }
  if (bin >= 0) { atomicAdd(&result[bin], same); }
}`;
    }
    return `
fn visit${level}(i: i32) {
  let H = uniforms.${h}Shape.y; let W = uniforms.${h}Shape.z; let C = uniforms.${h}Shape.w;
  ${locate}
  if (y >= own.x || x >= own.y) { return; }
  let base = ((n * H + y) * W + x) * C;
  let v = ${h}[base + a];
  if (i32(sortKey(v) >> 16u) < digits[slot]) { return; }
  let c = atomicAdd(&result[slot], 1);
  let room = info[slot * 2 + 1];
  if (c >= room.x) { return; }
  let r = room.y + c * ${RECORD_WORDS};
  let d = base + ${ANCHORS} + a * 4;
  atomicStore(&result[r], (y * own.y + x) * ${ANCHORS} + a);
  atomicStore(&result[r + 1], bitcast<i32>(v));
  atomicStore(&result[r + 2], bitcast<i32>(${h}[d]));
  atomicStore(&result[r + 3], bitcast<i32>(${h}[d + 1]));
  atomicStore(&result[r + 4], bitcast<i32>(${h}[d + 2]));
  atomicStore(&result[r + 5], bitcast<i32>(${h}[d + 3]));
}`;
  }

  getUserCode(): string {
    const levels = Array.from({ length: this.levels }, (_, l) => l);
    const starts = ['0', 'uniforms.start1', 'uniforms.start2', 'uniforms.start3', 'uniforms.start4'];
    const dispatch = levels
      .map((l) => (l + 1 < this.levels ? `if (index < ${starts[l + 1]}) { visit${l}(index - ${starts[l]}); return; }` : `visit${l}(index - ${starts[l]});`))
      .join('\n  ');
    return `${SORT_KEY_WGSL}
${levels.map((l) => this.visit(l)).join('\n')}
fn main(index: i32) {
  if (index >= uniforms.total) { return; }
  ${dispatch}
}`;
  }
}

/** One workgroup per (image, level): the digit of the level's k-th largest key (BINS when k = 0). */
class KthDigitProgram implements WebGPUProgram {
  variableNames = ['histogram', 'info'];
  variableComponents = [1, 4];
  outputShape: number[];
  shaderKey = 'i2pRpnKthDigit';
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [256, 1, 1];

  constructor(slots: number) {
    this.outputShape = [slots];
    this.dispatch = [slots, 1, 1];
  }

  getUserCode(): string {
    return `
var<workgroup> sums: array<i32, 256>;
fn main(index: i32) {
  let slot = i32(workgroupId.x);
  let t = i32(localIndex);
  // Thread t sums the 256 bins of chunk t; thread 0 then walks the chunks, then the bins, from the top.
  let base = slot * ${BINS};
  var s = 0;
  for (var j = 0; j < 256; j++) { s += histogram[base + t * 256 + j]; }
  sums[t] = s;
  workgroupBarrier();
  // (The bound check also keeps the uniforms binding in the pipeline's layout, which tfjs always binds.)
  if (t == 0 && slot < uniforms.outShape) {
    let k = info[slot * 2].z;
    var digit = ${BINS};
    if (k > 0) {
      var above = 0;
      var c = 255;
      loop {
        if (c < 0 || above + sums[c] >= k) { break; }
        above += sums[c];
        c--;
      }
      if (c >= 0) {
        var d = c * 256 + 255;
        loop {
          above += histogram[base + d];
          if (above >= k || d == c * 256) { break; }
          d--;
        }
        digit = d;
      }
    }
    result[slot] = digit;
  }
}`;
  }
}

/** Records ranked per workgroup tile (one record per thread). */
const RANK_TILE = 256;

/**
 * One workgroup per RANK_TILE records of a slot (workgroup y = slot): each thread counts the
 * records of its slot that go before its own (see rankKey) and copies its record there. A slot's
 * counter is copied as it is; records beyond it (an overflowing slot's) are not ranked, and the
 * host reads such an image's whole head output anyway.
 */
class RankCandidatesProgram implements WebGPUProgram {
  variableNames = ['words', 'info'];
  variableComponents = [1, 4];
  outputShape: number[];
  shaderKey = 'i2pRpnRankCandidates';
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [RANK_TILE, 1, 1];

  constructor(words: number, slots: number, maxCapacity: number) {
    this.outputShape = [words];
    this.dispatch = [Math.max(1, Math.ceil(maxCapacity / RANK_TILE)), slots, 1];
  }

  getUserCode(): string {
    return `${SORT_KEY_WGSL}
var<workgroup> tileKey: array<u32, ${RANK_TILE}>;
var<workgroup> tileAnchor: array<i32, ${RANK_TILE}>;
var<workgroup> slotCount: i32;
var<workgroup> tileStart: i32;
// Larger goes first: the ascending sort key (-0 as +0), every NaN 0 (its sort key is the only
// 0xffffffff), below every number's key.
fn rankKey(bits: i32) -> u32 {
  let k = sortKey(bitcast<f32>(bits));
  return select(k, 0u, k == 0xffffffffu);
}
fn main(index: i32) {
  let slot = i32(workgroupId.y);
  let t = i32(localIndex);
  let j = i32(workgroupId.x) * ${RANK_TILE} + t;
  let room = info[slot * 2 + 1];
  let base = room.y;
  // (The bound check also keeps the uniforms binding in the pipeline's layout, which tfjs always binds.)
  if (j == 0 && slot < uniforms.outShape) { result[slot] = words[slot]; }
  // Through workgroup memory: the barriers below need the loop bounds uniform, and tfjs' builtins
  // (private variables) are not, for WGSL's uniformity analysis.
  if (t == 0) {
    slotCount = clamp(words[slot], 0, room.x);
    tileStart = i32(workgroupId.x) * ${RANK_TILE};
  }
  let count = workgroupUniformLoad(&slotCount);
  if (workgroupUniformLoad(&tileStart) >= count) { return; }
  let mine = j < count;
  var key = 0u;
  var anchor = 0;
  if (mine) {
    key = rankKey(words[base + j * ${RECORD_WORDS} + 1]);
    anchor = words[base + j * ${RECORD_WORDS}];
  }
  var rank = 0;
  for (var start = 0; start < count; start += ${RANK_TILE}) {
    let r = start + t;
    if (r < count) {
      tileKey[t] = rankKey(words[base + r * ${RECORD_WORDS} + 1]);
      tileAnchor[t] = words[base + r * ${RECORD_WORDS}];
    }
    workgroupBarrier();
    let n = min(${RANK_TILE}, count - start);
    if (mine) {
      for (var q = 0; q < n; q++) {
        let other = tileKey[q];
        if (other > key || (other == key && tileAnchor[q] < anchor)) { rank++; }
      }
    }
    workgroupBarrier();
  }
  if (mine) {
    let source = base + j * ${RECORD_WORDS};
    let place = base + rank * ${RECORD_WORDS};
    for (var w = 0; w < ${RECORD_WORDS}; w++) { result[place + w] = words[source + w]; }
  }
}`;
  }
}

/**
 * The candidates of every (image, level) of the batch head outputs `head` ([N, H, W, 15] per
 * level, or 16 with a last channel that is not read): an int32 tensor in `layout`'s words (counters, then records; each slot's records in the
 * host selection's order with `ranked`, else in no particular order). The caller reads it back
 * and disposes it.
 */
export function rpnCandidates(head: tf.Tensor4D[], layout: CandidateLayout, ranked = false): tf.Tensor1D {
  const levels = head.length;
  if (levels < 1 || levels > 5 || levels !== layout.levels) throw new Error(`rpnCandidates: ${levels} levels, layout has ${layout.levels}`);
  const slots = layout.images * levels;
  if (head.some((h) => h.shape[0] !== layout.images || (h.shape[3] !== CHANNELS && h.shape[3] !== PADDED_CHANNELS))) throw new Error('rpnCandidates: head outputs do not match the layout');
  webgpuBackend();
  const infoData = new Int32Array(slots * 8);
  for (let s = 0; s < slots; s++) {
    const [h, w] = layout.ownSizes[s];
    infoData.set([h, w, layout.k[s], 0, layout.capacity[s], layout.base[s], 0, 0], s * 8);
  }
  // Threads of each pass laid end to end over the levels: one per anchor (compaction) or per run.
  const threads = (run: number): { total: number; uniforms: Array<{ type: 'int32'; data: number[] }> } => {
    const starts: number[] = [0];
    for (const h of head) starts.push(starts[starts.length - 1] + Math.ceil((h.shape[0] * h.shape[1] * h.shape[2] * ANCHORS) / run));
    const total = starts[levels];
    return { total, uniforms: [total, ...[1, 2, 3, 4].map((l) => starts[Math.min(l, levels)])].map((v) => ({ type: 'int32' as const, data: [v] })) };
  };
  const runs = threads(RUN);
  const anchors = threads(1);
  return tf.tidy(() => {
    const info = tf.tensor2d(infoData, [slots * 2, 4], 'int32');
    const histogram = runInto(new LogitPassProgram(levels, false, slots * BINS, runs.total), [...head, info], runs.uniforms, slots * BINS);
    const digits = runProgram<tf.Rank.R1>(new KthDigitProgram(slots), [histogram, info], [], 'int32');
    const words = runInto(new LogitPassProgram(levels, true, layout.words, anchors.total), [...head, info, digits], anchors.uniforms, layout.words);
    if (!ranked) return words;
    const program = new RankCandidatesProgram(layout.words, slots, Math.max(0, ...layout.capacity));
    return runProgram<tf.Rank.R1>(program, [words, info], [], 'int32');
  });
}

/**
 * Runs an atomic program into a zeroed int32 tensor of `words` (its counters start at 0). Zeroed by
 * tf.fill, which fills on the GPU: tf.zeros would keep a host copy that reads would return instead.
 */
function runInto(program: WebGPUProgram, inputs: tf.Tensor[], uniforms: Array<{ type: 'int32'; data: number[] }>, words: number): tf.Tensor1D {
  const out = tf.fill([words], 0, 'int32') as tf.Tensor1D;
  webgpuBackend().runWebGPUProgram(program, inputs, 'int32', uniforms, out);
  return out;
}
