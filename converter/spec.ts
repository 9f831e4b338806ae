/**
 * The state-dict keys and shapes of img2pose (torchvision ResNet-FPN backbone, img2pose RPN
 * and DOF ROI heads), generated from the architecture for ResNet-18/50/101, in upstream's
 * `state_dict()` order. `__tests__/fixtures/weights/keys_resnet*.json` are the real lists.
 */
import { ResNetDepth } from './weights';

export interface KeySpec {
  name: string;
  shape: number[];
  dtype: 'float32' | 'int64';
}

interface ResNetConfig {
  bottleneck: boolean;
  /** residual blocks in layer1..layer4 */
  blocks: [number, number, number, number];
}

export const RESNETS: Record<ResNetDepth, ResNetConfig> = {
  18: { bottleneck: false, blocks: [2, 2, 2, 2] },
  50: { bottleneck: true, blocks: [3, 4, 6, 3] },
  101: { bottleneck: true, blocks: [3, 4, 23, 3] },
};

const FPN_CHANNELS = 256;
const ANCHORS_PER_LOCATION = 3;
const REPRESENTATION = 1024; // TwoMLPHead width
const POOLED = FPN_CHANNELS * 7 * 7; // MultiScaleRoIAlign 7x7 output, flattened
const POSE_HIDDEN = 256;
const NUM_CLASSES = 2;
const DOFS = 6;

function conv(name: string, out: number, inp: number, k: number): KeySpec {
  return { name: `${name}.weight`, shape: [out, inp, k, k], dtype: 'float32' };
}

function vector(name: string, n: number): KeySpec {
  return { name, shape: [n], dtype: 'float32' };
}

/** Frozen (or eval) batch norm: scale, shift and running statistics, in torch's order. */
function norm(name: string, n: number, trackBatches = false): KeySpec[] {
  const keys = ['weight', 'bias', 'running_mean', 'running_var'].map((p) => vector(`${name}.${p}`, n));
  if (trackBatches) keys.push({ name: `${name}.num_batches_tracked`, shape: [], dtype: 'int64' });
  return keys;
}

function convBias(name: string, out: number, inp: number, k: number): KeySpec[] {
  return [conv(name, out, inp, k), vector(`${name}.bias`, out)];
}

function linear(name: string, out: number, inp: number): KeySpec[] {
  return [{ name: `${name}.weight`, shape: [out, inp], dtype: 'float32' }, vector(`${name}.bias`, out)];
}

function resnetBody(cfg: ResNetConfig): { keys: KeySpec[]; stageChannels: number[] } {
  const body = 'backbone.body';
  const expansion = cfg.bottleneck ? 4 : 1;
  const keys: KeySpec[] = [conv(`${body}.conv1`, 64, 3, 7), ...norm(`${body}.bn1`, 64)];
  const stageChannels: number[] = [];
  let inplanes = 64;
  cfg.blocks.forEach((count, stage) => {
    const planes = 64 << stage;
    for (let b = 0; b < count; b++) {
      const p = `${body}.layer${stage + 1}.${b}`;
      if (cfg.bottleneck) {
        keys.push(conv(`${p}.conv1`, planes, inplanes, 1), ...norm(`${p}.bn1`, planes));
        keys.push(conv(`${p}.conv2`, planes, planes, 3), ...norm(`${p}.bn2`, planes));
        keys.push(conv(`${p}.conv3`, planes * expansion, planes, 1), ...norm(`${p}.bn3`, planes * expansion));
      } else {
        keys.push(conv(`${p}.conv1`, planes, inplanes, 3), ...norm(`${p}.bn1`, planes));
        keys.push(conv(`${p}.conv2`, planes, planes, 3), ...norm(`${p}.bn2`, planes));
      }
      // the first block of a stage projects the shortcut when stride or width changes
      if (b === 0 && (stage > 0 || inplanes !== planes * expansion)) {
        keys.push(conv(`${p}.downsample.0`, planes * expansion, inplanes, 1), ...norm(`${p}.downsample.1`, planes * expansion));
      }
      inplanes = planes * expansion;
    }
    stageChannels.push(inplanes);
  });
  return { keys, stageChannels };
}

/** Every key of the img2pose state dict for a ResNet depth, in upstream order. */
export function img2poseSpec(depth: ResNetDepth): KeySpec[] {
  const cfg = RESNETS[depth];
  if (!cfg) throw new Error(`img2pose uses ResNet-18, 50 or 101, not ${String(depth)}`);
  const { keys, stageChannels } = resnetBody(cfg);
  stageChannels.forEach((c, i) => keys.push(...convBias(`backbone.fpn.inner_blocks.${i}.0`, FPN_CHANNELS, c, 1)));
  stageChannels.forEach((_, i) => keys.push(...convBias(`backbone.fpn.layer_blocks.${i}.0`, FPN_CHANNELS, FPN_CHANNELS, 3)));
  keys.push(
    ...convBias('rpn.head.conv', FPN_CHANNELS, FPN_CHANNELS, 3),
    ...convBias('rpn.head.cls_logits', ANCHORS_PER_LOCATION, FPN_CHANNELS, 1),
    ...convBias('rpn.head.bbox_pred', ANCHORS_PER_LOCATION * 4, FPN_CHANNELS, 1),
    ...linear('roi_heads.box_head.fc6', REPRESENTATION, POOLED),
    ...linear('roi_heads.box_head.fc7', REPRESENTATION, REPRESENTATION),
    ...linear('roi_heads.box_predictor.dof_pred.0', POSE_HIDDEN, REPRESENTATION),
    ...norm('roi_heads.box_predictor.dof_pred.1', POSE_HIDDEN, true),
    ...linear('roi_heads.box_predictor.dof_pred.3', NUM_CLASSES * DOFS, POSE_HIDDEN),
    ...linear('roi_heads.class_head.fc6', REPRESENTATION, POOLED),
    ...linear('roi_heads.class_head.fc7', REPRESENTATION, REPRESENTATION),
    ...linear('roi_heads.class_predictor.cls_score', NUM_CLASSES, REPRESENTATION),
  );
  return keys;
}

