/** The fixtures' end-to-end criteria as jest assertions, on the project's one matcher (bench/match.ts). */
import { MatchReport, TOLERANCE } from '../../bench/match';

export { matchDetections } from '../../bench/match';
export type { Dets, MatchReport } from '../../bench/match';

export function expectWithinTolerance(r: MatchReport): void {
  expect(r.matchedOurs).toBeGreaterThanOrEqual(TOLERANCE.matched);
  expect(r.matchedRef).toBeGreaterThanOrEqual(TOLERANCE.matched);
  expect(r.maxScoreDiff).toBeLessThanOrEqual(TOLERANCE.score);
  expect(r.maxRotDiff).toBeLessThanOrEqual(TOLERANCE.rot);
  expect(r.maxTransRel).toBeLessThanOrEqual(TOLERANCE.transRel);
  expect(r.maxBoxDiff).toBeLessThanOrEqual(TOLERANCE.box);
}
