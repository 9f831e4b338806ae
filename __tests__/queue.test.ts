/**
 * The distributed mode on a real Redis (redis-server started here on a loopback port of its own)
 * with real worker processes (`bin/img2pose.js worker`, the compiled build) running the real
 * network: the formula weights as a converted folder, tiny synthetic images at tiny sizes.
 *
 * - 3 workers on 300 images (and 2 bad files), one killed with SIGKILL while it holds a chunk:
 *   every image ends with exactly one result, equal to a local `img2pose detect` run;
 * - Redis restarted mid-run (with a password, and a .txt list as input): the workers reconnect
 *   and finish, every image once, equal to the local run;
 * - add is idempotent, settings are fixed per queue, status and results say what happened;
 * - a wrong password or an unreachable Redis is one line and exit code 1, the password not shown.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Job, Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { runCli } from './utils/cli';
import { redactUrl, redisOptions, redisUrl, tlsOptions } from '../src/queue/connection';
import { parseChunkData } from '../src/queue/add';
import { QueueStatus } from '../src/queue/status';
import { storeKeys } from '../src/queue/store';
import { disposeWeights } from '../src/model/weights';
import { patternImage, pngBytes, writeWeightsFolder } from '../bench/reliability_cases';
import { formulaWeights } from './utils/formula';
import { TestRedis, haveRedis, startRedis } from '../bench/redis_server';

const REPO = path.join(__dirname, '..');
const BIN = path.join(REPO, 'bin', 'img2pose.js');
/** Detection settings of every run here: tiny inputs keep a forward around 0.2 s on one core. */
const SETTINGS = ['--threshold', '0', '--max-faces', '3', '--min-size', '32', '--max-size', '32'];
const IMAGES = 300;

// On CI redis-server must be there (.ci/run installs it): the tests then fail rather than skip.
const describeRedis = haveRedis() || process.env.CI ? describe : describe.skip;
if (!haveRedis()) {
  // Skipping silently would hide a missing install: say it (.ci/run installs redis-server).
  process.stderr.write('queue.test.ts: redis-server is not installed; apt-get install redis-server\n');
}

let tmp: string;
let weightsDir: string;
let images: string[];
let bad: string[];
/** image -> its line of the local run (`detect --json`). */
let local: Map<string, string>;
const children = new Set<ChildProcess>();
const servers: TestRedis[] = [];

interface WorkerProcess {
  proc: ChildProcess;
  stderr: () => string;
  exited: Promise<number | null>;
}

function spawnWorker(url: string, queue: string, extra: string[] = []): WorkerProcess {
  const args = [BIN, 'worker', '--redis', url, '--queue', queue, '--weights', weightsDir, '--backend', 'wasm'];
  // Batches of 2 keep each synchronous stretch of wasm work (no lock renewal meanwhile) short.
  args.push('--threads', '1', '--batch-size', '2', '--lock-duration', '15000', '--stalled-interval', '2000', '--exit-when-drained', ...extra);
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, IMG2POSE_THREADS: '1' } });
  children.add(proc);
  let err = '';
  proc.stderr?.on('data', (c: Buffer) => void (err += c.toString()));
  const exited = new Promise<number | null>((resolve) =>
    proc.once('exit', (code) => {
      children.delete(proc);
      resolve(code);
    }),
  );
  return { proc, stderr: () => err, exited };
}

