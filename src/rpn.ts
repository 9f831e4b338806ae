/**
 * Region proposal network (upstream `_rpn.py`, img2pose's own copy of torchvision's RPN).
 *
 *   head:  shared 3x3 conv + ReLU, then 1x1 objectness (3 per location) and 1x1 box deltas (12)
 *   post:  per image and level, top-k anchors by raw objectness logit; decode; clip to the
 *          resized image; drop tiny boxes; NMS within each level; keep the best post_nms_top_n
 *
 * The head runs on the whole batch. Everything after it is per image and uses only that image's
 * own region of each level (what the image's own padded size gives), so an image gets the same
 * proposals in a batch as alone. The post-processing is plain JS in float32 semantics
 * (Math.fround after every operation) to follow torch's float32 CPU arithmetic.
 */
import * as tf from '@tensorflow/tfjs';
import { conv } from './webgpu';
import { Img2PoseWeights } from './weights';
import { ANCHORS_PER_LOCATION, featureSizes, imageAnchors } from './anchors';
import { clipBoxesToImage, removeSmallBoxes } from './boxes';
import { batchedNms } from './nms';

const f32 = Math.fround;
const exp = Math.exp;

export interface RpnConfig {
  /** Candidates kept per level before NMS (upstream rpn_pre_nms_top_n_test). */
  preNmsTopN: number;
  /** Proposals kept per image after NMS (rpn_post_nms_top_n_test). */
  postNmsTopN: number;
  /** IoU above which NMS suppresses (rpn_nms_thresh). */
  nmsThresh: number;
  /** Boxes narrower or lower than this are dropped (RegionProposalNetwork.min_size). */
  minSize: number;
}

/** img2pose's inference settings. */
export const RPN_CONFIG: RpnConfig = { preNmsTopN: 6000, postNmsTopN: 1000, nmsThresh: 0.4, minSize: 1e-3 };

/** Upstream's BoxCoder clamp on dw, dh: log(1000 / 16), as the float32 torch compares against. */
export const BBOX_XFORM_CLIP = f32(Math.log(1000 / 16));

/** Image size as (height, width). */
export type Size = [number, number];

export interface Proposals {
  /** (x1, y1, x2, y2) per proposal, in resized-image coordinates, best first. */
  boxes: Float32Array;
  /** Raw objectness logits (no sigmoid), same order. */
  scores: Float32Array;
}

/** The head's output for one image, flattened in upstream order: level, then (y, x), then anchor. */
export interface RpnHeadOutput {
  objectness: Float32Array;
  /** (dx, dy, dw, dh) per anchor. */
  deltas: Float32Array;
  /** Anchors of each level. */
  perLevel: number[];
}

/**
 * BoxCoder.decode with weights (1, 1, 1, 1): deltas relative to anchors -> boxes.
 * Only the anchors listed in `indices` are decoded (all of them when omitted), in that order.
 */
export function decodeBoxes(deltas: Float32Array, anchors: Float32Array, indices?: ArrayLike<number>): Float32Array {
  const n = indices ? indices.length : anchors.length / 4;
  const out = new Float32Array(n * 4);
  for (let i = 0; i < n; i++) {
    const a = (indices ? indices[i] : i) * 4;
    const w = f32(anchors[a + 2] - anchors[a]);
    const h = f32(anchors[a + 3] - anchors[a + 1]);
    const cx = f32(anchors[a] + f32(0.5 * w));
    const cy = f32(anchors[a + 1] + f32(0.5 * h));
    const dw = deltas[a + 2] > BBOX_XFORM_CLIP ? BBOX_XFORM_CLIP : deltas[a + 2];
    const dh = deltas[a + 3] > BBOX_XFORM_CLIP ? BBOX_XFORM_CLIP : deltas[a + 3];
    const pcx = f32(f32(deltas[a] * w) + cx);
    const pcy = f32(f32(deltas[a + 1] * h) + cy);
    const halfW = f32(0.5 * f32(f32(exp(dw)) * w));
    const halfH = f32(0.5 * f32(f32(exp(dh)) * h));
    out[i * 4] = pcx - halfW;
    out[i * 4 + 1] = pcy - halfH;
    out[i * 4 + 2] = pcx + halfW;
    out[i * 4 + 3] = pcy + halfH;
  }
  return out;
}

