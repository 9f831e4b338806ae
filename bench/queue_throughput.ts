/**
 * Throughput of the Redis queue on this machine with 1 and 2 workers: a private redis-server on a
 * free loopback port, synthetic images, the formula weights, the wasm backend, one thread per
 * worker. images/s is counted from the first result to the last (worker start-up excluded).
 *
 *   npm run build && node dist/bench/queue_throughput.js [--images 48] [--min-size 160] [--max-size 288]
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command, InvalidArgumentError } from 'commander';
import { Redis } from 'ioredis';
import { main } from '../src/cli';
import { formulaWeights } from '../src/io/formula_weights';
import { storeKeys } from '../src/queue/store';
import { patternImage, pngBytes, writeWeightsFolder } from './reliability_cases';
import { startRedis } from './redis_server';

const BIN = path.join(__dirname, '..', '..', 'bin', 'img2pose.js');

async function measure(url: string, dir: string, weights: string, workers: number, n: number, sizes: string[]): Promise<number> {
  const queue = `bench${workers}`;
  const quiet = { stdout: () => undefined, stderr: (t: string) => void process.stderr.write(t) };
  await main(['node', 'img2pose', 'queue', 'add', path.join(dir, 'images'), '--redis', url, '--queue', queue, '--chunk-size', '4', ...sizes], quiet);
  const procs: ChildProcess[] = [];
  for (let i = 0; i < workers; i++) {
    const args = [BIN, 'worker', '--redis', url, '--queue', queue, '--weights', weights, '--backend', 'wasm', '--threads', '1', '--batch-size', '4', '--exit-when-drained'];
    procs.push(spawn(process.execPath, args, { stdio: 'ignore', env: { ...process.env, IMG2POSE_THREADS: '1' } }));
  }
  const redis = new Redis(url);
  const key = storeKeys(queue).results;
  let first = 0;
  let firstCount = 0;
  for (;;) {
    const count = await redis.hlen(key);
    if (count > 0 && first === 0) {
      first = Date.now();
      firstCount = count;
    }
    if (count >= n) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const seconds = (Date.now() - first) / 1000;
  redis.disconnect();
  await Promise.all(procs.map((p) => new Promise((r) => p.once('exit', r))));
  return (n - firstCount) / seconds;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`expected a positive integer, got ${v}`);
  return n;
}

async function run(): Promise<void> {
  const { images: n, minSize, maxSize } = new Command('queue_throughput')
    .description('images/s of the Redis queue with 1 and 2 workers (wasm, one thread each)')
    .option('--images <n>', 'synthetic images to queue', positiveInt, 48)
    .option('--min-size <n>', 'input transform min size', positiveInt, 160)
    .option('--max-size <n>', 'input transform max size', positiveInt, 288)
    .parse(process.argv)
    .opts<{ images: number; minSize: number; maxSize: number }>();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-queue-bench-'));
  const redis = await startRedis({ dir });
  try {
    fs.mkdirSync(path.join(dir, 'images'));
    for (let i = 0; i < n; i++) {
      const file = path.join(dir, 'images', `${String(i).padStart(4, '0')}.png`);
      fs.writeFileSync(file, await pngBytes(patternImage(320 + ((i * 37) % 160), 240 + ((i * 53) % 160), i)));
    }
    const weights = path.join(dir, 'weights');
    await writeWeightsFolder(formulaWeights(), weights);
    const sizes = ['--min-size', String(minSize), '--max-size', String(maxSize)];
    const load = os.loadavg()[0].toFixed(1);
    for (const workers of [1, 2]) {
      const rate = await measure(redis.url, dir, weights, workers, n, sizes);
      console.log(`${workers} worker(s): ${rate.toFixed(2)} images/s (${n} images, ${minSize}/${maxSize}, ${os.cpus().length} cores, load ${load})`);
    }
  } finally {
    await redis.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

run().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
