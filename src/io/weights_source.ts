/**
 * Everything `Img2Pose.load({ weights })` accepts, turned into weights on the active backend:
 *
 *   'img2pose_v1' (or nothing)     the official release: from the cache, downloaded on first use
 *   a folder / model.json / .pth   read from disk (src/io/weights_io.ts)
 *   'http(s)://…/model.json'       fetched (src/io/weights_url.ts)
 *   'file://…', a URL object       the file it names
 *   Img2PoseWeights                in memory (copied onto the active backend where elsewhere)
 *   a tf.io.IOHandler              its `load()` artifacts (e.g. tf.io.http, tf.io.browserFiles)
 *
 * Call it after the backend is chosen: tensors are made there.
 */
import { promises as fsp } from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { Img2PoseError, WeightsError } from '../errors';
import { weightsOnActiveBackend } from './tensor_home';
import { Img2PoseWeights, ResNetDepth, disposeWeights } from '../model/weights';
import { LoadWeightsOptions, checkManifestAgainstSpec, loadWeights } from './weights_io';
import { isWeightsUrl, loadWeightsFromUrl } from './weights_url';
import { RELEASE, ReleaseOptions, ensureReleaseWeights } from './weights_cache';
import { DEFAULT_POSE_WARNING, defaultWarn, resolvePoseStatistics } from '../../converter/convert';
import { CheckpointError } from '../../converter/errors';
import { RESNETS, detectDepth, img2poseSpec, isModelTensor } from '../../converter/spec';

/** The weights `load` uses when none are named: the official release. */
export const DEFAULT_WEIGHTS = RELEASE.name;

export type WeightsSource = string | URL | Img2PoseWeights | tf.io.IOHandler;

export interface OpenWeightsOptions extends LoadWeightsOptions {
  /** For the official release: cache folder, download URL, progress. */
  release?: ReleaseOptions;
}

/** Weights ready for the network, and how to free what was made for them. */
export interface OpenedWeights {
  weights: Img2PoseWeights;
  /** The file, folder or URL they came from (for error messages). */
  path: string | undefined;
  /** Frees the tensors made here (never the caller's own). */
  release(): void;
  /**
   * For weights read from local files: reads them again, with the same options and pose
   * statistics, refusing (WeightsError) when the files changed since this first read.
   */
  reopen?: () => Promise<OpenedWeights>;
}

export function isWeightsSource(w: unknown): w is WeightsSource {
  return typeof w === 'string' || w instanceof URL || isInMemoryWeights(w) || isIOHandler(w);
}

export function isInMemoryWeights(w: unknown): w is Img2PoseWeights {
  const c = w as Partial<Img2PoseWeights> | null;
  return typeof c === 'object' && c !== null && c.tensors instanceof Map && c.poseMean !== undefined;
}

function isIOHandler(w: unknown): w is tf.io.IOHandler {
  return typeof w === 'object' && w !== null && typeof (w as tf.io.IOHandler).load === 'function';
}

export async function openWeights(source: WeightsSource, options: OpenWeightsOptions = {}): Promise<OpenedWeights> {
  if (isInMemoryWeights(source)) {
    const { weights, made } = weightsOnActiveBackend(source);
    return { weights, path: undefined, release: () => tf.dispose(made) };
  }
  if (typeof source === 'string' && !isWeightsUrl(source)) return explained(source, () => openLocal(source, options));
  const loaded = await explained(sourceName(source), () => load(source, options));
  return { weights: loaded, path: sourceName(source), release: () => disposeWeights(loaded) };
}

/** A folder, model.json or .pth on this machine (the release: its cached folder). */
async function openLocal(source: string, options: OpenWeightsOptions): Promise<OpenedWeights> {
  const file = source === RELEASE.name && !(await pathExists(source)) ? await ensureReleaseWeights(options.release) : source;
  // Before the read, so that a change during it counts too; loadWeights explains a missing file.
  const stamp = await filesStamp(file).catch(() => null);
  const loaded = await loadWeights(file, options);
  const reopen = stamp === null ? undefined : reopener(source, file, stamp, options, loaded);
  return { weights: loaded, path: source, release: () => disposeWeights(loaded), reopen };
}

/**
 * `OpenedWeights.reopen` for weights first read from `file`. A function of its own: the closure
 * must not hold the first read's tensors (or their shared values) for the detector's life.
 */
function reopener(source: string, file: string, stamp: string, options: OpenWeightsOptions, first: Img2PoseWeights): () => Promise<OpenedWeights> {
  // The statistics as first resolved (they may have come from files of their own).
  const { depth, poseMean, poseStddev } = first;
  const reopen = async (): Promise<OpenedWeights> => {
    if ((await filesStamp(file)) !== stamp) {
      throw new WeightsError(`${JSON.stringify(file)} changed since the detector read it: load the detector again`, { path: file });
    }
    const again = await explained(source, () => loadWeights(file, { ...options, warn: () => undefined }));
    return { weights: { ...again, depth, poseMean, poseStddev }, path: source, release: () => disposeWeights(again), reopen };
  };
  return reopen;
}

