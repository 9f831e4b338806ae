/**
 * `img2pose worker`: takes chunks from the queue, detects their images on this host's backend and
 * stores each image's result (store.ts).
 *
 * Failure handling, per cause:
 * - a bad image (missing, corrupt, not an image: an InputError) gets its error as its result; its
 *   chunk goes on;
 * - a forward that fails for another reason (out of memory, a device lost) is retried image by
 *   image at once, so one image that breaks the network fails alone; what still fails is retried
 *   as a chunk by BullMQ (with backoff, possibly on another host), and on the chunk's last attempt
 *   those images get the error as their result instead;
 * - a worker that dies (killed, host lost) stops renewing its job locks; another worker's stalled
 *   check puts its chunks back in the queue after `lockDuration`. Results are per image key, so
 *   the chunk done twice still gives each image one result;
 * - Redis going away: the connections retry for ever and commands wait for it; a chunk finished
 *   meanwhile is stored once Redis is back (or, if its lock was lost, done again).
 */
import * as os from 'os';
import type { Job } from 'bullmq';
import { BackendChoice } from '../runtime/backend';
import { Img2Pose, SettledDetection } from '../detector';
import { InputError } from '../errors';
import { ChunkData, parseChunkData } from './add';
import { RedisSettings, bullConnection, connectOnce, redactUrl, redisOptions } from './connection';
import { DEFAULT_SETTINGS, QueueResult, QueueSettings, StoreKeys, loadSettings, saveResults } from './store';

export interface WorkerOptions {
  redis: RedisSettings;
  queue: string;
  prefix: string;
  weights: string;
  backend: BackendChoice;
  batchSize: number;
  /** Chunks in progress at once in this process (their forwards still run one at a time). */
  concurrency: number;
  threads: number | 'auto';
  /** How long a chunk's lock lasts without renewal; a dead worker's chunks return after this. */
  lockDurationMs: number;
  /** How often this worker looks for other workers' stalled chunks. */
  stalledIntervalMs: number;
  /** Times a chunk may stall (its worker died) before it is failed. */
  maxStalledCount: number;
  /** Stop once the queue has no chunk waiting or in progress. */
  exitWhenDrained: boolean;
  log: (line: string) => void;
}

export const DEFAULT_LOCK_DURATION_MS = 60_000;
export const DEFAULT_STALLED_INTERVAL_MS = 30_000;
export const DEFAULT_MAX_STALLED = 5;

/** One line of the worker's log (stderr) at most this often. */
const LOG_INTERVAL_MS = 10_000;
/** How often a worker with `exitWhenDrained` looks whether work is left. */
const DRAIN_POLL_MS = 2000;

/**
 * A detector per settings: loaded for the first chunk, reloaded only if a chunk comes with other
 * input sizes (the threshold and face count are per call).
 */
class DetectorCache {
  private current?: { settings: QueueSettings; detector: Promise<Img2Pose> };

  constructor(private readonly load: (settings: QueueSettings) => Promise<Img2Pose>) {}

  async get(settings: QueueSettings): Promise<Img2Pose> {
    const c = this.current;
    if (c && c.settings.minSize === settings.minSize && c.settings.maxSize === settings.maxSize) return c.detector;
    if (c) await (await c.detector).dispose();
    const detector = this.load(settings);
    this.current = { settings, detector };
    return detector;
  }

  async dispose(): Promise<void> {
    if (this.current) await (await this.current.detector.catch(() => undefined))?.dispose();
    this.current = undefined;
  }
}

