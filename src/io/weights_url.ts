/**
 * Weights from a URL: `http(s)://.../model.json` of a converted folder, fetched with the
 * platform's `fetch` (Node >= 18 and browsers alike), or a `file://` URL of a folder, model.json
 * or .pth. model.json is checked against the architecture before any shard is fetched, and every
 * shard must come from the folder model.json is in.
 */
import { fileURLToPath } from 'url';
import { WeightsError } from '../errors';
import { Img2PoseWeights } from '../model/weights';
import { LoadWeightsOptions, checkManifestAgainstSpec, checkModelJson, loadWeights } from './weights_io';
import { decodeShards } from './weights_shards';

/** Whether `source` is a URL this module loads (rather than a path). */
export function isWeightsUrl(source: string): boolean {
  return /^(https?|file):\/\//i.test(source);
}

export type FetchLike = (url: string, init?: { signal?: AbortSignal }) => Promise<Response>;

function refuse(where: string, problem: string, cause?: unknown): never {
  throw new WeightsError(`${where}: ${problem}`, { path: where, cause });
}

async function fetchOk(url: string, what: string, fetchFn: FetchLike): Promise<Response> {
  let res: Response;
  try {
    res = await fetchFn(url);
  } catch (e) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    refuse(url, `cannot fetch ${what} (${cause?.code ?? cause?.message ?? (e as Error).message})`, e);
  }
  if (!res.ok) refuse(url, `cannot fetch ${what}: HTTP ${res.status} ${res.statusText}`.trim());
  return res;
}

/** Loads a converted folder's model.json and shards over http(s). The caller owns the tensors. */
export async function loadWeightsFromHttp(url: string, fetchFn: FetchLike = fetch): Promise<Img2PoseWeights> {
  const res = await fetchOk(url, 'model.json', fetchFn);
  const json = checkModelJson(url, await res.text());
  const meta = json.img2pose;
  checkManifestAgainstSpec(url, meta.depth, json.weightsManifest.flatMap((g) => g.weights));
  const base = new URL('.', url);
  return decodeShards(json, {
    jsonName: url,
    shard: async (p) => {
      const shardUrl = new URL(p, base);
      // a manifest names shards beside itself: never another site or folder
      if (shardUrl.origin !== base.origin || !shardUrl.pathname.startsWith(base.pathname)) {
        refuse(url, `shard path ${JSON.stringify(p)} leaves the folder of model.json`);
      }
      return { bytes: await (await fetchOk(shardUrl.href, 'a weight shard', fetchFn)).arrayBuffer(), name: shardUrl.href };
    },
  });
}

/** Weights from an http(s):// or file:// URL. The caller owns the tensors. */
export async function loadWeightsFromUrl(url: string, options: LoadWeightsOptions = {}, fetchFn?: FetchLike): Promise<Img2PoseWeights> {
  if (/^file:/i.test(url)) {
    let file: string;
    try {
      file = fileURLToPath(url);
    } catch (e) {
      refuse(url, `not a usable file:// URL (${(e as Error).message})`, e);
    }
    return loadWeights(file, options);
  }
  return loadWeightsFromHttp(url, fetchFn);
}