/** Keys the model reads: everything but BatchNorm's training counter. */
export function isModelTensor(name: string): boolean {
  return !name.endsWith('.num_batches_tracked');
}

export type DepthDetection = { depth: ResNetDepth } | { problem: string };

/** Which ResNet the keys belong to, from the block counts per stage and the block type. */
export function detectDepth(names: Iterable<string>): DepthDetection {
  const blocks = [0, 0, 0, 0];
  let bottleneck = false;
  for (const n of names) {
    const m = /^backbone\.body\.layer([1-4])\.(\d+)\.(conv\d)\.weight$/.exec(n);
    if (!m) continue;
    const stage = Number(m[1]) - 1;
    blocks[stage] = Math.max(blocks[stage], Number(m[2]) + 1);
    if (m[3] === 'conv3') bottleneck = true;
  }
  if (blocks.every((b) => b === 0)) {
    return { problem: 'no backbone.body.layer* convolutions: not an img2pose ResNet-FPN state dict' };
  }
  for (const [d, cfg] of Object.entries(RESNETS)) {
    if (cfg.bottleneck === bottleneck && cfg.blocks.every((b, i) => b === blocks[i])) {
      return { depth: Number(d) as ResNetDepth };
    }
  }
  return {
    problem:
      `the backbone has ${bottleneck ? 'bottleneck' : 'basic'} blocks [${blocks.join(', ')}] per stage, ` +
      'which is not one of img2pose\'s ResNet-18 (basic [2, 2, 2, 2]), ResNet-50 (bottleneck [3, 4, 6, 3]) ' +
      'or ResNet-101 (bottleneck [3, 4, 23, 3])',
  };
}

export interface FoundTensor {
  shape: readonly number[];
  dtype: string;
}

export interface SpecMismatch {
  missing: KeySpec[];
  unexpected: { name: string; shape: readonly number[] }[];
  misshaped: { name: string; expected: number[]; found: readonly number[] }[];
  mistyped: { name: string; expected: string; found: string }[];
}

/**
 * Compares found tensors to the spec. `acceptDtype(spec, found)` says which stored dtypes
 * can stand for the spec's; `optional(name)` keys may be absent.
 */
export function compareToSpec(
  found: ReadonlyMap<string, FoundTensor>,
  spec: readonly KeySpec[],
  acceptDtype: (expected: KeySpec['dtype'], found: string) => boolean,
  optional: (name: string) => boolean = () => false,
): SpecMismatch {
  const m: SpecMismatch = { missing: [], unexpected: [], misshaped: [], mistyped: [] };
  const known = new Set<string>();
  for (const k of spec) {
    known.add(k.name);
    const t = found.get(k.name);
    if (!t) {
      if (!optional(k.name)) m.missing.push(k);
      continue;
    }
    if (t.shape.length !== k.shape.length || t.shape.some((n, i) => n !== k.shape[i])) {
      m.misshaped.push({ name: k.name, expected: k.shape, found: t.shape });
    } else if (!acceptDtype(k.dtype, t.dtype)) {
      m.mistyped.push({ name: k.name, expected: k.dtype, found: t.dtype });
    }
  }
  for (const [name, t] of found) if (!known.has(name)) m.unexpected.push({ name, shape: t.shape });
  return m;
}

export function isMismatchEmpty(m: SpecMismatch): boolean {
  return m.missing.length + m.unexpected.length + m.misshaped.length + m.mistyped.length === 0;
}

const LIST_LIMIT = 12;

function list<T>(items: T[], show: (t: T) => string): string {
  const shown = items.slice(0, LIST_LIMIT).map(show).join(', ');
  return items.length > LIST_LIMIT ? `${shown}, ... and ${items.length - LIST_LIMIT} more` : shown;
}

const fmtShape = (s: readonly number[]): string => `[${s.join(', ')}]`;

/** One paragraph naming every category of mismatch (long lists are cut). */
export function describeMismatch(m: SpecMismatch, what: string): string {
  const parts: string[] = [];
  if (m.missing.length) parts.push(`${m.missing.length} missing: ${list(m.missing, (k) => `${k.name} ${fmtShape(k.shape)}`)}`);
  if (m.unexpected.length) parts.push(`${m.unexpected.length} unexpected: ${list(m.unexpected, (k) => `${k.name} ${fmtShape(k.shape)}`)}`);
  if (m.misshaped.length) {
    parts.push(
      `${m.misshaped.length} with the wrong shape: ${list(m.misshaped, (k) => `${k.name} expected ${fmtShape(k.expected)}, found ${fmtShape(k.found)}`)}`,
    );
  }
  if (m.mistyped.length) {
    parts.push(`${m.mistyped.length} with the wrong dtype: ${list(m.mistyped, (k) => `${k.name} expected ${k.expected}, found ${k.found}`)}`);
  }
  return `${what} does not match img2pose: ${parts.join('; ')}`;
}