/** One image's settled detection -> its result line, or undefined if the failure is not the image's. */
function resultOf(image: string, s: SettledDetection): QueueResult | undefined {
  if (s.ok) return { image, faces: s.faces };
  if (s.error instanceof InputError) {
    // Named by its file alone: its place in a chunk means nothing to the user.
    const { input, expected, found } = s.error;
    return { image, error: oneLine(new InputError({ input, expected, found }).message) };
  }
  return undefined;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

/** Detects a chunk: every image gets a result, or the chunk throws for BullMQ to retry it. */
export async function detectChunk(detector: Img2Pose, chunk: ChunkData, lastAttempt: boolean): Promise<QueueResult[]> {
  const filter = { scoreThreshold: chunk.settings.scoreThreshold, maxFaces: chunk.settings.maxFaces };
  const settled = await detector.detectFacesSettled(chunk.images, filter);
  const results: QueueResult[] = [];
  for (let i = 0; i < chunk.images.length; i++) {
    const image = chunk.images[i];
    let result = resultOf(image, settled[i]);
    if (result === undefined) {
      // The forward failed with the others: alone, an innocent image goes through.
      const [alone] = await detector.detectFacesSettled([image], filter);
      result = resultOf(image, alone);
      if (result === undefined && !alone.ok) {
        if (!lastAttempt) throw alone.error;
        result = { image, error: oneLine(alone.error.message) };
      }
    }
    results.push(result as QueueResult);
  }
  return results;
}

/** Runs until SIGTERM/SIGINT (or the queue is drained with `exitWhenDrained`); resolves to the exit code. */
export async function runWorker(opts: WorkerOptions, keys: StoreKeys): Promise<number> {
  const where = `queue ${opts.queue} at ${redactUrl(opts.redis.url)}`;
  // bullmq and ioredis are loaded by the commands that use them: the CLI's others start faster.
  const [{ Worker }, { Redis }] = await Promise.all([import('bullmq'), import('ioredis')]);
  const connection = bullConnection(opts.redis, true);
  const store = new Redis(opts.redis.url, redisOptions(opts.redis, true));
  let lastError = 0;
  const logError = (what: string) => (e: Error) => {
    // While Redis is down every connection reports each retry: one line per 10 s is enough.
    if (Date.now() - lastError < LOG_INTERVAL_MS) return;
    lastError = Date.now();
    opts.log(`img2pose worker: ${what}: ${oneLine(e.message)}`);
  };
  store.on('error', logError('redis'));

  const detectors = new DetectorCache((s) =>
    Img2Pose.load({
      weights: opts.weights,
      backend: opts.backend,
      batchSize: opts.batchSize,
      threads: opts.threads,
      minSize: s.minSize,
      maxSize: s.maxSize,
      scoreThreshold: s.scoreThreshold,
      maxFaces: s.maxFaces,
    }),
  );
  // Reach Redis and load the detector before taking work, so a wrong URL or password, bad
  // --weights or --backend end the worker at once (later, Redis outages are waited out).
  const once = await connectOnce(opts.redis);
  const queued = await loadSettings(once, keys).finally(() => once.disconnect());
  const probe = await detectors.get(queued ?? { ...DEFAULT_SETTINGS });

  let images = 0;
  let failedImages = 0;
  let lastLog = Date.now();
  const started = Date.now();
  const processor = async (job: Job<ChunkData>): Promise<{ images: number; failed: number }> => {
    const chunk = parseChunkData(job.data);
    const lastAttempt = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
    const detector = await detectors.get(chunk.settings);
    const results = await detectChunk(detector, chunk, lastAttempt);
    await saveResults(store, keys, results);
    const failed = results.filter((r) => 'error' in r).length;
    images += results.length;
    failedImages += failed;
    if (Date.now() - lastLog >= LOG_INTERVAL_MS) {
      lastLog = Date.now();
      const rate = images / ((Date.now() - started) / 1000);
      opts.log(`img2pose worker: ${images} images (${failedImages} failed), ${rate.toFixed(2)} images/s`);
    }
    return { images: results.length, failed };
  };

  const worker = new Worker<ChunkData>(opts.queue, processor, {
    connection,
    prefix: opts.prefix,
    // Shown by `queue status` and on each job (processedBy): which host and process has it.
    name: `${os.hostname()}:${process.pid}`,
    concurrency: opts.concurrency,
    lockDuration: opts.lockDurationMs,
    stalledInterval: opts.stalledIntervalMs,
    maxStalledCount: opts.maxStalledCount,
    autorun: false,
  });
  worker.on('error', logError('queue'));
  worker.on('failed', (job, e) => {
    if (job) opts.log(`img2pose worker: chunk ${job.id} attempt ${job.attemptsMade} failed: ${oneLine(e.message)}`);
  });

  let closing: Promise<void> | undefined;
  const close = (why: string): Promise<void> => {
    closing ??= (async () => {
      opts.log(`img2pose worker: ${why}, finishing the chunks in progress`);
      await worker.close();
    })();
    return closing;
  };
  const onSignal = (signal: NodeJS.Signals) => {
    // A second signal: stop now; the chunks in progress return to the queue after lockDuration.
    if (closing) process.exit(130);
    void close(signal);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  if (opts.exitWhenDrained) {
    void whenDrained(opts, connection, () => closing !== undefined).then(
      () => close('queue drained'),
      (e: Error) => logError('queue')(e),
    );
  }

  opts.log(`img2pose worker: ${probe.backend}, batch ${opts.batchSize}, concurrency ${opts.concurrency}, ${where}`);
  try {
    await worker.run();
    await closing;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    await detectors.dispose();
    store.disconnect();
  }
  opts.log(`img2pose worker: stopped after ${images} images (${failedImages} failed)`);
  return 0;
}

/** Resolves once the queue has no chunk waiting, delayed or in progress (polled: `drained` alone
 * says nothing of other workers' chunks, which may still fail and come back). */
async function whenDrained(opts: WorkerOptions, connection: object, stopped: () => boolean): Promise<void> {
  const { Queue } = await import('bullmq');
  const queue = new Queue(opts.queue, { connection, prefix: opts.prefix });
  queue.on('error', () => undefined);
  try {
    while (!stopped()) {
      await new Promise((r) => setTimeout(r, DRAIN_POLL_MS));
      const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'waiting-children');
      if (Object.values(counts).every((n) => n === 0)) return;
    }
  } finally {
    await queue.close();
  }
}
