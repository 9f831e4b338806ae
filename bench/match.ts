/**
 * End-to-end comparison with a reference, as shared/fixtures/README.md defines it: near-ties at
 * top-k and NMS boundaries may flip, so detections are matched greedily by IoU >= 0.95 and matched
 * pairs must agree on score, rotation, translation and box. One matcher for the test suite and the
 * side-by-side scripts.
 */
import type { Face } from '../src/detector';

/** Flattened detections of one image, as the matcher wants them. */
export interface Dets {
  boxes: ArrayLike<number>;
  scores: ArrayLike<number>;
  dofs: ArrayLike<number>;
}

export interface MatchReport {
  ours: number;
  ref: number;
  /** Among detections scoring >= minScore: fraction of ours matched, and of the reference's. */
  matchedOurs: number;
  matchedRef: number;
  maxScoreDiff: number;
  maxRotDiff: number;
  maxTransRel: number;
  maxBoxDiff: number;
  oursAbove05: number;
  refAbove05: number;
}

export const TOLERANCE = { matched: 0.98, score: 1e-3, rot: 1e-3, transRel: 1e-3, box: 1 } as const;

export function facesToDets(faces: readonly Face[]): Dets {
  return {
    boxes: faces.flatMap((f) => f.box),
    scores: faces.map((f) => f.confidence),
    dofs: faces.flatMap((f) => f.pose),
  };
}

/** IoU with torchvision's area convention; two degenerate boxes match when within 1 px. */
function iou(a: ArrayLike<number>, i: number, b: ArrayLike<number>, j: number): number {
  const inter =
    Math.max(0, Math.min(a[i * 4 + 2], b[j * 4 + 2]) - Math.max(a[i * 4], b[j * 4])) *
    Math.max(0, Math.min(a[i * 4 + 3], b[j * 4 + 3]) - Math.max(a[i * 4 + 1], b[j * 4 + 1]));
  const areaA = (a[i * 4 + 2] - a[i * 4]) * (a[i * 4 + 3] - a[i * 4 + 1]);
  const areaB = (b[j * 4 + 2] - b[j * 4]) * (b[j * 4 + 3] - b[j * 4 + 1]);
  const union = areaA + areaB - inter;
  if (union <= 0) {
    for (let k = 0; k < 4; k++) if (Math.abs(a[i * 4 + k] - b[j * 4 + k]) > 1) return 0;
    return 1;
  }
  return inter / union;
}

/**
 * Greedy matching: reference detections best score first, each takes the unused detection of
 * ours with the highest IoU >= 0.95 (ties: the closer score).
 */
export function matchDetections(ours: Dets, ref: Dets, minScore = 0.1): MatchReport {
  const n = ours.scores.length;
  const m = ref.scores.length;
  const refOrder = Array.from({ length: m }, (_, j) => j).sort((x, y) => ref.scores[y] - ref.scores[x]);
  const used = new Uint8Array(n);
  const pair = new Int32Array(m).fill(-1);
  for (const j of refOrder) {
    let best = -1;
    let bestIou = 0.95;
    for (let i = 0; i < n; i++) {
      if (used[i]) continue;
      const v = iou(ours.boxes, i, ref.boxes, j);
      const closer = best >= 0 && Math.abs(ours.scores[i] - ref.scores[j]) < Math.abs(ours.scores[best] - ref.scores[j]);
      if (v > bestIou || (v >= bestIou && (best < 0 || closer))) {
        best = i;
        bestIou = v;
      }
    }
    if (best >= 0) {
      used[best] = 1;
      pair[j] = best;
    }
  }
  const r: MatchReport = {
    ours: n,
    ref: m,
    matchedOurs: 1,
    matchedRef: 1,
    maxScoreDiff: 0,
    maxRotDiff: 0,
    maxTransRel: 0,
    maxBoxDiff: 0,
    oursAbove05: Array.from(ours.scores).filter((s) => s >= 0.5).length,
    refAbove05: Array.from(ref.scores).filter((s) => s >= 0.5).length,
  };
  let refCount = 0;
  let refMatched = 0;
  for (let j = 0; j < m; j++) {
    if (ref.scores[j] < minScore) continue;
    refCount++;
    const i = pair[j];
    if (i < 0) continue;
    refMatched++;
    r.maxScoreDiff = Math.max(r.maxScoreDiff, Math.abs(ours.scores[i] - ref.scores[j]));
    let num = 0;
    let den = 0;
    for (let k = 0; k < 6; k++) {
      const d = ours.dofs[i * 6 + k] - ref.dofs[j * 6 + k];
      if (k < 3) r.maxRotDiff = Math.max(r.maxRotDiff, Math.abs(d));
      else {
        num += d * d;
        den += ref.dofs[j * 6 + k] ** 2;
      }
    }
    r.maxTransRel = Math.max(r.maxTransRel, Math.sqrt(num / Math.max(den, 1e-12)));
    for (let k = 0; k < 4; k++) r.maxBoxDiff = Math.max(r.maxBoxDiff, Math.abs(ours.boxes[i * 4 + k] - ref.boxes[j * 4 + k]));
  }
  const matchedOfOurs = new Set(Array.from(pair).filter((i) => i >= 0));
  let oursCount = 0;
  let oursMatched = 0;
  for (let i = 0; i < n; i++) {
    if (ours.scores[i] < minScore) continue;
    oursCount++;
    if (matchedOfOurs.has(i)) oursMatched++;
  }
  if (refCount > 0) r.matchedRef = refMatched / refCount;
  if (oursCount > 0) r.matchedOurs = oursMatched / oursCount;
  return r;
}

/** The criteria this report fails, empty when it passes. */
export function failures(r: MatchReport): string[] {
  const out: string[] = [];
  if (r.matchedOurs < TOLERANCE.matched) out.push(`matched ours ${pct(r.matchedOurs)}`);
  if (r.matchedRef < TOLERANCE.matched) out.push(`matched ref ${pct(r.matchedRef)}`);
  if (r.maxScoreDiff > TOLERANCE.score) out.push(`score ${sci(r.maxScoreDiff)}`);
  if (r.maxRotDiff > TOLERANCE.rot) out.push(`rotation ${sci(r.maxRotDiff)}`);
  if (r.maxTransRel > TOLERANCE.transRel) out.push(`translation ${sci(r.maxTransRel)}`);
  if (r.maxBoxDiff > TOLERANCE.box) out.push(`box ${r.maxBoxDiff.toFixed(2)} px`);
  if (r.oursAbove05 !== r.refAbove05) out.push(`faces >= 0.5: ${r.oursAbove05} vs ${r.refAbove05}`);
  return out;
}

export function pct(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}

export function sci(x: number): string {
  return x === 0 ? '0' : x.toExponential(1);
}

