// Anchors and the region proposal network against the upstream run's own intermediates
// (golden tiny_* cases: the reference FPN features go in, so only the RPN is under test).
import * as tf from '@tensorflow/tfjs';
import { ANCHOR_CACHE_SIZE, anchorsAt, baseAnchors, featureSizes, imageAnchors, roundHalfEven, sharedImageAnchors } from '../src/ops/anchors';
import { clipBoxesToImage, removeSmallBoxes } from '../src/ops/boxes';
import { batchedNms, torchSortDescending } from '../src/ops/nms';
import {
  RPN_CONFIG,
  RegionProposalNetwork,
  RpnConfig,
  RpnHeadOutput,
  RpnOffload,
  decodeBoxes,
  filterProposals,
  filterProposalsOnDemand,
  headOf,
  ProposalJob,
  proposalsOf,
  kthLargestKey,
  selectTopPerLevel,
} from '../src/model/rpn';
import { Img2PoseWeights } from '../src/model/weights';
import { candidateLayout, candidatesOf, RECORD_WORDS } from '../src/ops/proposals';
import { golden, goldenCase, manifest, relError } from './utils/golden';
import { seeded } from './utils/lcg';
import { referenceKernel } from './utils/nms_reference';
import { LEVEL_KEYS as LEVELS, alignNearTies, formulaSubset, goldenFeature, maxAbsDiff, paddedSize, resizedSize } from './utils/stage_inputs';

const TINY = ['tiny_teaser', 'tiny_portrait'];

describe('anchors', () => {
  it('rounds half to even like torch.round', () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, -3.6].map(roundHalfEven)).toEqual([0, 2, 2, -0, -2, -2, 2, -4]);
  });

  it('builds the rounded cell anchors of the smallest and largest sizes', () => {
    // size 16: w = 16 * sqrt(2) = 22.63 -> +-11.31 -> 11; h = 16 / sqrt(2) -> +-5.66 -> 6.
    expect(Array.from(baseAnchors(16))).toEqual([-11, -6, 11, 6, -8, -8, 8, 8, -6, -11, 6, 11]);
    expect(Array.from(baseAnchors(256))).toEqual([-181, -91, 181, 91, -128, -128, 128, 128, -91, -181, 91, 181]);
  });

  it('gives the feature sizes of the backbone, pool level included', () => {
    expect(featureSizes(160, 288)).toEqual([[40, 72], [20, 36], [10, 18], [5, 9], [3, 5]]);
    expect(featureSizes(640, 1152)[4]).toEqual([10, 18]);
  });

  it.each(TINY)('equals the reference anchors exactly (%s)', (id) => {
    const [h, w] = paddedSize(id);
    const ours = imageAnchors(h, w);
    const ref = golden(id, 'anchors');
    expect(ours.anchors.length).toBe(ref.data.length);
    expect(maxAbsDiff(ours.anchors, ref.data)).toBe(0);
  });

  it('caches anchors per padded size (least recently used dropped) and hands out copies', () => {
    const shared = sharedImageAnchors(160, 288);
    expect(sharedImageAnchors(160, 288)).toBe(shared);
    const copy = imageAnchors(160, 288);
    expect(copy.anchors).not.toBe(shared.anchors);
    expect(maxAbsDiff(copy.anchors, shared.anchors)).toBe(0);
    expect(copy.perLevel).toEqual(shared.perLevel);
    expect(copy.featureSizes).toEqual(featureSizes(160, 288));
    copy.anchors[0] = 12345;
    expect(imageAnchors(160, 288).anchors[0]).toBe(shared.anchors[0]);
    expect(shared.anchors[0]).not.toBe(12345);
    // ANCHOR_CACHE_SIZE other sizes, touching 160x288 midway: it stays; 192x288 (untouched) goes.
    const first = sharedImageAnchors(192, 288);
    for (let i = 0; i < ANCHOR_CACHE_SIZE; i++) {
      sharedImageAnchors(32, 32 * (i + 1));
      if (i === 2) sharedImageAnchors(160, 288);
    }
    expect(sharedImageAnchors(160, 288)).toBe(shared);
    const again = sharedImageAnchors(192, 288);
    expect(again).not.toBe(first);
    expect(maxAbsDiff(again.anchors, first.anchors)).toBe(0);
  });

  it('computes chosen anchors exactly as indexing every anchor would', () => {
    for (const [h, w] of [[800, 1216], [160, 96], [32, 32]] as Array<[number, number]>) {
      const all = sharedImageAnchors(h, w);
      // Every 7th anchor of each level, and each level's last.
      const local: number[] = [];
      const perLevel = all.perLevel.map((count) => {
        const picked = Array.from({ length: Math.ceil(count / 7) }, (_, i) => i * 7);
        if ((count - 1) % 7 !== 0) picked.push(count - 1);
        local.push(...picked);
        return picked.length;
      });
      const got = anchorsAt(h, w, perLevel, Int32Array.from(local));
      const want = new Float32Array(got.length);
      let o = 0;
      let levelStart = 0;
      perLevel.forEach((n, level) => {
        for (let i = 0; i < n; i++, o++) want.set(all.anchors.subarray((levelStart + local[o]) * 4, (levelStart + local[o]) * 4 + 4), o * 4);
        levelStart += all.perLevel[level];
      });
      expect(Buffer.from(got.buffer)).toEqual(Buffer.from(want.buffer));
    }
  });

  it('has the reference anchor count per level for every single-image case', () => {
    const cases = manifest().cases.filter((c) => c.mode === 'single');
    expect(cases.length).toBeGreaterThan(5);
    for (const c of cases) {
      const [, , h, w] = c.padded_shape as number[];
      expect([c.id, imageAnchors(h, w).perLevel]).toEqual([c.id, c.anchors_per_level]);
    }
  });
});

