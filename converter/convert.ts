/**
 * Checkpoint -> validated img2pose tensors in tfjs layout -> tfjs weights folder.
 *
 * Tensors are taken in the spec's (upstream) order, so the output depends only on the weights,
 * never on the container format, key prefixes or the order keys were saved in. Each tensor is
 * transposed to tfjs layout while it is copied from its storage straight into the current 4 MB
 * shard buffer: besides the checkpoint file itself, memory holds one storage and one shard.
 */
import { promises as fsp } from 'fs';
import * as path from 'path';
import { parseNpy, NpyError } from './npy';
import { CheckpointError } from './errors';
import { CheckpointFormat, LoadedCheckpoint, TorchStorage, TorchTensor, loadCheckpoint } from './checkpoint';
import { FLOAT_DTYPES, TorchDtype, firstNonFinite, gatherStrided } from './tensor_data';
import { KeySpec, compareToSpec, describeMismatch, detectDepth, img2poseSpec, isMismatchEmpty, isModelTensor } from './spec';
import { tfjsAxisOrder } from './axis_order';
import {
  Img2PoseModelJson,
  LAYOUT_DESCRIPTION,
  MODEL_JSON,
  PoseStatisticsSource,
  SHARD_BYTES,
  SHARD_PATTERN,
  WEIGHTS_FORMAT,
  WEIGHTS_FORMAT_VERSION,
  packageVersion,
  shardName,
} from './weights_format';
import { DEFAULT_POSE_MEAN, DEFAULT_POSE_STDDEV, ResNetDepth } from './weights';
import { FileReadError, readRegularFile } from './safe_read';

/** A path to a .npy file holding 6 values (any shape), or the 6 values themselves. */
export type PoseStatisticsInput = string | ArrayLike<number>;

export interface PoseStatistics {
  mean: Float64Array;
  stddev: Float64Array;
  source: PoseStatisticsSource;
}

export type Warn = (message: string) => void;

const MAX_NPY_BYTES = 64 * 1024;

export const defaultWarn: Warn = (message) => console.warn(`img2pose: warning: ${message}`);

export const DEFAULT_POSE_WARNING =
  "no pose statistics given: using upstream's defaults for custom models (mean 0,0,0,0,0,1; stddev all 1). " +
  'The official release ships pose_mean.npy and pose_stddev.npy; pass them to get its poses.';

async function readPoseVector(input: PoseStatisticsInput, what: string): Promise<{ values: Float64Array; from: string }> {
  if (typeof input !== 'string') {
    const values = Float64Array.from(Array.from(input, Number));
    if (values.length !== 6) throw new CheckpointError(`<${what}>`, `holds ${values.length} values, expected 6`);
    if (!values.every(Number.isFinite)) throw new CheckpointError(`<${what}>`, 'holds a non-finite value');
    return { values, from: 'values' };
  }
  let bytes: Uint8Array;
  try {
    // 6 values and a header: anything much larger is not a pose statistics file
    bytes = await readRegularFile(input, MAX_NPY_BYTES);
  } catch (e) {
    if (!(e instanceof FileReadError)) throw e;
    throw new CheckpointError(input, e.code === 'ENOENT' ? `no such file (${what})` : `cannot read ${what}: ${e.problem}`);
  }
  let values: Float64Array;
  let shape: number[];
  try {
    ({ data: values, shape } = parseNpy(bytes, what));
  } catch (e) {
    if (e instanceof NpyError) throw new CheckpointError(input, e.message);
    throw e;
  }
  if (values.length !== 6) {
    throw new CheckpointError(input, `${what} holds ${values.length} values (shape (${shape.join(', ')})), expected 6`);
  }
  if (!values.every(Number.isFinite)) throw new CheckpointError(input, `${what} holds a non-finite value`);
  return { values, from: path.basename(input) };
}

/** Both statistics, or upstream's defaults when neither is given (see `DEFAULT_POSE_WARNING`). */
export async function resolvePoseStatistics(
  mean: PoseStatisticsInput | undefined,
  stddev: PoseStatisticsInput | undefined,
): Promise<PoseStatistics> {
  if (mean === undefined && stddev === undefined) {
    return { mean: DEFAULT_POSE_MEAN.slice(), stddev: DEFAULT_POSE_STDDEV.slice(), source: 'defaults' };
  }
  if (mean === undefined || stddev === undefined) {
    const given = (mean ?? stddev) as PoseStatisticsInput;
    throw new CheckpointError(
      typeof given === 'string' ? given : '<pose statistics>',
      `pose mean and pose stddev go together: give both or neither (only the ${mean === undefined ? 'stddev' : 'mean'} was given)`,
    );
  }
  const m = await readPoseVector(mean, 'pose mean');
  const s = await readPoseVector(stddev, 'pose stddev');
  return { mean: m.values, stddev: s.values, source: { mean: m.from, stddev: s.from } };
}

