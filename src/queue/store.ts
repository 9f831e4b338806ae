/**
 * What the queue keeps in Redis beside BullMQ's own job records, under the same key prefix
 * (`<prefix>:<queue>:img2pose:*`, so removing the queue's keys removes them too):
 *
 * - `images`   set of every image key ever enqueued (what `queue add` skips on a second run);
 * - `results`  hash image key -> its result line (`{"image", "faces"}` or `{"image", "error"}`).
 *              A retried chunk writes the same fields again: each image has exactly one result
 *              whatever the number of attempts (at-least-once work, exactly-once results);
 * - `failed`   hash image key -> error text, the subset of `results` that failed (for status);
 * - `settings` the detection settings fixed by the first `queue add` (JSON);
 * - `rate:<minute>` images finished in that minute (expires after two hours), for the rate.
 */
import type { Redis } from 'ioredis';
import { DEFAULT_OPTIONS, Face } from '../detector';

/** Settings every image of a queue is detected with, so its results are one consistent set. */
export interface QueueSettings {
  scoreThreshold: number;
  maxFaces: number;
  minSize: number;
  maxSize: number;
}

/** One image's outcome: the same line format as `img2pose detect`. */
export type QueueResult = { image: string; faces: Face[] } | { image: string; error: string };

export const DEFAULT_SETTINGS: Readonly<QueueSettings> = {
  scoreThreshold: DEFAULT_OPTIONS.scoreThreshold,
  maxFaces: DEFAULT_OPTIONS.maxFaces,
  minSize: DEFAULT_OPTIONS.minSize,
  maxSize: DEFAULT_OPTIONS.maxSize,
};

export const DEFAULT_QUEUE = 'img2pose';
export const DEFAULT_PREFIX = 'bull';

/** The minutes of counters the rate is computed over. */
export const RATE_WINDOW_MINUTES = 5;
const RATE_KEY_TTL_S = 2 * 60 * 60;

export interface StoreKeys {
  images: string;
  results: string;
  failed: string;
  settings: string;
  started: string;
  rate: (minute: number) => string;
}

export function storeKeys(queue: string, prefix = DEFAULT_PREFIX): StoreKeys {
  const base = `${prefix}:${queue}:img2pose`;
  return {
    images: `${base}:images`,
    results: `${base}:results`,
    failed: `${base}:failed`,
    settings: `${base}:settings`,
    started: `${base}:started`,
    rate: (minute) => `${base}:rate:${minute}`,
  };
}

/**
 * Record a chunk's results in one MULTI: all of them or none land, so a worker killed while
 * writing leaves its chunk to the retry, never half-recorded.
 */
export async function saveResults(redis: Redis, keys: StoreKeys, results: readonly QueueResult[], now = Date.now()): Promise<void> {
  if (results.length === 0) return;
  const multi = redis.multi();
  const lines: string[] = [];
  for (const r of results) lines.push(r.image, JSON.stringify(r));
  multi.hset(keys.results, ...lines);
  const failed = results.filter((r): r is { image: string; error: string } => 'error' in r);
  const ok = results.filter((r) => !('error' in r));
  if (failed.length > 0) multi.hset(keys.failed, ...failed.flatMap((r) => [r.image, r.error]));
  // An image that failed once (a file not yet copied, say) and succeeded on a later run is done.
  if (ok.length > 0) multi.hdel(keys.failed, ...ok.map((r) => r.image));
  const rateKey = keys.rate(Math.floor(now / 60_000));
  multi.incrby(rateKey, results.length);
  multi.expire(rateKey, RATE_KEY_TTL_S);
  multi.set(keys.started, String(now), 'NX');
  await multi.exec();
}

/** The settings stored by the first `queue add`, or undefined for a new queue. */
export async function loadSettings(redis: Redis, keys: StoreKeys): Promise<QueueSettings | undefined> {
  const json = await redis.get(keys.settings);
  return json === null ? undefined : (JSON.parse(json) as QueueSettings);
}

/** Stores `settings` unless the queue has some (SET NX: concurrent first adds agree); resolves to the queue's. */
export async function fixSettings(redis: Redis, keys: StoreKeys, settings: QueueSettings): Promise<QueueSettings> {
  await redis.set(keys.settings, JSON.stringify(settings), 'NX');
  return (await loadSettings(redis, keys)) ?? settings;
}

export function sameSettings(a: QueueSettings, b: QueueSettings): boolean {
  return a.scoreThreshold === b.scoreThreshold && a.maxFaces === b.maxFaces && a.minSize === b.minSize && a.maxSize === b.maxSize;
}

/** Images finished per second over the last RATE_WINDOW_MINUTES (0 before any result). */
export async function recentRate(redis: Redis, keys: StoreKeys, now = Date.now()): Promise<number> {
  const minute = Math.floor(now / 60_000);
  const minutes = Array.from({ length: RATE_WINDOW_MINUTES + 1 }, (_, i) => minute - i);
  const [counts, started] = await Promise.all([redis.mget(...minutes.map(keys.rate)), redis.get(keys.started)]);
  const images = counts.reduce((sum, c) => sum + Number(c ?? 0), 0);
  if (images === 0) return 0;
  // The window: from the oldest minute counted, or from the first result if that is later.
  const windowStart = (minute - RATE_WINDOW_MINUTES) * 60_000;
  const from = Math.max(windowStart, Number(started ?? windowStart));
  return images / Math.max(1, (now - from) / 1000);
}

/**
 * Every result, each image once, in batches of about `count` (HSCAN order). HSCAN may return an
 * entry twice while Redis resizes the hash, hence the set of images already given.
 */
export async function* scanResults(redis: Redis, keys: StoreKeys, count = 1000): AsyncGenerator<string[]> {
  const seen = new Set<string>();
  let cursor = '0';
  do {
    const [next, flat] = await redis.hscan(keys.results, cursor, 'COUNT', count);
    cursor = next;
    const lines: string[] = [];
    for (let i = 0; i < flat.length; i += 2) {
      if (seen.has(flat[i])) continue;
      seen.add(flat[i]);
      lines.push(flat[i + 1]);
    }
    if (lines.length > 0) yield lines;
  } while (cursor !== '0');
}