/**
 * Size and modification time of the files weights are read from (a checkpoint, or every file of
 * a converted folder), to tell whether reading them again gives what was read before.
 */
async function filesStamp(file: string): Promise<string> {
  const stat = await fsp.stat(file);
  const folder = stat.isDirectory() ? file : file.toLowerCase().endsWith('.json') ? path.dirname(file) : null;
  if (folder === null) return `${stat.size}:${stat.mtimeMs}:${stat.ino}`;
  const names = (await fsp.readdir(folder)).sort();
  const parts: string[] = [];
  for (const name of names) {
    const s = await fsp.stat(path.join(folder, name)).catch(() => null);
    if (s?.isFile()) parts.push(`${name}:${s.size}:${s.mtimeMs}:${s.ino}`);
  }
  return parts.join('|');
}

function sourceName(source: WeightsSource): string | undefined {
  if (typeof source === 'string') return source;
  if (source instanceof URL) return source.href;
  return undefined;
}

async function load(source: Exclude<WeightsSource, Img2PoseWeights>, options: OpenWeightsOptions): Promise<Img2PoseWeights> {
  if (source instanceof URL) return loadWeightsFromUrl(source.href, options);
  if (typeof source !== 'string') return fromIOHandler(source, options);
  if (isWeightsUrl(source)) return loadWeightsFromUrl(source, options);
  if (source === RELEASE.name && !(await pathExists(source))) {
    return loadWeights(await ensureReleaseWeights(options.release), options);
  }
  return loadWeights(source, options);
}

async function pathExists(p: string): Promise<boolean> {
  return fsp.stat(p).then(
    () => true,
    () => false,
  );
}

/** Any failure as a WeightsError naming the source. */
async function explained<T>(where: string | undefined, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    if (e instanceof Img2PoseError) throw e;
    const what = where === undefined ? 'these weights' : JSON.stringify(where);
    throw new WeightsError(`Cannot load weights from ${what}: ${e instanceof Error ? e.message : String(e)}`, { path: where, cause: e });
  }
}

interface Img2PoseMetadataLike {
  depth?: unknown;
  poseMean?: unknown;
  poseStddev?: unknown;
}

/**
 * Weights from a tf.io handler's artifacts. Depth and pose statistics come from
 * `userDefinedMetadata.img2pose` when the handler gives it; else the depth is read from the
 * tensor names and the statistics from the `poseMean`/`poseStddev` options (upstream's
 * defaults, with a warning, without them).
 */
async function fromIOHandler(handler: tf.io.IOHandler, options: LoadWeightsOptions): Promise<Img2PoseWeights> {
  const where = 'tf.io handler';
  const artifacts = await (handler.load as tf.io.LoadHandler)();
  const specs = artifacts?.weightSpecs;
  const data = artifacts?.weightData;
  if (!Array.isArray(specs) || data === undefined) throw new WeightsError(`${where}: its artifacts hold no weightSpecs/weightData`);
  const meta = (artifacts.userDefinedMetadata as { img2pose?: Img2PoseMetadataLike } | undefined)?.img2pose;
  let depth: ResNetDepth;
  if (meta && String(meta.depth) in RESNETS) {
    depth = meta.depth as ResNetDepth;
  } else {
    const detected = detectDepth(specs.map((s) => s.name));
    if ('problem' in detected) throw new WeightsError(`${where}: ${detected.problem}`);
    depth = detected.depth;
  }
  checkManifestAgainstSpec(where, depth, specs.map((s) => ({ name: s.name, shape: s.shape, dtype: s.dtype as 'float32' })));
  let poseMean: Float64Array;
  let poseStddev: Float64Array;
  try {
    const given = meta && meta.poseMean !== undefined ? meta : { poseMean: options.poseMean, poseStddev: options.poseStddev };
    const pose = await resolvePoseStatistics(given.poseMean as number[] | undefined, given.poseStddev as number[] | undefined);
    if (pose.source === 'defaults') (options.warn ?? defaultWarn)(DEFAULT_POSE_WARNING);
    ({ mean: poseMean, stddev: poseStddev } = pose);
  } catch (e) {
    if (e instanceof CheckpointError) throw new WeightsError(`${where}: ${e.problem}`, { cause: e });
    throw e;
  }
  const decoded = tf.io.decodeWeights(data, specs);
  const tensors = new Map<string, tf.Tensor>();
  for (const k of img2poseSpec(depth)) if (isModelTensor(k.name)) tensors.set(k.name, decoded[k.name]);
  return { depth, tensors, poseMean, poseStddev };
}
