/**
 * The `img2pose` command line: `detect` (files and folders -> JSON faces, optional drawings),
 * `convert` (a .pth checkpoint -> a tfjs weights folder, see converter/cli.ts) and `demo` (the
 * whole pipeline on a bundled photo with the untrained formula weights).
 *
 * Exit codes: 0 success, 1 a runtime failure (an image, the weights, the backend), 2 a usage
 * error. Every failure is one line on stderr, never a stack trace.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { SingleBar, Presets } from 'cli-progress';
import { runConvert } from '../converter/cli';
import { BACKEND_CHOICES, BackendChoice, selectBackend } from './runtime/backend';
import { ALIGN_SIZES, AlignSize, cropToPng } from './align';
import { DEFAULT_OPTIONS, Face, Img2Pose, LoadOptions } from './detector';
import type { ReleaseEvent } from './io/weights_cache';
import { InputError, OptionError } from './errors';
import { formulaWeights } from './io/formula_weights';
import { Shard, parseShard, startJsonlRun } from './io/jsonl';
import { JsonArrayFile, OutputPathError, onStopSignal } from './io/json_output';
import { inputsInFolder, uniqueOutputNames, writeNewFile } from './output_names';
import { registerQueueCommands } from './queue/cli';
import { addWeightsCommand } from './cli_weights';
import { visualize } from './visualize';
import { decodeBitmap, ImageInput } from './io/images';
import { packageVersion } from './package_version';

/** Where the CLI writes; tests substitute it. */
export interface CliIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Whether stderr is an interactive terminal (progress bar) and the bar's stream. */
  stderrStream?: NodeJS.WriteStream;
  stdoutIsTTY?: boolean;
}

const processIO: CliIO = {
  stdout: (t) => void process.stdout.write(t),
  stderr: (t) => void process.stderr.write(t),
  stderrStream: process.stderr,
  stdoutIsTTY: process.stdout.isTTY === true,
};

/** Folders given to `detect` contribute their files with these extensions. */
export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png'];

/** At least this many images (and stderr a terminal) before `detect` shows a progress bar. */
export const PROGRESS_MIN_IMAGES = 8;

/** A usage problem found after commander's parsing (exit code 2). */
class UsageError extends Error {}

/** The result line of one image, as written to stdout / the --json file. */
export type ImageResult = { image: string; faces: CliFace[] } | { image: string; error: string };

/** A face in the output; `crop` names its aligned crop file (with --align). */
export type CliFace = Face & { crop?: string };

/**
 * Runs the CLI on `argv` as `process.argv` gives it (node, script, args...) and resolves to the
 * exit code. It never rejects and never calls process.exit.
 */
export async function main(argv: string[], io: CliIO = processIO): Promise<number> {
  const args = argv.slice(2);
  // `convert` owns its whole argument list (its own options and help): hand it over untouched.
  if (args[0] === 'convert') {
    return guard(() => runConvert(args.slice(1), { stdout: { write: io.stdout }, stderr: { write: io.stderr } }), io);
  }

  let exitCode = 0;
  const program = buildProgram(io, (code) => {
    exitCode = code;
  });
  return guard(async () => {
    try {
      await program.parseAsync(argv, { from: 'node' });
    } catch (e) {
      if (e instanceof CommanderError) {
        // Help and version exit 0; anything commander rejects (already printed) is a usage error.
        return e.exitCode === 0 ? 0 : 2;
      }
      throw e;
    }
    return exitCode;
  }, io);
}

/** Runs `fn`, turning any exception into one line on stderr and an exit code. */
async function guard(fn: () => Promise<number>, io: CliIO): Promise<number> {
  try {
    return await fn();
  } catch (e) {
    io.stderr(`img2pose: ${oneLine(messageOf(e))}\n`);
    return isUsageError(e) ? 2 : 1;
  }
}

function isUsageError(e: unknown): boolean {
  return e instanceof UsageError || e instanceof OptionError || e instanceof InvalidArgumentError || e instanceof OutputPathError;
}

function messageOf(e: unknown): string {
  if (e instanceof Error) return e.message || e.name;
  return String(e);
}

function oneLine(s: string): string {
  return s
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .join(' ');
}