/**
 * Indices of the k best objectness logits of each level (k = min(topN, level size)), levels in
 * order, each level's best first. Equal logits keep anchor order (torch.topk leaves their order
 * unspecified; exact ties between logits of different anchors are rare).
 */
export function selectTopPerLevel(objectness: Float32Array, perLevel: number[], topN: number): Int32Array {
  const picked: number[] = [];
  let offset = 0;
  for (const count of perLevel) {
    const k = Math.min(topN, count);
    const level = objectness.subarray(offset, offset + count);
    // The k-th largest value bounds the selection, so only k indices need the comparator sort.
    const sorted = Float32Array.from(level).sort();
    const bound = k > 0 ? sorted[count - k] : Infinity;
    const chosen: number[] = [];
    for (let i = 0; i < count; i++) if (level[i] > bound) chosen.push(i);
    for (let i = 0; i < count && chosen.length < k; i++) if (level[i] === bound) chosen.push(i);
    chosen.sort((p, q) => level[q] - level[p] || p - q);
    for (const i of chosen) picked.push(offset + i);
    offset += count;
  }
  return Int32Array.from(picked);
}

/**
 * Upstream filter_proposals for one image: top-k per level by logit, decode, clip to the resized
 * image, drop boxes smaller than minSize, NMS per level, keep the best postNmsTopN.
 */
export function filterProposals(
  head: RpnHeadOutput,
  anchors: Float32Array,
  imageSize: Size,
  config: RpnConfig = RPN_CONFIG,
): Proposals {
  const top = selectTopPerLevel(head.objectness, head.perLevel, config.preNmsTopN);
  const levelOf = new Int32Array(top.length);
  const levelStarts: number[] = [];
  head.perLevel.reduce((start, count) => (levelStarts.push(start), start + count), 0);
  for (let i = 0, l = 0; i < top.length; i++) {
    while (l + 1 < levelStarts.length && top[i] >= levelStarts[l + 1]) l++;
    levelOf[i] = l;
  }
  const decoded = clipBoxesToImage(decodeBoxes(head.deltas, anchors, top), imageSize[0], imageSize[1]);
  const big = removeSmallBoxes(decoded, config.minSize);
  const boxes = new Float32Array(big.length * 4);
  const scores = new Float32Array(big.length);
  const groups = new Int32Array(big.length);
  big.forEach((i, k) => {
    boxes.set(decoded.subarray(i * 4, i * 4 + 4), k * 4);
    scores[k] = head.objectness[top[i]];
    groups[k] = levelOf[i];
  });

  const keep = batchedNms(boxes, scores, groups, config.nmsThresh).slice(0, config.postNmsTopN);
  const out: Proposals = { boxes: new Float32Array(keep.length * 4), scores: new Float32Array(keep.length) };
  keep.forEach((k, i) => {
    out.boxes.set(boxes.subarray(k * 4, k * 4 + 4), i * 4);
    out.scores[i] = scores[k];
  });
  return out;
}

/** One image's own region of a level (rows/cols from 0), for images padded to a larger batch. */
interface OwnRegion {
  height: number;
  width: number;
}

function ownRegions(paddedSizes: Size[]): OwnRegion[][] {
  return paddedSizes.map(([h, w]) => featureSizes(h, w).map(([height, width]) => ({ height, width })));
}

export class RegionProposalNetwork {
  private readonly convWeight: tf.Tensor4D;
  private readonly convBias: tf.Tensor1D;
  /** cls_logits (3) and bbox_pred (12) as one 1x1 conv: channels 0..2 logits, 3..14 deltas. */
  private readonly predWeight: tf.Tensor4D;
  private readonly predBias: tf.Tensor1D;

  constructor(weights: Img2PoseWeights, readonly config: RpnConfig = RPN_CONFIG) {
    const get = (name: string): tf.Tensor => {
      const t = weights.tensors.get(name);
      if (!t) throw new Error(`RegionProposalNetwork: missing weight ${name}`);
      return t;
    };
    // Own copies, so the caller may dispose its weights map independently.
    this.convWeight = tf.clone(get('rpn.head.conv.weight')) as tf.Tensor4D;
    this.convBias = tf.clone(get('rpn.head.conv.bias')) as tf.Tensor1D;
    this.predWeight = tf.concat4d(
      [get('rpn.head.cls_logits.weight') as tf.Tensor4D, get('rpn.head.bbox_pred.weight') as tf.Tensor4D],
      3,
    );
    this.predBias = tf.concat1d([get('rpn.head.cls_logits.bias') as tf.Tensor1D, get('rpn.head.bbox_pred.bias') as tf.Tensor1D]);
  }

