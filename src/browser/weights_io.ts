/// <reference lib="dom" />
/**
 * Weights in the browser: a converted folder (model.json + its shards, as `img2pose convert`
 * writes them) read over HTTP from where the page hosts it, or from files the user picked. Checked
 * as in Node before any tensor exists: the format tag, the depth, every name and shape against the
 * architecture, every shard's size. A `.pth` checkpoint is not read here: convert it once in Node.
 */
import { WeightsError } from '../errors';
import { Img2PoseWeights } from '../model/weights';
import { MODEL_JSON } from '../../converter/weights_format';
import { checkManifestAgainstSpec, checkModelJson } from '../io/weights_checks';
import { decodeShards } from '../io/weights_shards';

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
  checkManifestAgainstSpec(src.jsonName, json.img2pose.depth, json.weightsManifest.flatMap((g) => g.weights));
  return decodeShards(json, { jsonName: src.jsonName, shard: async (p) => ({ bytes: await src.shard(p), name: p }) });
}

// Pure checks shared with Node (weights from a URL or a tf.io handler validate with them).
export { checkManifestAgainstSpec, checkModelJson };