function buildProgram(io: CliIO, setExit: (code: number) => void): Command {
  const program = new Command('img2pose')
    .description('Face detection and 6DoF head pose (img2pose) on TensorFlow.js')
    .version(packageVersion(), '-V, --version', 'print the version')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout(s),
      writeErr: (s) => io.stderr(s),
      outputError: (s, write) => write(`img2pose: ${oneLine(s.replace(/^error: /, ''))} (see img2pose --help)\n`),
    });

  program
    .command('detect')
    .description('detect faces and head poses; folders expand to their .jpg/.jpeg/.png files (sorted)')
    .argument('<inputs...>', 'image files or folders')
    .option('--weights <path>', "converted weights folder, model.json, .pth, http(s)/file URL, or img2pose_v1: the official weights, downloaded and cached on first use", 'img2pose_v1')
    .option('--batch-size <k>', 'images per forward pass', positiveInt, DEFAULT_OPTIONS.batchSize)
    .option('--threshold <t>', 'minimum confidence, 0..1 (0 keeps every detection)', unitInterval, DEFAULT_OPTIONS.scoreThreshold)
    .option('--max-faces <n>', 'keep the n most confident faces per image (-1: all)', maxFaces, DEFAULT_OPTIONS.maxFaces)
    .option('--min-size <n>', 'shorter side is resized to this', positiveInt, DEFAULT_OPTIONS.minSize)
    .option('--max-size <n>', 'unless the longer side would exceed this', positiveInt, DEFAULT_OPTIONS.maxSize)
    .option('--max-pixels <n>', 'refuse images larger than this (width x height, read from the header before decoding)', positiveInt, DEFAULT_OPTIONS.maxPixels)
    .addOption(new Option('--backend <b>', 'compute backend').choices(BACKEND_CHOICES).default('auto'))
    .option('--threads <n>', "CPU threads a batch may use ('auto': IMG2POSE_THREADS or the cores; 1: none)", threadsArg, 'auto')
    .option('--json <file>', 'write the results to this file as one JSON array, kept up to date as images finish (default: a JSON line per image on stdout)')
    .option('--draw <dir>', 'write each image with its detections drawn to <dir>/<name>.png (never over an existing file: <name>_2.png...)')
    .option('--draw-into-inputs', 'allow a --draw folder that holds input images (their drawings get new names)')
    .option('--align <dir>', "write each face's aligned crop to <dir>/<name>.<k>.png (k: the face's index; never over an existing file)")
    .option('--align-size <n>', 'aligned crop side: 112 or 224 (default 224)', alignSizeArg)
    .option('--jsonl <file>', 'append a JSON line per image to this file as each finishes (a crash loses only the images in flight)')
    .option('--resume', 'with --jsonl: skip the images the file already has (same path, size and mtime), append the rest')
    .option('--shard <i/n>', 'detect only shard i of n (0 <= i < n), a stable share of the images by hashed path', parseShard)
    .option('--progress', 'show progress on stderr (the model loading, then the images) also when stderr is not a terminal')
    .addHelpText('after', '\nRequired: <inputs...> (one or more image files or folders). Every option is optional; defaults are shown.')
    .action(async (inputs: string[], opts: DetectCliOptions) => setExit(await detectCommand(inputs, opts, io)));

  program
    .command('convert')
    .description('convert a PyTorch .pth checkpoint to a tfjs weights folder (img2pose convert --help)')
    .allowUnknownOption()
    .allowExcessArguments();

  addWeightsCommand(program, io, setExit);

  program
    .command('demo')
    .description('run the pipeline on a bundled photo with UNTRAINED test weights (meaningless detections)')
    .option('--out <dir>', 'output folder for demo.png and demo.json', 'img2pose-demo')
    .addOption(new Option('--backend <b>', 'compute backend').choices(BACKEND_CHOICES).default('auto'))
    .option('--min-size <n>', 'shorter side is resized to this', positiveInt, DEFAULT_OPTIONS.minSize)
    .option('--max-size <n>', 'unless the longer side would exceed this', positiveInt, DEFAULT_OPTIONS.maxSize)
    .action(async (opts: DemoCliOptions) => setExit(await demoCommand(opts, io)));

  registerQueueCommands(program, {
    stdout: io.stdout,
    stderr: io.stderr,
    setExit,
    expandInputs,
    parse: { positiveInt, unitInterval, maxFaces, threads: threadsArg },
  });

  return program;
}

// --- option parsing ------------------------------------------------------------------------------

function positiveInt(value: string): number {
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError('expected a positive integer.');
  }
  return n;
}

function threadsArg(value: string): number | 'auto' {
  if (value.trim() === 'auto') return 'auto';
  try {
    return positiveInt(value);
  } catch {
    throw new InvalidArgumentError("expected 'auto' or a positive integer.");
  }
}

