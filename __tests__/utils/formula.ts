/**
 * The formula test weights of shared/fixtures/README.md, rebuilt bit-exactly in JS.
 * One implementation for the converter tests and the model tests.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { toTfjsLayout, HostTensor } from '../../converter/layout';
import { Img2PoseWeights, ResNetDepth } from '../../src/weights';

export const FIXTURES = path.join(__dirname, '..', 'fixtures');

interface KeySpec { name: string; shape: number[]; dtype: string }
interface Gains { CLS_BIAS: number; POSE_MEAN: number[]; POSE_STDDEV: number[]; gains: Record<string, number> }

export function keySpecs(depth: ResNetDepth = 18): KeySpec[] {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, 'weights', `keys_resnet${depth}.json`), 'utf8'));
}

export function gains(): Gains {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, 'weights', 'gains.json'), 'utf8'));
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(s, 'utf8')) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h >>> 0;
}

function range(name: string, shape: number[]): [number, number] {
  const numel = shape.reduce((a, b) => a * b, 1);
  if (name.endsWith('.weight') && shape.length >= 2) {
    const a = Math.sqrt(6 / (numel / shape[0]));
    return [-a, a];
  }
  if (name.endsWith('.bias') || name.endsWith('.running_mean')) return [-0.1, 0.1];
  if (name.endsWith('.weight')) return [0.9, 1.1];
  if (name.endsWith('.running_var')) return [0.5, 1.5];
  throw new Error(`no formula range for ${name}`);
}

/** One tensor of the formula weights, torch layout. */
export function formulaTensor(name: string, shape: number[]): Float32Array {
  const g = gains();
  if (name === 'roi_heads.class_predictor.cls_score.bias') return Float32Array.from([g.CLS_BIAS, -g.CLS_BIAS]);
  const numel = shape.reduce((a, b) => a * b, 1);
  const [lo, hi] = range(name, shape);
  const gain = g.gains[name] ?? 1.0;
  const seed = fnv1a(name);
  const out = new Float32Array(numel);
  for (let i = 0; i < numel; i++) {
    let x = (seed + Math.imul(i, 0x9e3779b9)) >>> 0;
    x = (x ^ (x >>> 16)) >>> 0;
    x = Math.imul(x, 0x85ebca6b) >>> 0;
    x = (x ^ (x >>> 13)) >>> 0;
    x = Math.imul(x, 0xc2b2ae35) >>> 0;
    x = (x ^ (x >>> 16)) >>> 0;
    const u = x / 4294967296;
    out[i] = (lo + (hi - lo) * u) * gain;
  }
  return out;
}

/** The whole formula state dict in torch layout (num_batches_tracked left out). */
export function formulaStateDict(depth: ResNetDepth = 18): Map<string, HostTensor> {
  const m = new Map<string, HostTensor>();
  for (const k of keySpecs(depth)) {
    if (k.name.endsWith('num_batches_tracked')) continue;
    m.set(k.name, { shape: k.shape, data: formulaTensor(k.name, k.shape) });
  }
  return m;
}

let cached: Map<string, HostTensor> | undefined;

/** Formula weights as the model consumes them (tfjs layout, tensors on the current backend). */
export function formulaWeights(): Img2PoseWeights {
  if (!cached) {
    cached = new Map();
    for (const [name, t] of formulaStateDict(18)) cached.set(name, toTfjsLayout(t));
  }
  const g = gains();
  const tensors = new Map<string, tf.Tensor>();
  for (const [name, t] of cached) tensors.set(name, tf.tensor(t.data, t.shape, 'float32'));
  return {
    depth: 18,
    tensors,
    poseMean: Float64Array.from(g.POSE_MEAN),
    poseStddev: Float64Array.from(g.POSE_STDDEV),
  };
}
