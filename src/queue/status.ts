/**
 * `img2pose queue status` and `img2pose queue results`: what a queue has done, read from the
 * store (store.ts) and BullMQ's job counts.
 */
import * as fs from 'fs';
import type { Redis } from 'ioredis';
import type { Queue } from 'bullmq';
import type { ChunkData } from './add';
import { QueueSettings, StoreKeys, loadSettings, recentRate, scanResults } from './store';

export interface QueueStatus {
  queue: string;
  settings?: QueueSettings;
  /** Images ever enqueued, and those with a result (failed ones included). */
  images: { total: number; done: number; failed: number; inFlight: number; waiting: number };
  /** BullMQ's chunk counts; `failed` chunks exhausted their attempts (their reasons below). */
  chunks: { waiting: number; active: number; delayed: number; failed: number };
  /** Images per second over the last minutes, and the time left at that rate (s). */
  rate: number;
  etaSeconds?: number;
  /** Workers connected now. */
  workers: number;
  /** The most common image errors, most frequent first. */
  failedReasons: { reason: string; count: number }[];
  failedChunks: { id: string; reason: string; images: number }[];
}

/** The image errors grouped by text are read from this many failed images at most. */
const REASON_SAMPLE = 10_000;
const SHOWN = 5;

export async function queueStatus(queue: Queue<ChunkData>, redis: Redis, keys: StoreKeys): Promise<QueueStatus> {
  const [total, done, failed, counts, active, failedJobs, workers, rate, settings, reasons] = await Promise.all([
    redis.scard(keys.images),
    redis.hlen(keys.results),
    redis.hlen(keys.failed),
    queue.getJobCounts('waiting', 'prioritized', 'active', 'delayed', 'failed'),
    queue.getJobs(['active']),
    queue.getJobs(['failed'], 0, SHOWN - 1),
    queue.getWorkersCount(),
    recentRate(redis, keys),
    loadSettings(redis, keys),
    failedReasons(redis, keys),
  ]);
  const inFlight = active.reduce((n, job) => n + (Array.isArray(job?.data?.images) ? job.data.images.length : 0), 0);
  const left = Math.max(0, total - done);
  return {
    queue: queue.name,
    settings,
    images: { total, done, failed, inFlight: Math.min(inFlight, left), waiting: Math.max(0, left - inFlight) },
    chunks: {
      waiting: (counts.waiting ?? 0) + (counts.prioritized ?? 0),
      active: counts.active ?? 0,
      delayed: counts.delayed ?? 0,
      failed: counts.failed ?? 0,
    },
    rate,
    etaSeconds: rate > 0 && left > 0 ? left / rate : undefined,
    workers,
    failedReasons: reasons,
    failedChunks: failedJobs
      .filter((j) => j !== undefined)
      .map((j) => ({ id: String(j.id), reason: j.failedReason ?? '', images: j.data?.images?.length ?? 0 })),
  };
}

async function failedReasons(redis: Redis, keys: StoreKeys): Promise<{ reason: string; count: number }[]> {
  const byReason = new Map<string, number>();
  let cursor = '0';
  let seen = 0;
  do {
    const [next, flat] = await redis.hscan(keys.failed, cursor, 'COUNT', 1000);
    cursor = next;
    for (let i = 1; i < flat.length; i += 2) {
      // The reason without the file: "Input file "/x/1.png": expected ..., found ..." -> "expected ..., found ...".
      const reason = flat[i].replace(/^Input (#\d+ \()?file "[^"]*"\)?: /, '');
      byReason.set(reason, (byReason.get(reason) ?? 0) + 1);
    }
    seen += flat.length / 2;
  } while (cursor !== '0' && seen < REASON_SAMPLE);
  return [...byReason]
    .map(([reason, count]) => ({ reason, count }))
    .sort((a, b) => b.count - a.count || a.reason.localeCompare(b.reason))
    .slice(0, SHOWN);
}

/** The status as a few lines for a person. */
export function formatStatus(s: QueueStatus): string {
  const i = s.images;
  const pct = i.total > 0 ? ` (${((100 * i.done) / i.total).toFixed(1)}%)` : '';
  const lines = [
    `queue ${s.queue}: ${i.done} of ${i.total} images done${pct}, ${i.failed} failed, ${i.inFlight} in flight, ${i.waiting} waiting`,
    `chunks: ${s.chunks.waiting} waiting, ${s.chunks.active} active, ${s.chunks.delayed} delayed (retry backoff), ${s.chunks.failed} failed`,
    `workers: ${s.workers}; rate: ${s.rate.toFixed(2)} images/s` + (s.etaSeconds !== undefined ? `, about ${formatDuration(s.etaSeconds)} left` : ''),
  ];
  if (s.settings) {
    const t = s.settings;
    lines.push(`settings: threshold ${t.scoreThreshold}, max faces ${t.maxFaces}, min size ${t.minSize}, max size ${t.maxSize}`);
  }
  if (s.failedReasons.length > 0) {
    lines.push('failed images, most common reasons:');
    for (const r of s.failedReasons) lines.push(`  ${r.count}  ${r.reason}`);
  }
  if (s.failedChunks.length > 0) {
    lines.push('failed chunks (all attempts used):');
    for (const c of s.failedChunks) lines.push(`  ${c.id} (${c.images} images): ${c.reason}`);
  }
  return `${lines.join('\n')}\n`;
}

function formatDuration(seconds: number): string {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/**
 * Every result as one JSON line per image (HSCAN order), to `out` (a file, written then renamed
 * into place so a reader never sees half a file) or to `write`. Resolves to the number of lines.
 */
export async function writeResults(redis: Redis, keys: StoreKeys, out: string | undefined, write: (text: string) => void): Promise<number> {
  let n = 0;
  if (out === undefined) {
    for await (const lines of scanResults(redis, keys)) {
      write(lines.map((l) => `${l}\n`).join(''));
      n += lines.length;
    }
    return n;
  }
  const tmp = `${out}.partial`;
  const fd = await fs.promises.open(tmp, 'w');
  try {
    for await (const lines of scanResults(redis, keys)) {
      await fd.write(lines.map((l) => `${l}\n`).join(''));
      n += lines.length;
    }
    await fd.sync();
  } finally {
    await fd.close();
  }
  await fs.promises.rename(tmp, out);
  return n;
}
