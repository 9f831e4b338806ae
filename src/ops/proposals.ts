/**
 * The RPN's post-processing (upstream `_rpn.py` filter_proposals), per image on plain typed arrays:
 * per level, top-k anchors by raw objectness logit; decode; clip to the resized image; drop tiny
 * boxes; NMS within each level; keep the best post_nms_top_n. It uses only the image's own region
 * of each level, so an image gets the same proposals in a batch as alone. Float32 semantics
 * (Math.fround after every operation) follow torch's float32 CPU arithmetic. No tfjs here: worker
 * threads run this module on their own (src/runtime/worker.ts).
 */
import { ANCHORS_PER_LOCATION, anchorGrids, anchorInto, anchorsAt, featureSizes, sharedImageAnchors } from './anchors';
import { clipBoxesToImage, removeSmallBoxes } from './boxes';
import { Size } from './size';
import {
  ArgsortScratch,
  COORDINATE_TRICK_MAX_BOXES,
  GridGeometry,
  IncrementalNms,
  batchedNmsTop,
  float32SortKey,
  float32SortKeys,
  stableArgsortKeys,
  torchSortDescending,
} from './nms';

// Module-level aliases: hot loops then call local bindings, not module properties (or, inside
// jest's vm contexts, the much slower direct Math.* calls).
const f32 = Math.fround;
const exp = Math.exp;
const sortKey = float32SortKey;

/** Bins of an 11-bit radix digit. */
const DIGIT_BINS = 2048;

export interface RpnConfig {
  /** Candidates kept per level before NMS (upstream rpn_pre_nms_top_n_test). */
  preNmsTopN: number;
  /** Proposals kept per image after NMS (rpn_post_nms_top_n_test). */
  postNmsTopN: number;
  /** IoU above which NMS suppresses (rpn_nms_thresh). */
  nmsThresh: number;
  /** Boxes narrower or lower than this are dropped (RegionProposalNetwork.min_size). */
  minSize: number;
}

/** img2pose's inference settings. */
export const RPN_CONFIG: RpnConfig = { preNmsTopN: 6000, postNmsTopN: 1000, nmsThresh: 0.4, minSize: 1e-3 };

/** Upstream's BoxCoder clamp on dw, dh: log(1000 / 16), as the float32 torch compares against. */
const XFORM_CLIP = f32(Math.log(1000 / 16));
export const BBOX_XFORM_CLIP = XFORM_CLIP;

/** Image size as (height, width). */
export type { Size };

export interface Proposals {
  /** (x1, y1, x2, y2) per proposal, in resized-image coordinates, best first. */
  boxes: Float32Array;
  /** Raw objectness logits (no sigmoid), same order. */
  scores: Float32Array;
}

/** The head's output for one image, flattened in upstream order: level, then (y, x), then anchor. */
export interface RpnHeadOutput {
  objectness: Float32Array;
  /** (dx, dy, dw, dh) per anchor. */
  deltas: Float32Array;
  /** Anchors of each level. */
  perLevel: number[];
}

/**
 * BoxCoder.decode with weights (1, 1, 1, 1): deltas relative to anchors -> boxes.
 * Only the anchors listed in `indices` are decoded (all of them when omitted), in that order.
 */
export function decodeBoxes(deltas: Float32Array, anchors: Float32Array, indices?: ArrayLike<number>): Float32Array {
  const n = indices ? indices.length : anchors.length / 4;
  const out = new Float32Array(n * 4);
  for (let i = 0; i < n; i++) {
    const a = (indices ? indices[i] : i) * 4;
    decodeFrom(deltas, a, anchors, a, out, i * 4);
  }
  return out;
}

/**
 * Decodes the deltas at deltas[d .. d + 4) against the anchor box at anchors[a .. a + 4) into
 * out[o .. o + 4) (float32 on store, as torch's tensor).
 */
function decodeFrom(deltas: Float32Array, d: number, anchors: Float32Array, a: number, out: Float32Array, o: number): void {
  const w = f32(anchors[a + 2] - anchors[a]);
  const h = f32(anchors[a + 3] - anchors[a + 1]);
  const cx = f32(anchors[a] + f32(0.5 * w));
  const cy = f32(anchors[a + 1] + f32(0.5 * h));
  // (Module-private constants: a compiled module reads its exported ones as properties.)
  const dw = deltas[d + 2] > XFORM_CLIP ? XFORM_CLIP : deltas[d + 2];
  const dh = deltas[d + 3] > XFORM_CLIP ? XFORM_CLIP : deltas[d + 3];
  const pcx = f32(f32(deltas[d] * w) + cx);
  const pcy = f32(f32(deltas[d + 1] * h) + cy);
  const halfW = f32(0.5 * f32(f32(exp(dw)) * w));
  const halfH = f32(0.5 * f32(f32(exp(dh)) * h));
  out[o] = pcx - halfW;
  out[o + 1] = pcy - halfH;
  out[o + 2] = pcx + halfW;
  out[o + 3] = pcy + halfH;
}

/**
 * The anchors of a head output (or of an image's candidates): a table made up front, or each
 * anchor made when the on-demand path first needs it (it decodes a few thousand of the GPU's
 * twenty thousand candidates).
 */
interface AnchorSource {
  /** Writes anchor i's box (i counted over all levels, `level` its level) into out[0 .. 4). */
  at(i: number, level: number, out: Float32Array): void;
  /** Every anchor, (x1, y1, x2, y2) each. */
  all(): Float32Array;
}

