/// <reference lib="dom" />
/**
 * Weights in the browser: a converted folder (model.json + its shards, as `img2pose convert`
 * writes them) read over HTTP from where the page hosts it, or from files the user picked. Checked
 * as in Node before any tensor exists: the format tag, the depth, every name and shape against the
 * architecture, every shard's size. A `.pth` checkpoint is not read here: convert it once in Node.
 */
import * as tf from '@tensorflow/tfjs';
import { WeightsError } from '../errors';
import { Img2PoseWeights, ResNetDepth } from '../model/weights';
import { tfjsShape } from '../../converter/axis_order';
import { FoundTensor, RESNETS, compareToSpec, describeMismatch, img2poseSpec, isMismatchEmpty, isModelTensor } from '../../converter/spec';
import { Img2PoseModelJson, MODEL_JSON, WEIGHTS_FORMAT, WEIGHTS_FORMAT_VERSION, WeightEntryJson } from '../../converter/weights_format';

/** Accepted for the Node signature; pose statistics come from model.json in the browser. */
export interface LoadWeightsOptions {
  poseMean?: unknown;
  poseStddev?: unknown;
  warn?: (message: string) => void;
}

function refuse(where: string, problem: string, cause?: unknown): never {
  throw new WeightsError(`${where}: ${problem}`, { path: where, cause });
}

/** Where a folder's files come from: an HTTP base URL or a set of picked files. */
interface WeightsSource {
  /** Name of model.json in messages. */
  jsonName: string;
  text(): Promise<string>;
  shard(relativePath: string): Promise<ArrayBuffer>;
}

/**
 * Weights from a URL: a converted folder (`.../img2pose_v1/`) or its `model.json`, resolved
 * against the page's address. The caller owns the returned tensors.
 */
export async function loadWeights(source: string, _options: LoadWeightsOptions = {}): Promise<Img2PoseWeights> {
  if (/\.pth$/i.test(source)) {
    refuse(source, 'PyTorch checkpoints are converted in Node, once: `npx img2pose convert <checkpoint.pth> --out <dir>`, then host that folder');
  }
  const base = (globalThis as { location?: { href: string } }).location?.href;
  const jsonUrl = new URL(/\.json$/i.test(source) ? source : `${source.replace(/\/?$/, '/')}${MODEL_JSON}`, base);
  const get = async (url: URL): Promise<Response> => {
    let response: Response;
    try {
      response = await fetch(url.href);
    } catch (e) {
      refuse(url.href, `cannot fetch (${e instanceof Error ? e.message : String(e)})`, e);
    }
    if (!response.ok) refuse(url.href, `HTTP ${response.status}${response.status === 404 ? ' (not found: is the weights folder hosted there?)' : ''}`);
    return response;
  };
  return loadFrom({
    jsonName: jsonUrl.href,
    text: async () => (await get(jsonUrl)).text(),
    shard: async (p) => (await get(new URL(p, jsonUrl))).arrayBuffer(),
  });
}

/**
 * Weights from files the user picked (an `<input type="file" multiple>` or a dropped folder):
 * `model.json` and its shards, matched by file name. The caller owns the returned tensors.
 */
export async function loadWeightsFromFiles(files: Iterable<File>): Promise<Img2PoseWeights> {
  const byName = new Map<string, File>();
  for (const f of files) byName.set(f.name, f);
  const json = byName.get(MODEL_JSON);
  if (!json) refuse('the picked files', `no ${MODEL_JSON} among them (pick the converted folder's model.json and all its .bin shards)`);
  return loadFrom({
    jsonName: MODEL_JSON,
    text: () => json.text(),
    shard: async (p) => {
      const name = p.split('/').pop() ?? p;
      const f = byName.get(name);
      if (!f) refuse(name, `missing weight shard (listed in ${MODEL_JSON}; pick it too)`);
      return f.arrayBuffer();
    },
  });
}

