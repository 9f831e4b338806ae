/**
 * The official weights on first use, as upstream does: download the `img2pose_v1` release zip
 * (Google Drive), convert its checkpoint in process, and keep the converted folder in a cache:
 *
 *   <cache>/img2pose_v1/                  model.json + shards + img2pose-cache.json (sha256 of each)
 *   <cache>/img2pose_v1.lock              held while one process downloads and converts
 *   <cache>/downloads/img2pose_v1.zip     the zip, while it is converted (.part while it downloads)
 *
 * `<cache>` is `IMG2POSE_CACHE`, else the platform's cache folder + `img2pose-tfjs`
 * (`~/.cache/img2pose-tfjs` on Linux). A folder appears in the cache only complete: it is built
 * in a staging folder and renamed into place. Concurrent first loads (several processes) take
 * turns through the lock file; the others wait, then find the folder ready. Every load checks
 * each cached file's sha256 against the record written when it was made.
 */
import { createHash, randomBytes } from 'crypto';
import { createReadStream, promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { SingleBar, Presets } from 'cli-progress';
import { WeightsError } from '../errors';
import { DownloadError, DownloadOptions, DownloadProgress, downloadFile } from './download';
import { extractZipEntry, listZip } from './zip_members';
import { convertCheckpoint } from '../../converter/convert';
import { CheckpointError } from '../../converter/errors';
import { MODEL_JSON } from '../../converter/weights_format';
import { ZipFormatError, ZipRecord } from '../../converter/zip';

export { RELEASE } from './release';
import { RELEASE } from './release';

export const CACHE_RECORD = 'img2pose-cache.json';

/** What happens during `ensureReleaseWeights`, for a progress display. */
export type ReleaseEvent =
  | { phase: 'wait'; holder: string }
  | { phase: 'download'; url: string; received: number; total: number | undefined }
  | { phase: 'convert' }
  | { phase: 'done'; folder: string };

export interface ReleaseOptions {
  /** The cache folder (default: IMG2POSE_CACHE, else the platform cache folder + img2pose-tfjs). */
  cacheDir?: string;
  /** Where the release zip is downloaded from (default: IMG2POSE_WEIGHTS_URL, else Google Drive). */
  url?: string;
  /** The zip's sha256, when known: a download that differs is refused. */
  sha256?: string;
  /**
   * Progress: true (default) draws a bar on stderr when it is a terminal, false shows none, a
   * function receives every event.
   */
  progress?: boolean | ((event: ReleaseEvent) => void);
  /** One-line notices (download start, licence, where the cache is); default: stderr. */
  log?: (line: string) => void;
  /** Download tuning (timeouts, retries); mostly for tests. */
  download?: Pick<DownloadOptions, 'idleTimeoutMs' | 'retries' | 'retryDelayMs' | 'fetch'>;
}

/** Where a release zip came from: the URL asked for and the one that finally sent it (or a file). */
export interface ZipSource {
  url: string;
  downloadedFrom: string;
}

/** What the cache records about a converted release, to check it at every load. */
export interface CacheRecord {
  release: string;
  licence: string;
  createdAt: string;
  source: ZipSource & { zip: { bytes: number; sha256: string } };
  checkpoint: { member: string; bytes: number; sha256: string };
  /** Every file of the folder but this record: size and sha256. */
  files: Record<string, { bytes: number; sha256: string }>;
}

/** Environment variables as `process.env` holds them (typed without Node's own types, for apps without @types/node). */
export type Environment = Readonly<Record<string, string | undefined>>;

/** The cache folder: IMG2POSE_CACHE, else the platform's user cache folder + img2pose-tfjs. */
export function cacheRoot(env: Environment = process.env, platform: string = process.platform): string {
  if (env.IMG2POSE_CACHE) return path.resolve(env.IMG2POSE_CACHE);
  const home = os.homedir();
  if (platform === 'win32') return path.join(env.LOCALAPPDATA || path.join(home, 'AppData', 'Local'), 'img2pose-tfjs');
  if (platform === 'darwin') return path.join(home, 'Library', 'Caches', 'img2pose-tfjs');
  return path.join(env.XDG_CACHE_HOME || path.join(home, '.cache'), 'img2pose-tfjs');
}

export function releaseUrl(options: ReleaseOptions = {}, env: Environment = process.env): string {
  return options.url ?? (env.IMG2POSE_WEIGHTS_URL || RELEASE.url);
}

/** Where the converted release lives (whether or not it is there yet). */
export function releaseFolder(options: ReleaseOptions = {}): string {
  return path.join(options.cacheDir ? path.resolve(options.cacheDir) : cacheRoot(), RELEASE.name);
}

/** How to do by hand what `ensureReleaseWeights` does. */
export function manualSteps(options: ReleaseOptions = {}): string {
  const m = RELEASE.members;
  return (
    `To install the weights by hand: download ${RELEASE.pageUrl} in a browser (img2pose_v1.zip, licence ${RELEASE.licence}), ` +
    `then run \`npx img2pose weights install img2pose_v1.zip\`${options.cacheDir ? ` --cache-dir ${options.cacheDir}` : ''}; ` +
    `or unzip it, run \`npx img2pose convert ${m.checkpoint} --pose-mean ${m.poseMean} --pose-stddev ${m.poseStddev} --out weights/img2pose_v1\` ` +
    'and pass --weights weights/img2pose_v1 (Img2Pose.load({ weights: "weights/img2pose_v1" })).'
  );
}

/**
 * The converted official weights' folder: from the cache when there (checked), else downloaded,
 * converted and cached first. Failures are `WeightsError`s that say what went wrong and how to
 * install the weights by hand.
 */
export async function ensureReleaseWeights(options: ReleaseOptions = {}): Promise<string> {
  const folder = releaseFolder(options);
  if (await exists(folder)) {
    await verifyReleaseFolder(folder, options);
    return folder;
  }
  const root = path.dirname(folder);
  await makeDir(root);
  const report = reporter(options);
  const release = await acquireLock(`${folder}.lock`, (holder) => report.event({ phase: 'wait', holder }));
  try {
    // Whoever held the lock before us may have finished the job.
    if (await exists(folder)) {
      await verifyReleaseFolder(folder, options);
      return folder;
    }
    const zip = path.join(root, 'downloads', `${RELEASE.name}.zip`);
    await makeDir(path.dirname(zip));
    const source = await downloadRelease(zip, options, report);
    await installFromZip(zip, folder, source, options, report);
    await fsp.rm(zip, { force: true });
    report.event({ phase: 'done', folder });
    return folder;
  } finally {
    report.stop();
    await release();
  }
}

/**
 * Installs a release zip downloaded by hand into the cache (replacing what is there): the same
 * checks and conversion as a download. Returns the folder.
 */
export async function installReleaseZip(zipPath: string, options: ReleaseOptions = {}): Promise<string> {
  const folder = releaseFolder(options);
  await makeDir(path.dirname(folder));
  const report = reporter(options);
  const release = await acquireLock(`${folder}.lock`, (holder) => report.event({ phase: 'wait', holder }));
  try {
    const source = { url: `file://${path.resolve(zipPath)}`, downloadedFrom: path.resolve(zipPath) };
    await installFromZip(zipPath, folder, source, options, report);
    report.event({ phase: 'done', folder });
    return folder;
  } finally {
    report.stop();
    await release();
  }
}

/** Removes the cached release (and any partial download). Returns what was removed. */
export async function clearReleaseCache(options: ReleaseOptions = {}): Promise<string[]> {
  const folder = releaseFolder(options);
  const root = path.dirname(folder);
  const removed: string[] = [];
  const candidates = [folder, path.join(root, 'downloads')];
  try {
    for (const name of await fsp.readdir(root)) if (/^\.(staging|trash)-/.test(name)) candidates.push(path.join(root, name));
  } catch {
    // no cache folder: nothing to clear
  }
  for (const p of candidates) {
    if (await exists(p)) {
      await fsp.rm(p, { recursive: true, force: true });
      removed.push(p);
    }
  }
  return removed;
}

/**
 * Checks a cached release folder against its record: every file present, of its size and
 * sha256, and model.json converted from the checkpoint the record names. Returns the record.
 */
export async function verifyReleaseFolder(folder: string, options: ReleaseOptions = {}): Promise<CacheRecord> {
  const fix = `Remove it with \`npx img2pose weights clear\`${options.cacheDir ? ` --cache-dir ${options.cacheDir}` : ''} and load again to download it again. ${manualSteps(options)}`;
  const corrupt = (problem: string): never => {
    throw new WeightsError(`The cached weights in ${folder} are damaged: ${problem}. ${fix}`, { path: folder });
  };
  let record: CacheRecord;
  try {
    record = JSON.parse(await fsp.readFile(path.join(folder, CACHE_RECORD), 'utf8')) as CacheRecord;
  } catch (e) {
    return corrupt(`its record ${CACHE_RECORD} is ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'unreadable'}`);
  }
  if (typeof record !== 'object' || record === null || typeof record.files !== 'object' || !record.files[MODEL_JSON] || typeof record.checkpoint?.sha256 !== 'string') {
    corrupt(`its record ${CACHE_RECORD} is malformed`);
  }
  for (const [name, want] of Object.entries(record.files)) {
    if (path.basename(name) !== name) corrupt(`its record names a file outside the folder (${name})`);
    const file = path.join(folder, name);
    let got: { bytes: number; sha256: string };
    try {
      got = await hashFile(file);
    } catch (e) {
      return corrupt(`${name} is ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'unreadable'}`);
    }
    if (got.bytes !== want.bytes) corrupt(`${name} holds ${got.bytes} bytes, ${want.bytes} were written`);
    if (got.sha256 !== want.sha256) corrupt(`${name} has sha256 ${got.sha256}, ${want.sha256} was written`);
  }
  const modelJson = JSON.parse(await fsp.readFile(path.join(folder, MODEL_JSON), 'utf8')) as { img2pose?: { source?: { sha256?: string } } };
  if (modelJson.img2pose?.source?.sha256 !== record.checkpoint.sha256) {
    corrupt(`model.json was converted from another checkpoint than the downloaded one (sha256 ${record.checkpoint.sha256})`);
  }
  return record;
}

// --- download, check, convert --------------------------------------------------------------------

interface Reporter {
  event(e: ReleaseEvent): void;
  log(line: string): void;
  stop(): void;
}

async function downloadRelease(zip: string, options: ReleaseOptions, report: Reporter): Promise<ZipSource> {
  const url = releaseUrl(options);
  if (await exists(zip)) return { url, downloadedFrom: url }; // downloaded before, not yet converted
  report.log(
    `downloading the official img2pose weights (${RELEASE.name}, some 170 MB) from ${url} into ${path.dirname(path.dirname(zip))}. ` +
      `The weights are licensed ${RELEASE.licence}.`,
  );
  try {
    const result = await downloadFile(url, {
      ...options.download,
      dest: zip,
      onProgress: (p: DownloadProgress) => report.event({ phase: 'download', url, ...p }),
    });
    return { url, downloadedFrom: result.url };
  } catch (e) {
    if (!(e instanceof DownloadError)) throw e;
    const found = e.found ? ` (found: ${e.found})` : '';
    const partial = await fsp.stat(`${zip}.part`).then((st) => st.size > 0, () => false);
    const resume = partial ? ' Loading again resumes the download.' : '';
    throw new WeightsError(`Cannot download the img2pose weights from ${e.url}: ${e.message}${found}.${resume} ${manualSteps(options)}`, {
      path: e.url,
      cause: e,
    });
  }
}

async function installFromZip(zip: string, folder: string, source: ZipSource, options: ReleaseOptions, report: Reporter): Promise<void> {
  const root = path.dirname(folder);
  const refuse = async (problem: string, cause?: unknown): Promise<never> => {
    // A bad zip is of no use to a later attempt: let that one download again.
    if (path.dirname(zip) === path.join(root, 'downloads')) await fsp.rm(zip, { force: true });
    throw new WeightsError(`${zip}: ${problem}. ${manualSteps(options)}`, { path: zip, cause });
  };
  const zipHash = await hashFile(zip).catch((e: NodeJS.ErrnoException) => refuse(`cannot read (${e.code ?? e.message})`));
  if (options.sha256 && zipHash.sha256 !== options.sha256.toLowerCase()) {
    await refuse(`sha256 ${zipHash.sha256} is not the expected ${options.sha256}`);
  }
  let entries: ZipRecord[];
  try {
    entries = await listZip(zip);
  } catch (e) {
    if (!(e instanceof ZipFormatError)) throw e;
    return refuse(`not the release zip: ${e.message}; found ${await describeStart(zip, zipHash.bytes)}`, e);
  }
  const member = (name: string): ZipRecord | undefined =>
    entries.find((e) => e.name === name) ?? entries.find((e) => path.posix.basename(e.name) === path.posix.basename(name));
  const wanted = RELEASE.members;
  const missing = Object.values(wanted).filter((name) => member(name) === undefined);
  if (missing.length > 0) {
    const held = entries.slice(0, 10).map((e) => e.name).join(', ') + (entries.length > 10 ? `, ... (${entries.length} in all)` : '');
    await refuse(`the zip lacks ${missing.join(', ')} (it holds: ${held || 'nothing'})`);
  }

  report.event({ phase: 'convert' });
  const staging = path.join(root, `.staging-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await makeDir(staging);
    const local = {
      checkpoint: path.join(staging, 'img2pose_v1.pth'),
      poseMean: path.join(staging, 'pose_mean.npy'),
      poseStddev: path.join(staging, 'pose_stddev.npy'),
    };
    for (const key of Object.keys(wanted) as (keyof typeof wanted)[]) {
      try {
        await extractZipEntry(zip, member(wanted[key]) as ZipRecord, local[key]);
      } catch (e) {
        if (!(e instanceof ZipFormatError)) throw e;
        await refuse(`a damaged zip: ${e.message}`, e);
      }
    }
    const out = path.join(staging, RELEASE.name);
    let report_: Awaited<ReturnType<typeof convertCheckpoint>>;
    try {
      report_ = await convertCheckpoint({ ...local, out, warn: (m) => report.log(`warning: ${m}`) });
    } catch (e) {
      if (!(e instanceof CheckpointError)) throw e;
      return await refuse(`its checkpoint cannot be converted: ${e.problem}`, e);
    }
    const files: CacheRecord['files'] = {};
    for (const name of (await fsp.readdir(out)).sort()) files[name] = await hashFile(path.join(out, name));
    const record: CacheRecord = {
      release: RELEASE.name,
      licence: RELEASE.licence,
      createdAt: new Date().toISOString(),
      source: { ...source, zip: zipHash },
      checkpoint: { member: (member(wanted.checkpoint) as ZipRecord).name, bytes: report_.checkpointBytes, sha256: report_.sha256 },
      files,
    };
    await fsp.writeFile(path.join(out, CACHE_RECORD), `${JSON.stringify(record, null, 2)}\n`);
    await replaceFolder(out, folder);
  } finally {
    await fsp.rm(staging, { recursive: true, force: true });
  }
}

/** Moves `from` to `to` in one rename; a `to` already there (we hold the lock) goes first. */
async function replaceFolder(from: string, to: string): Promise<void> {
  if (await exists(to)) {
    const trash = path.join(path.dirname(to), `.trash-${process.pid}-${randomBytes(4).toString('hex')}`);
    await fsp.rename(to, trash);
    await fsp.rm(trash, { recursive: true, force: true });
  }
  await fsp.rename(from, to);
}

async function describeStart(file: string, bytes: number): Promise<string> {
  const fh = await fsp.open(file, 'r');
  try {
    const head = Buffer.alloc(Math.min(48, bytes));
    await fh.read(head, 0, head.length, 0);
    const text = head.toString('latin1').replace(/[^\x20-\x7e]/g, '.');
    return `a ${bytes}-byte file beginning "${text}"`;
  } finally {
    await fh.close();
  }
}

// --- the lock ------------------------------------------------------------------------------------

/** The holder refreshes the lock's time this often; a lock older than STALE_MS is abandoned. */
const HEARTBEAT_MS = 2_000;
const STALE_MS = 30_000;
const POLL_MS = 200;

interface LockHolder {
  pid?: number;
  host?: string;
  ageMs: number;
}

/**
 * Takes the lock file `lockPath` (exclusive create), waiting while another live process holds
 * it; a lock whose process is gone (same host) or whose time stopped moving is taken over.
 * Resolves to the release function.
 */
export async function acquireLock(lockPath: string, onWait: (holder: string) => void = () => undefined): Promise<() => Promise<void>> {
  const me = JSON.stringify({ pid: process.pid, host: os.hostname(), since: new Date().toISOString() });
  let told = false;
  for (;;) {
    try {
      await fsp.writeFile(lockPath, me, { flag: 'wx' });
      const beat = setInterval(() => {
        const now = new Date();
        fsp.utimes(lockPath, now, now).catch(() => undefined);
      }, HEARTBEAT_MS);
      beat.unref();
      return async () => {
        clearInterval(beat);
        await fsp.rm(lockPath, { force: true });
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new WeightsError(`Cannot create the cache lock ${lockPath} (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { path: lockPath, cause: e });
      }
    }
    const holder = await readHolder(lockPath);
    if (holder === undefined) continue; // released meanwhile
    if (isStale(holder)) {
      // Rename first: of several processes breaking the same lock, one wins the rename.
      const aside = `${lockPath}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
      await fsp.rename(lockPath, aside).then(
        () => fsp.rm(aside, { force: true }),
        () => undefined,
      );
      continue;
    }
    if (!told) {
      told = true;
      onWait(holder.pid !== undefined ? `process ${holder.pid}${holder.host && holder.host !== os.hostname() ? ` on ${holder.host}` : ''}` : 'another process');
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function readHolder(lockPath: string): Promise<LockHolder | undefined> {
  try {
    const [text, st] = await Promise.all([fsp.readFile(lockPath, 'utf8'), fsp.stat(lockPath)]);
    let parsed: { pid?: unknown; host?: unknown } = {};
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      // being written: judged by its age only
    }
    return {
      pid: typeof parsed.pid === 'number' ? parsed.pid : undefined,
      host: typeof parsed.host === 'string' ? parsed.host : undefined,
      ageMs: Date.now() - st.mtimeMs,
    };
  } catch {
    return undefined;
  }
}

function isStale(h: LockHolder): boolean {
  if (h.ageMs > STALE_MS) return true;
  if (h.pid === undefined || h.host !== os.hostname()) return false;
  try {
    process.kill(h.pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

// --- small helpers -------------------------------------------------------------------------------

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.stat(p);
    return true;
  } catch {
    return false;
  }
}

async function makeDir(dir: string): Promise<void> {
  try {
    await fsp.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new WeightsError(`Cannot create the weights cache folder ${dir} (${(e as NodeJS.ErrnoException).code ?? String(e)}); set IMG2POSE_CACHE to a writable folder`, {
      path: dir,
      cause: e,
    });
  }
}

export async function hashFile(file: string): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { bytes, sha256: hash.digest('hex') };
}

/** Progress as asked: a bar on a terminal, events to a callback, or lines. */
function reporter(options: ReleaseOptions): Reporter {
  const log = options.log ?? ((line: string) => void process.stderr.write(`img2pose: ${line}\n`));
  const progress = options.progress ?? true;
  if (typeof progress === 'function') return { event: progress, log, stop: () => undefined };
  const tty = progress && process.stderr.isTTY === true;
  let bar: SingleBar | undefined;
  let lastMb = -1;
  return {
    log,
    event(e) {
      if (e.phase === 'wait') log(`waiting for ${e.holder}, which is installing the weights in the cache`);
      else if (e.phase === 'convert') {
        bar?.stop();
        bar = undefined;
        log('converting the checkpoint');
      } else if (e.phase === 'done') log(`the weights are cached in ${e.folder}`);
      else if (tty && e.total !== undefined) {
        if (!bar) {
          bar = new SingleBar(
            { stream: process.stderr, format: 'img2pose weights |{bar}| {percentage}% {value}/{total} MB | {eta_formatted} left', hideCursor: true },
            Presets.shades_classic,
          );
          bar.start(Math.ceil(e.total / 1e6), 0);
        }
        // Whole megabytes received, and the bar's full total once everything has come (the total
        // is rounded up, so flooring the last count would leave the bar at 99%).
        const mb = e.received >= e.total ? Math.ceil(e.total / 1e6) : Math.floor(e.received / 1e6);
        if (mb !== lastMb) bar.update(mb);
        lastMb = mb;
      }
    },
    stop() {
      bar?.stop();
    },
  };
}