describe('rpn pure pieces', () => {
  it('decodes the reference deltas into the reference boxes', () => {
    for (const id of TINY) {
      const anchors = Float32Array.from(golden(id, 'anchors').data);
      const deltas = Float32Array.from(golden(id, 'rpn_deltas').data);
      const ref = golden(id, 'rpn_decoded').data;
      const ours = decodeBoxes(deltas, anchors);
      expect(relError(ours, ref)).toBeLessThan(1e-6);
      // float32 semantics: all but exp's last bit agree exactly
      expect(maxAbsDiff(ours, ref)).toBeLessThan(1e-4);
    }
  });

  it('clamps dw and dh at log(1000/16) before exp', () => {
    const boxes = decodeBoxes(Float32Array.from([0, 0, 10, -10]), Float32Array.from([0, 0, 16, 16]));
    expect(boxes[2] - boxes[0]).toBeCloseTo(1000, 3);
  });

  it('selects the top-k logits per level, best first, ties in anchor order', () => {
    const logits = Float32Array.from([1, 5, 3, 5, /* level 1 */ 2, 9, 9]);
    expect(Array.from(selectTopPerLevel(logits, [4, 3], 3))).toEqual([1, 3, 2, 5, 6, 4]);
    expect(Array.from(selectTopPerLevel(logits, [4, 3], 1))).toEqual([1, 5]);
  });

  it('finds the k-th largest key by radix selection, ties and extremes included', () => {
    const rnd = seeded(1);
    for (const [n, distinct] of [[1, 1], [50, 3], [5000, 40], [5000, 2 ** 32]] as const) {
      const keys = Uint32Array.from({ length: n }, () => Math.floor(rnd() * distinct) * Math.floor(2 ** 32 / Math.min(distinct, 2 ** 32)));
      keys[0] = 0xffffffff;
      const sorted = Array.from(keys).sort((a, b) => b - a);
      for (const k of [1, 2, Math.ceil(n / 3), n].filter((k) => k <= n)) expect([n, k, kthLargestKey(keys, n, k)]).toEqual([n, k, sorted[k - 1]]);
    }
    expect(() => kthLargestKey(new Uint32Array(3), 3, 4)).toThrow(/outside/);
  });

  it.each(['continuous', 'ties', 'special'] as const)('selects exactly what a full sort selects (%s logits)', (kind) => {
    const rnd = seeded(kind.length);
    for (let trial = 0; trial < 12; trial++) {
      const perLevel = [1 + Math.floor(rnd() * 3000), Math.floor(rnd() * 300), 1 + Math.floor(rnd() * 40)];
      const logits = randomLogits(perLevel[0] + perLevel[1] + perLevel[2], kind, rnd);
      for (const topN of [0, 1, 7, 250, 2000, 5000, 2.5]) {
        expect(Array.from(selectTopPerLevel(logits, perLevel, topN))).toEqual(referenceTopPerLevel(logits, perLevel, topN));
      }
    }
  });
});