function anchorTable(anchors: Float32Array): AnchorSource {
  return {
    at: (i, _level, out) => {
      out[0] = anchors[i * 4];
      out[1] = anchors[i * 4 + 1];
      out[2] = anchors[i * 4 + 2];
      out[3] = anchors[i * 4 + 3];
    },
    all: () => anchors,
  };
}

/** The anchors of candidates at level-local indices `index` (perLevel of them per level), made as needed. */
function candidateAnchors(paddedSize: Size, perLevel: number[], index: Int32Array): AnchorSource {
  const grids = anchorGrids(paddedSize[0], paddedSize[1]);
  let table: Float32Array | null = null;
  return {
    at: (i, level, out) => anchorInto(grids[level], index[i], out, 0),
    all: () => (table ??= anchorsAt(paddedSize[0], paddedSize[1], perLevel, index)),
  };
}

/**
 * The k-th largest (k >= 1) of keys[0..n): radix selection on 11-bit digits, most significant
 * first, each pass keeping only the keys that share the chosen prefix. O(n) whatever the ties,
 * unlike a quickselect on many equal logits.
 */
export function kthLargestKey(keys: Uint32Array, n: number, k: number): number {
  if (!(k >= 1 && k <= n)) throw new Error(`kthLargestKey: k = ${k} outside 1..${n}`);
  const histogram = new Int32Array(DIGIT_BINS);
  let candidates = keys;
  let count = n;
  let rank = k;
  let prefix = 0;
  for (let shift = 22; shift >= 0; shift -= 11) {
    histogram.fill(0);
    for (let i = 0; i < count; i++) histogram[(candidates[i] >>> shift) & (DIGIT_BINS - 1)]++;
    let digit = DIGIT_BINS - 1;
    while (histogram[digit] < rank) rank -= histogram[digit--];
    prefix += digit * 2 ** shift;
    if (shift === 0) break;
    const kept = new Uint32Array(histogram[digit]);
    let m = 0;
    for (let i = 0; i < count; i++) if (((candidates[i] >>> shift) & (DIGIT_BINS - 1)) === digit) kept[m++] = candidates[i];
    candidates = kept;
    count = m;
  }
  return prefix;
}

/** The float32 value whose sort key is `key` (the inverse of float32SortKeys, NaN included). */
function keyToFloat32(key: number): number {
  const scratch = new Float32Array(1);
  new Uint32Array(scratch.buffer)[0] = key >= 0x80000000 ? key - 0x80000000 : 0xffffffff - key;
  return scratch[0];
}

/**
 * Indices of the k best objectness logits of each level (k = min(topN, level size)), levels in
 * order, each level's best first. Equal logits keep anchor order (torch.topk leaves their order
 * unspecified; exact ties between logits of different anchors are rare). NaN logits are never
 * picked (and a level whose k-th largest logit is NaN contributes nothing).
 */
export function selectTopPerLevel(objectness: Float32Array, perLevel: number[], topN: number): Int32Array {
  const histogram = new Int32Array(DIGIT_BINS);
  const picked: Int32Array[] = [];
  let offset = 0;
  for (const count of perLevel) {
    const k = Math.min(topN, count);
    // A fractional k selects nothing, as indexing a sorted copy at count - k would.
    if (k > 0 && Number.isInteger(k)) picked.push(topOfLevel(objectness.subarray(offset, offset + count), k, offset, histogram));
    offset += count;
  }
  const out = new Int32Array(picked.reduce((n, p) => n + p.length, 0));
  picked.reduce((o, p) => (out.set(p, o), o + p.length), 0);
  return out;
}

/** The top 11 bits of a sort key. */
const TOP_DIGIT_SHIFT = 21;

/** selectTopPerLevel for one level (1 <= k <= level size), indices shifted by `offset`. */
function topOfLevel(level: Float32Array, k: number, offset: number, histogram: Int32Array): Int32Array {
  const n = level.length;
  if (n <= 2 * k) return topBySort(level, k, offset);
  const bits = new Uint32Array(level.buffer, level.byteOffset, n);
  // The k-th largest logit (NaN counting as largest): what a full ascending sort would hold at
  // n - k. Its key's top digit first, from one histogram pass...
  histogram.fill(0);
  for (let i = 0; i < n; i++) histogram[sortKey(bits[i]) >>> TOP_DIGIT_SHIFT]++;
  let digit = DIGIT_BINS - 1;
  let atOrAbove = histogram[digit];
  while (atOrAbove < k) atOrAbove += histogram[--digit];
  // ...then only the logits in that digit or above (k plus that digit's excess) are looked at again.
  const candidates = new Int32Array(atOrAbove);
  const candidateKeys = new Uint32Array(atOrAbove);
  for (let i = 0, m = 0; i < n; i++) {
    const key = sortKey(bits[i]);
    if (key >>> TOP_DIGIT_SHIFT >= digit) {
      candidates[m] = i;
      candidateKeys[m++] = key;
    }
  }
  const bound = keyToFloat32(kthLargestKey(candidateKeys, atOrAbove, k));
  if (bound !== bound) return new Int32Array(0);
  // -0 and +0 are equal logits with keys in different digits: a zero bound needs the whole level.
  const chosen = chooseAbove(level, bound, k, bound === 0 ? null : candidates);
  return sortChosen(level, chosen, offset);
}

/** Scratch arrays of topBySort, grown as needed (each thread has its own module instance). */
let levelKeys = new Uint32Array(0);
let levelIndices = new Int32Array(0);
const levelSort: ArgsortScratch = { order: new Int32Array(0), next: new Int32Array(0) };

