/**
 * Resumable local runs: `detect --jsonl <file>` appends one line per image as it finishes,
 * `--resume` skips the images the file already has, `--shard i/n` takes a stable share of the
 * inputs so n machines can split a folder with no coordination.
 *
 * A line is the image's result plus the size and modification time its file had, so a file
 * changed since (same path, new content) is detected again:
 *   {"image": "a.jpg", "size": 1234, "mtimeMs": 1733300000000, "faces": [...]}
 * A crash loses at most the images in flight and the lines not yet fsync'd (at most
 * `SYNC_INTERVAL_MS`): each line is written whole with one append, and a last line cut short by
 * the crash is dropped when the file is resumed.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { OptionError } from '../errors';

/** How often appended lines are forced to disk (fsync); a line is always written (flushed) at once. */
export const SYNC_INTERVAL_MS = 2000;

/** What identifies an image's file version: path, size, modification time. */
export interface FileStamp {
  size: number;
  mtimeMs: number;
}

/** The stamp of a file, or undefined if it cannot be stat'ed (it then gets an error line). */
export async function stampOf(file: string): Promise<FileStamp | undefined> {
  try {
    const s = await fs.promises.stat(file);
    return { size: s.size, mtimeMs: s.mtimeMs };
  } catch {
    return undefined;
  }
}

// --- sharding ------------------------------------------------------------------------------------

export interface Shard {
  index: number;
  count: number;
}

/** `i/n` with 0 <= i < n. */
export function parseShard(value: string): Shard {
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(value);
  const index = m ? Number(m[1]) : NaN;
  const count = m ? Number(m[2]) : NaN;
  if (!m || !Number.isSafeInteger(count) || count < 1 || index >= count) {
    throw new OptionError('--shard', 'i/n with 0 <= i < n (e.g. 0/4, 1/4, 2/4, 3/4)', value);
  }
  return { index, count };
}

/**
 * The shard an image belongs to: the first 32 bits of the SHA-1 of its path (as given, after
 * folder expansion), modulo n. Stable across machines, runs and input orders; every image is in
 * exactly one shard.
 */
export function shardOf(image: string, count: number): number {
  return createHash('sha1').update(image).digest().readUInt32BE(0) % count;
}

export function inShard(images: readonly string[], shard: Shard | undefined): string[] {
  return shard ? images.filter((image) => shardOf(image, shard.count) === shard.index) : [...images];
}

// --- resuming ------------------------------------------------------------------------------------

/** image -> the stamp recorded with its result (results only: error lines are retried). */
export type DoneIndex = Map<string, FileStamp>;

/**
 * Reads an existing results file: what it has done, and the byte length of its complete lines (a
 * last line without its newline was cut short by a crash and is dropped). A line that is not a
 * result (not JSON, no image) is an error naming its line number: we will not append to a file
 * that is not ours.
 */
export async function readDone(file: string): Promise<{ done: DoneIndex; validBytes: number }> {
  const done: DoneIndex = new Map();
  let text: string;
  try {
    text = await fs.promises.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { done, validBytes: 0 };
    throw e;
  }
  const end = text.lastIndexOf('\n') + 1;
  const lines = text.slice(0, end).split('\n');
  lines.pop();
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    let r: { image?: unknown; size?: unknown; mtimeMs?: unknown; faces?: unknown };
    try {
      r = JSON.parse(line);
    } catch {
      throw notOurs(file, i + 1, 'not JSON');
    }
    if (typeof r?.image !== 'string') {
      throw notOurs(file, i + 1, 'no "image"');
    }
    if (Array.isArray(r.faces) && typeof r.size === 'number' && typeof r.mtimeMs === 'number') {
      done.set(r.image, { size: r.size, mtimeMs: r.mtimeMs });
    } else {
      // A later error line supersedes an earlier result (the file changed and now fails).
      done.delete(r.image);
    }
  });
  return { done, validBytes: Buffer.byteLength(text.slice(0, end)) };
}

function notOurs(file: string, line: number, problem: string): Error {
  return new Error(`${file} line ${line}: ${problem}; not a --jsonl results file, so --resume will not append to it`);
}

/** The images still to do: those without a result for their current size and mtime. */
export async function notDone(images: readonly string[], done: DoneIndex): Promise<string[]> {
  if (done.size === 0) return [...images];
  const todo: string[] = [];
  for (const image of images) {
    const had = done.get(image);
    const now = had ? await stampOf(image) : undefined;
    if (!had || !now || now.size !== had.size || now.mtimeMs !== had.mtimeMs) todo.push(image);
  }
  return todo;
}

