/**
 * A throwaway redis-server for a test or a benchmark: its own loopback port and folder, never the system
 * service. `stop()` shuts it down (SIGTERM: Redis writes its append-only file first) and
 * `start()` brings it back on the same port and folder, for restart tests.
 */
import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as net from 'net';

export interface TestRedis {
  port: number;
  /** redis://[:password@]127.0.0.1:port */
  url: string;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface TestRedisOptions {
  /** Its working folder (append-only file, if `persist`). */
  dir: string;
  /** Keep data across restarts (append-only file, fsync'd at every write). */
  persist?: boolean;
  password?: string;
}

/** Whether redis-server is installed (`.ci/run` installs it). */
export function haveRedis(): boolean {
  return spawnSync('redis-server', ['--version']).status === 0;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Resolves once the server prints that it accepts connections; rejects after `ms`. */
function ready(proc: ChildProcess, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`redis-server not ready after ${ms} ms:\n${out}`)), ms);
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes('Ready to accept connections')) {
        clearTimeout(timer);
        proc.stdout?.off('data', onData);
        resolve();
      }
    };
    proc.stdout?.on('data', onData);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited (${code}):\n${out}`));
    });
  });
}

export async function startRedis(opts: TestRedisOptions): Promise<TestRedis> {
  const port = await freePort();
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', opts.dir, '--save', '', '--protected-mode', 'yes'];
  args.push(...(opts.persist ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']));
  if (opts.password) args.push('--requirepass', opts.password);
  let proc: ChildProcess | undefined;
  const auth = opts.password ? `:${encodeURIComponent(opts.password)}@` : '';
  const redis: TestRedis = {
    port,
    url: `redis://${auth}127.0.0.1:${port}`,
    async start() {
      proc = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      await ready(proc, 15_000);
    },
    async stop() {
      const p = proc;
      proc = undefined;
      if (!p || p.exitCode !== null) return;
      const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
      p.kill('SIGTERM');
      const timer = setTimeout(() => p.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
  await redis.start();
  return redis;
}
