/**
 * `img2pose queue add`: image paths -> BullMQ jobs of `chunkSize` images each.
 *
 * Images are keyed by absolute path (every host must see them at the same path, e.g. a shared
 * mount). Adding is idempotent: an image already enqueued is skipped, so an interrupted or
 * repeated `add` never queues an image twice. The order is check, enqueue, then mark: a crash in
 * between can only queue an image again (its result is then written twice, identically), never
 * lose it.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import type { Redis } from 'ioredis';
import type { JobsOptions, Queue } from 'bullmq';
import { QueueSettings, StoreKeys } from './store';

/** What one job carries: its images and the settings to detect them with. */
export interface ChunkData {
  images: string[];
  settings: QueueSettings;
}

/** Retries of a chunk whose detection failed for a reason other than its images (see worker.ts). */
export const DEFAULT_ATTEMPTS = 3;

export const DEFAULT_CHUNK_SIZE = 32;

/** Job options: retried with backoff; finished jobs leave Redis (the results hash keeps what counts). */
export function chunkJobOptions(attempts = DEFAULT_ATTEMPTS): JobsOptions {
  return {
    attempts,
    backoff: { type: 'exponential', delay: 2000 },
    removeOnComplete: true,
    // Failed chunks stay (up to a bound) so `queue status` can show why.
    removeOnFail: { count: 10_000 },
  };
}

/** A stable job id for a chunk: adding the same chunk twice makes one job. */
export function chunkId(images: readonly string[]): string {
  return `chunk-${createHash('sha1').update(images.join('\n')).digest('hex').slice(0, 20)}`;
}

/**
 * Arguments -> absolute image paths. A `.txt` argument is a list, one path a line (blank lines and
 * `#` comments skipped, relative paths taken from the current folder); `expandFolder` turns a
 * folder into its images; anything else is an image path.
 */
export async function collectImages(
  inputs: readonly string[],
  expandFolder: (dir: string) => Promise<string[]>,
  cwd = process.cwd(),
): Promise<string[]> {
  const out: string[] = [];
  for (const input of inputs) {
    if (path.extname(input).toLowerCase() === '.txt') {
      const text = await fs.promises.readFile(input, 'utf8');
      for (const line of text.split(/\r?\n/)) {
        const p = line.trim();
        if (p && !p.startsWith('#')) out.push(path.resolve(cwd, p));
      }
      continue;
    }
    const stat = await fs.promises.stat(input).catch(() => undefined);
    if (stat?.isDirectory()) out.push(...(await expandFolder(input)).map((p) => path.resolve(cwd, p)));
    else out.push(path.resolve(cwd, input));
  }
  return out;
}

export interface AddSummary {
  given: number;
  added: number;
  skipped: number;
  jobs: number;
}

/** Pipelined membership checks and job adds go in groups of this many. */
const BULK = 1000;

/** Enqueue the images not yet in the queue, `chunkSize` to a job. */
export async function enqueueImages(
  queue: Queue<ChunkData>,
  redis: Redis,
  keys: StoreKeys,
  images: readonly string[],
  settings: QueueSettings,
  chunkSize: number,
  attempts = DEFAULT_ATTEMPTS,
): Promise<AddSummary> {
  const unique = [...new Set(images)];
  const fresh: string[] = [];
  for (let i = 0; i < unique.length; i += BULK) {
    const group = unique.slice(i, i + BULK);
    const member = await redis.smismember(keys.images, ...group);
    group.forEach((image, k) => {
      if (member[k] === 0) fresh.push(image);
    });
  }
  const chunks: string[][] = [];
  for (let i = 0; i < fresh.length; i += chunkSize) chunks.push(fresh.slice(i, i + chunkSize));
  const opts = chunkJobOptions(attempts);
  for (let i = 0; i < chunks.length; i += BULK) {
    const group = chunks.slice(i, i + BULK);
    await queue.addBulk(group.map((c) => ({ name: 'detect', data: { images: c, settings }, opts: { ...opts, jobId: chunkId(c) } })));
    // Marked only once their jobs exist (see the module comment).
    await redis.sadd(keys.images, ...group.flat());
  }
  return { given: images.length, added: fresh.length, skipped: images.length - fresh.length, jobs: chunks.length };
}

/** The job data as a worker receives it, checked: a job written by something else fails alone. */
export function parseChunkData(data: unknown): ChunkData {
  const d = data as Partial<ChunkData> | null;
  const s = d?.settings;
  const valid =
    d !== null &&
    typeof d === 'object' &&
    Array.isArray(d.images) &&
    d.images.every((p) => typeof p === 'string') &&
    s !== undefined &&
    [s.scoreThreshold, s.maxFaces, s.minSize, s.maxSize].every((v) => typeof v === 'number' && Number.isFinite(v));
  if (!valid) throw new Error('not an img2pose chunk (expected { images: string[], settings })');
  return d as ChunkData;
}