function unitInterval(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError('expected a number in 0..1.');
  return n;
}

function alignSizeArg(value: string): AlignSize {
  const n = Number(value.trim());
  if (!ALIGN_SIZES.includes(n as AlignSize)) throw new InvalidArgumentError('expected 112 or 224.');
  return n as AlignSize;
}

function maxFaces(value: string): number {
  if (value.trim() === '-1') return -1;
  try {
    return positiveInt(value);
  } catch {
    throw new InvalidArgumentError('expected -1 (all) or a positive integer.');
  }
}

// --- detect --------------------------------------------------------------------------------------

interface DetectCliOptions {
  weights: string;
  batchSize: number;
  threshold: number;
  maxFaces: number;
  minSize: number;
  maxSize: number;
  maxPixels: number;
  backend: BackendChoice;
  threads: number | 'auto';
  json?: string;
  draw?: string;
  drawIntoInputs?: boolean;
  align?: string;
  alignSize?: AlignSize;
  jsonl?: string;
  resume?: boolean;
  shard?: Shard;
  progress?: boolean;
}

/**
 * Inputs -> the image list: a folder gives its image files (by extension, sorted by name, not
 * recursive); anything else is kept as given, so a missing or unreadable file gets its own
 * error result instead of vanishing.
 */
export async function expandInputs(inputs: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const input of inputs) {
    let stat: fs.Stats | undefined;
    try {
      stat = await fs.promises.stat(input);
    } catch {
      stat = undefined;
    }
    if (!stat?.isDirectory()) {
      out.push(input);
      continue;
    }
    const names = (await fs.promises.readdir(input, { withFileTypes: true }))
      .filter((d) => !d.isDirectory() && IMAGE_EXTENSIONS.includes(path.extname(d.name).toLowerCase()))
      .map((d) => d.name)
      .sort();
    for (const name of names) out.push(path.join(input, name));
  }
  return out;
}