/** One model tensor ready to copy: its storage, read through `strides` in tfjs axis order. */
export interface LayoutEntry {
  name: string;
  /** tfjs-layout shape */
  shape: number[];
  storage: TorchStorage;
  offset: number;
  /** storage strides, permuted like `shape` */
  strides: number[];
  numel: number;
}

export interface PreparedCheckpoint {
  checkpoint: LoadedCheckpoint;
  depth: ResNetDepth;
  /** The model's tensors in spec order. */
  entries: LayoutEntry[];
  /** State-dict entries present but not written (num_batches_tracked). */
  skipped: string[];
}

function acceptDtype(expected: KeySpec['dtype'], found: string): boolean {
  return expected === 'float32' ? FLOAT_DTYPES.has(found as TorchDtype) : !FLOAT_DTYPES.has(found as TorchDtype) && found !== 'bool';
}

/** Checks the state dict against img2pose's spec and lines its tensors up in tfjs layout. */
export function prepareCheckpoint(checkpoint: LoadedCheckpoint): PreparedCheckpoint {
  const { file, stateDict } = checkpoint;
  const detected = detectDepth(stateDict.keys());
  if ('problem' in detected) throw new CheckpointError(file, `cannot tell which img2pose model this is: ${detected.problem}`);
  const spec = img2poseSpec(detected.depth);
  // num_batches_tracked is a training counter the model never reads; old torch did not save it
  const mismatch = compareToSpec(stateDict, spec, acceptDtype, (name) => !isModelTensor(name));
  if (!isMismatchEmpty(mismatch)) {
    throw new CheckpointError(file, describeMismatch(mismatch, `'fpn_model' (detected ResNet-${detected.depth})`));
  }
  const entries: LayoutEntry[] = [];
  for (const k of spec) {
    if (!isModelTensor(k.name)) continue;
    const t = stateDict.get(k.name) as TorchTensor;
    const perm = tfjsAxisOrder(t.shape.length);
    entries.push({
      name: k.name,
      shape: perm.map((a) => t.shape[a]),
      storage: t.storage,
      offset: t.offset,
      strides: perm.map((a) => t.strides[a]),
      numel: t.numel,
    });
  }
  const skipped = [...stateDict.keys()].filter((n) => !isModelTensor(n));
  return { checkpoint, depth: detected.depth, entries, skipped };
}

/**
 * Visits the entries in order with their float32 storage data, letting each storage's data go
 * after its last entry: at most one storage is decoded at a time.
 */
export async function forEachEntry(
  entries: readonly LayoutEntry[],
  visit: (e: LayoutEntry, source: Float32Array) => void | Promise<void>,
): Promise<void> {
  const lastUse = new Map<TorchStorage, number>();
  entries.forEach((e, i) => lastUse.set(e.storage, i));
  for (const [i, e] of entries.entries()) {
    await visit(e, e.storage.floatData());
    if (lastUse.get(e.storage) === i) e.storage.release();
  }
}

/**
 * Row-major tfjs-layout values of one entry, in `out` (default: a fresh array); NaN or infinite
 * values are refused.
 */
export function entryValues(e: LayoutEntry, source: Float32Array, file: string, out: Float32Array = new Float32Array(e.numel)): Float32Array {
  gatherStrided(source, e.offset, e.shape, e.strides, out, 0, 0, e.numel);
  checkFiniteValues(file, e.name, out, 0, e.numel, 0);
  return out;
}

/**
 * Refuses a tensor holding NaN or infinite values (`values[from, to)` are its elements from
 * `from + elementShift`): the network would run on them and give no faces, or NaN boxes.
 */
function checkFiniteValues(file: string, name: string, values: Float32Array, from: number, to: number, elementShift: number): void {
  const at = firstNonFinite(values, from, to);
  if (at >= 0) {
    throw new CheckpointError(file, `tensor '${name}' holds ${values[at]} at element ${at + elementShift} (NaN or infinite weights: a corrupt checkpoint)`);
  }
}

export interface ConvertOptions {
  /** The .pth file (zip or legacy torch.save format). */
  checkpoint: string;
  poseMean?: PoseStatisticsInput;
  poseStddev?: PoseStatisticsInput;
  /**
   * Output folder; created if needed. The conversion is written beside it and replaces our
   * previous model.json and shards only once complete (other files in it are kept): a failure
   * leaves the folder as it was.
   */
  out: string;
  /** Receives warnings (default: console.warn). */
  warn?: Warn;
}