describe('filterProposals against the pipeline built from its parts', () => {
  // 256x288: 18420 anchors; with 1500 per level, 4140 candidates (batched_nms's per-level path).
  const small: RpnConfig = { ...RPN_CONFIG, preNmsTopN: 1500, postNmsTopN: 300 };

  it.each([
    ['distinct logits', 'continuous', 0.3, small],
    ['distinct logits, wild deltas', 'continuous', 3, small],
    ['few logit values (ties)', 'ties', 0.3, small],
    ['at most 1000 candidates (coordinate-offset path)', 'continuous', 0.3, { ...small, preNmsTopN: 150 }],
    ['more proposals asked than survive', 'continuous', 0.3, { ...small, postNmsTopN: 5000 }],
    ['one proposal', 'continuous', 0.3, { ...small, postNmsTopN: 1 }],
  ] as const)('%s', (_, kind, spread, config) => {
    const { head, anchors } = randomHead(256, 288, kind, spread, 42);
    const size: [number, number] = [250, 280];
    const want = referenceProposals(head, anchors, size, config);
    const got = filterProposals(head, anchors, size, config);
    expect(Array.from(got.scores)).toEqual(want.scores);
    expect(Array.from(got.boxes)).toEqual(want.boxes);
    // The on-demand path either gives exactly this or declines.
    const fast = filterProposalsOnDemand(head, anchors, size, config);
    if (fast) {
      expect(Array.from(fast.scores)).toEqual(want.scores);
      expect(Array.from(fast.boxes)).toEqual(want.boxes);
    }
    // It must not decline where nothing stands in its way, nor accept where it cannot be sure.
    const certain = kind === 'continuous' && config.preNmsTopN === 1500 && config.postNmsTopN <= 300;
    expect(fast !== null).toBe(certain);
    // Finishing ties and run-out loops in place, it takes every case but the coordinate-offset one.
    const completed = filterProposalsOnDemand(head, anchors, size, config, true);
    expect(completed !== null).toBe(config.preNmsTopN === 1500);
    if (completed) {
      expect(Array.from(completed.scores)).toEqual(want.scores);
      expect(Array.from(completed.boxes)).toEqual(want.boxes);
    }
  });

  // Distinct logits but for one tie among the proposals (ranks 2 and 3) or across the cut (ranks
  // 300 and 301): torch's unstable sort orders such a pair, so the on-demand path must decline.
  it.each([
    ['inside the first postNmsTopN', 1],
    ['across the postNmsTopN cut', 299],
  ])('declines on a logit tie %s, and the full path still matches', (_, rank) => {
    const { head, anchors } = randomHead(256, 288, 'continuous', 0.3, 42);
    const size: [number, number] = [250, 280];
    const wider = { ...small, postNmsTopN: small.postNmsTopN + 1 };
    const before = referenceProposals(head, anchors, size, wider);
    head.objectness[before.anchors[rank + 1]] = before.scores[rank];
    const want = referenceProposals(head, anchors, size, small);
    const withNext = referenceProposals(head, anchors, size, wider);
    expect(withNext.scores[rank + 1]).toBe(withNext.scores[rank]);
    const got = filterProposals(head, anchors, size, small);
    expect(Array.from(got.scores)).toEqual(want.scores);
    expect(Array.from(got.boxes)).toEqual(want.boxes);
    expect(filterProposalsOnDemand(head, anchors, size, small)).toBeNull();
    const completed = filterProposalsOnDemand(head, anchors, size, small, true);
    expect(Array.from(completed?.scores ?? [])).toEqual(want.scores);
    expect(Array.from(completed?.boxes ?? [])).toEqual(want.boxes);
  });
});