/**
 * topOfLevel by one stable sort of the whole level, for levels of little more than k logits (the
 * GPU's candidates; levels of at most topN anchors): the non-NaN logits best first, equal ones in
 * index order (-0 equal to +0), then the prefix the selection keeps. With m NaN logits, which rank
 * above every number, the k-th largest logit is the (k - m)-th best number (none when m >= k);
 * every logit above it and the first of those equal to it are taken, k at most.
 */
function topBySort(level: Float32Array, k: number, offset: number): Int32Array {
  const n = level.length;
  if (levelKeys.length < n) {
    levelKeys = new Uint32Array(n);
    levelIndices = new Int32Array(n);
    levelSort.order = new Int32Array(n);
    levelSort.next = new Int32Array(n);
  }
  const keys = levelKeys;
  const indices = levelIndices;
  const bits = new Uint32Array(level.buffer, level.byteOffset, n);
  let m = 0;
  for (let i = 0; i < n; i++) {
    const b = bits[i];
    if ((b & 0x7fffffff) > 0x7f800000) continue;
    // Descending: the complement of the ascending key, with -0 given +0's key.
    keys[m] = 0x7fffffff - (b === 0x80000000 ? 0 : sortKey(b) - 0x80000000);
    indices[m++] = i;
  }
  const ranked = k - (n - m);
  if (ranked <= 0) return new Int32Array(0);
  const order = stableArgsortKeys(keys, m, levelSort);
  const boundKey = keys[order[ranked - 1]];
  let taken = ranked;
  while (taken < k && taken < m && keys[order[taken]] === boundKey) taken++;
  const out = new Int32Array(taken);
  for (let j = 0; j < taken; j++) out[j] = offset + indices[order[j]];
  return out;
}

/**
 * Of the level indices `among` (all when null; ascending), those whose logit is above `bound`,
 * then the first of those equal to it, k at most: ascending within each group.
 */
function chooseAbove(level: Float32Array, bound: number, k: number, among: Int32Array | null): Int32Array {
  const chosen = new Int32Array(k);
  const ties = new Int32Array(k);
  let above = 0;
  let tied = 0;
  const n = among ? among.length : level.length;
  for (let j = 0; j < n; j++) {
    const i = among ? among[j] : j;
    const v = level[i];
    if (v > bound) chosen[above++] = i;
    else if (v === bound && tied < k) ties[tied++] = i;
  }
  const taken = above + tied < k ? above + tied : k;
  chosen.set(ties.subarray(0, taken - above), above);
  return chosen.subarray(0, taken);
}

/**
 * `chosen` (level indices, equal logits in index order) sorted by logit descending, ties keeping
 * their order, shifted by `offset`.
 */
function sortChosen(level: Float32Array, chosen: Int32Array, offset: number): Int32Array {
  const n = chosen.length;
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = level[chosen[i]];
    // -0 and +0 compare equal, so they must share a key.
    values[i] = v === 0 ? 0 : v;
  }
  const keys = float32SortKeys(values);
  for (let i = 0; i < n; i++) keys[i] = 0xffffffff - keys[i];
  const order = stableArgsortKeys(keys);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = offset + chosen[order[i]];
  return out;
}

/**
 * Upstream filter_proposals for one image: top-k per level by logit, decode, clip to the resized
 * image, drop boxes smaller than minSize, NMS per level, keep the best postNmsTopN.
 */
export function filterProposals(
  head: RpnHeadOutput,
  anchors: Float32Array,
  imageSize: Size,
  config: RpnConfig = RPN_CONFIG,
): Proposals {
  return filterTop(head, anchorTable(anchors), imageSize, config, selectTopPerLevel(head.objectness, head.perLevel, config.preNmsTopN));
}

/** filterProposals after the top-k selection. */
function filterTop(head: RpnHeadOutput, anchors: AnchorSource, imageSize: Size, config: RpnConfig, top: Int32Array): Proposals {
  return proposalsOnDemand(head, anchors, imageSize, config, top, true) ?? proposalsOfAll(head, anchors.all(), imageSize, config, top);
}

/**
 * filterProposals' fast path on its own (see proposalsOnDemand): the same proposals, or null
 * where it cannot guarantee them (filterProposals then runs the full path). With `complete`, logit
 * ties and loops that run out are finished in place, as filterProposals does, rather than declined.
 */
export function filterProposalsOnDemand(
  head: RpnHeadOutput,
  anchors: Float32Array,
  imageSize: Size,
  config: RpnConfig = RPN_CONFIG,
  complete = false,
): Proposals | null {
  const top = selectTopPerLevel(head.objectness, head.perLevel, config.preNmsTopN);
  return proposalsOnDemand(head, anchorTable(anchors), imageSize, config, top, complete);
}

