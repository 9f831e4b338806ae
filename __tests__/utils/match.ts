/**
 * End-to-end comparison with the reference, as shared/fixtures/README.md defines it: near-ties at
 * top-k and NMS boundaries may flip, so detections are matched greedily by IoU >= 0.95 and the
 * matched pairs must agree on score, rotation, translation and box.
 */
export interface Dets {
  boxes: ArrayLike<number>;
  scores: ArrayLike<number>;
  dofs: ArrayLike<number>;
}

export interface MatchReport {
  ours: number;
  ref: number;
  /** Among detections scoring >= minScore: fraction of ours matched / of the reference's matched. */
  matchedOurs: number;
  matchedRef: number;
  maxScoreDiff: number;
  maxRotDiff: number;
  maxTransRel: number;
  maxBoxDiff: number;
}

function iou(a: ArrayLike<number>, i: number, b: ArrayLike<number>, j: number): number {
  const ix1 = Math.max(a[i * 4], b[j * 4]);
  const iy1 = Math.max(a[i * 4 + 1], b[j * 4 + 1]);
  const ix2 = Math.min(a[i * 4 + 2], b[j * 4 + 2]);
  const iy2 = Math.min(a[i * 4 + 3], b[j * 4 + 3]);
  const inter = Math.max(0, ix2 - ix1) * Math.max(0, iy2 - iy1);
  const areaA = (a[i * 4 + 2] - a[i * 4]) * (a[i * 4 + 3] - a[i * 4 + 1]);
  const areaB = (b[j * 4 + 2] - b[j * 4]) * (b[j * 4 + 3] - b[j * 4 + 1]);
  const union = areaA + areaB - inter;
  if (union <= 0) {
    // Degenerate boxes: identical coordinates count as a match.
    for (let k = 0; k < 4; k++) if (Math.abs(a[i * 4 + k] - b[j * 4 + k]) > 1) return 0;
    return 1;
  }
  return inter / union;
}

export function matchDetections(ours: Dets, ref: Dets, minScore = 0.1): MatchReport {
  const n = ours.scores.length;
  const m = ref.scores.length;
  // Greedy over reference detections, best score first: each takes the best unused IoU partner.
  const refOrder = Array.from({ length: m }, (_, j) => j).sort((x, y) => ref.scores[y] - ref.scores[x]);
  const usedOurs = new Uint8Array(n);
  const pairOfRef = new Int32Array(m).fill(-1);
  for (const j of refOrder) {
    let best = -1;
    let bestIou = 0.95;
    for (let i = 0; i < n; i++) {
      if (usedOurs[i]) continue;
      const v = iou(ours.boxes, i, ref.boxes, j);
      if (v >= bestIou && (best < 0 || v > bestIou || Math.abs(ours.scores[i] - ref.scores[j]) < Math.abs(ours.scores[best] - ref.scores[j]))) {
        best = i;
        bestIou = v;
      }
    }
    if (best >= 0) {
      usedOurs[best] = 1;
      pairOfRef[j] = best;
    }
  }
  let refCount = 0;
  let refMatched = 0;
  let maxScoreDiff = 0;
  let maxRotDiff = 0;
  let maxTransRel = 0;
  let maxBoxDiff = 0;
  for (let j = 0; j < m; j++) {
    if (ref.scores[j] < minScore) continue;
    refCount++;
    const i = pairOfRef[j];
    if (i < 0) continue;
    refMatched++;
    maxScoreDiff = Math.max(maxScoreDiff, Math.abs(ours.scores[i] - ref.scores[j]));
    for (let k = 0; k < 3; k++) maxRotDiff = Math.max(maxRotDiff, Math.abs(ours.dofs[i * 6 + k] - ref.dofs[j * 6 + k]));
    let num = 0;
    let den = 0;
    for (let k = 3; k < 6; k++) {
      num += (ours.dofs[i * 6 + k] - ref.dofs[j * 6 + k]) ** 2;
      den += ref.dofs[j * 6 + k] ** 2;
    }
    maxTransRel = Math.max(maxTransRel, Math.sqrt(num / Math.max(den, 1e-12)));
    for (let k = 0; k < 4; k++) maxBoxDiff = Math.max(maxBoxDiff, Math.abs(ours.boxes[i * 4 + k] - ref.boxes[j * 4 + k]));
  }
  let oursCount = 0;
  let oursMatched = 0;
  const matchedSet = new Set(Array.from(pairOfRef).filter((i) => i >= 0));
  for (let i = 0; i < n; i++) {
    if (ours.scores[i] < minScore) continue;
    oursCount++;
    if (matchedSet.has(i)) oursMatched++;
  }
  return {
    ours: n,
    ref: m,
    matchedOurs: oursCount === 0 ? 1 : oursMatched / oursCount,
    matchedRef: refCount === 0 ? 1 : refMatched / refCount,
    maxScoreDiff,
    maxRotDiff,
    maxTransRel,
    maxBoxDiff,
  };
}

/** The fixtures' end-to-end tolerances. */
export function expectWithinTolerance(r: MatchReport): void {
  expect(r.matchedOurs).toBeGreaterThanOrEqual(0.98);
  expect(r.matchedRef).toBeGreaterThanOrEqual(0.98);
  expect(r.maxScoreDiff).toBeLessThanOrEqual(1e-3);
  expect(r.maxRotDiff).toBeLessThanOrEqual(1e-3);
  expect(r.maxTransRel).toBeLessThanOrEqual(1e-3);
  expect(r.maxBoxDiff).toBeLessThanOrEqual(1);
}