/** Throws an InputError naming the first input that is missing, not a file or not readable. */
export async function checkReadable(files: readonly string[]): Promise<void> {
  for (const [index, file] of files.entries()) {
    let found: string | undefined;
    try {
      const stat = await fs.promises.stat(file);
      if (!stat.isFile()) found = 'not a file';
      else await fs.promises.access(file, fs.constants.R_OK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      found = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'no permission to read it' : messageOf(e);
    }
    if (found !== undefined) {
      throw new InputError({ index: files.length > 1 ? index : undefined, input: `file "${file}"`, expected: 'a readable JPEG or PNG image file', found });
    }
  }
}

async function detectCommand(inputs: string[], opts: DetectCliOptions, io: CliIO): Promise<number> {
  const all = await expandInputs(inputs);
  if (all.length === 0) throw new UsageError(`no .jpg, .jpeg or .png images in ${inputs.join(', ')}`);
  // A path that cannot be read fails the run before the model loads (seconds, or a download).
  await checkReadable(all);
  if (opts.minSize > opts.maxSize) {
    throw new UsageError(`--min-size (${opts.minSize}) must not exceed --max-size (${opts.maxSize})`);
  }
  // --shard and --resume narrow the run; --jsonl records each image as it finishes.
  const jsonl = await startJsonlRun(all, { file: opts.jsonl, resume: opts.resume, shard: opts.shard });
  const images = jsonl.todo;
  if (jsonl.skipped > 0) io.stderr(`img2pose: skipping ${jsonl.skipped} images already in ${opts.jsonl}\n`);
  if (images.length === 0) {
    io.stderr('img2pose: nothing left to detect\n');
    return 0;
  }
  // Outputs are checked before the model loads: a bad path must not cost a run's results.
  const drawNames = opts.draw ? await prepareDrawFolder(opts.draw, images, opts.drawIntoInputs === true) : undefined;
  if (opts.alignSize !== undefined && !opts.align) throw new UsageError('--align-size needs --align <dir>');
  const cropStems = opts.align ? await prepareAlignFolder(opts.align, images) : undefined;
  const json = opts.json ? JsonArrayFile.open(opts.json) : undefined;

  const loadOptions: LoadOptions = {
    weights: opts.weights,
    backend: opts.backend,
    scoreThreshold: opts.threshold,
    maxFaces: opts.maxFaces,
    minSize: opts.minSize,
    maxSize: opts.maxSize,
    batchSize: opts.batchSize,
    threads: opts.threads,
    maxPixels: opts.maxPixels,
  };
  // Progress on stderr only, so that the JSON on stdout stays clean: on a terminal, or when asked.
  const tty = io.stderrStream?.isTTY === true;
  const status = tty || opts.progress ? new LoadStatus(io, tty, io.stderrStream?.columns) : undefined;
  if (status) loadOptions.release = { progress: (e) => status.release(e), log: (line) => status.log(line) };
  // The first chunk is decoded while the network is built on worker threads, which leave this thread idle.
  let ahead: Promise<ImageInput[]> | undefined;
  loadOptions.whileBuilding = () => {
    ahead = decodeAhead(images.slice(0, opts.batchSize), opts.maxPixels);
  };
  let done = 0;
  let bar: SingleBar | undefined;
  let lines: ((done: number) => void) | undefined;
  // A stop keeps what was done: the JSON file already holds every finished chunk.
  const removeSignalHandlers = onStopSignal((signal) => {
    bar?.stop();
    json?.abandon();
    const kept = json && json.length > 0 ? `; ${json.length} results are in ${opts.json}` : '';
    io.stderr(`img2pose: stopped by ${signal} after ${done} of ${images.length} images${kept}\n`);
  });
  let failures = 0;
  try {
    let detector: Img2Pose;
    status?.start(`loading the model (weights ${opts.weights}, backend ${opts.backend})`);
    try {
      detector = await Img2Pose.load(loadOptions);
    } finally {
      status?.stop();
    }
    status?.loaded(detector);
    bar = progressBar(images.length, opts.json !== undefined, io, opts.progress === true);
    // --progress on a pipe: a line per chunk instead of a bar.
    if (!bar && opts.progress && !tty) lines = (n) => io.stderr(`img2pose: ${n}/${images.length} images\n`);
    try {
      for (let start = 0; start < images.length; start += opts.batchSize) {
        const chunk = images.slice(start, start + opts.batchSize);
        // One settled call per chunk: a bad file fails alone, and results stream out chunk by chunk.
        const settled = await detector.detectFacesSettled(start === 0 && ahead ? await ahead : chunk);
        const results: ImageResult[] = [];
        for (let i = 0; i < chunk.length; i++) {
          const s = settled[i];
          const image = chunk[i];
          let result: ImageResult;
          if (s.ok) {
            result = { image, faces: s.faces };
            if (opts.draw && drawNames) {
              try {
                await writeNewFile(opts.draw, drawNames[start + i], await visualize(image, s.faces, { maxPixels: opts.maxPixels }));
              } catch (e) {
                failures++;
                io.stderr(`img2pose: cannot draw ${image}: ${oneLine(messageOf(e))}\n`);
              }
            }
            if (opts.align && cropStems) {
              try {
                result.faces = await writeCrops(detector, image, s.faces, opts.align, cropStems[start + i], opts.alignSize);
              } catch (e) {
                failures++;
                io.stderr(`img2pose: cannot align ${image}: ${oneLine(messageOf(e))}\n`);
              }
            }
          } else {
            failures++;
            // The library locates errors within the chunk it was given; the user counts inputs.
            const error = s.error instanceof InputError ? s.error.atIndex(start + i) : s.error;
            result = { image, error: oneLine(error.message) };
          }
          results.push(result);
          await jsonl.append(result);
          if (!json && !opts.jsonl) io.stdout(`${JSON.stringify(result)}\n`);
        }
        json?.append(results);
        done = start + chunk.length;
        bar?.update(Math.min(images.length, done));
        lines?.(done);
      }
    } finally {
      bar?.stop();
      await jsonl.close();
      await detector.dispose();
    }
  } catch (e) {
    json?.abandon();
    throw e;
  } finally {
    removeSignalHandlers();
  }
  if (json) {
    json.close();
    io.stderr(`img2pose: wrote ${json.length} results to ${opts.json}${failures ? ` (${failures} failed)` : ''}\n`);
  }
  return failures > 0 ? 1 : 0;
}

/**
 * `files` decoded to their pixels, one after another; a file that does not decode stays its path,
 * for the detector to report as it would have.
 */
async function decodeAhead(files: readonly string[], maxPixels: number): Promise<ImageInput[]> {
  const out: ImageInput[] = [];
  for (const file of files) {
    try {
      const { data, width, height } = await decodeBitmap(file, undefined, { maxPixels });
      out.push({ data, width, height, channels: 4 });
    } catch {
      out.push(file);
    }
  }
  return out;
}

/**
 * Creates the --draw folder and names each image's drawing there, never the name of a file it
 * already holds. A folder holding input images is refused unless asked for: drawings mixed
 * with the photos would be taken as inputs by the next run on that folder.
 */
async function prepareDrawFolder(dir: string, images: readonly string[], intoInputs: boolean): Promise<string[]> {
  try {
    await fs.promises.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new OutputPathError(dir, `cannot create the --draw folder (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  if (!intoInputs) {
    const inside = await inputsInFolder(dir, images);
    if (inside.length > 0) {
      throw new UsageError(
        `the --draw folder ${dir} holds input images (${inside.slice(0, 3).join(', ')}${inside.length > 3 ? ', ...' : ''}); ` +
          'choose another folder, or pass --draw-into-inputs to draw there under new names',
      );
    }
  }
  return uniqueOutputNames(images, '.png', await fs.promises.readdir(dir));
}

/**
 * Creates the --align folder and picks each image's crop stem: crops are `<stem>.<k>.png`, and
 * no stem is one whose crops are already in the folder or another image's (same-named images from
 * different folders get `<name>_2`, ...). A folder holding input images is refused, as for --draw.
 */
async function prepareAlignFolder(dir: string, images: readonly string[]): Promise<string[]> {
  try {
    await fs.promises.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new OutputPathError(dir, `cannot create the --align folder (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  const inside = await inputsInFolder(dir, images);
  if (inside.length > 0) {
    throw new UsageError(
      `the --align folder ${dir} holds input images (${inside.slice(0, 3).join(', ')}${inside.length > 3 ? ', ...' : ''}); choose another folder`,
    );
  }
  // k has no dot, so the stem of `<stem>.<k>.png` is everything before the last number.
  const taken = (await fs.promises.readdir(dir)).flatMap((name) => /^(.*)\.\d+\.png$/i.exec(name)?.[1] ?? []);
  return uniqueOutputNames(images, '', taken);
}

/** Aligns `faces` of `image` and writes `<dir>/<stem>.<k>.png`; the faces with their files. */
async function writeCrops(detector: Img2Pose, image: string, faces: Face[], dir: string, stem: string, size?: AlignSize): Promise<CliFace[]> {
  const crops = await detector.alignFaces(image, faces, { size });
  const out: CliFace[] = [];
  for (let k = 0; k < faces.length; k++) {
    out.push({ ...faces[k], crop: await writeNewFile(dir, `${stem}.${k}.png`, await cropToPng(crops[k].image)) });
  }
  return out;
}

function progressBar(total: number, stdoutFree: boolean, io: CliIO, asked: boolean): SingleBar | undefined {
  const stream = io.stderrStream;
  // Only on a terminal, and not when JSON lines would interleave with it on the same screen.
  if ((total < PROGRESS_MIN_IMAGES && !asked) || !stream?.isTTY || (io.stdoutIsTTY && !stdoutFree)) return undefined;
  const bar = new SingleBar(
    { stream, format: 'img2pose |{bar}| {value}/{total} images | {eta_formatted} left', hideCursor: true },
    Presets.shades_classic,
  );
  bar.start(total, 0);
  return bar;
}

/**
 * What `detect` shows on stderr while the model loads (the official weights' download and
 * conversion included): on a terminal, one line redrawn in place with the phase and the seconds
 * so far; otherwise (--progress) a line per phase and per tenth of a download. Then one line
 * saying where the model runs and how long loading took.
 */
class LoadStatus {
  private phase = '';
  private readonly started = Date.now();
  private timer: ReturnType<typeof setInterval> | undefined;
  private downloadTenth = -1;
  private drawn = false;

  constructor(
    private readonly io: CliIO,
    private readonly tty: boolean,
    private readonly columns = 80,
  ) {}

  start(phase: string): void {
    this.set(phase);
    if (this.tty) {
      this.timer = setInterval(() => this.draw(), 250);
      // The redraw must not keep the process alive should loading end in an uncaught way.
      this.timer.unref();
    }
  }

  /** A notice that stays (the release's licence and cache lines). */
  log(line: string): void {
    this.clear();
    this.io.stderr(`img2pose: ${line}\n`);
    if (this.timer) this.draw();
  }

  release(e: ReleaseEvent): void {
    if (e.phase === 'wait') this.set(`waiting for ${e.holder}, which is installing the weights in the cache`);
    else if (e.phase === 'convert') this.set('converting the official weights');
    else if (e.phase === 'done') this.set('loading the model');
    else {
      const mb = (bytes: number): string => (bytes / 1e6).toFixed(0);
      const text = `downloading the official weights: ${mb(e.received)}${e.total !== undefined ? ` of ${mb(e.total)}` : ''} MB`;
      if (this.tty) {
        this.phase = text; // drawn by the timer: a redraw per network chunk would flood the terminal
        return;
      }
      const tenth = e.total ? Math.floor((10 * e.received) / e.total) : Math.floor(e.received / 20e6);
      if (tenth !== this.downloadTenth) this.set(text);
      this.downloadTenth = tenth;
    }
  }

  /** Loading is over (loaded or failed): the redrawn line goes. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.clear();
  }

  loaded(detector: Img2Pose): void {
    const threads = `${detector.threads} thread${detector.threads === 1 ? '' : 's'}`;
    this.io.stderr(`img2pose: model loaded on ${detector.backend} (${threads}) in ${this.seconds()} s\n`);
  }

  private set(phase: string): void {
    this.phase = phase;
    if (this.tty) this.draw();
    else this.io.stderr(`img2pose: ${phase}\n`);
  }

  private seconds(): string {
    return ((Date.now() - this.started) / 1000).toFixed(1);
  }

  private draw(): void {
    // One terminal row: a longer line would wrap, and \r returns to its last row only.
    const line = `img2pose: ${this.phase}... ${this.seconds()} s`.slice(0, Math.max(20, this.columns - 1));
    this.io.stderr(`\r\x1b[K${line}`);
    this.drawn = true;
  }

  private clear(): void {
    if (!this.drawn) return;
    this.io.stderr('\r\x1b[K');
    this.drawn = false;
  }
}

// --- demo ----------------------------------------------------------------------------------------

interface DemoCliOptions {
  out: string;
  backend: BackendChoice;
  minSize: number;
  maxSize: number;
}

/** The bundled demo photo (assets/teaser.jpg; see assets/CREDITS.md for source and licence). */
export const DEMO_IMAGE = 'teaser.jpg';

/** A file of the package's assets/ folder, found from src/ (ts-node, jest) or dist/src/ alike. */
export function assetPath(name: string): string {
  let dir = __dirname;
  for (let up = 0; up < 4; up++) {
    const candidate = path.join(dir, 'assets', name);
    if (fs.existsSync(candidate)) return candidate;
    dir = path.dirname(dir);
  }
  throw new Error(`the package's assets/${name} is missing (a broken install?)`);
}

async function demoCommand(opts: DemoCliOptions, io: CliIO): Promise<number> {
  if (opts.minSize > opts.maxSize) {
    throw new UsageError(`--min-size (${opts.minSize}) must not exceed --max-size (${opts.maxSize})`);
  }
  const image = assetPath(DEMO_IMAGE);
  io.stderr(
    'img2pose demo: the weights are the UNTRAINED deterministic "formula" test weights (no trained\n' +
      'weights ship with this package), so the detections below are meaningless: the demo only shows\n' +
      'that the whole pipeline runs. Use `img2pose detect --weights <converted folder>` for real results.\n',
  );
  const started = Date.now();
  // The backend first, so that the in-memory weights are created where they will be used.
  const backend = (await selectBackend(opts.backend)) as BackendChoice;
  const detector = await Img2Pose.load({
    weights: formulaWeights(),
    backend,
    minSize: opts.minSize,
    maxSize: opts.maxSize,
    // One image: worker threads would only add their start-up.
    threads: 1,
  });
  let faces: Face[];
  try {
    faces = await detector.detectFaces(image);
  } finally {
    await detector.dispose();
  }
  await fs.promises.mkdir(opts.out, { recursive: true });
  const png = path.join(opts.out, 'demo.png');
  const json = path.join(opts.out, 'demo.json');
  await visualize(image, faces, { out: png });
  const record = {
    image: path.relative(process.cwd(), image) || image,
    weights: 'formula (untrained test weights: detections are meaningless)',
    backend: detector.backend,
    minSize: opts.minSize,
    maxSize: opts.maxSize,
    faces,
  };
  await fs.promises.writeFile(json, `${JSON.stringify(record, null, 2)}\n`);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  io.stdout(
    `${faces.length} face${faces.length === 1 ? '' : 's'} above ${detector.options.scoreThreshold} ` +
      `(untrained weights: meaningless) in ${seconds} s on ${detector.backend}; wrote ${png} and ${json}\n`,
  );
  return 0;
}