/** filter_proposals as upstream runs it: every candidate decoded, clipped and size-checked, then NMS. */
function proposalsOfAll(head: RpnHeadOutput, anchors: Float32Array, imageSize: Size, config: RpnConfig, top: Int32Array): Proposals {
  const { objectness, perLevel } = head;
  const decoded = clipBoxesToImage(decodeBoxes(head.deltas, anchors, top), imageSize[0], imageSize[1]);
  const big = removeSmallBoxes(decoded, config.minSize);
  const n = big.length;
  const boxes = new Float32Array(n * 4);
  const scores = new Float32Array(n);
  const groups = new Int32Array(n);
  // `top` ascends through the levels, so one pass assigns each candidate its level.
  let level = 0;
  let levelEnd = perLevel.length ? perLevel[0] : 0;
  for (let k = 0; k < n; k++) {
    const i = big[k];
    const anchor = top[i];
    while (level + 1 < perLevel.length && anchor >= levelEnd) levelEnd += perLevel[++level];
    boxes[k * 4] = decoded[i * 4];
    boxes[k * 4 + 1] = decoded[i * 4 + 1];
    boxes[k * 4 + 2] = decoded[i * 4 + 2];
    boxes[k * 4 + 3] = decoded[i * 4 + 3];
    scores[k] = objectness[anchor];
    groups[k] = level;
  }

  const keep = batchedNmsTop(boxes, scores, groups, config.nmsThresh, config.postNmsTopN);
  const m = keep.length;
  const out: Proposals = { boxes: new Float32Array(m * 4), scores: new Float32Array(m) };
  for (let i = 0; i < m; i++) {
    const k = keep[i];
    out.boxes[i * 4] = boxes[k * 4];
    out.boxes[i * 4 + 1] = boxes[k * 4 + 1];
    out.boxes[i * 4 + 2] = boxes[k * 4 + 2];
    out.boxes[i * 4 + 3] = boxes[k * 4 + 3];
    out.scores[i] = scores[k];
  }
  return out;
}

/** Give up on the on-demand path when the grid registrations exceed this many per decided box. */
const ON_DEMAND_MAX_CELLS_PER_BOX = 16;
/** Kept boxes each level's arrays start with. */
const ON_DEMAND_CAPACITY = 1024;

/** Copies the box in box[0 .. 4) to out[o .. o + 4) (plain stores: cheaper than a typed-array set of 4). */
function copyBox(box: Float32Array, out: Float32Array, o: number): void {
  out[o] = box[0];
  out[o + 1] = box[1];
  out[o + 2] = box[2];
  out[o + 3] = box[3];
}

/**
 * Each level's greedy loop, kept from image to image (its arrays, grown to a level's needs, are
 * reused rather than allocated per image). Each thread has its own module instance, and a loop is
 * only used within one synchronous call.
 */
const levelLoops: IncrementalNms[] = [];

/** Level `level`'s loop, started anew with this threshold and grid. */
function levelLoop(level: number, iouThreshold: number, grid: GridGeometry): IncrementalNms {
  const loop = (levelLoops[level] ??= new IncrementalNms(iouThreshold, grid, ON_DEMAND_CAPACITY));
  loop.reset(iouThreshold, grid);
  return loop;
}

/** A copy twice as long holding the same values. */
function doubled(a: Float32Array): Float32Array {
  const out = new Float32Array(a.length * 2);
  out.set(a);
  return out;
}

/**
 * One level's candidates in visiting order (best logit first), each decoded, clipped and
 * size-checked only when the NMS reaches it.
 */
interface LevelStream {
  level: number;
  /** Next position in `top`, and the end of this level's positions. */
  cursor: number;
  end: number;
  greedy: IncrementalNms;
  /**
   * The next surviving candidate: its logit and clipped box. -Infinity when none is left (or when
   * the logit is -Infinity: such candidates cannot outrank a kept box, and if the loop runs out
   * of others it gives up).
   */
  score: number;
  box: Float32Array;
  /** The level's kept boxes so far, in visiting order (which is also batched_nms's index order). */
  keptBoxes: Float32Array;
  keptScores: Float32Array;
  numKept: number;
}

/**
 * The same proposals as `proposalsOfAll`, or null where that cannot be guaranteed. With more than
 * 1000 candidates, upstream's batched_nms runs the NMS of each level and then sorts all survivors
 * by logit (torch's unstable sort), and filter_proposals keeps the first postNmsTopN. Here the
 * levels' greedy loops run interleaved, best pending logit first (IncrementalNms: a box's fate
 * depends only on the boxes before it in its level), and stop once postNmsTopN boxes are kept and
 * every pending candidate's logit is below the last of them: nothing later can outrank those, and
 * when their logits are distinct, every sort orders them the same way. Candidates after the stop
 * are never decoded.
 *
 * When the logits among those tie (torch's introsort then orders the pair from the whole survivor
 * list) or the loops run out first, `complete` runs every level's loop to its end and sorts the
 * survivors as batched_nms does, reusing the work done so far; without it, the result is null.
 * Null too when at most 1000 candidates survive the size check (batched_nms then takes its other
 * path), and on the odd inputs the full path handles better (-Infinity logits, huge boxes).
 */
