/**
 * The `--json` results file, written as results come so that a run that stops (a signal, a
 * crash, a full disk) keeps everything done before it: the file is a complete JSON array after
 * every append, and the previous file at that path stays untouched until the first results exist.
 *
 * The path is checked when the file is opened, before any model is loaded or image read.
 */
import * as fs from 'fs';
import * as path from 'path';

/** An output path that cannot be used: names it and says why. */
export class OutputPathError extends Error {
  constructor(
    readonly file: string,
    readonly problem: string,
  ) {
    super(`${file}: ${problem}`);
    this.name = 'OutputPathError';
  }
}

/** `value` as it sits in `JSON.stringify(array, null, 2)`: indented by two spaces. */
function arrayItem(value: unknown): string {
  return `  ${JSON.stringify(value, null, 2).replace(/\n/g, '\n  ')}`;
}

const CLOSING = '\n]\n';

function errno(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? String(e);
}

/**
 * A JSON array file grown in place. Items go into a hidden temporary file beside the target,
 * which replaces the target (an atomic rename) at the first append; later appends overwrite the
 * closing bracket with `,<item>` and a new closing bracket in one synchronous write, so the
 * file always parses and a signal handler never runs in the middle of a write.
 */
export class JsonArrayFile {
  private size: number;
  private count = 0;
  private inPlace = false;
  private closed = false;

  private constructor(
    readonly file: string,
    private readonly temp: string,
    private readonly fd: number,
  ) {
    this.size = fs.writeSync(fd, '[]\n');
  }

  /** Checks `file` (its folder exists, it is not a folder or a special file, it can be written) and opens it. */
  static open(file: string): JsonArrayFile {
    const target = path.resolve(file);
    const dir = path.dirname(target);
    let dirStat: fs.Stats;
    try {
      dirStat = fs.statSync(dir);
    } catch (e) {
      throw new OutputPathError(file, errno(e) === 'ENOENT' ? `its folder ${dir} does not exist` : `cannot use its folder ${dir} (${errno(e)})`);
    }
    if (!dirStat.isDirectory()) throw new OutputPathError(file, `${dir} is not a folder`);
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(target);
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw new OutputPathError(file, `cannot use as output file (${errno(e)})`);
    }
    if (st?.isDirectory()) throw new OutputPathError(file, 'is a folder, expected a file path for the JSON results');
    if (st && !st.isFile()) throw new OutputPathError(file, 'is not a regular file');
    if (st) {
      try {
        fs.accessSync(target, fs.constants.W_OK);
      } catch (e) {
        throw new OutputPathError(file, `cannot be written (${errno(e)})`);
      }
    }
    const temp = path.join(dir, `.${path.basename(target)}.${process.pid}.${Date.now().toString(36)}.tmp`);
    let fd: number;
    try {
      fd = fs.openSync(temp, 'wx');
    } catch (e) {
      throw new OutputPathError(file, `cannot write in ${dir} (${errno(e)})`);
    }
    return new JsonArrayFile(file, temp, fd);
  }

  /** How many items the file holds. */
  get length(): number {
    return this.count;
  }

  /** Appends `items` and makes the file hold them (on the first append, it replaces the old file). */
  append(items: readonly unknown[]): void {
    if (this.closed) throw new Error(`${this.file} is closed`);
    if (items.length === 0) return;
    const body = items.map(arrayItem).join(',\n');
    const [text, at] = this.count === 0 ? [`[\n${body}${CLOSING}`, 0] : [`,\n${body}${CLOSING}`, this.size - CLOSING.length];
    const bytes = Buffer.from(text, 'utf8');
    fs.writeSync(this.fd, bytes, 0, bytes.length, at);
    this.size = at + bytes.length;
    this.count += items.length;
    this.moveInPlace();
  }

  /** Ends the file: it holds every appended item (`[]` if none) at its path. */
  close(): void {
    if (this.closed) return;
    this.moveInPlace();
    this.closed = true;
    fs.closeSync(this.fd);
  }

  /**
   * Ends without results: when nothing was appended the old file at the path stays as it was
   * (the temporary file goes); otherwise the same as `close()`.
   */
  abandon(): void {
    if (this.closed) return;
    if (this.count > 0) return this.close();
    this.closed = true;
    fs.closeSync(this.fd);
    fs.rmSync(this.temp, { force: true });
  }

  private moveInPlace(): void {
    if (this.inPlace) return;
    try {
      fs.renameSync(this.temp, path.resolve(this.file));
    } catch (e) {
      throw new OutputPathError(this.file, `cannot write (${errno(e)}); the results so far are in ${this.temp}`);
    }
    this.inPlace = true;
  }
}

export type StopSignal = 'SIGINT' | 'SIGTERM';

/**
 * Runs `onStop` when the process gets SIGINT or SIGTERM, then lets the signal end the process
 * as it would have without the handler. Returns the function that removes the handlers.
 */
export function onStopSignal(onStop: (signal: StopSignal) => void): () => void {
  const signals: StopSignal[] = ['SIGINT', 'SIGTERM'];
  const remove = (): void => {
    for (const s of signals) process.removeListener(s, handler);
  };
  function handler(signal: StopSignal): void {
    remove();
    try {
      onStop(signal);
    } finally {
      process.kill(process.pid, signal);
    }
  }
  for (const s of signals) process.on(s, handler);
  return remove;
}