async function loadFrom(src: WeightsSource): Promise<Img2PoseWeights> {
  const json = checkModelJson(src.jsonName, await src.text());
  const meta = json.img2pose;
  checkManifestAgainstSpec(src.jsonName, meta.depth, json.weightsManifest.flatMap((g) => g.weights));
  const recorded = Array.isArray(meta.shardBytes) ? meta.shardBytes : [];
  const decoded: tf.NamedTensorMap = {};
  try {
    let k = 0;
    for (const [g, group] of json.weightsManifest.entries()) {
      const buffers: ArrayBuffer[] = [];
      for (const p of group.paths) {
        const b = await src.shard(p);
        const expected = recorded[k++];
        if (typeof expected === 'number' && b.byteLength !== expected) {
          refuse(p, `${b.byteLength < expected ? 'truncated' : 'oversized'} weight shard: expected ${expected} bytes, found ${b.byteLength}`);
        }
        buffers.push(b);
      }
      const held = buffers.reduce((a, b) => a + b.byteLength, 0);
      const needed = group.weights.reduce((a, w) => a + w.shape.reduce((x, y) => x * y, 1) * 4, 0);
      if (held !== needed) refuse(src.jsonName, `the shards of weight group ${g + 1} hold ${held} bytes but its tensors need ${needed}`);
      Object.assign(decoded, tf.io.decodeWeights(buffers, group.weights));
    }
  } catch (e) {
    tf.dispose(decoded);
    throw e;
  }
  const tensors = new Map<string, tf.Tensor>();
  for (const k of img2poseSpec(meta.depth)) if (isModelTensor(k.name)) tensors.set(k.name, decoded[k.name]);
  return { depth: meta.depth, tensors, poseMean: Float64Array.from(meta.poseMean), poseStddev: Float64Array.from(meta.poseStddev) };
}

function isNumberArray(v: unknown, length: number): v is number[] {
  return Array.isArray(v) && v.length === length && v.every((x) => typeof x === 'number' && Number.isFinite(x));
}

function checkModelJson(where: string, text: string): Img2PoseModelJson {
  let json: Partial<Img2PoseModelJson>;
  try {
    json = JSON.parse(text);
  } catch {
    refuse(where, 'not valid JSON (is this URL a converted weights folder?)');
  }
  if (typeof json !== 'object' || json === null || json.format !== WEIGHTS_FORMAT || typeof json.img2pose !== 'object' || json.img2pose === null) {
    refuse(where, 'not an img2pose weights file; make one with `img2pose convert <checkpoint.pth> --out <dir>`');
  }
  const meta = json.img2pose;
  if (typeof meta.formatVersion !== 'number' || meta.formatVersion > WEIGHTS_FORMAT_VERSION) {
    refuse(where, `written by a newer converter (format version ${String(meta.formatVersion)}, this library reads ${WEIGHTS_FORMAT_VERSION})`);
  }
  if (!(String(meta.depth) in RESNETS)) refuse(where, `unsupported ResNet depth ${String(meta.depth)}`);
  if (!isNumberArray(meta.poseMean, 6) || !isNumberArray(meta.poseStddev, 6)) refuse(where, 'img2pose.poseMean and img2pose.poseStddev must be 6 finite numbers each');
  const groups = json.weightsManifest;
  const entryOk = (e: WeightEntryJson): boolean => typeof e?.name === 'string' && Array.isArray(e.shape) && typeof e.dtype === 'string';
  if (!Array.isArray(groups) || !groups.every((g) => Array.isArray(g?.paths) && g.paths.every((p) => typeof p === 'string') && Array.isArray(g.weights) && g.weights.every(entryOk))) {
    refuse(where, 'weightsManifest is missing or malformed');
  }
  return json as Img2PoseModelJson;
}

function checkManifestAgainstSpec(where: string, depth: ResNetDepth, entries: WeightEntryJson[]): void {
  const found = new Map<string, FoundTensor>();
  for (const e of entries) found.set(e.name, { shape: e.shape, dtype: e.dtype });
  const spec = img2poseSpec(depth)
    .filter((k) => isModelTensor(k.name))
    .map((k) => ({ ...k, shape: tfjsShape(k.shape) }));
  const mismatch = compareToSpec(found, spec, (_, dtype) => dtype === 'float32');
  if (!isMismatchEmpty(mismatch)) refuse(where, describeMismatch(mismatch, `the weights manifest (ResNet-${depth})`));
}

// Pure checks shared with Node (weights from a URL or a tf.io handler validate with them).
export { checkManifestAgainstSpec, checkModelJson } from '../io/weights_checks';