function proposalsOnDemand(
  head: RpnHeadOutput,
  anchors: AnchorSource,
  imageSize: Size,
  config: RpnConfig,
  top: Int32Array,
  complete: boolean,
): Proposals | null {
  const { objectness, deltas, perLevel } = head;
  const [height, width] = imageSize;
  const limit = config.postNmsTopN;
  const fitsGrid = width > 0 && width < Infinity && height > 0 && height < Infinity;
  // More proposals asked for than candidates exist: the loops will run out.
  if (!(config.nmsThresh >= 0) || !Number.isInteger(limit) || limit < 1 || (limit > top.length && !complete) || !fitsGrid) return null;
  const minSize = f32(config.minSize);

  let candidates = 0;
  const anchor = new Float32Array(4);
  /** Moves a level to its next candidate that survives the size check. */
  const advance = (level: LevelStream): void => {
    const { box } = level;
    while (level.cursor < level.end) {
      const i = top[level.cursor++];
      anchors.at(i, level.level, anchor);
      decodeFrom(deltas, i * 4, anchor, 0, box, 0);
      // clip_boxes_to_image, then remove_small_boxes (NaN sides fail the size check).
      box[0] = clampTo(box[0], width);
      box[1] = clampTo(box[1], height);
      box[2] = clampTo(box[2], width);
      box[3] = clampTo(box[3], height);
      if (f32(box[2] - box[0]) >= minSize && f32(box[3] - box[1]) >= minSize) {
        level.score = objectness[i];
        candidates++;
        return;
      }
    }
    level.score = -Infinity;
  };
  let pushed = 0;
  /** Decides the level's pending candidate (true: kept) and moves to its next; null: give up. */
  const decide = (level: LevelStream): boolean | null => {
    const { box, score } = level;
    const kept = level.greedy.push(box[0], box[1], box[2], box[3]);
    if (kept) {
      if (level.numKept === level.keptScores.length) {
        level.keptBoxes = doubled(level.keptBoxes);
        level.keptScores = doubled(level.keptScores);
      }
      copyBox(box, level.keptBoxes, level.numKept * 4);
      level.keptScores[level.numKept++] = score;
    }
    // Boxes far larger than the level's cells (a broken head): the full path's own grid copes better.
    if (level.greedy.entries > ON_DEMAND_MAX_CELLS_PER_BOX * ++pushed + 4096) return null;
    advance(level);
    return kept;
  };

  // `top` ascends through the levels: split it into the levels' runs.
  const streams: LevelStream[] = [];
  let cursor = 0;
  let levelStart = 0;
  for (const [level, count] of perLevel.entries()) {
    const start = cursor;
    while (cursor < top.length && top[cursor] < levelStart + count) cursor++;
    levelStart += count;
    if (cursor === start) continue;
    anchors.at(top[start], level, anchor);
    const stream: LevelStream = {
      level,
      cursor: start,
      end: cursor,
      greedy: levelLoop(level, config.nmsThresh, levelGrid(anchor, width, height)),
      score: -Infinity,
      box: new Float32Array(4),
      // Sized for what the early stop usually decides; they grow when a level runs to its end.
      keptBoxes: new Float32Array(ON_DEMAND_CAPACITY * 4),
      keptScores: new Float32Array(ON_DEMAND_CAPACITY),
      numKept: 0,
    };
    advance(stream);
    streams.push(stream);
  }

  const kept: number[] = [];
  // A pending candidate always has a slot: fewer than top.length boxes are kept before it.
  const keptBoxes = new Float32Array(Math.min(limit, top.length) * 4);
  let bound = -Infinity;
  /** Whether the first `limit` kept boxes are certain to be the result, in this order. */
  let certain = true;
  for (;;) {
    let best: LevelStream | null = null;
    for (const stream of streams) if (stream.score > -Infinity && (best === null || stream.score > best.score)) best = stream;
    if (best === null) {
      certain = false;
      break;
    }
    if (kept.length >= limit && best.score < bound) break;
    const { score } = best;
    if (kept.length < limit) copyBox(best.box, keptBoxes, kept.length * 4);
    const decision = decide(best);
    if (decision === null) return null;
    if (!decision) continue;
    // A box kept after the limit-th scores the same as it: a tie.
    if (kept.length === limit) {
      certain = false;
      break;
    }
    if (kept.push(score) === limit) bound = score;
  }
  for (let k = 1; k < kept.length && certain; k++) certain = kept[k - 1] > kept[k];
  if (!certain) {
    if (!complete) return null;
    for (const stream of streams) while (stream.score > -Infinity) if (decide(stream) === null) return null;
    // A candidate with a -Infinity logit was left undecided: the full path takes those.
    if (pushed !== candidates) return null;
  }
  // Which path batched_nms takes depends on how many candidates pass the size check in all.
  for (const stream of streams) while (candidates <= COORDINATE_TRICK_MAX_BOXES && stream.cursor < stream.end) advance(stream);
  if (candidates <= COORDINATE_TRICK_MAX_BOXES) return null;
  return certain ? { boxes: keptBoxes, scores: Float32Array.from(kept) } : sortedSurvivors(streams, limit);
}

/**
 * batched_nms's result from every level's survivors (all levels' loops run to the end), cut to
 * `limit`: the survivors in index order (level by level, each in visiting order) sorted by torch's
 * unstable sort.
 */
function sortedSurvivors(streams: LevelStream[], limit: number): Proposals {
  const total = streams.reduce((n, s) => n + s.numKept, 0);
  const boxes = new Float32Array(total * 4);
  const scores = new Float32Array(total);
  let o = 0;
  for (const s of streams) {
    boxes.set(s.keptBoxes.subarray(0, s.numKept * 4), o * 4);
    scores.set(s.keptScores.subarray(0, s.numKept), o);
    o += s.numKept;
  }
  const order = torchSortDescending(scores);
  const m = Math.min(limit, total);
  const out: Proposals = { boxes: new Float32Array(m * 4), scores: new Float32Array(m) };
  for (let i = 0; i < m; i++) {
    const k = order[i];
    out.boxes.set(boxes.subarray(k * 4, k * 4 + 4), i * 4);
    out.scores[i] = scores[k];
  }
  return out;
}

/** torch clamp(v, 0, hi): NaN stays NaN. */
function clampTo(v: number, hi: number): number {
  return v < 0 ? 0 : v > hi ? hi : v;
}

/** Most cells per side of the on-demand path's grids. */
const LEVEL_GRID_MAX_SIDE = 128;

/**
 * A grid over the image with cells half the side of the level's anchors (any grid is exact; this
 * one is quick: against cells of a whole anchor, a fifth fewer pairs of boxes are tested, half of
 * which did not even intersect).
 */