/** selectTopPerLevel as first written: a full sort for the k-th largest, a comparator sort of the chosen. */
function referenceTopPerLevel(objectness: Float32Array, perLevel: number[], topN: number): number[] {
  const picked: number[] = [];
  let offset = 0;
  for (const count of perLevel) {
    const k = Math.min(topN, count);
    const level = objectness.subarray(offset, offset + count);
    const sorted = Float32Array.from(level).sort();
    const bound = k > 0 ? sorted[count - k] : Infinity;
    const chosen: number[] = [];
    for (let i = 0; i < count; i++) if (level[i] > bound) chosen.push(i);
    for (let i = 0; i < count && chosen.length < k; i++) if (level[i] === bound) chosen.push(i);
    chosen.sort((p, q) => level[q] - level[p] || p - q);
    for (const i of chosen) picked.push(offset + i);
    offset += count;
  }
  return picked;
}

/** Logits of one of three kinds: continuous, few distinct values (ties), or with zeros of both signs, infinities and NaN. */
function randomLogits(n: number, kind: 'continuous' | 'ties' | 'special', rnd: () => number): Float32Array {
  const out = new Float32Array(n);
  const specials = [0, -0, Infinity, -Infinity, NaN];
  for (let i = 0; i < n; i++) {
    if (kind === 'continuous') out[i] = (rnd() - 0.5) * 20;
    else if (kind === 'ties') out[i] = Math.floor(rnd() * 7) - 3;
    else out[i] = rnd() < 0.3 ? specials[Math.floor(rnd() * specials.length)] : Math.floor(rnd() * 5) - 2;
  }
  return out;
}

/** filter_proposals from its parts: reference top-k, decode, clip, size check, batched NMS, first postNmsTopN. */
function referenceProposals(
  head: RpnHeadOutput,
  anchors: Float32Array,
  size: [number, number],
  config: RpnConfig,
): { boxes: number[]; scores: number[]; anchors: number[] } {
  const top = referenceTopPerLevel(head.objectness, head.perLevel, config.preNmsTopN);
  const decoded = clipBoxesToImage(decodeBoxes(head.deltas, anchors, top), size[0], size[1]);
  const big = Array.from(removeSmallBoxes(decoded, config.minSize));
  const starts = head.perLevel.map((_, l) => head.perLevel.slice(0, l).reduce((a, b) => a + b, 0));
  const levelOf = (anchor: number): number => starts.filter((s) => s <= anchor).length - 1;
  const boxes = Float32Array.from(big.flatMap((i) => Array.from(decoded.subarray(i * 4, i * 4 + 4))));
  const scores = Float32Array.from(big, (i) => head.objectness[top[i]]);
  const groups = big.map((i) => levelOf(top[i]));
  let keep: number[];
  if (big.length > 1000) {
    // batched_nms above 1000 boxes: the kernel per level, then torch's sort of the survivors in index order.
    const kept = new Uint8Array(big.length);
    for (const g of new Set(groups)) {
      const members = groups.flatMap((v, i) => (v === g ? [i] : []));
      const sub = Float32Array.from(members.flatMap((i) => Array.from(boxes.subarray(i * 4, i * 4 + 4))));
      for (const k of referenceKernel(sub, members.map((i) => scores[i]), config.nmsThresh)) kept[members[k]] = 1;
    }
    const survivors = Array.from(kept.keys()).filter((i) => kept[i]);
    keep = Array.from(torchSortDescending(survivors.map((i) => scores[i])), (k) => survivors[k]);
  } else {
    keep = Array.from(batchedNms(boxes, scores, groups, config.nmsThresh));
  }
  keep = keep.slice(0, config.postNmsTopN);
  return {
    boxes: keep.flatMap((k) => Array.from(boxes.subarray(k * 4, k * 4 + 4))),
    scores: keep.map((k) => scores[k]),
    anchors: keep.map((k) => top[big[k]]),
  };
}

