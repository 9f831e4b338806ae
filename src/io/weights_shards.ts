/**
 * A converted folder's tensors from its checked model.json and its shards, wherever the shards
 * come from (HTTP in Node and pages, files a page's user picked): every shard's size against the
 * one model.json records, every group's bytes against what its tensors need, then tfjs's decoder.
 */
import * as tf from '@tensorflow/tfjs-core';
import { WeightsError } from '../errors';
import { Img2PoseWeights } from '../model/weights';
import { img2poseSpec, isModelTensor } from '../../converter/spec';
import { Img2PoseModelJson } from '../../converter/weights_format';

function refuse(where: string, problem: string): never {
  throw new WeightsError(`${where}: ${problem}`, { path: where });
}

/** Where a folder's shards come from. */
export interface ShardSource {
  /** model.json's name in messages. */
  jsonName: string;
  /** The shard at `path` (as model.json lists it): its bytes and its name in messages. */
  shard(path: string): Promise<{ bytes: ArrayBuffer; name: string }>;
}

/**
 * The weights of `json` (checked with `checkModelJson` and `checkManifestAgainstSpec`), its
 * shards read from `source` in manifest order. The caller owns the tensors; none is left behind
 * when a shard is refused.
 */
export async function decodeShards(json: Img2PoseModelJson, source: ShardSource): Promise<Img2PoseWeights> {
  const meta = json.img2pose;
  const recorded = Array.isArray(meta.shardBytes) ? meta.shardBytes : [];
  const decoded: tf.NamedTensorMap = {};
  try {
    let k = 0;
    for (const [g, group] of json.weightsManifest.entries()) {
      const buffers: ArrayBuffer[] = [];
      for (const p of group.paths) {
        const { bytes, name } = await source.shard(p);
        const expected = recorded[k++];
        if (typeof expected === 'number' && bytes.byteLength !== expected) {
          refuse(
            name,
            `${bytes.byteLength < expected ? 'truncated' : 'oversized'} weight shard: expected ${expected} bytes, found ${bytes.byteLength}`,
          );
        }
        buffers.push(bytes);
      }
      const held = buffers.reduce((a, b) => a + b.byteLength, 0);
      const needed = group.weights.reduce((a, w) => a + w.shape.reduce((x, y) => x * y, 1) * 4, 0);
      if (held !== needed) refuse(source.jsonName, `the shards of weight group ${g + 1} hold ${held} bytes but its tensors need ${needed}`);
      Object.assign(decoded, tf.io.decodeWeights(buffers, group.weights));
    }
  } catch (e) {
    tf.dispose(decoded);
    throw e;
  }
  const tensors = new Map<string, tf.Tensor>();
  for (const s of img2poseSpec(meta.depth)) if (isModelTensor(s.name)) tensors.set(s.name, decoded[s.name]);
  return { depth: meta.depth, tensors, poseMean: Float64Array.from(meta.poseMean), poseStddev: Float64Array.from(meta.poseStddev) };
}