function levelGrid(anchor: Float32Array, width: number, height: number): GridGeometry {
  const side = Math.sqrt(Math.abs((anchor[2] - anchor[0]) * (anchor[3] - anchor[1])));
  const cell = side >= 2 && side < Infinity ? side / 2 : 1;
  const cols = Math.max(1, Math.min(LEVEL_GRID_MAX_SIDE, Math.floor(width / cell)));
  const rows = Math.max(1, Math.min(LEVEL_GRID_MAX_SIDE, Math.floor(height / cell)));
  return { minX: 0, minY: 0, colScale: cols / width, rowScale: rows / height, cols, rows };
}

/**
 * An image's RPN candidates, as the GPU preselects them (src/kernels/webgpu/rpn_candidates.ts): per level,
 * the anchors whose logit can be among the level's k best (every anchor at least as large as the
 * k-th largest, and a few below it), in anchor order, with their logits and deltas. Running the
 * exact selection on these gives the same proposals as running it on every anchor.
 */
export interface RpnCandidates {
  /** Candidates of each level. */
  perLevel: number[];
  /** Each candidate's anchor index within its level. */
  index: Int32Array;
  objectness: Float32Array;
  /** (dx, dy, dw, dh) per candidate. */
  deltas: Float32Array;
  /**
   * Each level's candidates in the order the selection sorts them (logit descending, equal logits
   * by anchor, NaN last; see rankedCandidatesOf) rather than in anchor order.
   */
  ranked?: boolean;
}

/** Words per candidate record: level-local anchor index, logit bits, 4 delta bits. */
const RECORD = 6;
export const RECORD_WORDS = RECORD;
/**
 * Record slots per (image, level) beyond k: room for the anchors that share the k-th largest
 * key's top 16 bits (sign, exponent and 7 mantissa bits: ~0.8% of a logit's magnitude). When more
 * than that tie so closely, the image's whole head output is read back instead.
 */
export const CANDIDATE_SLACK = 2048;

/** Where each (image, level)'s candidates go in the GPU's result, and how many it needs. */
export interface CandidateLayout {
  images: number;
  levels: number;
  /** Per slot (image * levels + level): the image's own region (h, w) of the level. */
  ownSizes: Array<[number, number]>;
  /** Per slot: k = min(topN, own anchors), record slots reserved, first word of its records. */
  k: Int32Array;
  capacity: Int32Array;
  base: Int32Array;
  /** Words in all: one counter per slot, then the records. */
  words: number;
}

/** The layout for a batch whose images have the given padded sizes (topN a positive integer). */
export function candidateLayout(paddedSizes: Size[], topN: number, slack: number = CANDIDATE_SLACK): CandidateLayout {
  const ownSizes = paddedSizes.map(([h, w]) => featureSizes(h, w));
  const images = ownSizes.length;
  const levels = images ? ownSizes[0].length : 0;
  const slots = images * levels;
  const k = new Int32Array(slots);
  const capacity = new Int32Array(slots);
  const base = new Int32Array(slots);
  let words = slots;
  ownSizes.flat().forEach(([h, w], slot) => {
    const count = h * w * ANCHORS_PER_LOCATION;
    k[slot] = Math.min(topN, count);
    capacity[slot] = Math.min(count, k[slot] + slack);
    base[slot] = words;
    words += capacity[slot] * RECORD_WORDS;
  });
  return { images, levels, ownSizes: ownSizes.flat(), k, capacity, base, words };
}

/**
 * Image `image`'s candidates from the GPU's result words, sorted into anchor order; null when a
 * level's candidates did not fit its slots (or are fewer than k, which a correct result never has).
 */
export function candidatesOf(words: Int32Array, layout: CandidateLayout, image: number): RpnCandidates | null {
  return readCandidates(words, layout, image, false);
}

/**
 * Image `image`'s candidates, each level's records in the order `ranked` gives (true: as they lie,
 * after checking that they are a ranking; false: sorted into anchor order). Null as candidatesOf
 * and rankedCandidatesOf say.
 */
function readCandidates(words: Int32Array, layout: CandidateLayout, image: number, ranked: boolean): RpnCandidates | null {
  const perLevel: number[] = [];
  for (let level = 0; level < layout.levels; level++) {
    const slot = image * layout.levels + level;
    const count = words[slot];
    if (count > layout.capacity[slot] || count < layout.k[slot]) return null;
    perLevel.push(count);
  }
  const total = perLevel.reduce((s, c) => s + c, 0);
  const out: RpnCandidates = { perLevel, index: new Int32Array(total), objectness: new Float32Array(total), deltas: new Float32Array(total * 4), ranked };
  const { index } = out;
  // The logits and deltas are copied as their bits: integer moves, no float conversions.
  const objectness = new Int32Array(out.objectness.buffer);
  const deltas = new Int32Array(out.deltas.buffer);
  let o = 0;
  for (let level = 0; level < layout.levels; level++) {
    const slot = image * layout.levels + level;
    const count = perLevel[level];
    const base = layout.base[slot];
    const [h, w] = layout.ownSizes[slot];
    const anchors = h * w * ANCHORS_PER_LOCATION;
    // Unranked records arrive in the atomic compaction's order: sort them by anchor (distinct,
    // below the level's anchor count in a correct result).
    const order = ranked ? null : recordsByAnchor(words, base, count, anchors);
    if (ranked ? !isRanking(words, base, count, anchors) : !order) return null;
    for (let i = 0; i < count; i++, o++) {
      const r = base + (order ? order[i] : i) * RECORD;
      index[o] = words[r];
      objectness[o] = words[r + 1];
      const d = o * 4;
      deltas[d] = words[r + 2];
      deltas[d + 1] = words[r + 3];
      deltas[d + 2] = words[r + 4];
      deltas[d + 3] = words[r + 5];
    }
  }
  return out;
}