/** Polls `check` every 200 ms until it holds; fails after `ms` with `what`. */
async function until(what: string, ms: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Bounded wait for a process to exit. */
async function exitOf(w: WorkerProcess, ms: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`worker did not exit within ${ms} ms:\n${w.stderr()}`)), ms);
  });
  try {
    return await Promise.race([w.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Every result of a queue, by image; fails on a line given twice. */
async function results(url: string, queue: string): Promise<Map<string, string>> {
  const r = await runCli(['queue', 'results', '--redis', url, '--queue', queue]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const out = new Map<string, string>();
  for (const line of r.stdout.split('\n').filter((l) => l)) {
    const { image } = JSON.parse(line) as { image: string };
    expect(out.has(image)).toBe(false);
    out.set(image, line);
  }
  return out;
}

async function status(url: string, queue: string): Promise<QueueStatus> {
  const r = await runCli(['queue', 'status', '--redis', url, '--queue', queue, '--json']);
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as QueueStatus;
}

/**
 * The queue's results equal the local run's lines for `expected` images, nothing else. Errors
 * match but for the input's position, which a local run gives and a queue (by file) does not.
 */
function expectLocalResults(got: Map<string, string>, expected: readonly string[]): void {
  expect([...got.keys()].sort()).toEqual([...expected].sort());
  const unplaced = (line: string | undefined) => line?.replace(/Input #\d+ \((file [^)]*)\)/, 'Input $1');
  const differ = expected.filter((image) => got.get(image) !== unplaced(local.get(image)));
  expect(differ).toEqual([]);
}

beforeAll(async () => {
  if (!haveRedis() && !process.env.CI) return;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-queue-'));
  const dir = path.join(tmp, 'images');
  fs.mkdirSync(dir);
  images = [];
  for (let i = 0; i < IMAGES; i++) {
    const file = path.join(dir, `img${String(i).padStart(3, '0')}.png`);
    fs.writeFileSync(file, await pngBytes(patternImage(32 + ((i * 37) % 65), 32 + ((i * 53) % 65), i)));
    images.push(file);
  }
  bad = [path.join(dir, 'not_an_image.png'), path.join(dir, 'truncated.png')];
  fs.writeFileSync(bad[0], 'this is text, not a PNG');
  fs.writeFileSync(bad[1], fs.readFileSync(images[0]).subarray(0, 100));
  weightsDir = path.join(tmp, 'weights');
  const weights = formulaWeights();
  await writeWeightsFolder(weights, weightsDir);
  disposeWeights(weights);

  // The local run everything is compared with: `img2pose detect` with the same settings.
  const json = path.join(tmp, 'local.json');
  const r = await runCli(['detect', dir, '--weights', weightsDir, '--backend', 'wasm', '--threads', '1', ...SETTINGS, '--json', json]);
  expect(r.code).toBe(1); // the two bad files
  const lines = JSON.parse(fs.readFileSync(json, 'utf8')) as { image: string; error?: string }[];
  local = new Map(lines.map((l) => [l.image, JSON.stringify(l)]));
  expect(local.size).toBe(IMAGES + 2);
}, 600_000);

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const s of servers) await s.stop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('connection settings', () => {
  it('takes the URL from --redis or REDIS_URL and refuses anything but redis:// and rediss://', () => {
    expect(redisUrl('redis://127.0.0.1:1', {})).toBe('redis://127.0.0.1:1');
    expect(redisUrl(undefined, { REDIS_URL: 'rediss://u:p@h:6380/2' })).toBe('rediss://u:p@h:6380/2');
    expect(() => redisUrl(undefined, {})).toThrow(/REDIS_URL/);
    expect(() => redisUrl('http://h:1', {})).toThrow(/redis:\/\/ or rediss:\/\//);
    expect(() => redisUrl('redis://u:s3cret@h:1 2', {})).toThrow(/^(?!.*s3cret)/);
  });

  it('redacts the password', () => {
    expect(redactUrl('redis://:s3cret@h:6379/0')).toBe('redis://:***@h:6379/0');
    expect(redactUrl('rediss://user:s3cret@h:6380')).toBe('rediss://user:***@h:6380');
    expect(redactUrl('redis://h:6379')).toBe('redis://h:6379');
  });

  it('TLS files: read, both or neither of cert and key, a missing file named', () => {
    const ca = path.join(os.tmpdir(), `img2pose-ca-${process.pid}.pem`);
    fs.writeFileSync(ca, 'PEM');
    try {
      expect(tlsOptions({ url: 'rediss://h', tlsCa: ca })).toEqual({ ca: Buffer.from('PEM') });
      expect(tlsOptions({ url: 'rediss://h' })).toBeUndefined();
      expect(() => tlsOptions({ url: 'rediss://h', tlsCert: ca })).toThrow(/both or neither/);
      expect(() => tlsOptions({ url: 'rediss://h', tlsCa: '/nonexistent.pem' })).toThrow(/nonexistent\.pem \(ENOENT\)/);
      expect(redisOptions({ url: 'rediss://h', tlsCa: ca }, true).tls).toEqual({ ca: Buffer.from('PEM') });
    } finally {
      fs.rmSync(ca);
    }
  });

  it('workers retry for ever; one-shot commands give up', () => {
    const worker = redisOptions({ url: 'redis://h' }, true);
    const once = redisOptions({ url: 'redis://h' }, false);
    expect(worker.maxRetriesPerRequest).toBeNull();
    expect(worker.retryStrategy(1000)).toBe(5000);
    expect(once.retryStrategy(10)).toBeNull();
  });

  it('job data is checked', () => {
    const settings = { scoreThreshold: 0.5, maxFaces: -1, minSize: 640, maxSize: 1400 };
    expect(parseChunkData({ images: ['/a.png'], settings })).toEqual({ images: ['/a.png'], settings });
    expect(() => parseChunkData({ images: [1], settings })).toThrow(/not an img2pose chunk/);
    expect(() => parseChunkData({ images: [], settings: { ...settings, minSize: 'x' } })).toThrow(/not an img2pose chunk/);
    expect(() => parseChunkData(null)).toThrow(/not an img2pose chunk/);
  });
});

describeRedis('a real Redis', () => {
  it('3 workers, one killed with SIGKILL while it holds a chunk: every image once, equal to the local run', async () => {
    const redis = await startRedis({ dir: tmp });
    servers.push(redis);
    const q = 'kill';
    const add = await runCli([
      'queue',
      'add',
      path.dirname(images[0]),
      '--redis',
      redis.url,
      '--queue',
      q,
      '--chunk-size',
      '10',
      ...SETTINGS,
    ]);
    expect(add.stderr).toBe('');
    expect(add.stdout).toBe(`queued ${IMAGES + 2} images in 31 chunks on ${q}\n`);
    // Adding again queues nothing; other settings on the same queue are refused.
    const again = await runCli(['queue', 'add', ...images.slice(0, 5), '--redis', redis.url, '--queue', q, ...SETTINGS]);
    expect(again.stdout).toBe(`queued 0 images in 0 chunks on ${q} (5 already queued, skipped)\n`);
    const other = await runCli(['queue', 'add', images[0], '--redis', redis.url, '--queue', q, '--threshold', '0.5']);
    expect(other.code).toBe(2);
    expect(other.stderr).toMatch(/detection settings: expected those of the queue's first images \(threshold 0,/);

    const workers = [0, 1, 2].map(() => spawnWorker(redis.url, q));
    const queue = new Queue(q, { connection: { url: redis.url } });
    const events = new QueueEvents(q, { connection: { url: redis.url } });
    const stalled = new Set<string>();
    events.on('stalled', ({ jobId }) => void stalled.add(jobId));
    const store = new Redis(redis.url);
    const keys = storeKeys(q);
    try {
      await events.waitUntilReady();
      // Kill worker 0 once some results are in, just after it took a chunk (a chunk takes
      // seconds, so it dies with the chunk unfinished).
      const victim = `${os.hostname()}:${workers[0].proc.pid}`;
      let held: Job | undefined;
      await until('worker 0 to take a chunk after the first results', 240_000, async () => {
        if ((await store.hlen(keys.results)) < 20) return false;
        const active = await queue.getJobs(['active']);
        held = active.find((j) => j?.processedBy === victim && Date.now() - (j.processedOn ?? 0) < 1000);
        return held !== undefined;
      });
      workers[0].proc.kill('SIGKILL');
      expect(await exitOf(workers[0], 10_000)).toBeNull();

      // The others take its chunk over after the lock expires, and stop once all is done.
      expect(await exitOf(workers[1], 400_000)).toBe(0);
      expect(await exitOf(workers[2], 60_000)).toBe(0);
      expect(workers[1].stderr() + workers[2].stderr()).not.toMatch(/failed:/);
      // The killed worker's chunk was found stalled and done again by another.
      expect(stalled).toContain(String(held?.id));
    } finally {
      await events.close();
      await queue.close();
      store.disconnect();
    }

    expectLocalResults(await results(redis.url, q), [...images, ...bad]);
    const s = await status(redis.url, q);
    expect(s.images).toEqual({ total: IMAGES + 2, done: IMAGES + 2, failed: 2, inFlight: 0, waiting: 0 });
    expect(s.chunks).toEqual({ waiting: 0, active: 0, delayed: 0, failed: 0 });
    expect(s.failedReasons.map((r) => r.count)).toEqual([1, 1]);
    expect(s.failedReasons.map((r) => r.reason).join('\n')).toMatch(/not an image/);
    expect(s.rate).toBeGreaterThan(0);

    // The same as a file, written whole.
    const file = path.join(tmp, 'kill.jsonl');
    const r = await runCli(['queue', 'results', '--redis', redis.url, '--queue', q, '--jsonl', file]);
    expect(r.stderr).toBe(`img2pose: wrote ${IMAGES + 2} results to ${file}\n`);
    expect(fs.readFileSync(file, 'utf8').trim().split('\n')).toHaveLength(IMAGES + 2);
    const text = await runCli(['queue', 'status', '--redis', redis.url, '--queue', q]);
    expect(text.stdout).toMatch(new RegExp(`^queue kill: ${IMAGES + 2} of ${IMAGES + 2} images done \\(100\\.0%\\), 2 failed, 0 in flight, 0 waiting\n`));
  }, 600_000);

  it('Redis restarted mid-run: the workers reconnect and finish, every image once, equal to the local run', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'redis-'));
    const redis = await startRedis({ dir, persist: true, password: 'p@ss word' });
    servers.push(redis);
    const q = 'restart';
    const subset = images.slice(0, 30);
    const list = path.join(tmp, 'list.txt');
    fs.writeFileSync(list, `# images to do\n${subset.join('\n')}\n\n`);
    const add = await runCli(['queue', 'add', list, '--redis', redis.url, '--queue', q, '--chunk-size', '5', ...SETTINGS]);
    expect(add.stdout).toBe(`queued 30 images in 6 chunks on ${q}\n`);

    const workers = [0, 1].map(() => spawnWorker(redis.url, q));
    const store = new Redis(redis.url, { retryStrategy: () => 200, maxRetriesPerRequest: null });
    store.on('error', () => undefined);
    const keys = storeKeys(q);
    try {
      await until('the first results', 240_000, async () => (await store.hlen(keys.results)) >= 5);
      await redis.stop();
      await new Promise((r) => setTimeout(r, 3000));
      await redis.start();
      const atRestart = await store.hlen(keys.results);
      expect(atRestart).toBeLessThan(30);
      expect(await exitOf(workers[0], 400_000)).toBe(0);
      expect(await exitOf(workers[1], 60_000)).toBe(0);
    } finally {
      store.disconnect();
    }
    expectLocalResults(await results(redis.url, q), subset);
    expect((await status(redis.url, q)).images).toEqual({ total: 30, done: 30, failed: 0, inFlight: 0, waiting: 0 });
  }, 600_000);

  it('a wrong password or no Redis: one line, exit code 1, the password not shown', async () => {
    const redis = servers[servers.length - 1];
    const wrong = redis.url.replace(/:[^:@]*@/, ':n0tit@');
    const r = await runCli(['queue', 'status', '--redis', wrong]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^img2pose: cannot reach Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+: .*(WRONGPASS|invalid|password)/i);
    expect(r.stderr).not.toContain('n0tit');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);

    const started = Date.now();
    const none = await runCli(['queue', 'status', '--redis', 'redis://127.0.0.1:1']);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^img2pose: cannot reach Redis at redis:\/\/127\.0\.0\.1:1: /);
    expect(Date.now() - started).toBeLessThan(15_000);
  }, 60_000);
});