/** A head over the anchors of a padded size: random logits of the given kind and deltas of spread `spread`. */
function randomHead(paddedH: number, paddedW: number, kind: 'continuous' | 'ties', spread: number, seed: number): { head: RpnHeadOutput; anchors: Float32Array } {
  const rnd = seeded(seed);
  const { anchors, perLevel } = imageAnchors(paddedH, paddedW);
  const n = anchors.length / 4;
  const deltas = Float32Array.from({ length: n * 4 }, () => (rnd() - 0.5) * 2 * spread);
  return { head: { objectness: randomLogits(n, kind, rnd), deltas, perLevel }, anchors };
}

/** 300 integer boxes in 3 levels and their scores, from an LCG that the Python side repeats. */
function lcgBoxes(): { boxes: Float32Array; scores: Float32Array } {
  let state = 12345;
  const rnd = (): number => (state = Number((BigInt(state) * 1103515245n + 12345n) % 2147483648n));
  const boxes = new Float32Array(300 * 4);
  const scores = new Float32Array(300);
  for (let i = 0; i < 300; i++) {
    const x1 = rnd() % 200;
    const y1 = rnd() % 150;
    const w = 10 + (rnd() % 60);
    const h = 10 + (rnd() % 60);
    boxes.set([x1, y1, x1 + w, y1 + h], i * 4);
    scores[i] = (rnd() % 100000) / 1000 - 50;
  }
  // IoU exactly 0.4: as float32 it is 0.40000001 > the double threshold 0.4, so torchvision
  // suppresses box 1.
  boxes.set([300, 300, 310, 310, 300, 300, 310, 304], 0);
  scores.set([60, 59], 0);
  return { boxes, scores };
}

describe('filterProposals NMS stage', () => {
  it('keeps what torchvision batched_nms keeps (small input: coordinate-offset path)', () => {
    // Zero deltas decode integer anchors to themselves, so filterProposals runs NMS on exactly these boxes.
    const { boxes, scores } = lcgBoxes();
    const head = { objectness: scores, deltas: new Float32Array(300 * 4), perLevel: [100, 100, 100] };
    const props = filterProposals(head, boxes, [1000, 1000]);
    // torchvision 0.14 batched_nms(boxes, scores, levels, 0.4), computed with /usr/bin/python3.
    const expected = [
      0, 261, 284, 40, 66, 274, 217, 9, 161, 32, 128, 188, 6, 256, 180, 144, 206, 21, 134, 17, 246, 37,
      172, 127, 162, 182, 298, 268, 266, 136, 111, 149, 94, 93, 47, 57, 237, 299, 279, 271, 177, 106,
      230, 249, 67, 109, 135, 143, 88, 214, 213, 64, 120, 91, 223, 103, 55, 27, 267, 234, 33, 165, 222,
      225, 231, 123, 75, 89, 85, 107, 194, 72, 160, 295, 170, 181, 2, 296, 287, 80, 10, 25, 191, 82, 79,
      133, 4, 260, 190, 112, 7, 119, 16, 20, 278, 116, 203, 58, 286, 145, 147, 108, 251, 153, 282, 176,
      236, 152, 202, 23, 63, 51, 240, 53, 199, 26, 258, 31, 179, 61, 186, 175, 253, 49, 207, 44, 187,
      156, 130, 178, 69, 54, 239, 12, 215, 118, 259, 52, 211, 273, 185, 81, 245, 124, 294, 226, 257,
      252, 238, 281, 289, 288, 121, 126, 13, 164, 221, 105, 216, 95, 250, 290, 247, 84, 283, 3, 151,
      280, 235, 248, 193, 100, 183, 242, 28, 122, 98, 197, 101, 45, 195, 62, 254, 171, 198, 184, 74,
      255, 276, 87, 229, 97, 59, 125, 173, 244, 163, 18, 41, 42, 292, 113, 155, 269, 291, 38, 232, 29,
      24, 114, 39, 277, 132, 15, 35, 275, 70, 285, 77, 36, 141, 263, 204, 297, 60, 192, 90, 92, 78, 48,
      228,
    ];
    expect(Array.from(props.scores)).toEqual(expected.map((i) => scores[i]));
    expect(Array.from(props.boxes)).toEqual(expected.flatMap((i) => Array.from(boxes.subarray(i * 4, i * 4 + 4))));
  });
});

