/**
 * Writing weights that are already in memory (tfjs layout, host arrays) as a converted folder:
 * the same model.json + 4 MB shards as `convertCheckpoint` writes, for weights that never were
 * a checkpoint (the untrained formula test weights).
 */
import { createHash } from 'crypto';
import { promises as fsp } from 'fs';
import * as path from 'path';
import { HostTensor } from './layout';
import { formatJson } from './convert';
import { CheckpointError } from './errors';
import { img2poseSpec, isModelTensor } from './spec';
import { tfjsShape } from './axis_order';
import {
  Img2PoseModelJson,
  LAYOUT_DESCRIPTION,
  MODEL_JSON,
  SHARD_BYTES,
  SHARD_PATTERN,
  WEIGHTS_FORMAT,
  WEIGHTS_FORMAT_VERSION,
  packageVersion,
  shardName,
} from './weights_format';
import { ResNetDepth } from './weights';

export interface HostWeights {
  depth: ResNetDepth;
  /** tfjs layout, keyed by upstream name; every model tensor of the depth's spec. */
  tensors: ReadonlyMap<string, HostTensor>;
  poseMean: ArrayLike<number>;
  poseStddev: ArrayLike<number>;
  /** What the weights are (recorded as the folder's source file name). */
  sourceName: string;
  /** A line for whoever opens model.json (e.g. that the weights are untrained). */
  note?: string;
}

/** Writes `weights` to `out` (created; our previous model.json and shards there are replaced). */
export async function writeHostWeights(out: string, weights: HostWeights): Promise<{ modelJson: string; shards: string[] }> {
  const spec = img2poseSpec(weights.depth).filter((k) => isModelTensor(k.name));
  for (const k of spec) {
    const t = weights.tensors.get(k.name);
    const want = tfjsShape(k.shape);
    if (!t || t.shape.join() !== want.join() || t.data.length !== want.reduce((a, b) => a * b, 1)) {
      throw new CheckpointError(out, `in-memory weights lack ${k.name} of shape (${want.join(', ')}) or hold it mis-shaped`);
    }
  }
  const all = spec.map((k) => weights.tensors.get(k.name) as HostTensor);
  const totalBytes = all.reduce((a, t) => a + t.data.byteLength, 0);
  const count = Math.max(1, Math.ceil(totalBytes / SHARD_BYTES));
  try {
    await fsp.mkdir(out, { recursive: true });
    for (const name of await fsp.readdir(out)) {
      if (name === MODEL_JSON || SHARD_PATTERN.test(name)) await fsp.rm(path.join(out, name), { force: true });
    }
  } catch (e) {
    throw new CheckpointError(out, `cannot write the output folder (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }

  // The tensors back to back, cut at fixed 4 MB offsets (a tensor may span two shards).
  const shard = new Uint8Array(Math.min(SHARD_BYTES, Math.max(totalBytes, 1)));
  const paths: string[] = [];
  const sizes: number[] = [];
  const digest = createHash('sha256');
  let fill = 0;
  const flush = async (): Promise<void> => {
    const name = shardName(paths.length + 1, count);
    const bytes = shard.subarray(0, fill);
    await fsp.writeFile(path.join(out, name), bytes);
    digest.update(bytes);
    paths.push(name);
    sizes.push(bytes.length);
    fill = 0;
  };
  for (const t of all) {
    const src = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    let done = 0;
    while (done < src.length) {
      const n = Math.min(src.length - done, shard.length - fill);
      shard.set(src.subarray(done, done + n), fill);
      fill += n;
      done += n;
      if (fill === shard.length) await flush();
    }
  }
  if (fill > 0 || paths.length === 0) await flush();

  const v = packageVersion();
  const json: Img2PoseModelJson & { note?: string } = {
    format: WEIGHTS_FORMAT,
    generatedBy: `img2pose-tfjs ${v}`,
    convertedBy: `img2pose-tfjs ${v}`,
    ...(weights.note ? { note: weights.note } : {}),
    img2pose: {
      formatVersion: WEIGHTS_FORMAT_VERSION,
      depth: weights.depth,
      layout: LAYOUT_DESCRIPTION,
      poseMean: Array.from(weights.poseMean),
      poseStddev: Array.from(weights.poseStddev),
      poseStatistics: { mean: 'values', stddev: 'values' },
      // no checkpoint: the digest is that of the tensor bytes as written
      source: { file: weights.sourceName, sha256: digest.digest('hex'), format: 'generated', bytes: totalBytes },
      converterVersion: v,
      shardBytes: sizes,
    },
    weightsManifest: [{ paths, weights: spec.map((k) => ({ name: k.name, shape: tfjsShape(k.shape), dtype: 'float32' })) }],
  };
  const modelJson = path.join(out, MODEL_JSON);
  await fsp.writeFile(modelJson, formatJson(json));
  return { modelJson, shards: paths };
}