/** Scratch arrays of recordsByAnchor, grown as needed (each thread has its own module instance). */
let anchorKeys = new Int32Array(0);
let recordOrder = new Int32Array(0);
let recordNext = new Int32Array(0);
const anchorBins = new Int32Array(DIGIT_BINS);

/**
 * The numbers of the `count` records from word `base` on, in ascending order of their anchor
 * index (a least-significant-digit radix sort on 11-bit digits: a few passes over the records,
 * where a table over all the level's anchors would pass over up to a hundred times more). Null
 * when an anchor is outside 0..anchors-1 or repeated. The result is a scratch array, valid until
 * the next call.
 */
function recordsByAnchor(words: Int32Array, base: number, count: number, anchors: number): Int32Array | null {
  if (anchorKeys.length < count) {
    anchorKeys = new Int32Array(count);
    recordOrder = new Int32Array(count);
    recordNext = new Int32Array(count);
  }
  const keys = anchorKeys;
  for (let j = 0; j < count; j++) {
    const anchor = words[base + j * RECORD];
    if (!(anchor >= 0 && anchor < anchors)) return null;
    keys[j] = anchor;
    recordOrder[j] = j;
  }
  let order = recordOrder;
  let next = recordNext;
  for (let shift = 0; 2 ** shift < anchors; shift += 11) {
    anchorBins.fill(0);
    for (let j = 0; j < count; j++) anchorBins[(keys[j] >>> shift) & (DIGIT_BINS - 1)]++;
    let sum = 0;
    for (let d = 0; d < DIGIT_BINS; d++) {
      const c = anchorBins[d];
      anchorBins[d] = sum;
      sum += c;
    }
    for (let j = 0; j < count; j++) {
      const r = order[j];
      next[anchorBins[(keys[r] >>> shift) & (DIGIT_BINS - 1)]++] = r;
    }
    const t = order;
    order = next;
    next = t;
  }
  for (let j = 1; j < count; j++) if (keys[order[j]] === keys[order[j - 1]]) return null;
  return order;
}

/**
 * The rank key of a logit's bits: larger goes first. The ascending sort key with -0 given +0's key
 * (the selection compares logits with ==), and 0, below every number's key, for every NaN.
 */
function rankKey(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return 0;
  return bits === 0x80000000 ? 0x80000000 : sortKey(bits);
}

/** Scratch of isRanking: the generation in which each anchor was last seen. */
let seenAt = new Int32Array(0);
let seenGeneration = 0;

/**
 * Image `image`'s candidates from the GPU's ranked result words (rpnCandidates with `ranked`):
 * per level in the selection's order. Null when a level's candidates did not fit its slots, or
 * when the records are not a ranking of distinct anchors of the level (which a correct result
 * always is): the caller then reads the whole head output.
 */
export function rankedCandidatesOf(words: Int32Array, layout: CandidateLayout, image: number): RpnCandidates | null {
  return readCandidates(words, layout, image, true);
}

/** Whether the `count` records from word `base` on rank distinct anchors below `anchors` (see rankKey). */
function isRanking(words: Int32Array, base: number, count: number, anchors: number): boolean {
  if (seenAt.length < anchors) seenAt = new Int32Array(anchors);
  // A new generation marks no anchor as seen without clearing the array.
  if (++seenGeneration > 0x3fffffff) {
    seenAt.fill(0);
    seenGeneration = 1;
  }
  let previousKey = 0;
  let previousAnchor = -1;
  for (let i = 0, r = base; i < count; i++, r += RECORD) {
    const anchor = words[r];
    const key = rankKey(words[r + 1] >>> 0);
    if (!(anchor >= 0 && anchor < anchors) || seenAt[anchor] === seenGeneration) return false;
    if (i > 0 && !(previousKey > key || (previousKey === key && previousAnchor < anchor))) return false;
    seenAt[anchor] = seenGeneration;
    previousKey = key;
    previousAnchor = anchor;
  }
  return true;
}

/**
 * selectTopPerLevel on ranked candidates: the same positions, each level's prefix. With m NaN
 * logits (ranked last), the k-th largest logit is the (k - m)-th best number (none when m >= k);
 * every logit above it and the first of those equal to it are taken, k at most (topBySort's rule).
 */
function topOfRanked(objectness: Float32Array, perLevel: number[], topN: number): Int32Array {
  const bits = new Uint32Array(objectness.buffer, objectness.byteOffset, objectness.length);
  const picked: number[] = [];
  let offset = 0;
  for (const n of perLevel) {
    const k = Math.min(topN, n);
    if (k > 0 && Number.isInteger(k)) {
      let numbers = n;
      while (numbers > 0 && rankKey(bits[offset + numbers - 1]) === 0) numbers--;
      const ranked = k - (n - numbers);
      if (ranked > 0) {
        const bound = rankKey(bits[offset + ranked - 1]);
        let taken = ranked;
        while (taken < k && taken < numbers && rankKey(bits[offset + taken]) === bound) taken++;
        picked.push(offset, taken);
      }
    }
    offset += n;
  }
  let total = 0;
  for (let p = 1; p < picked.length; p += 2) total += picked[p];
  const out = new Int32Array(total);
  for (let p = 0, o = 0; p < picked.length; p += 2) for (let j = 0; j < picked[p + 1]; j++) out[o++] = picked[p] + j;
  return out;
}