export interface ConversionReport {
  checkpoint: string;
  format: CheckpointFormat;
  sha256: string;
  checkpointBytes: number;
  depth: ResNetDepth;
  out: string;
  modelJson: string;
  shards: string[];
  tensors: number;
  values: number;
  bytes: number;
  poseMean: number[];
  poseStddev: number[];
  poseStatistics: PoseStatisticsSource;
  /** What the checkpoint holds that the model does not need. */
  ignored: { stateDict: string[]; topLevel: string[] };
  warnings: string[];
  seconds: number;
}

function fsProblem(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? String(e);
}

/** Our files in an output folder: what a new conversion replaces. */
function isOurFile(name: string): boolean {
  return name === MODEL_JSON || SHARD_PATTERN.test(name);
}

/**
 * The output folder as it will be replaced: its real path (a symlinked folder is replaced where
 * it points) and whether it exists. Refuses a path that is not a folder, before any work.
 */
async function resolveOutputFolder(out: string): Promise<{ target: string; exists: boolean }> {
  let st;
  try {
    st = await fsp.stat(out);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { target: path.resolve(out), exists: false };
    throw new CheckpointError(out, `cannot use as output folder (${fsProblem(e)})`);
  }
  if (!st.isDirectory()) throw new CheckpointError(out, 'output path exists and is not a folder');
  return { target: await fsp.realpath(out), exists: true };
}

/**
 * A fresh folder beside `target` (same file system, so the final rename is atomic) where the
 * conversion is written; the old output stays untouched until this one is complete.
 */
async function makeStagingFolder(out: string, target: string): Promise<string> {
  const parent = path.dirname(target);
  try {
    await fsp.mkdir(parent, { recursive: true });
    return await fsp.mkdtemp(path.join(parent, `.${path.basename(target)}.converting-`));
  } catch (e) {
    throw new CheckpointError(out, `cannot write beside the output folder (${fsProblem(e)})`);
  }
}

/**
 * Puts the complete staging folder in place of `target`. Files of the old folder that are not
 * ours (a README, the checkpoint itself...) move into the new one first; the old model.json and
 * shards are deleted only once the new folder is in place.
 */
async function replaceFolder(out: string, staging: string, target: string, exists: boolean): Promise<void> {
  const fail = (e: unknown): never => {
    throw new CheckpointError(out, `cannot replace the output folder (${fsProblem(e)}); the new conversion is in ${staging}`);
  };
  if (!exists) {
    await fsp.rename(staging, target).catch(fail);
    return;
  }
  const carried: string[] = [];
  const old = `${staging}.old`;
  try {
    for (const name of await fsp.readdir(target)) {
      if (isOurFile(name)) continue;
      await fsp.rename(path.join(target, name), path.join(staging, name));
      carried.push(name);
    }
    await fsp.rename(target, old);
  } catch (e) {
    // put back what moved: the old folder stays exactly as it was
    for (const name of carried) await fsp.rename(path.join(staging, name), path.join(target, name)).catch(() => undefined);
    fail(e);
  }
  try {
    await fsp.rename(staging, target);
  } catch (e) {
    await fsp.rename(old, target).catch(() => undefined);
    for (const name of carried) await fsp.rename(path.join(staging, name), path.join(target, name)).catch(() => undefined);
    fail(e);
  }
  await fsp.rm(old, { recursive: true, force: true });
}

