// The official weights on first use, against a loopback server impersonating the Google Drive
// release: download, checks, in-process conversion, cache (lock, sha256 on every load), and
// what users get when the cache or the download is bad. The release zip holds the formula
// checkpoint written in torch's zip format, under the release's member names.
import { spawn } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { zipSync } from 'fflate';
import { Img2Pose } from '../src/detector';
import { WeightsError } from '../src/errors';
import { FORMULA_GAINS, formulaStateDict, writeFormulaWeights } from '../src/io/formula_weights';
import {
  CACHE_RECORD,
  CacheRecord,
  ReleaseEvent,
  ReleaseOptions,
  acquireLock,
  cacheRoot,
  clearReleaseCache,
  ensureReleaseWeights,
  installReleaseZip,
  releaseFolder,
} from '../src/io/weights_cache';
import { DRIVE_ID, TestServer, driveHandler, sendFile, startServer } from './utils/http_server';
import { releaseZip, torchZipCheckpoint } from './utils/release_zip';
import { goldenCase, imagePath } from './utils/golden';
import { rejectionOf } from './utils/rejection';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

let tmp: string;
let zip: Uint8Array;
let checkpointSha: string;
let formulaDir: string;
let drive: TestServer;
let driveUrl: string;
const servers: TestServer[] = [];

/** A fresh cache folder and options that download from `url`, recording what is reported. */
function cacheOptions(url: string, events: ReleaseEvent[] = [], log: string[] = []): ReleaseOptions {
  return {
    cacheDir: fs.mkdtempSync(path.join(tmp, 'cache-')),
    url,
    progress: (e) => events.push(e),
    log: (l) => log.push(l),
    download: { retryDelayMs: 10, idleTimeoutMs: 3000 },
  };
}

async function serve(handler: Parameters<typeof startServer>[0]): Promise<TestServer> {
  const s = await startServer(handler);
  servers.push(s);
  return s;
}

const rejection = (p: Promise<unknown>): Promise<WeightsError> => rejectionOf(p, WeightsError);

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-cache-test-'));
  const checkpoint = torchZipCheckpoint(formulaStateDict());
  checkpointSha = sha(checkpoint);
  zip = releaseZip({ checkpoint, poseMean: FORMULA_GAINS.POSE_MEAN, poseStddev: FORMULA_GAINS.POSE_STDDEV });
  formulaDir = path.join(tmp, 'formula');
  await writeFormulaWeights(formulaDir);
  drive = await serve(driveHandler(() => zip, 'form'));
  driveUrl = `${drive.base}/uc?export=download&id=${DRIVE_ID}`;
});