  /**
   * The head on every level of the batch: [N, H, W, 15] per level. Features outside an image's
   * own region are zeroed first, so the 3x3 conv at the region's border sees the zero padding a
   * single-image run sees, not the neighbouring batch padding.
   */
  head(features: tf.Tensor4D[], paddedSizes: Size[]): tf.Tensor4D[] {
    const regions = ownRegions(paddedSizes);
    return features.map((feature, level) =>
      tf.tidy(() => {
        const [n, height, width] = feature.shape;
        const x = maskOutsideRegions(feature, regions.map((r) => r[level]), n, height, width);
        const hidden = conv(x, this.convWeight, this.convBias, { stride: 1, pad: 1, relu: true });
        return conv(hidden, this.predWeight, this.predBias, { stride: 1, pad: 0, relu: false });
      }),
    );
  }

  /** Head outputs per image, own region only, flattened in upstream order. */
  async predictHead(features: tf.Tensor4D[], paddedSizes: Size[]): Promise<RpnHeadOutput[]> {
    const outputs = this.head(features, paddedSizes);
    const regions = ownRegions(paddedSizes);
    const a = ANCHORS_PER_LOCATION;
    const channels = a * 5;
    try {
      const perImage = paddedSizes.map((_, i) => {
        const perLevel = regions[i].map((r) => r.height * r.width * a);
        const total = perLevel.reduce((s, c) => s + c, 0);
        return { objectness: new Float32Array(total), deltas: new Float32Array(total * 4), perLevel };
      });
      const offsets = paddedSizes.map(() => 0);
      for (let level = 0; level < outputs.length; level++) {
        const [, height, width] = outputs[level].shape;
        const values = (await outputs[level].data()) as Float32Array;
        perImage.forEach((out, i) => {
          const { height: h, width: w } = regions[i][level];
          if (h > height || w > width) throw new Error(`RPN: image ${i} needs a ${h}x${w} level ${level}, batch has ${height}x${width}`);
          let o = offsets[i];
          for (let y = 0; y < h; y++) {
            for (let x = 0; x < w; x++) {
              const base = ((i * height + y) * width + x) * channels;
              for (let k = 0; k < a; k++, o++) {
                out.objectness[o] = values[base + k];
                for (let c = 0; c < 4; c++) out.deltas[o * 4 + c] = values[base + a + k * 4 + c];
              }
            }
          }
          offsets[i] = o;
        });
      }
      return perImage;
    } finally {
      tf.dispose(outputs);
    }
  }

  /**
   * Proposals of every image. features: the five FPN levels of the batch (NHWC); imageSizes:
   * each image's resized size; paddedSizes: each image's own padded size (multiple of 32).
   */
  async forward(features: tf.Tensor4D[], imageSizes: Size[], paddedSizes: Size[]): Promise<Proposals[]> {
    const heads = await this.predictHead(features, paddedSizes);
    return heads.map((head, i) => {
      const { anchors } = imageAnchors(paddedSizes[i][0], paddedSizes[i][1]);
      return filterProposals(head, anchors, imageSizes[i], this.config);
    });
  }

  dispose(): void {
    tf.dispose([this.convWeight, this.convBias, this.predWeight, this.predBias]);
  }
}

function maskOutsideRegions(feature: tf.Tensor4D, regions: OwnRegion[], n: number, height: number, width: number): tf.Tensor4D {
  if (regions.every((r) => r.height >= height && r.width >= width)) return feature;
  const mask = new Float32Array(n * height * width);
  regions.forEach(({ height: h, width: w }, i) => {
    for (let y = 0; y < Math.min(h, height); y++) mask.fill(1, (i * height + y) * width, (i * height + y) * width + Math.min(w, width));
  });
  return tf.mul(feature, tf.tensor4d(mask, [n, height, width, 1]));
}
