/**
 * Loading img2pose weights from disk: a folder written by `img2pose convert` (model.json +
 * tfjs shards, read with fs and decoded by `tf.io.decodeWeights`, since tfjs' file:// handler
 * needs tfjs-node) or a PyTorch checkpoint converted in memory.
 *
 * Everything that can be checked without the tensor data is checked first (format, depth,
 * every name and shape against the architecture, every shard's size), so a bad folder is
 * refused with a `WeightsError` naming the problem before any tensor exists.
 */
import { Stats, promises as fsp } from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { WeightsError } from '../errors';
import { Img2PoseWeights } from '../model/weights';
import { CheckpointError } from '../../converter/errors';
import { firstNonFinite, sharedFloat32 } from '../../converter/tensor_data';
import { checkpointToWeights } from '../../converter/in_memory';
import { PoseStatisticsInput, Warn } from '../../converter/convert';
import { img2poseSpec, isModelTensor } from '../../converter/spec';
import { MODEL_JSON, SHARD_BYTES, WeightEntryJson } from '../../converter/weights_format';
import { FileReadError, confinedPath, readRegularFile, readRegularFileInto } from '../../converter/safe_read';
import { checkManifestAgainstSpec, checkModelJson } from './weights_checks';

export { checkManifestAgainstSpec, checkModelJson };

/** model.json is a few hundred KB; anything much larger is not ours. */
const MAX_MODEL_JSON_BYTES = 16 * 1024 * 1024;

export interface LoadWeightsOptions {
  /** For a .pth source: the release's pose_mean.npy (or 6 values). Without both, upstream's defaults. */
  poseMean?: PoseStatisticsInput;
  poseStddev?: PoseStatisticsInput;
  /** Receives warnings (default: console.warn). */
  warn?: Warn;
  /**
   * Make every tensor's values a view of one SharedArrayBuffer, read or converted straight into it
   * (on the cpu backend the tensors keep those views): a network on worker threads then shares
   * them as they are, with no other copy of the weights in this thread.
   */
  sharedValues?: boolean;
}

function refuse(where: string, problem: string, cause?: unknown): never {
  throw new WeightsError(`${where}: ${problem}`, { path: where, cause });
}

function errnoCode(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? String(e);
}

/**
 * Img2PoseWeights from a converted folder (or its model.json) or from a `.pth` checkpoint.
 * The caller owns the returned tensors.
 */
export async function loadWeights(source: string, options: LoadWeightsOptions = {}): Promise<Img2PoseWeights> {
  let isDir: boolean;
  try {
    isDir = (await fsp.stat(source)).isDirectory();
  } catch (e) {
    refuse(source, errnoCode(e) === 'ENOENT' ? 'no such weights folder or checkpoint file' : `cannot read (${errnoCode(e)})`);
  }
  const shared = options.sharedValues === true;
  if (isDir) return loadConvertedFolder(path.join(source, MODEL_JSON), shared);
  if (source.toLowerCase().endsWith('.json')) return loadConvertedFolder(source, shared);
  try {
    return await checkpointToWeights(source, options.poseMean, options.poseStddev, options.warn, shared);
  } catch (e) {
    if (e instanceof CheckpointError) refuse(e.file, e.problem, e);
    throw e;
  }
}





/**
 * Refuses weights holding NaN or infinite values, naming the first such tensor: the network
 * would run and give no faces, or NaN boxes, without a word.
 */
function checkFinite(jsonPath: string, weights: readonly WeightEntryJson[], buffers: readonly Float32Array[]): void {
  const ends: number[] = [];
  let total = 0;
  for (const w of weights) ends.push((total += w.shape.reduce((a, b) => a * b, 1)));
  let index = 0;
  let bad = -1;
  for (const values of buffers) {
    const at = firstNonFinite(values);
    if (at >= 0) {
      bad = index + at;
      break;
    }
    index += values.length;
  }
  if (bad < 0) return;
  const t = ends.findIndex((end) => bad < end);
  refuse(jsonPath, `weight ${weights[t]?.name ?? '?'} holds a NaN or infinite value (element ${bad - (t > 0 ? ends[t - 1] : 0)}); the weights are corrupt`);
}

/**
 * img2pose.shardBytes: one size per shard path, or absent (older or hand-made folders, checked
 * by the 4 MB rule instead). Anything else is refused: half-valid sizes would disable the checks.
 */
function recordedShardBytes(jsonPath: string, sizes: unknown, count: number): number[] | undefined {
  if (sizes === undefined || (Array.isArray(sizes) && sizes.length === 0)) return undefined;
  if (!Array.isArray(sizes) || sizes.length !== count || !sizes.every((n) => Number.isSafeInteger(n) && n >= 0)) {
    refuse(jsonPath, `img2pose.shardBytes must list the byte size of each of the ${count} shards`);
  }
  return sizes as number[];
}

/** `read(shard)`, any failure refused as a WeightsError naming the shard. */
async function readShard<T>(shard: string, read: (file: string) => Promise<T>): Promise<T> {
  try {
    return await read(shard);
  } catch (e) {
    refuse(shard, e instanceof FileReadError ? e.problem : `cannot read (${errnoCode(e)})`);
  }
}

function exactArrayBuffer(b: Buffer): ArrayBuffer {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) return b.buffer;
  return new Uint8Array(b).buffer;
}

