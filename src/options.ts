/**
 * Checks shared by every options object of the API: a key the library does not know is refused
 * (a typo such as `scoreTreshold` would otherwise be ignored silently), with the closest known
 * key suggested.
 */
import { OptionError } from './errors';

/** Edit distance (insertions, deletions, substitutions), for "did you mean". */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

/** The known key closest to `key`, when it is close enough to be a typo. */
export function closestKey(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of known) {
    const d = k.toLowerCase() === key.toLowerCase() ? 0 : editDistance(key, k);
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return bestDistance <= Math.max(2, Math.floor(key.length / 4)) ? best : undefined;
}

/** Refuses any own key of `options` not in `known`, naming it (and what it probably meant). */
export function checkKnownKeys(options: object, known: readonly string[], what: string): void {
  for (const key of Object.keys(options)) {
    if (known.includes(key)) continue;
    const guess = closestKey(key, known);
    const error = new OptionError(key, 'a known option', key);
    error.message = guess
      ? `Unknown ${what} option '${key}' (did you mean '${guess}'?)`
      : `Unknown ${what} option '${key}' (known: ${known.join(', ')})`;
    throw error;
  }
}
