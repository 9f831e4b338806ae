/**
 * Reading files named by users or by other files (a manifest's shard paths) without the traps
 * of special files: a FIFO blocks a read forever and /dev/zero never ends. Only regular files
 * are read, of a size known before reading, and the bytes read are exactly those.
 */
import * as fs from 'fs';
import * as path from 'path';

/** Why a file cannot be read, in words (the caller adds the file name). */
export class FileReadError extends Error {
  constructor(
    readonly file: string,
    readonly problem: string,
    readonly code?: string,
  ) {
    super(`${file}: ${problem}`);
    this.name = 'FileReadError';
  }
}

function errnoCode(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? String(e);
}

export function describeErrno(code: string): string {
  switch (code) {
    case 'ENOENT':
      return 'no such file';
    case 'EACCES':
    case 'EPERM':
      return 'not readable by this process';
    case 'EISDIR':
      return 'a folder, not a file';
    case 'ENOTDIR':
      return 'a path through something that is not a folder';
    case 'ELOOP':
      return 'a loop of symbolic links';
    default:
      return `cannot be read (${code})`;
  }
}

/**
 * The bytes of the regular file `file`, refusing anything else (folder, FIFO, device, socket)
 * and any file larger than `maxBytes`, before reading. The file is opened without blocking (a
 * FIFO swapped in after the check is seen by fstat, not waited on).
 */
export async function readRegularFile(file: string, maxBytes = Number.MAX_SAFE_INTEGER): Promise<Buffer> {
  return readChecked(file, (size) => {
    if (size > maxBytes) throw new FileReadError(file, `${size} bytes, more than the ${maxBytes} such a file may have`, 'ETOOBIG');
    return Buffer.allocUnsafe(size);
  });
}

/**
 * Reads a regular file of exactly `into.length` bytes into `into` (a view of memory the caller
 * owns, such as a SharedArrayBuffer): no buffer of its own. A file of another size is refused.
 */
export async function readRegularFileInto(file: string, into: Uint8Array): Promise<void> {
  await readChecked(file, (size) => {
    if (size !== into.length) throw new FileReadError(file, `${size} bytes, expected ${into.length}`, 'ESIZE');
    return into;
  });
}

/**
 * `file` opened for reading, with its size, refusing anything but a regular file (as
 * `readRegularFile`); the caller closes the handle.
 */
export async function openRegularFile(file: string): Promise<{ handle: fs.promises.FileHandle; size: number }> {
  let handle: fs.promises.FileHandle;
  try {
    handle = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    throw new FileReadError(file, describeErrno(errnoCode(e)), errnoCode(e));
  }
  try {
    const st = await handle.stat();
    if (st.isDirectory()) throw new FileReadError(file, 'a folder, not a file', 'EISDIR');
    if (!st.isFile()) throw new FileReadError(file, 'not a regular file (a device, pipe or socket)', 'ESPECIAL');
    return { handle, size: st.size };
  } catch (e) {
    await handle.close();
    if (e instanceof FileReadError) throw e;
    throw new FileReadError(file, describeErrno(errnoCode(e)), errnoCode(e));
  }
}

async function readChecked<T extends Uint8Array>(file: string, target: (size: number) => T): Promise<T> {
  const { handle, size } = await openRegularFile(file);
  try {
    const st = { size };
    const out = target(st.size);
    let done = 0;
    while (done < st.size) {
      const { bytesRead } = await handle.read(out, done, st.size - done, done);
      if (bytesRead === 0) throw new FileReadError(file, `changed while read (ends at byte ${done} of ${st.size})`, 'ESHORT');
      done += bytesRead;
    }
    return out;
  } catch (e) {
    if (e instanceof FileReadError) throw e;
    throw new FileReadError(file, describeErrno(errnoCode(e)), errnoCode(e));
  } finally {
    await handle.close();
  }
}

/**
 * `relative` (a path written in a file of `dir`, such as a shard path of model.json) resolved
 * inside `dir`, or the reason it may not be read: absolute, climbing out with `..`, or a
 * symbolic link that leads out of the folder.
 */
export async function confinedPath(dir: string, relative: string): Promise<{ path: string } | { problem: string }> {
  if (relative.length === 0 || relative.includes('\0')) return { problem: 'an empty or invalid path' };
  if (path.isAbsolute(relative) || path.win32.isAbsolute(relative)) return { problem: 'an absolute path (shard paths are relative to the folder)' };
  const parts = relative.split(/[\\/]+/);
  if (parts.includes('..')) return { problem: "a path with '..' (shards must lie in the weights folder)" };
  const resolved = path.resolve(dir, relative);
  let realDir: string;
  let real: string;
  try {
    realDir = await fs.promises.realpath(dir);
    real = await fs.promises.realpath(resolved);
  } catch {
    return { path: resolved }; // missing: the caller reports it as such
  }
  const inside = path.relative(realDir, real);
  if (inside === '' || inside === '..' || inside.startsWith(`..${path.sep}`) || path.isAbsolute(inside)) {
    return { problem: 'a symbolic link out of the weights folder' };
  }
  return { path: resolved };
}