describe('RegionProposalNetwork on the reference features', () => {
  let weights: Img2PoseWeights;
  let rpn: RegionProposalNetwork;
  beforeAll(() => {
    weights = formulaSubset('rpn.');
    rpn = new RegionProposalNetwork(weights);
  });
  afterAll(() => {
    rpn.dispose();
    for (const t of weights.tensors.values()) t.dispose();
  });

  it('releases every tensor it made on dispose', () => {
    const before = tf.memory().numTensors;
    new RegionProposalNetwork(weights).dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it.each(TINY)('matches rpn_objectness, rpn_deltas, proposals and scores (%s)', async (id) => {
    const features = LEVELS.map((k) => goldenFeature(id, k));
    const before = tf.memory().numTensors;
    const [job] = await rpn.predictHead(features, [resizedSize(id)], [paddedSize(id)]);
    const head = headOf(job);
    expect(relError(head.objectness, golden(id, 'rpn_objectness').data)).toBeLessThan(1e-4);
    expect(relError(head.deltas, golden(id, 'rpn_deltas').data)).toBeLessThan(1e-4);
    expect(head.perLevel).toEqual(goldenCase(id).anchors_per_level);

    const [props] = await rpn.forward(features, [resizedSize(id)], [paddedSize(id)]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(features);

    const refBoxes = golden(id, 'proposals').data;
    const refScores = golden(id, 'proposal_scores').data;
    expect(props.scores.length).toBe(refScores.length);
    expect(relError(props.scores, refScores)).toBeLessThan(1e-4);
    // Logits within ~1e-5 of each other may swap ranks (tiny_portrait: proposals 560/561,
    // logits 0.3204682 vs 0.3204680); compare in the reference's order after undoing such swaps.
    const aligned = alignNearTies(props.boxes, props.scores, refBoxes, refScores, 1e-4);
    expect(aligned.moved).toBeLessThanOrEqual(4);
    expect(relError(aligned.boxes, refBoxes)).toBeLessThan(1e-4);
    expect(relError(aligned.scores, refScores)).toBeLessThan(1e-4);
  });

  it('with an offload, another thread runs the largest level: the same head output, bit for bit', async () => {
    const id = TINY[0];
    const features = LEVELS.map((k) => goldenFeature(id, k));
    // The other thread's copy of the head (here in this thread, on the values as they would travel).
    const other = new RegionProposalNetwork(weights);
    const sent: number[][] = [];
    const offload = (perturb: boolean): RpnOffload => ({
      sharedBuffer: (length) => new Float32Array(new SharedArrayBuffer(length * 4)),
      async level(feature) {
        expect(feature.data.buffer).toBeInstanceOf(SharedArrayBuffer);
        sent.push(feature.shape);
        const out = tf.tidy(() => other.levelHead(tf.tensor4d(feature.data, feature.shape)));
        const values = (await out.data()) as Float32Array;
        out.dispose();
        if (perturb) values[values.length - 1] += 1e-3;
        return values;
      },
    });
    const bits = (job: Awaited<ReturnType<RegionProposalNetwork['predictHead']>>[number]) => job.levels.map((l) => Buffer.from(l.buffer, l.byteOffset, l.byteLength));
    try {
      const before = tf.memory().numTensors;
      const [alone] = await rpn.predictHead(features, [resizedSize(id)], [paddedSize(id)]);
      const [shared] = await rpn.predictHead(features, [resizedSize(id)], [paddedSize(id)], false, offload(false));
      expect(sent).toEqual([features[0].shape]);
      expect(bits(shared)).toEqual(bits(alone));
      // Declined (no thread free, or it stopped): this thread runs the level itself.
      const [declined] = await rpn.predictHead(features, [resizedSize(id)], [paddedSize(id)], false, { sharedBuffer: (n) => new Float32Array(n), level: async () => null });
      expect(bits(declined)).toEqual(bits(alone));
      // The comparison sees one value off.
      const [off] = await rpn.predictHead(features, [resizedSize(id)], [paddedSize(id)], false, offload(true));
      expect(bits(off)).not.toEqual(bits(alone));
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      tf.dispose(features);
      other.dispose();
    }
  });

  it('post-processes the reference head output into the reference proposals', () => {
    // Isolates filter_proposals (top-k, clip, small-box removal, NMS per level) from the head's rounding.
    for (const id of TINY) {
      const c = goldenCase(id);
      const head = {
        objectness: Float32Array.from(golden(id, 'rpn_objectness').data),
        deltas: Float32Array.from(golden(id, 'rpn_deltas').data),
        perLevel: c.anchors_per_level as number[],
      };
      const anchors = Float32Array.from(golden(id, 'anchors').data);
      const props = filterProposals(head, anchors, resizedSize(id));
      expect(Array.from(props.scores)).toEqual(Array.from(golden(id, 'proposal_scores').data));
      expect(maxAbsDiff(props.boxes, golden(id, 'proposals').data)).toBeLessThan(1e-4);
      // The on-demand path (what runs here: distinct logits, thousands of candidates) on its own.
      const fast = filterProposalsOnDemand(head, anchors, resizedSize(id));
      expect(fast).not.toBeNull();
      expect(Array.from(fast?.scores ?? [])).toEqual(Array.from(props.scores));
      expect(Array.from(fast?.boxes ?? [])).toEqual(Array.from(props.boxes));
    }
  });

  it('gives each image of a mixed batch its single-image proposals', async () => {
    // tiny_teaser pads to 160x288, tiny_portrait to 256x160: the batch is 256x288, and each
    // image's surplus area holds non-zero junk that must not leak into its proposals.
    const ids = TINY;
    const singles = await Promise.all(
      ids.map(async (id) => {
        const f = LEVELS.map((k) => goldenFeature(id, k));
        const [p] = await rpn.forward(f, [resizedSize(id)], [paddedSize(id)]);
        tf.dispose(f);
        return p;
      }),
    );
    const batch = featureSizes(256, 288);
    const features = LEVELS.map((k, level) =>
      tf.tidy(() => {
        const [bh, bw] = batch[level];
        return tf.concat(
          ids.map((id) => {
            const f = goldenFeature(id, k);
            const [, h, w] = f.shape;
            const junk = tf.randomUniform([1, bh, bw, 256], -3, 3, 'float32', 7);
            return tf.pad(f, [[0, 0], [0, bh - h], [0, bw - w], [0, 0]]).add(
              junk.mul(tf.pad(tf.zerosLike(f), [[0, 0], [0, bh - h], [0, bw - w], [0, 0]], 1)),
            );
          }),
          0,
        ) as tf.Tensor4D;
      }),
    );
    const before = tf.memory().numTensors;
    const props = await rpn.forward(features, ids.map(resizedSize), ids.map(paddedSize));
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(features);
    props.forEach((p, i) => {
      expect(p.scores.length).toBe(singles[i].scores.length);
      expect(maxAbsDiff(p.scores, singles[i].scores)).toBeLessThan(1e-5);
      expect(maxAbsDiff(p.boxes, singles[i].boxes)).toBeLessThan(1e-3);
    });
  });
});

describe('proposalsOf on a padded batch', () => {
  // Two images in one batch: the second (256x192 padded) sits in a 320x320 batch, so its own
  // region of each level is smaller than the level and its values start one slab in.
  const paddedSizes: [number, number][] = [[320, 320], [256, 192]];
  const imageSizes: [number, number][] = [[300, 310], [250, 180]];
  const batchLevels = featureSizes(320, 320);
  const random = seeded(11);
  const levels = batchLevels.map(([h, w]) => Float32Array.from({ length: 2 * h * w * 15 }, () => (random() - 0.5) * 4));
  const job = (image: number): ProposalJob => ({
    levels,
    levelSizes: batchLevels,
    image,
    paddedSize: paddedSizes[image],
    imageSize: imageSizes[image],
    config: { ...RPN_CONFIG, preNmsTopN: 300, postNmsTopN: 200 },
  });

  it.each([0, 1])('gathers only the candidates\' deltas and still equals the full flattening (image %i)', (image) => {
    const j = job(image);
    const { anchors } = sharedImageAnchors(j.paddedSize[0], j.paddedSize[1]);
    const full = filterProposals(headOf(j), anchors, j.imageSize, j.config);
    const got = proposalsOf(j);
    expect(got.scores.length).toBeGreaterThan(100);
    expect(Array.from(got.boxes)).toEqual(Array.from(full.boxes));
    expect(Array.from(got.scores)).toEqual(Array.from(full.scores));
    // Image 1's own region really is smaller than the batch's levels.
    if (image === 1) expect(headOf(j).perLevel[0]).toBeLessThan(batchLevels[0][0] * batchLevels[0][1] * 3);
  });
});

describe('candidatesOf (the GPU candidates read back)', () => {
  // Records as the GPU's atomic compaction leaves them: in any order, one per chosen anchor.
  const paddedSizes: [number, number][] = [[128, 96], [96, 64]];
  const topN = 40;
  const layout = candidateLayout(paddedSizes, topN, 16);
  const random = seeded(5);
  const chosen: number[][] = [];
  const words = new Int32Array(layout.words);
  const floats = new Float32Array(words.buffer);
  for (let slot = 0; slot < layout.images * layout.levels; slot++) {
    const [h, w] = layout.ownSizes[slot];
    const anchors = Array.from({ length: h * w * 3 }, (_, i) => i);
    for (let i = anchors.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [anchors[i], anchors[j]] = [anchors[j], anchors[i]];
    }
    const picked = anchors.slice(0, Math.min(layout.capacity[slot], layout.k[slot] + Math.floor(random() * 8)));
    chosen.push(picked);
    words[slot] = picked.length;
    picked.forEach((anchor, j) => {
      const r = layout.base[slot] + j * RECORD_WORDS;
      words[r] = anchor;
      for (let q = 1; q < RECORD_WORDS; q++) floats[r + q] = anchor * 10 + q;
    });
  }

  it.each([0, 1])('puts image %i\'s records in anchor order, values with them', (image) => {
    const got = candidatesOf(words, layout, image);
    expect(got).not.toBeNull();
    if (!got) return;
    let o = 0;
    for (let level = 0; level < layout.levels; level++) {
      const expected = [...chosen[image * layout.levels + level]].sort((a, b) => a - b);
      expect(got.perLevel[level]).toBe(expected.length);
      expect(Array.from(got.index.subarray(o, o + expected.length))).toEqual(expected);
      expect(Array.from(got.objectness.subarray(o, o + expected.length))).toEqual(expected.map((a) => a * 10 + 1));
      expect(Array.from(got.deltas.subarray(o * 4, (o + expected.length) * 4))).toEqual(expected.flatMap((a) => [2, 3, 4, 5].map((q) => a * 10 + q)));
      o += expected.length;
    }
  });

  it('rejects a result with a repeated or an impossible anchor (the caller then reads the whole head)', () => {
    const slot = layout.levels + 1;
    const first = layout.base[slot];
    const repeated = words.slice();
    repeated[first + RECORD_WORDS] = repeated[first];
    expect(candidatesOf(repeated, layout, 1)).toBeNull();
    const outside = words.slice();
    const [h, w] = layout.ownSizes[slot];
    outside[first] = h * w * 3;
    expect(candidatesOf(outside, layout, 1)).toBeNull();
    expect(candidatesOf(words, layout, 0)).not.toBeNull();
  });
});