/** filterProposals on an image's candidates: the same proposals as on its whole head output. */
export function proposalsOfCandidates(candidates: RpnCandidates, paddedSize: Size, imageSize: Size, config: RpnConfig = RPN_CONFIG): Proposals {
  const { perLevel, index } = candidates;
  const head: RpnHeadOutput = { objectness: candidates.objectness, deltas: candidates.deltas, perLevel };
  const top = candidates.ranked ? topOfRanked(head.objectness, perLevel, config.preNmsTopN) : selectTopPerLevel(head.objectness, perLevel, config.preNmsTopN);
  return filterTop(head, candidateAnchors(paddedSize, perLevel, index), imageSize, config, top);
}

/**
 * One image's proposal filtering, self-contained so it can run on a worker thread: the batch's
 * read-back head output per level ([N, H, W, 15] values and (H, W)), the image's index in it
 * and its sizes.
 */
export interface ProposalJob {
  levels: Float32Array[];
  levelSizes: Size[];
  image: number;
  paddedSize: Size;
  imageSize: Size;
  config: RpnConfig;
  /** The GPU's preselection for this image; `levels` is then empty. */
  candidates?: RpnCandidates;
}

/**
 * The job's image's head output: its own region of each level, flattened in upstream order.
 * With `deltas` false only the objectness is copied and the deltas are left zero (proposalsOf
 * gathers the few it needs).
 */
export function headOf(job: ProposalJob, deltas = true): RpnHeadOutput {
  const regions = featureSizes(job.paddedSize[0], job.paddedSize[1]);
  const perLevel = regions.map(([h, w]) => h * w * ANCHORS_PER_LOCATION);
  const total = perLevel.reduce((s, c) => s + c, 0);
  const head: RpnHeadOutput = { objectness: new Float32Array(total), deltas: new Float32Array(total * 4), perLevel };
  let o = 0;
  job.levels.forEach((values, level) => {
    const [height, width] = job.levelSizes[level];
    const [h, w] = regions[level];
    if (h > height || w > width) throw new Error(`RPN: image ${job.image} needs a ${h}x${w} level ${level}, batch has ${height}x${width}`);
    o = flattenLevel(values, job.image, height, width, h, w, head, o, deltas);
  });
  return head;
}

/**
 * The job's image's proposals. Only the pre-NMS candidates' deltas are gathered from the raw
 * output (at most 6000 per level of ~185k anchors): the same numbers as flattening them all.
 */
export function proposalsOf(job: ProposalJob): Proposals {
  if (job.candidates) return proposalsOfCandidates(job.candidates, job.paddedSize, job.imageSize, job.config);
  const { anchors } = sharedImageAnchors(job.paddedSize[0], job.paddedSize[1]);
  const head = headOf(job, false);
  const top = selectTopPerLevel(head.objectness, head.perLevel, job.config.preNmsTopN);
  gatherDeltas(job, head, top);
  return filterTop(head, anchorTable(anchors), job.imageSize, job.config, top);
}

/** Copies the deltas of anchors `top` (ascending through the levels) from the raw output into head.deltas. */
function gatherDeltas(job: ProposalJob, head: RpnHeadOutput, top: Int32Array): void {
  const a = ANCHORS_PER_LOCATION;
  const channels = a * 5;
  const regions = featureSizes(job.paddedSize[0], job.paddedSize[1]);
  const { deltas, perLevel } = head;
  let level = 0;
  let levelStart = 0;
  for (let i = 0; i < top.length; i++) {
    const anchor = top[i];
    while (anchor >= levelStart + perLevel[level]) levelStart += perLevel[level++];
    const [height, width] = job.levelSizes[level];
    const w = regions[level][1];
    const local = anchor - levelStart;
    const location = (local / a) | 0;
    const k = local - location * a;
    const y = (location / w) | 0;
    const x = location - y * w;
    const src = ((job.image * height + y) * width + x) * channels + a + k * 4;
    const values = job.levels[level];
    const d = anchor * 4;
    deltas[d] = values[src];
    deltas[d + 1] = values[src + 1];
    deltas[d + 2] = values[src + 2];
    deltas[d + 3] = values[src + 3];
  }
}

/** The job cut down to its own image's slab of each level (a copy to send to a worker). */
export function ownJob(job: ProposalJob): ProposalJob {
  const levels = job.levels.map((values, level) => {
    const [height, width] = job.levelSizes[level];
    const slab = height * width * ANCHORS_PER_LOCATION * 5;
    return values.slice(job.image * slab, (job.image + 1) * slab);
  });
  return { ...job, levels, image: 0 };
}

/**
 * Copies image `image`'s own h x w region of one level's [N, height, width, 15] head output into
 * `out` from anchor `start` on, in upstream order (y, x, anchor); returns the next anchor.
 */
function flattenLevel(
  values: Float32Array,
  image: number,
  height: number,
  width: number,
  h: number,
  w: number,
  out: RpnHeadOutput,
  start: number,
  withDeltas: boolean,
): number {
  const a = ANCHORS_PER_LOCATION;
  const channels = a * 5;
  const { objectness, deltas } = out;
  let o = start;
  for (let y = 0; y < h; y++) {
    let base = (image * height + y) * width * channels;
    for (let x = 0; x < w; x++, base += channels, o += a) {
      for (let k = 0; k < a; k++) objectness[o + k] = values[base + k];
      if (!withDeltas) continue;
      // The 4a deltas of a location are contiguous in both layouts: (anchor, coordinate).
      const d = o * 4;
      for (let c = 0; c < 4 * a; c++) deltas[d + c] = values[base + a + c];
    }
  }
  return o;
}