afterAll(async () => {
  for (const s of servers) await s.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('first and second load', () => {
  let options: ReleaseOptions;
  let folder: string;
  const events: ReleaseEvent[] = [];
  const log: string[] = [];

  beforeAll(async () => {
    options = cacheOptions(driveUrl, events, log);
    folder = await ensureReleaseWeights(options);
  });

  it('downloads through the confirmation page, converts and caches, reporting progress and the licence', () => {
    expect(folder).toBe(path.join(options.cacheDir as string, 'img2pose_v1'));
    expect(drive.requests.filter((r) => r.path.includes('confirm=t'))).toHaveLength(1);
    const downloads = events.filter((e): e is Extract<ReleaseEvent, { phase: 'download' }> => e.phase === 'download');
    expect(downloads.length).toBeGreaterThan(10);
    expect(downloads[downloads.length - 1]).toMatchObject({ received: zip.length, total: zip.length });
    expect(events.slice(-2)).toEqual([{ phase: 'convert' }, { phase: 'done', folder }]);
    expect(log[0]).toContain(driveUrl);
    expect(log[0]).toContain('CC BY-NC 4.0');
    // nothing left behind but the converted folder and its lock's place
    expect(fs.readdirSync(options.cacheDir as string).sort()).toEqual(['downloads', 'img2pose_v1']);
    expect(fs.readdirSync(path.join(options.cacheDir as string, 'downloads'))).toEqual([]);
  });

  it('caches exactly the formula weights: shards byte-identical to the formula folder, statistics from the .npy members', () => {
    const json = JSON.parse(fs.readFileSync(path.join(folder, 'model.json'), 'utf8'));
    const want = JSON.parse(fs.readFileSync(path.join(formulaDir, 'model.json'), 'utf8'));
    expect(json.weightsManifest).toEqual(want.weightsManifest);
    for (const shard of json.weightsManifest[0].paths as string[]) {
      expect(sha(fs.readFileSync(path.join(folder, shard)))).toBe(sha(fs.readFileSync(path.join(formulaDir, shard))));
    }
    expect(json.img2pose.poseMean).toEqual(FORMULA_GAINS.POSE_MEAN);
    expect(json.img2pose.poseStddev).toEqual(FORMULA_GAINS.POSE_STDDEV);
    expect(json.img2pose.poseStatistics).toEqual({ mean: 'pose_mean.npy', stddev: 'pose_stddev.npy' });
  });

  it("records the checkpoint's and every file's sha256", () => {
    const record = JSON.parse(fs.readFileSync(path.join(folder, CACHE_RECORD), 'utf8')) as CacheRecord;
    expect(record.checkpoint).toEqual({ member: 'models/img2pose_v1.pth', bytes: expect.any(Number), sha256: checkpointSha });
    expect(record.source.zip).toEqual({ bytes: zip.length, sha256: sha(zip) });
    expect(record.source.url).toBe(driveUrl);
    expect(record.source.downloadedFrom).toContain('confirm=t');
    expect(Object.keys(record.files)).toHaveLength(42); // model.json + 41 shards
    expect(record.files['group1-shard3of41.bin'].sha256).toBe(sha(fs.readFileSync(path.join(folder, 'group1-shard3of41.bin'))));
  });

  it('the second load uses the cache: no request, quick', async () => {
    const before = drive.requests.length;
    const started = Date.now();
    expect(await ensureReleaseWeights(options)).toBe(folder);
    // reading and hashing the 170 MB once (~0.3 s when the machine is idle), nothing else
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(drive.requests.length).toBe(before);
  });

  it('Img2Pose.load() with no weights named detects with the cached release (golden tiny teaser)', async () => {
    const detector = await Img2Pose.load({ release: options, backend: 'wasm', threads: 1, minSize: 160, maxSize: 288 });
    try {
      const faces = await detector.detectFaces(imagePath('teaser.png'));
      const expected = goldenCase('tiny_teaser')['faces_t0.5']!;
      expect(expected.length).toBeGreaterThan(0);
      expect(faces).toHaveLength(expected.length);
      faces.forEach((f, i) => {
        f.box.forEach((v, k) => expect(Math.abs(v - expected[i].box[k])).toBeLessThanOrEqual(1));
        expect(Math.abs(f.confidence - expected[i].confidence)).toBeLessThanOrEqual(1e-3);
      });
    } finally {
      await detector.dispose();
    }
  });

  describe('a damaged cache fails clearly, at every load', () => {
    function damagedCopy(damage: (dir: string) => void): ReleaseOptions {
      const copy = { ...options, cacheDir: fs.mkdtempSync(path.join(tmp, 'damaged-')) };
      fs.cpSync(folder, releaseFolder(copy), { recursive: true });
      damage(releaseFolder(copy));
      return copy;
    }

    it('a flipped byte in a shard', async () => {
      const copy = damagedCopy((dir) => {
        const f = path.join(dir, 'group1-shard7of41.bin');
        const b = fs.readFileSync(f);
        b[1000] ^= 1;
        fs.writeFileSync(f, b);
      });
      const before = drive.requests.length;
      const e = await rejection(ensureReleaseWeights(copy));
      expect(e.message).toMatch(/^The cached weights in .*img2pose_v1 are damaged: group1-shard7of41\.bin has sha256 [0-9a-f]{64}, [0-9a-f]{64} was written\. Remove it with `npx img2pose weights clear` --cache-dir .* and load again/);
      expect(e.message).toContain('weights install img2pose_v1.zip');
      expect(drive.requests.length).toBe(before); // no silent download over it
      const viaLoad = await rejection(Img2Pose.load({ release: copy, backend: 'wasm', threads: 1 }));
      expect(viaLoad.message).toBe(e.message);
    });

    it('a truncated shard, a missing record, a model.json from elsewhere', async () => {
      const truncated = damagedCopy((dir) => fs.truncateSync(path.join(dir, 'group1-shard41of41.bin'), 10));
      expect((await rejection(ensureReleaseWeights(truncated))).message).toMatch(/group1-shard41of41\.bin holds 10 bytes, \d+ were written/);
      const noRecord = damagedCopy((dir) => fs.rmSync(path.join(dir, CACHE_RECORD)));
      expect((await rejection(ensureReleaseWeights(noRecord))).message).toMatch(/damaged: its record img2pose-cache\.json is missing/);
      const swapped = damagedCopy((dir) => {
        fs.copyFileSync(path.join(formulaDir, 'model.json'), path.join(dir, 'model.json'));
        const record = JSON.parse(fs.readFileSync(path.join(dir, CACHE_RECORD), 'utf8')) as CacheRecord;
        const bytes = fs.readFileSync(path.join(dir, 'model.json'));
        record.files['model.json'] = { bytes: bytes.length, sha256: sha(bytes) };
        fs.writeFileSync(path.join(dir, CACHE_RECORD), JSON.stringify(record));
      });
      expect((await rejection(ensureReleaseWeights(swapped))).message).toMatch(/model\.json was converted from another checkpoint than the downloaded one/);
    });

    it('clear removes the cache (and a partial download); the next load downloads again', async () => {
      const closed = await startServer(() => undefined);
      await closed.close();
      const copy = { ...damagedCopy((dir) => fs.truncateSync(path.join(dir, 'group1-shard1of41.bin'), 0)), url: `${closed.base}/f` };
      const downloads = path.join(copy.cacheDir as string, 'downloads');
      fs.mkdirSync(downloads);
      fs.writeFileSync(path.join(downloads, 'img2pose_v1.zip.part'), 'partial');
      expect(await clearReleaseCache(copy)).toEqual([releaseFolder(copy), downloads]);
      expect(fs.readdirSync(copy.cacheDir as string)).toEqual([]);
      // (a closed port: the attempt shows it downloads rather than failing on the old cache)
      expect((await rejection(ensureReleaseWeights(copy))).message).toMatch(/^Cannot download the img2pose weights from .*: cannot connect \(ECONNREFUSED\)\. To install/);
    });
  });
});

describe('bad downloads', () => {
  it('an HTML page instead of the zip: the URL, what came, and the manual steps; nothing cached', async () => {
    const s = await serve((_req, res) => void res.writeHead(200, { 'content-type': 'text/html' }).end('<html><head><title>Google Drive - Quota exceeded</title></head></html>'));
    const o = cacheOptions(`${s.base}/uc?id=x`);
    const e = await rejection(ensureReleaseWeights(o));
    expect(e.message).toBe(
      `Cannot download the img2pose weights from ${s.base}/uc?id=x: the server sent an HTML page instead of the file ` +
        '(found: an HTML page (text/html, titled "Google Drive - Quota exceeded")). To install the weights by hand: download ' +
        'https://drive.google.com/file/d/1OvnZ7OUQFg2bAgFADhT7UnCkSaXst10O/view in a browser (img2pose_v1.zip, licence CC BY-NC 4.0 ' +
        '(non-commercial use only), by the img2pose authors), then run `npx img2pose weights install img2pose_v1.zip` --cache-dir ' +
        `${o.cacheDir}; or unzip it, run \`npx img2pose convert models/img2pose_v1.pth --pose-mean models/WIDER_train_pose_mean_v1.npy ` +
        '--pose-stddev models/WIDER_train_pose_stddev_v1.npy --out weights/img2pose_v1` and pass --weights weights/img2pose_v1 ' +
        '(Img2Pose.load({ weights: "weights/img2pose_v1" })).',
    );
    expect(fs.existsSync(releaseFolder(o))).toBe(false);
  });

  it('a truncated zip (the server said it was whole): refused as truncated, and deleted for the next attempt', async () => {
    const half = zip.subarray(0, zip.length >> 1);
    const s = await serve((req, res) => sendFile(req, res, half));
    const o = cacheOptions(`${s.base}/f`);
    const e = await rejection(ensureReleaseWeights(o));
    expect(e.message).toMatch(/downloads\/img2pose_v1\.zip: not the release zip: a zip archive without its end \(truncated download\); found a \d+-byte file beginning "PK\.\./);
    expect(fs.readdirSync(path.join(o.cacheDir as string, 'downloads'))).toEqual([]);
  });

  it('a zip without the release members: names what it holds', async () => {
    const other = zipSync({ 'README.txt': Buffer.from('hello'), 'models/other.pth': Buffer.from('x') });
    const s = await serve((req, res) => sendFile(req, res, other));
    const e = await rejection(ensureReleaseWeights(cacheOptions(`${s.base}/f`)));
    expect(e.message).toMatch(
      /: the zip lacks models\/img2pose_v1\.pth, models\/WIDER_train_pose_mean_v1\.npy, models\/WIDER_train_pose_stddev_v1\.npy \(it holds: README\.txt, models\/other\.pth\)\. To install/,
    );
  });

  it('a zip whose checkpoint is no checkpoint, and a damaged member', async () => {
    const fake = releaseZip({ checkpoint: Buffer.from('not a checkpoint at all'), poseMean: [0, 0, 0, 0, 0, 1], poseStddev: [1, 1, 1, 1, 1, 1] });
    let s = await serve((req, res) => sendFile(req, res, fake));
    expect((await rejection(ensureReleaseWeights(cacheOptions(`${s.base}/f`)))).message).toMatch(
      /: its checkpoint cannot be converted: not a PyTorch checkpoint: neither a torch\.save zip archive nor a legacy torch\.save pickle\. To install/,
    );
    const damaged = Buffer.from(zip);
    damaged[5_000_000] ^= 0xff; // inside the stored checkpoint
    s = await serve((req, res) => sendFile(req, res, damaged));
    expect((await rejection(ensureReleaseWeights(cacheOptions(`${s.base}/f`)))).message).toMatch(
      /a damaged zip: member models\/img2pose_v1\.pth is corrupt \(\d+ bytes, CRC-32 [0-9a-f]+; expected \d+ bytes, CRC-32 [0-9a-f]+\)/,
    );
  });

  it('a zip of another sha256 than the one asked for', async () => {
    const o = { ...cacheOptions(driveUrl), sha256: '0'.repeat(64) };
    expect((await rejection(ensureReleaseWeights(o))).message).toMatch(new RegExp(`: sha256 ${sha(zip)} is not the expected 0{64}`));
  });

  it('a 404 and no server at all: fail at once (under a second) with the URL and the manual steps', async () => {
    const s = await serve((_req, res) => void res.writeHead(404).end());
    const e404 = await rejection(ensureReleaseWeights(cacheOptions(`${s.base}/gone`)));
    expect(e404.message).toMatch(new RegExp(`^Cannot download the img2pose weights from ${s.base}/gone: HTTP 404 Not Found \\(found: HTTP 404\\)\\. To install the weights by hand`));

    const closed = await startServer(() => undefined);
    await closed.close();
    const started = Date.now();
    const e = await rejection(ensureReleaseWeights(cacheOptions(`${closed.base}/uc?id=x`)));
    expect(Date.now() - started).toBeLessThan(1000);
    expect(e.message).toMatch(new RegExp(`^Cannot download the img2pose weights from ${closed.base}/uc\\?id=x: cannot connect \\(ECONNREFUSED\\)\\. To install the weights by hand: download https://drive\\.google\\.com/`));
  });

  it('a download cut short resumes at the next load', async () => {
    // The connection breaks mid-file, then the server fails (503) until the next load.
    let calls = 0;
    const s = await serve((req, res) => {
      const call = calls++;
      if (call === 1) return void res.writeHead(503).end();
      return sendFile(req, res, zip, call === 0 ? { dropAfter: 50_000_000 } : {});
    });
    const o = { ...cacheOptions(`${s.base}/f`), download: { retries: 0, retryDelayMs: 10, idleTimeoutMs: 3000 } };
    const e = await rejection(ensureReleaseWeights(o));
    expect(e.message).toMatch(/: HTTP 503 Service Unavailable \(gave up after 1 failed attempt in a row\) \(found: HTTP 503\)\. Loading again resumes the download\./);
    await ensureReleaseWeights(o);
    const ranges = s.requests.map((r) => r.range);
    expect(ranges).toEqual([undefined, expect.stringMatching(/^bytes=\d{7,}-$/), ranges[1]]);
  });
});

describe('concurrent first loads', () => {
  const script = (cacheDir: string, url: string): string =>
    `require(${JSON.stringify(path.join(__dirname, '..', 'dist', 'src', 'io', 'weights_cache.js'))})` +
    `.ensureReleaseWeights({ cacheDir: ${JSON.stringify(cacheDir)}, url: ${JSON.stringify(url)}, progress: false })` +
    '.then((f) => process.stdout.write(f), (e) => { process.stderr.write(String(e && e.message)); process.exitCode = 1; })';

  function run(code: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  it('two processes: one downloads and converts, the other waits and finds the cache ready', async () => {
    // Slow enough that the second process arrives while the first holds the lock.
    const s = await serve((req, res) => sendFile(req, res, zip, { chunk: 4 << 20, delayMs: 40 }));
    const cacheDir = fs.mkdtempSync(path.join(tmp, 'shared-'));
    const [a, b] = await Promise.all([run(script(cacheDir, `${s.base}/f`)), run(script(cacheDir, `${s.base}/f`))]);
    expect([a.code, b.code]).toEqual([0, 0]);
    const folder = path.join(cacheDir, 'img2pose_v1');
    expect([a.stdout, b.stdout]).toEqual([folder, folder]);
    expect(s.requests).toHaveLength(1);
    expect([a.stderr, b.stderr].filter((e) => /waiting for process \d+, which is installing the weights in the cache/.test(e))).toHaveLength(1);
    expect(fs.readdirSync(cacheDir).sort()).toEqual(['downloads', 'img2pose_v1']);
    await ensureReleaseWeights({ cacheDir, url: 'http://127.0.0.1:9/unused', progress: false }); // verifies
  });

  it("a lock left by a process that died is taken over at once; a live one's is waited for", async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'lock-'));
    const lock = path.join(dir, 'x.lock');
    const dead = await run('process.stdout.write(String(process.pid))');
    fs.writeFileSync(lock, JSON.stringify({ pid: Number(dead.stdout), host: os.hostname() }));
    let started = Date.now();
    let release = await acquireLock(lock);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(JSON.parse(fs.readFileSync(lock, 'utf8')).pid).toBe(process.pid);

    // held (by us, alive): a second taker waits until it is released
    const waits: string[] = [];
    let second: (() => Promise<void>) | undefined;
    const taking = acquireLock(lock, (h) => waits.push(h)).then((r) => (second = r));
    await new Promise((r) => setTimeout(r, 600));
    expect(second).toBeUndefined();
    expect(waits).toEqual([`process ${process.pid}`]);
    await release();
    await taking;
    expect(second).toBeDefined();
    await (second as () => Promise<void>)();

    // a lock whose time stopped moving long ago (a hung or remote holder) is taken over
    fs.writeFileSync(lock, JSON.stringify({ pid: process.pid, host: 'elsewhere' }));
    const old = new Date(Date.now() - 120_000);
    fs.utimesSync(lock, old, old);
    started = Date.now();
    release = await acquireLock(lock);
    expect(Date.now() - started).toBeLessThan(1000);
    await release();
    expect(fs.existsSync(lock)).toBe(false);
  });
});

describe('by hand, and where', () => {
  it('installs a zip downloaded by hand', async () => {
    const file = path.join(tmp, 'img2pose_v1.zip');
    fs.writeFileSync(file, zip);
    const o = cacheOptions('http://127.0.0.1:9/never-used');
    const folder = await installReleaseZip(file, o);
    expect(folder).toBe(releaseFolder(o));
    expect(fs.existsSync(file)).toBe(true); // the user's file stays
    const record = JSON.parse(fs.readFileSync(path.join(folder, CACHE_RECORD), 'utf8')) as CacheRecord;
    expect(record.checkpoint.sha256).toBe(checkpointSha);
    expect(await ensureReleaseWeights(o)).toBe(folder);
  });

  it('the cache folder: IMG2POSE_CACHE, else the platform cache', () => {
    const home = os.homedir();
    expect(cacheRoot({ IMG2POSE_CACHE: 'rel/cache' }, 'linux')).toBe(path.resolve('rel/cache'));
    expect(cacheRoot({}, 'linux')).toBe(path.join(home, '.cache', 'img2pose-tfjs'));
    expect(cacheRoot({ XDG_CACHE_HOME: '/xdg' }, 'linux')).toBe(path.join('/xdg', 'img2pose-tfjs'));
    expect(cacheRoot({}, 'darwin')).toBe(path.join(home, 'Library', 'Caches', 'img2pose-tfjs'));
    expect(cacheRoot({ LOCALAPPDATA: 'C:\\Users\\u\\AppData\\Local' }, 'win32')).toBe(path.join('C:\\Users\\u\\AppData\\Local', 'img2pose-tfjs'));
  });
});