// --- writing -------------------------------------------------------------------------------------

/**
 * Appends lines to a results file: each with one write (the OS has it at once: a killed process
 * loses nothing written), fsync'd at most every `syncIntervalMs` and at close (a crashed machine
 * loses at most that interval).
 */
export class JsonlWriter {
  private lastSync = Date.now();

  private constructor(
    private readonly fd: fs.promises.FileHandle,
    private readonly syncIntervalMs: number,
  ) {}

  /**
   * Opens `file` for appending; with `keepBytes` (resuming) anything after that many bytes (a
   * line cut short by a crash) is cut off first; otherwise the file is started anew.
   */
  static async open(file: string, keepBytes?: number, syncIntervalMs = SYNC_INTERVAL_MS): Promise<JsonlWriter> {
    const fd = await fs.promises.open(file, keepBytes === undefined ? 'w' : 'a');
    try {
      if (keepBytes !== undefined && (await fd.stat()).size > keepBytes) await fd.truncate(keepBytes);
    } catch (e) {
      await fd.close();
      throw e;
    }
    return new JsonlWriter(fd, syncIntervalMs);
  }

  async append(record: object): Promise<void> {
    await this.fd.appendFile(`${JSON.stringify(record)}\n`);
    if (Date.now() - this.lastSync >= this.syncIntervalMs) {
      this.lastSync = Date.now();
      await this.fd.sync();
    }
  }

  async close(): Promise<void> {
    try {
      await this.fd.sync();
    } finally {
      await this.fd.close();
    }
  }
}

// --- a detect run --------------------------------------------------------------------------------

export interface JsonlRunOptions {
  /** The results file (--jsonl). */
  file?: string;
  resume?: boolean;
  shard?: Shard;
}

export interface JsonlRun {
  /** The images this run detects: its shard, less what the file already has. */
  todo: string[];
  /** Images of the shard the file already had (skipped). */
  skipped: number;
  /** Appends an image's result with its file's stamp; a no-op without --jsonl. */
  append(result: { image: string } & object): Promise<void>;
  close(): Promise<void>;
}

/**
 * Plans a `detect` run: picks the shard and reads the file to resume; checks the file can be
 * written, before any model is loaded. The file is opened at the first result, so a run that
 * fails before one leaves it as it was. An existing file is only ever continued (--resume),
 * never replaced: it may hold days of results.
 */
export async function startJsonlRun(images: readonly string[], opts: JsonlRunOptions): Promise<JsonlRun> {
  if (opts.resume && !opts.file) throw new OptionError('--resume', 'a --jsonl <file> to resume', undefined);
  const mine = inShard(images, opts.shard);
  if (!opts.file) return { todo: mine, skipped: 0, append: async () => undefined, close: async () => undefined };
  const file = opts.file;
  let todo = mine;
  let keepBytes: number | undefined;
  if (opts.resume) {
    const { done, validBytes } = await readDone(file);
    todo = await notDone(mine, done);
    keepBytes = validBytes;
  } else {
    const existing = await fs.promises.stat(file).catch(() => undefined);
    if (existing && existing.size > 0) {
      throw new OptionError('--jsonl', `a new file, or --resume to continue ${file}`, `a file of ${existing.size} bytes`);
    }
  }
  await checkWritable(file);
  let writer: Promise<JsonlWriter> | undefined;
  return {
    todo,
    skipped: mine.length - todo.length,
    async append(result) {
      writer ??= JsonlWriter.open(file, keepBytes);
      const stamp = 'faces' in result ? await stampOf(result.image) : undefined;
      // The stamp goes between the image and its faces, so a line reads like the stdout lines.
      const { image, ...rest } = result;
      await (await writer).append(stamp ? { image, ...stamp, ...rest } : result);
    },
    close: async () => (writer ? (await writer).close() : undefined),
  };
}

/** The file, or the folder for a new one, must be writable. */
async function checkWritable(file: string): Promise<void> {
  const exists = await fs.promises.stat(file).catch(() => undefined);
  if (exists?.isDirectory()) throw new OptionError('--jsonl', 'a file path', `the folder ${file}`);
  const target = exists ? file : path.dirname(path.resolve(file));
  try {
    await fs.promises.access(target, fs.constants.W_OK);
  } catch (e) {
    throw new OptionError('--jsonl', 'a file that can be written', `${target} (${(e as NodeJS.ErrnoException).code ?? 'not writable'})`);
  }
}
