/**
 * The side-by-side script's matcher (bench/compare_upstream.ts) applies the fixtures' end-to-end
 * criteria: checked on the golden teaser detections against perturbed copies of themselves, and
 * against the test suite's own matcher.
 */
import { failures, identical, matchDetections } from '../bench/compare_upstream';
import { golden } from './utils/golden';
import { matchDetections as testMatcher } from './utils/match';

/** Plain arrays, so the perturbations below can use array methods. */
interface Dets {
  boxes: number[];
  scores: number[];
  dofs: number[];
}

function teaser(): Dets {
  return {
    boxes: Array.from(golden('teaser', 'final_boxes').data),
    scores: Array.from(golden('teaser', 'final_scores').data),
    dofs: Array.from(golden('teaser', 'final_dofs').data),
  };
}

/** Detection indices scoring >= 0.5, best first. */
function topIndices(d: Dets): number[] {
  return d.scores
    .map((s, i) => [s, i] as const)
    .filter(([s]) => s >= 0.5)
    .sort((a, b) => b[0] - a[0])
    .map(([, i]) => i);
}

describe('compare_upstream matcher', () => {
  const ref = teaser();

  it('passes the reference against itself, in any order', () => {
    const n = ref.scores.length;
    expect(n).toBe(511);
    const r = matchDetections(ref, ref);
    expect(r).toMatchObject({ ours: n, ref: n, matchedOurs: 1, matchedRef: 1, maxScoreDiff: 0, maxBoxDiff: 0, oursAbove05: 13, refAbove05: 13 });
    expect(failures(r)).toEqual([]);
    // Reversed order: matching is by IoU, not position.
    const rev = Array.from({ length: n }, (_, k) => n - 1 - k);
    const reversed: Dets = {
      boxes: rev.flatMap((i) => ref.boxes.slice(i * 4, i * 4 + 4)),
      scores: rev.map((i) => ref.scores[i]),
      dofs: rev.flatMap((i) => ref.dofs.slice(i * 6, i * 6 + 6)),
    };
    expect(failures(matchDetections(reversed, ref))).toEqual([]);
  });

  it('flags each tolerance when exceeded, and only that one', () => {
    const top = topIndices(ref)[0];
    // A box shifted 1.5 px must still match by IoU >= 0.95 to be measured: take the widest face.
    const width = (i: number) => ref.boxes[i * 4 + 2] - ref.boxes[i * 4];
    const wide = topIndices(ref).reduce((a, b) => (width(b) > width(a) ? b : a));
    expect(width(wide)).toBeGreaterThan(60);
    const perturb = (f: (d: Dets) => void): string[] => {
      const d: Dets = { boxes: [...ref.boxes], scores: [...ref.scores], dofs: [...ref.dofs] };
      f(d);
      return failures(matchDetections(d, ref));
    };
    expect(perturb((d) => (d.boxes[wide * 4 + 2] += 0.9))).toEqual([]);
    expect(perturb((d) => (d.boxes[wide * 4 + 2] += 1.5))).toEqual(['box 1.50 px']);
    expect(perturb((d) => (d.scores[top] += 0.9e-3))).toEqual([]);
    expect(perturb((d) => (d.scores[top] -= 2e-3))).toEqual(['score 2.0e-3']);
    expect(perturb((d) => (d.dofs[top * 6 + 1] += 1.5e-3))).toEqual(['rotation 1.5e-3']);
    // Relative to the length of the translation vector.
    const tNorm = Math.hypot(...ref.dofs.slice(top * 6 + 3, top * 6 + 6));
    expect(perturb((d) => (d.dofs[top * 6 + 5] += 0.9e-3 * tNorm))).toEqual([]);
    expect(perturb((d) => (d.dofs[top * 6 + 5] += 3e-3 * tNorm))).toEqual(['translation 3.0e-3']);
    // A top face scored just below 0.5 changes the count above 0.5 (its score moves far too).
    expect(perturb((d) => (d.scores[top] = 0.49))).toEqual(expect.arrayContaining(['faces >= 0.5: 12 vs 13']));
  });

  it('counts unmatched detections both ways among those scoring >= 0.1', () => {
    const keep = ref.scores.map((s, i) => i).filter((i) => i % 20 !== 0);
    const fewer: Dets = {
      boxes: keep.flatMap((i) => ref.boxes.slice(i * 4, i * 4 + 4)),
      scores: keep.map((i) => ref.scores[i]),
      dofs: keep.flatMap((i) => ref.dofs.slice(i * 6, i * 6 + 6)),
    };
    const r = matchDetections(fewer, ref);
    expect(r.matchedOurs).toBe(1);
    expect(r.matchedRef).toBeLessThan(0.98);
    expect(failures(r).some((f) => f.startsWith('matched ref'))).toBe(true);
    // The same numbers as the test suite's matcher (the one the golden tests use).
    const t = testMatcher(fewer, ref);
    expect(r.matchedRef).toBeCloseTo(t.matchedRef, 12);
    expect(r.matchedOurs).toBeCloseTo(t.matchedOurs, 12);
    const swapped = matchDetections(ref, fewer);
    expect(swapped.matchedOurs).toBeCloseTo(testMatcher(ref, fewer).matchedOurs, 12);
    expect(swapped.matchedOurs).toBeLessThan(0.98);
  });

  it('tells identical face lists from nearly identical ones', () => {
    const face = { box: [1, 2, 3, 4], confidence: 0.7, pose: [0, 0, 0, 0, 0, 3], keypoints: {} } as never;
    const other = { box: [1, 2, 3, 4], confidence: 0.7000001, pose: [0, 0, 0, 0, 0, 3], keypoints: {} } as never;
    expect(identical([face], [face])).toBe(true);
    expect(identical([face], [other])).toBe(false);
    expect(identical([face], [])).toBe(false);
  });
});
