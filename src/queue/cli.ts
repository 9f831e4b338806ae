/**
 * The queue's command line: `img2pose queue add|status|results|clear` and `img2pose worker`,
 * registered on the main program by src/cli.ts.
 */
import { Command, Option } from 'commander';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { BACKEND_CHOICES, BackendChoice } from '../runtime/backend';
import { DEFAULT_OPTIONS } from '../detector';
import { OptionError } from '../errors';
import { ChunkData, DEFAULT_ATTEMPTS, DEFAULT_CHUNK_SIZE, collectImages, enqueueImages } from './add';
import { RedisSettings, bullConnection, connectOnce, redisUrl } from './connection';
import { formatStatus, queueStatus, writeResults } from './status';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, QueueSettings, StoreKeys, fixSettings, sameSettings, storeKeys } from './store';
import { DEFAULT_LOCK_DURATION_MS, DEFAULT_MAX_STALLED, DEFAULT_STALLED_INTERVAL_MS, runWorker } from './worker';

/** What the queue commands take from the main command line. */
export interface QueueCliContext {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  setExit: (code: number) => void;
  /** Folder -> its image files, as `detect` expands folders. */
  expandInputs: (inputs: readonly string[]) => Promise<string[]>;
  parse: {
    positiveInt: (v: string) => number;
    unitInterval: (v: string) => number;
    maxFaces: (v: string) => number;
    threads: (v: string) => number | 'auto';
  };
}

interface RedisCliOptions {
  redis?: string;
  queue: string;
  prefix: string;
  redisTlsCa?: string;
  redisTlsCert?: string;
  redisTlsKey?: string;
}

function withRedis(cmd: Command): Command {
  return cmd
    .option('--redis <url>', 'Redis URL, redis://[user:password@]host:port[/db] or rediss:// for TLS (default: $REDIS_URL)')
    .option('--queue <name>', 'queue name', DEFAULT_QUEUE)
    .option('--prefix <p>', 'Redis key prefix of the queue', DEFAULT_PREFIX)
    .option('--redis-tls-ca <pem>', 'CA certificate for a TLS Redis')
    .option('--redis-tls-cert <pem>', 'client certificate for mutual TLS')
    .option('--redis-tls-key <pem>', 'client key for mutual TLS');
}

function redisSettings(o: RedisCliOptions): RedisSettings {
  return { url: redisUrl(o.redis), tlsCa: o.redisTlsCa, tlsCert: o.redisTlsCert, tlsKey: o.redisTlsKey };
}

/** A one-shot session: a BullMQ queue handle and a plain client, both closed after `fn`. */
async function withQueue<T>(o: RedisCliOptions, fn: (queue: Queue<ChunkData>, redis: Redis, keys: StoreKeys) => Promise<T>): Promise<T> {
  const settings = redisSettings(o);
  const redis = await connectOnce(settings);
  const { Queue } = await import('bullmq');
  const queue = new Queue<ChunkData>(o.queue, { connection: bullConnection(settings, false), prefix: o.prefix });
  let queueError: Error | undefined;
  queue.on('error', (e) => {
    queueError ??= e;
  });
  try {
    return await fn(queue, redis, storeKeys(o.queue, o.prefix));
  } catch (e) {
    throw queueError && !(e instanceof OptionError) ? new Error(`${(e as Error).message} (Redis: ${queueError.message})`) : e;
  } finally {
    await queue.close().catch(() => undefined);
    redis.disconnect();
  }
}

interface AddCliOptions extends RedisCliOptions {
  chunkSize: number;
  attempts: number;
  threshold: number;
  maxFaces: number;
  minSize: number;
  maxSize: number;
}

interface WorkerCliOptions extends RedisCliOptions {
  weights: string;
  backend: BackendChoice;
  batchSize: number;
  concurrency: number;
  threads: number | 'auto';
  lockDuration: number;
  stalledInterval: number;
  maxStalled: number;
  exitWhenDrained?: boolean;
}

