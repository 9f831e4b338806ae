// The download's progress bar on a real terminal: `img2pose weights download` run in a
// pseudo-terminal (util-linux's `script`) draws the bar on stderr; the same command with stderr
// piped prints plain log lines and no bar. The release is served by a slow loopback server, so
// the bar has time to move.
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FORMULA_GAINS, formulaStateDict } from '../src/io/formula_weights';
import { TestServer, sendFile, startServer } from './utils/http_server';
import { releaseZip, torchZipCheckpoint } from './utils/release_zip';

const CLI = path.join(__dirname, '..', 'bin', 'img2pose.js');
const BAR = 'img2pose weights |';

let tmp: string;
let zip: Uint8Array;
let server: TestServer;

interface Run {
  code: number | null;
  /** stdout and stderr together (a terminal shows both). */
  output: string;
  stderr: string;
}

function run(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let output = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      output += d.toString();
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output, stderr });
    });
  });
}

/** Shell-quotes one argument for `script -c`. */
const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

beforeAll(async () => {
  if (spawnSync('script', ['--version']).status !== 0) {
    throw new Error("util-linux's `script` is needed for the terminal test (Debian: apt-get install bsdutils)");
  }
  if (!fs.existsSync(path.join(__dirname, '..', 'dist', 'src', 'cli.js'))) throw new Error('dist/ is missing: run `npm run build`');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-tty-'));
  zip = releaseZip({ checkpoint: torchZipCheckpoint(formulaStateDict()), poseMean: FORMULA_GAINS.POSE_MEAN, poseStddev: FORMULA_GAINS.POSE_STDDEV });
  // ~4 MB every 40 ms: a couple of seconds for the whole zip.
  server = await startServer((req, res) => sendFile(req, res, zip, { chunk: 4 << 20, delayMs: 40 }));
}, 120_000);

afterAll(async () => {
  await server?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

function download(): { args: string[]; folder: string; env: NodeJS.ProcessEnv } {
  const cacheDir = fs.mkdtempSync(path.join(tmp, 'cache-'));
  const env = { ...process.env, IMG2POSE_CACHE: cacheDir, IMG2POSE_WEIGHTS_URL: `${server.base}/img2pose_v1.zip`, NO_COLOR: '1' };
  return { args: [CLI, 'weights', 'download'], folder: path.join(cacheDir, 'img2pose_v1'), env };
}

test('on a terminal: the download draws a progress bar on stderr that reaches the zip size, then the weights are cached', async () => {
  const { args, folder, env } = download();
  const r = await run('script', ['-qfec', [process.execPath, ...args].map(quote).join(' '), '/dev/null'], env);
  expect(r.code).toBe(0);
  expect(r.stderr).toBe(''); // everything the command wrote came through the terminal
  const screen = r.output;
  expect(screen).toContain(BAR);
  // Redrawn in place (carriage returns / cursor movement, cursor hidden while it runs) ...
  expect(screen).toContain('\x1b[?25l');
  const megabytes = Math.ceil(zip.length / 1e6);
  const frames = [...screen.matchAll(/img2pose weights \|[^|]*\| (\d+)% (\d+)\/(\d+) MB/g)];
  expect(frames.length).toBeGreaterThan(1);
  for (const f of frames) expect(Number(f[3])).toBe(megabytes);
  // ... moving from the start ...
  expect(Number(frames[0][2])).toBeLessThan(megabytes);
  // ... to the whole zip: the last frame is full.
  const last = frames[frames.length - 1];
  expect([last[1], Number(last[2])]).toEqual(['100', megabytes]);
  expect(screen).toContain('converting the checkpoint');
  expect(screen).toContain(folder);
  expect(fs.existsSync(path.join(folder, 'model.json'))).toBe(true);
}, 240_000);

test('stderr not a terminal: no bar and no terminal control codes, only log lines', async () => {
  const { args, folder, env } = download();
  const r = await run(process.execPath, args, env);
  expect(r.code).toBe(0);
  expect(r.stderr).not.toContain(BAR);
  expect(r.stderr).not.toContain('\x1b[');
  expect(r.stderr).not.toContain('\r');
  const lines = r.stderr.trim().split('\n');
  expect(lines.every((l) => l.startsWith('img2pose: '))).toBe(true);
  expect(r.stderr).toContain('converting the checkpoint');
  expect(r.stderr).toContain(`the weights are cached in ${folder}`);
  expect(r.output).toContain(folder);
  expect(fs.existsSync(path.join(folder, 'model.json'))).toBe(true);

  // The cache it made, managed from the command line: path, verify, a damaged file, clear.
  const weights = (...more: string[]) => run(process.execPath, [CLI, 'weights', ...more], env);
  expect(await weights('path')).toMatchObject({ code: 0, output: `${folder}\n`, stderr: '' });
  const ok = await weights('verify');
  expect(ok.code).toBe(0);
  expect(ok.output.startsWith(`${folder}: ok (`)).toBe(true);
  expect(ok.output).toMatch(/ files; checkpoint .* sha256 [0-9a-f]{64}; downloaded .* from http:\/\/127\.0\.0\.1:/);
  const shard = fs.readdirSync(folder).find((f) => f.endsWith('.bin')) as string;
  const bytes = fs.readFileSync(path.join(folder, shard));
  bytes[100] ^= 1;
  fs.writeFileSync(path.join(folder, shard), bytes);
  const damaged = await weights('verify');
  expect(damaged.code).toBe(1);
  expect(damaged.stderr.trim().split('\n')).toHaveLength(1);
  expect(damaged.stderr).toContain(shard);
  const cleared = await weights('clear');
  expect(cleared.code).toBe(0);
  expect(cleared.output).toContain(`removed ${folder}`);
  expect(fs.existsSync(folder)).toBe(false);
}, 240_000);