/** Streams the entries into 4 MB shards; returns shard names and sizes. */
async function writeShards(out: string, entries: LayoutEntry[], file: string): Promise<{ paths: string[]; sizes: number[] }> {
  const totalValues = entries.reduce((a, e) => a + e.numel, 0);
  const perShard = SHARD_BYTES / 4;
  const count = Math.max(1, Math.ceil(totalValues / perShard));
  const shard = new Float32Array(Math.min(perShard, Math.max(totalValues, 1)));
  const paths: string[] = [];
  const sizes: number[] = [];
  let fill = 0;
  const flush = async (): Promise<void> => {
    const name = shardName(paths.length + 1, count);
    const bytes = new Uint8Array(shard.buffer, 0, fill * 4);
    try {
      await fsp.writeFile(path.join(out, name), bytes);
    } catch (e) {
      throw new CheckpointError(out, `cannot write ${name} (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
    }
    paths.push(name);
    sizes.push(bytes.length);
    fill = 0;
  };
  await forEachEntry(entries, async (e, source) => {
    let done = 0;
    while (done < e.numel) {
      const n = Math.min(e.numel - done, shard.length - fill);
      gatherStrided(source, e.offset, e.shape, e.strides, shard, fill, done, n);
      checkFiniteValues(file, e.name, shard, fill, fill + n, done - fill);
      fill += n;
      done += n;
      if (fill === shard.length) await flush();
    }
  });
  if (fill > 0 || paths.length === 0) await flush();
  return { paths, sizes };
}

/** The checkpoint's sha256 for the written record (a conversion loads it with its hash). */
function recordedHash(c: LoadedCheckpoint): string {
  if (c.sha256 === undefined) throw new Error(`${c.file}: loaded without its sha256, which a conversion records`);
  return c.sha256;
}

export function buildModelJson(
  prepared: PreparedCheckpoint,
  pose: PoseStatistics,
  shards: { paths: string[]; sizes: number[] },
): Img2PoseModelJson {
  const v = packageVersion();
  const c = prepared.checkpoint;
  return {
    format: WEIGHTS_FORMAT,
    generatedBy: `img2pose-tfjs ${v}`,
    convertedBy: `img2pose-tfjs converter ${v}`,
    img2pose: {
      formatVersion: WEIGHTS_FORMAT_VERSION,
      depth: prepared.depth,
      layout: LAYOUT_DESCRIPTION,
      poseMean: Array.from(pose.mean),
      poseStddev: Array.from(pose.stddev),
      poseStatistics: pose.source,
      source: { file: path.basename(c.file), sha256: recordedHash(c), format: c.format, bytes: c.byteLength },
      converterVersion: v,
      shardBytes: shards.sizes,
    },
    weightsManifest: [
      { paths: shards.paths, weights: prepared.entries.map((e) => ({ name: e.name, shape: e.shape, dtype: 'float32' })) },
    ],
  };
}

/** Indented JSON with arrays of numbers (shapes, statistics, sizes) kept on one line. */
export function formatJson(value: unknown): string {
  const text = JSON.stringify(value, null, 1).replace(/\[\s*([-+\d.eE,\s]*?)\s*\]/g, (_, body: string) =>
    `[${body.split(/,\s*/).filter((s) => s.length > 0).join(', ')}]`,
  );
  return `${text}\n`;
}

/** Converts an img2pose checkpoint into a tfjs weights folder. Validates everything before writing. */
export async function convertCheckpoint(options: ConvertOptions): Promise<ConversionReport> {
  const started = Date.now();
  const warnings: string[] = [];
  const warn: Warn = (m) => {
    warnings.push(m);
    (options.warn ?? defaultWarn)(m);
  };
  // bad .npy files are cheap to find: before the checkpoint is read; the defaults warning after
  const pose = await resolvePoseStatistics(options.poseMean, options.poseStddev);
  const { target, exists } = await resolveOutputFolder(options.out);
  const prepared = prepareCheckpoint(await loadCheckpoint(options.checkpoint));
  if (pose.source === 'defaults') warn(DEFAULT_POSE_WARNING);
  const staging = await makeStagingFolder(options.out, target);
  let shards: { paths: string[]; sizes: number[] };
  try {
    shards = await writeShards(staging, prepared.entries, prepared.checkpoint.file);
    const modelJson = buildModelJson(prepared, pose, shards);
    try {
      await fsp.writeFile(path.join(staging, MODEL_JSON), formatJson(modelJson));
    } catch (e) {
      throw new CheckpointError(options.out, `cannot write ${MODEL_JSON} (${fsProblem(e)})`);
    }
  } catch (e) {
    await fsp.rm(staging, { recursive: true, force: true });
    throw e;
  }
  // outside the clean-up above: once files of the old folder may have moved, nothing is deleted
  await replaceFolder(options.out, staging, target, exists);
  const modelJsonPath = path.join(options.out, MODEL_JSON);
  const c = prepared.checkpoint;
  const values = prepared.entries.reduce((a, e) => a + e.numel, 0);
  return {
    checkpoint: c.file,
    format: c.format,
    sha256: recordedHash(c),
    checkpointBytes: c.byteLength,
    depth: prepared.depth,
    out: options.out,
    modelJson: modelJsonPath,
    shards: shards.paths,
    tensors: prepared.entries.length,
    values,
    bytes: values * 4,
    poseMean: Array.from(pose.mean),
    poseStddev: Array.from(pose.stddev),
    poseStatistics: pose.source,
    ignored: { stateDict: prepared.skipped, topLevel: c.otherKeys },
    warnings,
    seconds: (Date.now() - started) / 1000,
  };
}