async function loadConvertedFolder(jsonPath: string, shared: boolean): Promise<Img2PoseWeights> {
  const dir = path.dirname(jsonPath);
  let text: string;
  try {
    text = (await readRegularFile(jsonPath, MAX_MODEL_JSON_BYTES)).toString('utf8');
  } catch (e) {
    if (e instanceof FileReadError && e.code === 'ENOENT') {
      refuse(dir, `no ${path.basename(jsonPath)} in this folder (expected a folder written by \`img2pose convert\`)`);
    }
    refuse(jsonPath, e instanceof FileReadError ? e.problem : `cannot read (${errnoCode(e)})`);
  }
  const json = checkModelJson(jsonPath, text);
  const meta = json.img2pose;
  const entries = json.weightsManifest.flatMap((g) => g.weights);
  checkManifestAgainstSpec(jsonPath, meta.depth, entries);

  // every shard inside the folder, a regular file, present and of the size the converter
  // recorded, before reading any of them
  const shardPaths: string[][] = [];
  for (const group of json.weightsManifest) {
    const paths: string[] = [];
    for (const p of group.paths) {
      const confined = await confinedPath(dir, p);
      if ('problem' in confined) refuse(jsonPath, `shard path ${JSON.stringify(p)} is ${confined.problem}`);
      paths.push(confined.path);
    }
    shardPaths.push(paths);
  }
  const shardCount = shardPaths.reduce((a, g) => a + g.length, 0);
  const recorded = recordedShardBytes(jsonPath, meta.shardBytes, shardCount);
  let k = 0;
  const shardSizes: number[][] = [];
  for (const [g, group] of json.weightsManifest.entries()) {
    let held = 0;
    shardSizes.push([]);
    for (const [i, shard] of shardPaths[g].entries()) {
      let st: Stats;
      try {
        st = await fsp.stat(shard);
      } catch (e) {
        refuse(shard, errnoCode(e) === 'ENOENT' ? `missing weight shard (listed in ${path.basename(jsonPath)})` : `cannot read (${errnoCode(e)})`);
      }
      if (!st.isFile()) refuse(shard, 'a weight shard that is not a regular file (a folder, device, pipe or socket)');
      const size = st.size;
      const expected = recorded?.[k++];
      if (typeof expected === 'number' && size !== expected) {
        refuse(shard, `${size < expected ? 'truncated' : 'oversized'} weight shard: expected ${expected} bytes, found ${size}`);
      }
      // Without recorded sizes, shards are cut every SHARD_BYTES, as the converter (and tfjs) cut them:
      // a short shard followed by a long one would shift every tensor after it.
      if (!recorded && i < shardPaths[g].length - 1 && size !== SHARD_BYTES) {
        refuse(shard, `weight shard of ${size} bytes: without img2pose.shardBytes, every shard but the last must hold ${SHARD_BYTES}`);
      }
      held += size;
      shardSizes[g].push(size);
    }
    const needed = group.weights.reduce((a, w) => a + w.shape.reduce((x, y) => x * y, 1) * 4, 0);
    if (held !== needed) {
      refuse(jsonPath, `the shards of weight group ${g + 1} hold ${held} bytes but its tensors need ${needed} (truncated or mismatched shards)`);
    }
  }

  const decoded: tf.NamedTensorMap = {};
  const numel = (w: WeightEntryJson) => w.shape.reduce((a, b) => a * b, 1);
  const allocate = shared ? sharedFloat32(entries.reduce((a, w) => a + numel(w), 0)) : undefined;
  try {
    for (const [g, group] of json.weightsManifest.entries()) {
      if (allocate) {
        // The group's values, read shard by shard straight into shared memory (sizes checked above).
        const values = allocate(group.weights.reduce((a, w) => a + numel(w), 0));
        const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
        let at = 0;
        for (const [i, shard] of shardPaths[g].entries()) {
          const size = shardSizes[g][i];
          await readShard(shard, (s) => readRegularFileInto(s, bytes.subarray(at, at + size)));
          at += size;
        }
        checkFinite(jsonPath, group.weights, [values]);
        let offset = 0;
        for (const w of group.weights) {
          decoded[w.name] = tf.tensor(values.subarray(offset, offset + numel(w)), w.shape, 'float32');
          offset += numel(w);
        }
        continue;
      }
      const buffers: ArrayBuffer[] = [];
      for (const shard of shardPaths[g]) buffers.push(exactArrayBuffer(await readShard(shard, (s) => readRegularFile(s, SHARD_BYTES * 64))));
      checkFinite(
        jsonPath,
        group.weights,
        buffers.map((b) => new Float32Array(b, 0, Math.floor(b.byteLength / 4))),
      );
      // only what was checked reaches tfjs: extra fields (a `quantization`...) would change how bytes are read
      const specs = group.weights.map((w) => ({ name: w.name, shape: w.shape, dtype: 'float32' as const }));
      Object.assign(decoded, tf.io.decodeWeights(buffers, specs));
    }
  } catch (e) {
    tf.dispose(decoded);
    throw e;
  }
  // upstream order, as the converter wrote them and as in-memory checkpoints give them
  const tensors = new Map<string, tf.Tensor>();
  for (const k of img2poseSpec(meta.depth)) if (isModelTensor(k.name)) tensors.set(k.name, decoded[k.name]);
  return {
    depth: meta.depth,
    tensors,
    poseMean: Float64Array.from(meta.poseMean),
    poseStddev: Float64Array.from(meta.poseStddev),
  };
}
