/**
 * The "formula" weights of shared/fixtures/README.md: deterministic, untrained ResNet-18 img2pose
 * weights that any language rebuilds bit-for-bit from a key list and a hash. The golden
 * references were computed with them, and the demo and the benchmark use them because no trained
 * weights can be shipped. Detections made with them are meaningless.
 *
 * Everything needed ships with the library (the key list comes from the converter's architecture
 * spec, the gains from assets/formula_gains.json), so this works without the test fixtures.
 */
import { promises as fsp } from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { writeHostWeights } from '../../converter/host_folder';
import { toTfjsLayout, HostTensor } from '../../converter/layout';
import { KeySpec, img2poseSpec } from '../../converter/spec';
import { Img2PoseWeights } from '../model/weights';
import gainsJson from '../../assets/formula_gains.json';

/** What the formula needs of a state-dict key: its upstream name and torch shape. */
export type FormulaKey = Pick<KeySpec, 'name' | 'shape'>;

/** Calibration of the formula weights (assets/formula_gains.json, a copy of the fixtures' gains.json). */
export interface FormulaGains {
  /** Classifier bias override: cls_score.bias = [CLS_BIAS, -CLS_BIAS]. */
  CLS_BIAS: number;
  POSE_MEAN: number[];
  POSE_STDDEV: number[];
  /** Per-key multiplier on the uniform draw; absent keys use 1. */
  gains: Record<string, number>;
}

export const FORMULA_GAINS: FormulaGains = gainsJson;

/** The ResNet-18 img2pose state-dict keys in upstream order (the formula weights are ResNet-18). */
export const FORMULA_KEY_SPECS: readonly KeySpec[] = img2poseSpec(18);

const CLS_BIAS_KEY = 'roi_heads.class_predictor.cls_score.bias';

// Looked up once: inside a vm context (jest) every `Math.imul` lookup goes through the context's
// global object and the 40M-value loop below runs ~50x slower.
const imul = Math.imul;

/** FNV-1a 32-bit over the UTF-8 bytes of the key: the per-tensor seed. */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(s, 'utf8')) h = imul(h ^ b, 0x01000193) >>> 0;
  return h >>> 0;
}

/** The uniform range a key's values are drawn from, by parameter kind (before its gain). */
export function formulaRange(name: string, shape: number[]): [number, number] {
  const numel = shape.reduce((a, b) => a * b, 1);
  // Conv / linear weights: Kaiming-uniform-like bound on fan-in, so activations stay O(1).
  if (name.endsWith('.weight') && shape.length >= 2) {
    const a = Math.sqrt(6 / (numel / shape[0]));
    return [-a, a];
  }
  if (name.endsWith('.bias') || name.endsWith('.running_mean')) return [-0.1, 0.1];
  // What is left named `.weight` is 1-D: a norm scale, kept near 1.
  if (name.endsWith('.weight')) return [0.9, 1.1];
  if (name.endsWith('.running_var')) return [0.5, 1.5];
  throw new Error(`no formula range for ${name}`);
}

/** One tensor of the formula weights, torch layout, row-major. */
export function formulaTensor(name: string, shape: number[], gains: FormulaGains = FORMULA_GAINS): Float32Array {
  if (name === CLS_BIAS_KEY) return Float32Array.from([gains.CLS_BIAS, -gains.CLS_BIAS]);
  const numel = shape.reduce((a, b) => a * b, 1);
  const [lo, hi] = formulaRange(name, shape);
  const gain = gains.gains[name] ?? 1.0;
  const seed = fnv1a32(name);
  const out = new Float32Array(numel);
  for (let i = 0; i < numel; i++) {
    // 32-bit integer arithmetic throughout (imul), as the reference's uint32 numpy code.
    let x = (seed + imul(i, 0x9e3779b9)) >>> 0;
    x = (x ^ (x >>> 16)) >>> 0;
    x = imul(x, 0x85ebca6b) >>> 0;
    x = (x ^ (x >>> 13)) >>> 0;
    x = imul(x, 0xc2b2ae35) >>> 0;
    x = (x ^ (x >>> 16)) >>> 0;
    const u = x / 4294967296;
    // float64 arithmetic, a single rounding to float32 on store.
    out[i] = (lo + (hi - lo) * u) * gain;
  }
  return out;
}

/** A whole formula state dict in torch layout for the given key list (num_batches_tracked left out). */
export function formulaStateDictFromSpecs(
  specs: readonly FormulaKey[],
  gains: FormulaGains = FORMULA_GAINS,
): Map<string, HostTensor> {
  const m = new Map<string, HostTensor>();
  for (const k of specs) {
    if (k.name.endsWith('num_batches_tracked')) continue;
    m.set(k.name, { shape: k.shape.slice(), data: formulaTensor(k.name, k.shape, gains) });
  }
  return m;
}

/** The ResNet-18 formula state dict in torch layout. */
export function formulaStateDict(): Map<string, HostTensor> {
  return formulaStateDictFromSpecs(FORMULA_KEY_SPECS);
}

// The tfjs-layout host arrays take ~1 s to build; callers (tests, bench) ask for them repeatedly.
let hostCache: Map<string, HostTensor> | undefined;

/** The formula state dict in tfjs layout, host arrays (built once; do not modify them). */
function formulaHostTensors(): Map<string, HostTensor> {
  if (!hostCache) {
    hostCache = new Map();
    for (const [name, t] of formulaStateDict()) hostCache.set(name, toTfjsLayout(t));
  }
  return hostCache;
}

/**
 * The formula weights as the model consumes them: tfjs layout, fresh tensors on the current
 * backend (the caller owns them: `disposeWeights` or `Img2PoseModel.dispose`).
 */
export function formulaWeights(): Img2PoseWeights {
  const tensors = new Map<string, tf.Tensor>();
  for (const [name, t] of formulaHostTensors()) tensors.set(name, tf.tensor(t.data, t.shape, 'float32'));
  return {
    depth: 18,
    tensors,
    poseMean: Float64Array.from(FORMULA_GAINS.POSE_MEAN),
    poseStddev: Float64Array.from(FORMULA_GAINS.POSE_STDDEV),
  };
}

/** Said wherever the formula weights are written, so nobody takes their output for detections. */
export const FORMULA_NOTE =
  'UNTRAINED deterministic test weights ("formula" weights): every detection made with them is meaningless. ' +
  'They exist to try the API and the command line; use the official img2pose_v1 weights for real results.';

/**
 * Writes the formula weights as a normal converted weights folder (model.json + shards), loadable
 * by `Img2Pose.load({ weights: out })` and `img2pose detect --weights out`. They are UNTRAINED:
 * detections made with them are meaningless. Returns the model.json path.
 */
export async function writeFormulaWeights(out: string): Promise<string> {
  const { modelJson } = await writeHostWeights(out, {
    depth: 18,
    tensors: formulaHostTensors(),
    poseMean: FORMULA_GAINS.POSE_MEAN,
    poseStddev: FORMULA_GAINS.POSE_STDDEV,
    sourceName: 'formula (untrained test weights)',
    note: FORMULA_NOTE,
  });
  await fsp.writeFile(path.join(out, 'UNTRAINED.txt'), `${FORMULA_NOTE}\n`);
  return modelJson;
}