export function registerQueueCommands(program: Command, ctx: QueueCliContext): void {
  const p = ctx.parse;
  const queue = program.command('queue').description('a distributed run on a Redis queue (BullMQ): add images, watch, collect results');

  withRedis(
    queue
      .command('add')
      .description('enqueue images (files, folders, or .txt lists of paths) in chunks; images already enqueued are skipped')
      .argument('<inputs...>', 'image files, folders, or .txt files listing one path a line'),
  )
    .option('--chunk-size <n>', 'images per job', p.positiveInt, DEFAULT_CHUNK_SIZE)
    .option('--attempts <n>', 'tries of a chunk whose detection fails (not for bad images, which fail alone)', p.positiveInt, DEFAULT_ATTEMPTS)
    .option('--threshold <t>', 'minimum confidence, 0..1', p.unitInterval, DEFAULT_OPTIONS.scoreThreshold)
    .option('--max-faces <n>', 'keep the n most confident faces per image (-1: all)', p.maxFaces, DEFAULT_OPTIONS.maxFaces)
    .option('--min-size <n>', 'shorter side is resized to this', p.positiveInt, DEFAULT_OPTIONS.minSize)
    .option('--max-size <n>', 'unless the longer side would exceed this', p.positiveInt, DEFAULT_OPTIONS.maxSize)
    .action(async (inputs: string[], o: AddCliOptions) => {
      if (o.minSize > o.maxSize) throw new OptionError('--min-size', `at most --max-size (${o.maxSize})`, o.minSize);
      const images = await collectImages(inputs, (dir) => ctx.expandInputs([dir]));
      if (images.length === 0) throw new OptionError('inputs', 'at least one image', inputs.join(', '));
      const wanted: QueueSettings = { scoreThreshold: o.threshold, maxFaces: o.maxFaces, minSize: o.minSize, maxSize: o.maxSize };
      const summary = await withQueue(o, async (q, redis, keys) => {
        const settings = await fixSettings(redis, keys, wanted);
        if (!sameSettings(settings, wanted)) {
          throw new OptionError(
            'detection settings',
            `those of the queue's first images (threshold ${settings.scoreThreshold}, max faces ${settings.maxFaces}, ` +
              `min size ${settings.minSize}, max size ${settings.maxSize}) or another --queue`,
            `threshold ${wanted.scoreThreshold}, max faces ${wanted.maxFaces}, min size ${wanted.minSize}, max size ${wanted.maxSize}`,
          );
        }
        return enqueueImages(q, redis, keys, images, settings, o.chunkSize, o.attempts);
      });
      ctx.stdout(
        `queued ${summary.added} images in ${summary.jobs} chunks on ${o.queue}` +
          (summary.skipped > 0 ? ` (${summary.skipped} already queued, skipped)` : '') +
          '\n',
      );
      ctx.setExit(0);
    });

  withRedis(queue.command('status').description('progress: done, failed (with reasons), in flight, rate'))
    .option('--json', 'print the status as JSON')
    .action(async (o: RedisCliOptions & { json?: boolean }) => {
      const status = await withQueue(o, (q, redis, keys) => queueStatus(q, redis, keys));
      ctx.stdout(o.json ? `${JSON.stringify(status, null, 2)}\n` : formatStatus(status));
      ctx.setExit(0);
    });

  withRedis(queue.command('results').description("every image's result, one JSON line per image, each image once"))
    .option('--jsonl <file>', 'write to this file (default: stdout)')
    .action(async (o: RedisCliOptions & { jsonl?: string }) => {
      const n = await withQueue(o, (_q, redis, keys) => writeResults(redis, keys, o.jsonl, ctx.stdout));
      if (o.jsonl) ctx.stderr(`img2pose: wrote ${n} results to ${o.jsonl}\n`);
      ctx.setExit(0);
    });

  withRedis(queue.command('clear').description('delete the queue: its jobs, results and settings'))
    .requiredOption('--yes', 'confirm')
    .action(async (o: RedisCliOptions) => {
      await withQueue(o, async (q, redis, keys) => {
        await q.obliterate({ force: true });
        await redis.del(keys.images, keys.results, keys.failed, keys.settings, keys.started);
      });
      ctx.stdout(`cleared ${o.queue}\n`);
      ctx.setExit(0);
    });

  withRedis(program.command('worker').description('detect the queued images on this host until stopped (SIGTERM/SIGINT finish the chunks in progress)'))
    .requiredOption('--weights <path>', 'converted weights folder or .pth checkpoint')
    .addOption(new Option('--backend <b>', 'compute backend').choices(BACKEND_CHOICES).default('auto'))
    .option('--batch-size <k>', 'images per forward pass', p.positiveInt, DEFAULT_OPTIONS.batchSize)
    .option('--concurrency <n>', 'chunks in progress at once (forwards still run one at a time)', p.positiveInt, 1)
    .option('--threads <n>', "CPU threads a batch may use ('auto': IMG2POSE_THREADS or the cores; 1: none)", p.threads, 'auto')
    .option('--lock-duration <ms>', "a dead worker's chunks return to the queue after this", p.positiveInt, DEFAULT_LOCK_DURATION_MS)
    .option('--stalled-interval <ms>', "how often to look for dead workers' chunks", p.positiveInt, DEFAULT_STALLED_INTERVAL_MS)
    .option('--max-stalled <n>', 'times a chunk may lose its worker before it is failed', p.positiveInt, DEFAULT_MAX_STALLED)
    .option('--exit-when-drained', 'stop once no chunk is waiting or in progress')
    .action(async (o: WorkerCliOptions) => {
      const redis = redisSettings(o);
      const code = await runWorker(
        {
          redis,
          queue: o.queue,
          prefix: o.prefix,
          weights: o.weights,
          backend: o.backend,
          batchSize: o.batchSize,
          concurrency: o.concurrency,
          threads: o.threads,
          lockDurationMs: o.lockDuration,
          stalledIntervalMs: o.stalledInterval,
          maxStalledCount: o.maxStalled,
          exitWhenDrained: o.exitWhenDrained === true,
          log: (line) => ctx.stderr(`${line}\n`),
        },
        storeKeys(o.queue, o.prefix),
      );
      ctx.setExit(code);
    });
}

