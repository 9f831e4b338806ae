/**
 * Checks of a converted weights folder's model.json that need no file system: its fields, and its
 * manifest against the img2pose network of its depth. Shared by the Node loader, URL weights and
 * the browser build.
 */
import { WeightsError } from '../errors';
import { ResNetDepth } from '../model/weights';
import { tfjsShape } from '../../converter/axis_order';
import { FoundTensor, RESNETS, compareToSpec, describeMismatch, detectDepth, img2poseSpec, isMismatchEmpty, isModelTensor } from '../../converter/spec';
import { Img2PoseModelJson, WEIGHTS_FORMAT, WEIGHTS_FORMAT_VERSION, WeightEntryJson } from '../../converter/weights_format';

function refuse(where: string, problem: string, cause?: unknown): never {
  throw new WeightsError(`${where}: ${problem}`, { path: where, cause });
}

function isNumberArray(v: unknown, length?: number): v is number[] {
  return Array.isArray(v) && (length === undefined || v.length === length) && v.every((x) => typeof x === 'number' && Number.isFinite(x));
}

function isWeightEntry(v: unknown): v is WeightEntryJson {
  const e = v as WeightEntryJson;
  return typeof e === 'object' && e !== null && typeof e.name === 'string' && isNumberArray(e.shape) && typeof e.dtype === 'string';
}

/** Parses and checks model.json; returns it typed, or refuses. */
export function checkModelJson(jsonPath: string, text: string): Img2PoseModelJson {
  let json: Partial<Img2PoseModelJson> & { modelTopology?: unknown };
  try {
    json = JSON.parse(text);
  } catch {
    refuse(jsonPath, 'not valid JSON');
  }
  if (typeof json !== 'object' || json === null || json.format !== WEIGHTS_FORMAT || typeof json.img2pose !== 'object' || json.img2pose === null) {
    const kind = json && typeof json === 'object' && 'modelTopology' in json ? 'a tfjs model, ' : '';
    const format = json && typeof json === 'object' && typeof json.format === 'string' ? `format '${json.format}'` : 'no img2pose format tag';
    refuse(jsonPath, `not an img2pose weights file (${kind}${format}); make one with \`img2pose convert <checkpoint.pth> --out <dir>\``);
  }
  const meta = json.img2pose;
  if (typeof meta.formatVersion !== 'number' || meta.formatVersion > WEIGHTS_FORMAT_VERSION) {
    refuse(jsonPath, `written by a newer converter (format version ${String(meta.formatVersion)}, this library reads ${WEIGHTS_FORMAT_VERSION})`);
  }
  if (!(String(meta.depth) in RESNETS)) refuse(jsonPath, `unsupported ResNet depth ${String(meta.depth)} (img2pose uses 18, 50 or 101)`);
  if (!isNumberArray(meta.poseMean, 6) || !isNumberArray(meta.poseStddev, 6)) {
    refuse(jsonPath, 'img2pose.poseMean and img2pose.poseStddev must be 6 finite numbers each');
  }
  const groups = json.weightsManifest;
  if (
    !Array.isArray(groups) ||
    !groups.every((g) => Array.isArray(g?.paths) && g.paths.every((p) => typeof p === 'string') && Array.isArray(g.weights) && g.weights.every(isWeightEntry))
  ) {
    refuse(jsonPath, 'weightsManifest is missing or malformed (expected [{paths: [...], weights: [{name, shape, dtype}]}])');
  }
  return json as Img2PoseModelJson;
}

/** Names, shapes, dtypes and depth of the manifest against the architecture. */
export function checkManifestAgainstSpec(jsonPath: string, depth: ResNetDepth, entries: WeightEntryJson[]): void {
  const found = new Map<string, FoundTensor>();
  for (const e of entries) {
    if (found.has(e.name)) refuse(jsonPath, `the manifest lists ${e.name} twice`);
    found.set(e.name, { shape: e.shape, dtype: e.dtype });
  }
  const spec = img2poseSpec(depth)
    .filter((k) => isModelTensor(k.name))
    .map((k) => ({ ...k, shape: tfjsShape(k.shape) }));
  const mismatch = compareToSpec(found, spec, (_, dtype) => dtype === 'float32');
  if (isMismatchEmpty(mismatch)) return;
  const detected = detectDepth(found.keys());
  const hint =
    'depth' in detected && detected.depth !== depth
      ? ` (model.json says ResNet-${depth} but its tensors are those of ResNet-${detected.depth})`
      : '';
  refuse(jsonPath, `${describeMismatch(mismatch, `the weights manifest (ResNet-${depth})`)}${hint}`);
}
