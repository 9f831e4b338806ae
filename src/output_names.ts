/**
 * Names of files written next to each other from a list of inputs (drawings, crops): one per
 * input, never the name of a file already in the output folder nor of another output, so no
 * input and no earlier result is ever written over.
 */
import * as fs from 'fs';
import * as path from 'path';

/** The base name of `input` without its extension ('image' when nothing is left). */
export function outputStem(input: string): string {
  return path.basename(input, path.extname(input)) || 'image';
}

/**
 * One file name per input, in input order: `<stem><ext>`, or `<stem>_2<ext>`, `<stem>_3<ext>`...
 * when that name is `taken` (files already in the output folder) or given to an earlier input.
 * Names compare case-insensitively, as on the file systems of macOS and Windows.
 *
 * `x/a.png, y/a.png, z/a_2.png` -> `a.png, a_2.png, a_2_2.png`.
 */
export function uniqueOutputNames(inputs: readonly string[], ext: string, taken: Iterable<string> = []): string[] {
  const used = new Set<string>();
  for (const name of taken) used.add(name.toLowerCase());
  return inputs.map((input) => {
    const name = nextFreeName(outputStem(input), ext, used);
    used.add(name.toLowerCase());
    return name;
  });
}

/** The first of `<stem><ext>`, `<stem>_2<ext>`, ... not in `used` (lower-cased names). */
export function nextFreeName(stem: string, ext: string, used: ReadonlySet<string>): string {
  let name = `${stem}${ext}`;
  for (let k = 2; used.has(name.toLowerCase()); k++) name = `${stem}_${k}${ext}`;
  return name;
}

/**
 * The inputs that sit in `dir` itself (compared by real path, so `./x/../x` and symlinks count).
 * Inputs that do not exist are skipped: they get their own error later.
 */
export async function inputsInFolder(dir: string, inputs: readonly string[]): Promise<string[]> {
  const real = await fs.promises.realpath(dir);
  const found: string[] = [];
  const folders = new Map<string, string | undefined>();
  for (const input of inputs) {
    const parent = path.dirname(path.resolve(input));
    if (!folders.has(parent)) folders.set(parent, await fs.promises.realpath(parent).catch(() => undefined));
    if (folders.get(parent) === real) found.push(input);
  }
  return found;
}

/**
 * Writes `bytes` to a new file `name` in `dir`, never over an existing file: when `name` has
 * appeared since the names were chosen, the next free `<stem>_k<ext>` is used. Returns the path.
 */
export async function writeNewFile(dir: string, name: string, bytes: Uint8Array): Promise<string> {
  const ext = path.extname(name);
  const stem = path.basename(name, ext);
  for (let attempt = 0; ; attempt++) {
    const used = attempt === 0 ? new Set<string>() : new Set((await fs.promises.readdir(dir)).map((n) => n.toLowerCase()));
    const file = path.join(dir, attempt === 0 ? name : nextFreeName(stem, ext, used));
    try {
      await fs.promises.writeFile(file, bytes, { flag: 'wx' });
      return file;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 100) throw e;
    }
  }
}
