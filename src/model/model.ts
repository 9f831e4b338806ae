import * as tf from '@tensorflow/tfjs-core';
import { Backbone, RowShare } from './backbone';
import { BOX_SCORE_THRESH, PostprocessInput } from './postprocess';
import { REFERENCE_POINTS_68 } from './reference_points';
import { multiScaleRoIAlign, multiScaleRoIAlignInto, RoIAlignMethod, ROI_OUTPUT_SIZE } from './roi_align';
import { HeadsOffload, PooledRowSource, RoIHeadOutputs, RoIHeads } from './roi_heads';
import { Proposals, RegionProposalNetwork, RPN_CONFIG, RpnOffload } from './rpn';
import type { ProposalJob } from '../ops/proposals';
import { copyValuesInto, ModelRuntime, TensorMemory } from './runtime';
import { imageSizeOf, NetworkImage, paddedSize, prepareBatchAsync, resizedSize } from './transform';
import { Size } from '../ops/size';
import { Img2PoseWeights } from './weights';

/** Sizes of the input transform (upstream's min_size / max_size). */
export interface ModelConfig {
  minSize: number;
  maxSize: number;
}

/**
 * The network's output for one image, after upstream's ROI post-processing and final NMS:
 * boxes in ORIGINAL image coordinates (N*4, x1 y1 x2 y2), scores (N), global dofs (N*6:
 * rx ry rz tx ty tz, float32 as upstream returns them). Every detection with score > 0.05 is
 * kept; thresholds are the detector's job.
 */
export interface RawDetections {
  boxes: Float32Array;
  scores: Float32Array;
  dofs: Float32Array | Float64Array;
}

/** Wall-clock milliseconds per stage of one `predict`, summed over the call. */
export interface StageTimings {
  transform: number;
  backbone: number;
  /** RPN head and its readback. */
  rpn: number;
  /** Proposal filtering on the host (top-k, decode, NMS). */
  proposals: number;
  roiAlign: number;
  heads: number;
  postprocess: number;
}

export function emptyTimings(): StageTimings {
  return { transform: 0, backbone: 0, rpn: 0, proposals: 0, roiAlign: 0, heads: 0, postprocess: 0 };
}

export interface PredictOptions {
  /** When given, stage times are added to it. Profiling waits for the device after each stage. */
  profile?: StageTimings;
  /**
   * Groups larger than this are split into sub-batches of at most this many images whose
   * forwards overlap (see `predict`). Default: SUBBATCH_OVERLAP where the backend queues work
   * asynchronously (GPU backends), 0 (off) on CPU backends, where it would only raise memory.
   * Ignored while profiling.
   */
  overlap?: number;
  /**
   * Another thread that may take part of each forward while this one runs the rest (an idle
   * worker on the CPU backends): for one image, the lower rows of FPN level 0's output conv and
   * RPN head (`level0`; else the RPN head's largest level), and a share (about half) of each
   * image's RoI-head rows. The results are the same bits.
   */
  offload?: HeadsOffload & RpnOffload & Partial<Level0Offload & BodyOffload>;
}

/** The ResNet body of one image shared by rows with another thread (Backbone.bodyShared). */
export interface BodyOffload {
  /**
   * Asks another thread now to run part 1 of `Backbone.bodyShared` on an image of `shape`, with
   * maps of up to `mapFloats` values: returns this thread's side of the exchange (part 0, over
   * `memory`), and the request, settled once the other thread is done with it (at once when none
   * is free: the exchange then finds the other part gone).
   */
  body(shape: [number, number, number, number], mapFloats: number, memory: TensorMemory): { share: RowShare & { leave(): void }; done: Promise<unknown> };
}

/**
 * The largest map (values) whose body is shared by rows: the exchange holds two maps in shared
 * memory (64 MB at this size, a 1408x1408 input: maxSize 1400) for the worker's life. Larger
 * inputs run their body on one thread.
 */
export const BODY_SHARE_MAX_FLOATS = 8 << 20;

/** FPN level 0's output conv and RPN head on the lower band of an image's rows, by another thread. */
export interface Level0Offload {
  /**
   * `level0Band(inner)` there, for rows `[r - LEVEL0_HALO, H)` of level 0's inner map [1, H, W, C]
   * (in `sharedBuffer` memory): null when no thread is free now, or the one that took it stopped.
   */
  level0(band: { data: Float32Array; shape: [number, number, number, number] }): Promise<Level0Band | null>;
}

/** Rows `[r, H)` of FPN level 0 ([rows, W, 256]) and of the RPN head on it ([rows, W, 15]). */
export interface Level0Band {
  fpn: Float32Array;
  head: Float32Array;
}

/**
 * Rows above a band that its two 3x3 convs (FPN output, RPN head) need: one Winograd F(4x4) tile
 * row each, since a conv's output is exact from the band's second tile row on (see
 * Backbone.outerLevel0).
 */
export const LEVEL0_HALO = 8;

/**
 * The share of level 0's rows the other thread takes: it runs only level 0's two convs on its
 * band while this thread runs its own band and every other level (~1/3 of level 0's work again).
 */
const LEVEL0_AWAY_SHARE = 0.65;

/** The first row of the other thread's band of level 0 (a multiple of 4), or 0 when the map is too small to share. */
export function level0Cut(height: number): number {
  const cut = 4 * Math.round((height * (1 - LEVEL0_AWAY_SHARE)) / 4);
  return cut >= LEVEL0_HALO && cut + LEVEL0_HALO <= height - 4 ? cut : 0;
}

/**
 * tfjs env flag: run the pose branch of the ROI heads only for rows above the 0.05 score filter
 * (see RoIHeads.forward). On by default; results are the same either way, so it exists for
 * measurements.
 */
export const POSE_GATING_FLAG = 'IMG2POSE_POSE_GATING';
// Registered once per tfjs instance, also when this module is bundled twice.
if (!(POSE_GATING_FLAG in (tf.env() as unknown as { flagRegistry: object }).flagRegistry)) {
  tf.env().registerFlag(POSE_GATING_FLAG, () => true);
}

/** Sub-batch size for overlapping forwards on GPU backends (measured on an H200: docs/webgpu.md). */
export const SUBBATCH_OVERLAP = 4;

/**
 * Forwards a detector may run at once on GPU backends (`concurrentForwards`): on an H100 a stream
 * of single images of random sizes took 13.0 ms per image with two predicts in flight against
 * 18.3 one at a time, and through `detectFaces` with two callers 25.7 against 36.5 on a slower
 * host (docs/benchmarks.md).
 */
export const CONCURRENT_FORWARDS = 2;

/** Groups consecutive images so each group's proposals fit the ROI chunk limit. */
function chunkImages(counts: number[], limit: number): number[][] {
  const chunks: number[][] = [];
  let current: number[] = [];
  let rois = 0;
  counts.forEach((n, i) => {
    if (current.length > 0 && rois + n > limit) {
      chunks.push(current);
      current = [];
      rois = 0;
    }
    current.push(i);
    rois += n;
  });
  if (current.length > 0) chunks.push(current);
  return chunks;
}

/** Padding a group may add over its images' own padded areas before a new group is started. */
const MAX_PADDING_OVERHEAD = 0.25;

/**
 * Splits image indices into forwards: sorted by padded size (largest first), a group grows while
 * its stacked area (count x max H x max W) stays within `budget` and within 25% of the images'
 * own areas. A single image larger than the budget still runs, alone.
 */
export function groupBySize(padded: Size[], budget: number): number[][] {
  const order = padded.map((_, i) => i).sort((a, b) => padded[b][0] * padded[b][1] - padded[a][0] * padded[a][1] || padded[b][0] - padded[a][0] || a - b);
  const groups: number[][] = [];
  let group: number[] = [];
  let maxH = 0;
  let maxW = 0;
  let ownArea = 0;
  for (const i of order) {
    const [h, w] = padded[i];
    const nh = Math.max(maxH, h);
    const nw = Math.max(maxW, w);
    const stacked = (group.length + 1) * nh * nw;
    const own = ownArea + h * w;
    if (group.length > 0 && (stacked > budget || stacked > own * (1 + MAX_PADDING_OVERHEAD))) {
      groups.push(group);
      group = [];
      maxH = 0;
      maxW = 0;
      ownArea = 0;
    }
    group.push(i);
    maxH = Math.max(maxH, h);
    maxW = Math.max(maxW, w);
    ownArea += h * w;
  }
  if (group.length > 0) groups.push(group);
  return groups;
}

/** Every image's boxes among rows `start` .. `start + count` of the images' proposals laid end to end. */
function boxesInRows(proposals: Proposals[], start: number, count: number): Float32Array[] {
  let first = 0;
  return proposals.map((p) => {
    const n = p.boxes.length / 4;
    const from = Math.min(Math.max(start - first, 0), n);
    const to = Math.min(Math.max(start + count - first, 0), n);
    first += n;
    return p.boxes.subarray(from * 4, to * 4);
  });
}

/** Heads outputs of rows laid end to end, split into each image's (`counts` rows each). */
function splitRows(heads: RoIHeadOutputs, counts: number[]): RoIHeadOutputs[] {
  let row = 0;
  return counts.map((n) => {
    const out = { classLogits: heads.classLogits.subarray(row * 2, (row + n) * 2), dofRegression: heads.dofRegression.subarray(row * 12, (row + n) * 12) };
    row += n;
    return out;
  });
}

/** A group's sub-batches for `overlap` (see PredictOptions.overlap). */
function splitForOverlap(group: number[], overlap: number): number[][] {
  if (!(Number.isInteger(overlap) && overlap >= 0)) throw new RangeError(`overlap must be an integer >= 0, got ${JSON.stringify(overlap)}`);
  return overlap > 0 ? splitEvenly(group, overlap) : [group];
}

/** `group` in consecutive parts of at most `size`, as equal as possible. */
export function splitEvenly(group: number[], size: number): number[][] {
  const parts = Math.ceil(group.length / size);
  const out: number[][] = [];
  for (let p = 0, start = 0; p < parts; p++) {
    const end = start + Math.ceil((group.length - start) / (parts - p));
    out.push(group.slice(start, end));
    start = end;
  }
  return out;
}

/** Waits until the work queued so far has run (a 1-element readback), for honest stage times. */
async function settle(t: tf.Tensor): Promise<void> {
  const probe = tf.tidy(() => tf.slice(tf.reshape(t, [-1]), 0, 1));
  await probe.data();
  probe.dispose();
}

/**
 * The img2pose network, upstream's FasterDoFRCNN in inference mode (torchvision's
 * GeneralizedRCNN): transform -> ResNet-FPN backbone -> RPN -> MultiScaleRoIAlign + box/class heads
 * -> pose post-processing.
 *
 * A batch runs as one stacked, padded tensor through the backbone and the RPN head; everything
 * after is per image and uses only that image's own region of the features, so each image's
 * result equals its single-image result whatever else is in the batch.
 *
 * Where it runs is its `runtime`'s business: the kernels the stages call, the backend's rules
 * (ROI chunks, pixel budget, overlapping forwards) and the executor of the per-image host stages.
 */
export class Img2PoseModel {
  private readonly backbone: Backbone;
  private readonly rpn: RegionProposalNetwork;
  private readonly roiHeads: RoIHeads;
  private readonly poseMean: Float64Array;
  private readonly poseStddev: Float64Array;
  private disposed = false;

  /**
   * Builds the stages from `weights` for `runtime`, whose host executor the model then owns
   * (`dispose` stops it). Each stage keeps its own folded/permuted copies, so the caller still owns
   * `weights` and may dispose them once this returns.
   */
  constructor(weights: Img2PoseWeights, readonly runtime: ModelRuntime) {
    const built: { dispose(): void }[] = [];
    try {
      // With packedWeightsOnly each stage packs its weights as it is built, before the next is
      // built, so that building never needs both copies of every weight at once; the heads first:
      // their large blocks, once freed, leave room for the backbone's smaller ones.
      const pack = runtime.rules.packedWeightsOnly;
      this.roiHeads = new RoIHeads(weights, runtime);
      built.push(this.roiHeads);
      this.rpn = new RegionProposalNetwork(weights, runtime.kernels, RPN_CONFIG, pack, runtime.rules.tensorMemory);
      built.push(this.rpn);
      this.backbone = new Backbone(weights, runtime.kernels, pack);
      built.push(this.backbone);
    } catch (e) {
      for (const stage of built) stage.dispose();
      throw e;
    }
    this.poseMean = Float64Array.from(weights.poseMean);
    this.poseStddev = Float64Array.from(weights.poseStddev);
  }

  /**
   * images: HWC RGB tensors with values 0..255, or 8-bit samples as decoded (`ImageBytes`, read
   * without a float copy on the host path); results in input order.
   *
   * Images are stacked into as few padded forwards as memory allows: sorted by padded size and
   * grouped so that a group wastes little on padding and stays under a pixel budget (a wasm heap
   * overflows on 8 mixed photos padded to 960x1408). Each image's result does not depend on its
   * group, so the grouping changes speed and memory, never the numbers.
   */
  async predict(images: NetworkImage[], config: ModelConfig, options: PredictOptions = {}): Promise<RawDetections[]> {
    if (this.disposed) throw new Error('Img2PoseModel: used after dispose()');
    const { rules } = this.runtime;
    const padded = images.map((img) => paddedSize(resizedSize(...imageSizeOf(img), config.minSize, config.maxSize)));
    const results: RawDetections[] = new Array(images.length);
    // By default only where work is queued asynchronously; an explicit value applies anywhere.
    const overlap = options.profile ? 0 : (options.overlap ?? (rules.queuesAsync ? SUBBATCH_OVERLAP : 0));
    const groups = groupBySize(padded, rules.pixelBudget).flatMap((g) => splitForOverlap(g, overlap));
    const run = async (group: number[]): Promise<void> => {
      const out = await this.predictStacked(group.map((i) => images[i]), config, options);
      group.forEach((i, k) => (results[i] = out[k]));
    };
    if (groups.length > 1 && overlap !== 0) {
      // The groups' forwards interleave: one group's GPU work is queued while another's readback
      // is awaited and its host stages run, so neither the device nor the host waits for the other.
      // Smaller sub-batches hide more host work but use the GPU less well.
      await Promise.all(groups.map(run));
    } else {
      for (const group of groups) await run(group);
    }
    return results;
  }

  /** See `DetectionModel.concurrentForwards`: where work is queued asynchronously (a GPU), two. */
  get concurrentForwards(): number {
    return this.runtime.rules.queuesAsync ? CONCURRENT_FORWARDS : 1;
  }

  /** `predict` as `DetectionModel.predictImages`: the detector hands decoded files over as their 8-bit samples. */
  predictImages(images: NetworkImage[], config: ModelConfig): Promise<RawDetections[]> {
    return this.predict(images, config);
  }

  /**
   * One stacked, padded forward of all `images`, whatever their sizes (`predict` groups them
   * first): GeneralizedRCNN.forward, the stages in order. Tests use it to make images of
   * different sizes share one tensor.
   */
  async predictStacked(images: NetworkImage[], config: ModelConfig, options: Pick<PredictOptions, 'profile' | 'offload'> = {}): Promise<RawDetections[]> {
    if (this.disposed) throw new Error('Img2PoseModel: used after dispose()');
    if (images.length === 0) return [];
    const { kernels, host } = this.runtime;
    const lap = stageTimer(options.profile);

    const batch = await prepareBatchAsync(images, config.minSize, config.maxSize, kernels);
    let features: tf.Tensor4D[] = [];
    try {
      await lap('transform', batch.images);
      let jobs: ProposalJob[];
      const offload = options.offload;
      if (offload?.level0 && images.length === 1 && !options.profile && level0Cut(batch.paddedSizes[0][0] / 4) > 0) {
        let head: Float32Array[];
        ({ features, head } = await this.sharedLevel0(batch.images, batch.paddedSizes, { sharedBuffer: offload.sharedBuffer, level0: offload.level0, body: offload.body }));
        jobs = this.rpn.jobsOf(head, features.map((f) => [f.shape[1], f.shape[2]] as Size), batch.imageSizes, batch.paddedSizes);
      } else {
        features = this.backbone.forward(batch.images, batch.paddedSizes, true);
        await lap('backbone', features[features.length - 1]);
        jobs = await this.rpn.predictHead(features, batch.imageSizes, batch.paddedSizes, host.sendsAway(images.length), options.offload);
      }
      await lap('rpn');
      const proposals = await host.proposals(jobs);
      await lap('proposals');
      // Profiled runs keep RoIAlign and the heads apart, to time each.
      const heads = await this.roiHeadsForward(features, proposals, batch.imageSizes, batch.paddedSizes, lap, options.offload, !options.profile);
      tf.dispose(features);
      features = [];
      const detections = await host.postprocess(
        proposals.map((p, i): PostprocessInput => ({
          proposals: p.boxes,
          classLogits: heads[i].classLogits,
          dofRegression: heads[i].dofRegression,
          imageSize: batch.imageSizes[i],
          originalSize: batch.originalSizes[i],
          poseMean: this.poseMean,
          poseStddev: this.poseStddev,
          referencePoints: REFERENCE_POINTS_68,
        })),
      );
      await lap('postprocess');
      return detections;
    } finally {
      batch.images.dispose();
      tf.dispose(features);
    }
  }

  /**
   * RoIAlign + heads over the images' proposals, in chunks that bound memory. Frees `features`
   * once the last chunk is pooled: the heads need only the pooled rows, and on a CPU backend the
   * maps would otherwise sit in the heap while the heads add theirs (its high-water mark).
   */
  private async roiHeadsForward(
    features: tf.Tensor4D[],
    proposals: Proposals[],
    imageSizes: Size[],
    paddedSizes: Size[],
    lap: StageTimer,
    offload: HeadsOffload | undefined,
    pipelined: boolean,
  ): Promise<{ classLogits: Float32Array; dofRegression: Float32Array }[]> {
    const { kernels, rules } = this.runtime;
    const method: RoIAlignMethod = kernels.webgpu ? 'webgpu' : rules.roiAlign;
    const counts = proposals.map((p) => p.boxes.length / 4);
    const out: { classLogits: Float32Array; dofRegression: Float32Array }[] = [];
    const chunks = chunkImages(counts, rules.roiChunk);
    if (offload && pipelined && method === 'host' && chunks.length === 1) {
      // The offload's share of the rows pooled first, straight into the memory it reads (see
      // RoIHeads.forwardPooling): the other thread starts while this one pools its own.
      let released = false;
      const release = (): void => {
        if (!released) tf.dispose(features);
        released = true;
      };
      const source: PooledRowSource = {
        rows: counts.reduce((a, b) => a + b, 0),
        rowShape: [ROI_OUTPUT_SIZE, ROI_OUTPUT_SIZE, features[0].shape[3]],
        into: (start, count, out) => multiScaleRoIAlignInto(features, boxesInRows(proposals, start, count), imageSizes, paddedSizes, out, rules.tensorMemory),
        tensor: (start, count) => multiScaleRoIAlign(features, boxesInRows(proposals, start, count), imageSizes, paddedSizes, method, rules.tensorMemory),
        release,
      };
      let heads: RoIHeadOutputs;
      try {
        heads = await this.roiHeads.forwardPooling(source, this.headsScoreThresh(), offload);
      } finally {
        release();
      }
      await lap('heads');
      return splitRows(heads, counts);
    }
    for (const [c, chunk] of chunks.entries()) {
      // RoIAlign reads each image's own region of the batch maps, so slicing the batch is not needed.
      const boxes = proposals.map((p, i) => (chunk.includes(i) ? p.boxes : new Float32Array(0)));
      const pooled = await multiScaleRoIAlign(features, boxes, imageSizes, paddedSizes, method, rules.tensorMemory);
      if (c === chunks.length - 1) tf.dispose(features);
      let logits: Float32Array;
      let dofs: Float32Array;
      try {
        await lap('roiAlign', pooled);
        ({ classLogits: logits, dofRegression: dofs } = await this.roiHeads.forward(pooled, this.headsScoreThresh(), offload));
        await lap('heads');
      } finally {
        pooled.dispose();
      }
      splitRows({ classLogits: logits, dofRegression: dofs }, chunk.map((i) => counts[i])).forEach((rows, k) => (out[chunk[k]] = rows));
    }
    return out;
  }

  /** The score filter the pose branch is gated on (POSE_GATING_FLAG), or undefined for every row. */
  headsScoreThresh(): number | undefined {
    return tf.env().getBool(POSE_GATING_FLAG) ? BOX_SCORE_THRESH : undefined;
  }

  /**
   * The RoI heads alone on pooled rows [n, 7, 7, C]: another thread's share of its rows (see
   * PredictOptions.offload), with its score filter.
   */
  roiHeadsOnRows(pooled: tf.Tensor4D, scoreThresh: number | undefined): Promise<RoIHeadOutputs> {
    if (this.disposed) throw new Error('Img2PoseModel: used after dispose()');
    return this.roiHeads.forward(pooled, scoreThresh);
  }

  /**
   * Backbone, FPN and RPN head of one image (frees `image`), level 0 shared with another thread:
   * it takes the lower rows of level 0's FPN output conv and RPN head (`level0Band`) while this
   * thread runs the upper rows and the other levels. Level 0 holds ~3/4 of the work of both
   * convs. Each band computes every row it keeps exactly as the whole map would (see
   * Backbone.outerLevel0), so the results are the bits of `forward` + `predictHead`.
   */
  private async sharedLevel0(
    image: tf.Tensor4D,
    sizes: Size[],
    offload: Pick<RpnOffload, 'sharedBuffer'> & Level0Offload & Partial<BodyOffload>,
  ): Promise<{ features: tf.Tensor4D[]; head: Float32Array[] }> {
    const inner = await this.fpnInner(image, offload.body);
    const [, height, width, channels] = inner[0].shape;
    const cut = level0Cut(height);
    let levels: tf.Tensor4D[] = [];
    try {
      if (cut === 0) throw new Error(`Img2PoseModel: level 0 of ${height} rows is too small to share`);
      const from = cut - LEVEL0_HALO;
      const data = offload.sharedBuffer((height - from) * width * channels);
      await copyValuesInto(inner[0], from * width * channels, data, this.runtime.rules.tensorMemory);
      const away = offload.level0({ data, shape: [1, height - from, width, channels] });
      let rest: Float32Array[];
      let upper: { fpn: tf.Tensor4D; head: Float32Array } | null = null;
      try {
        levels = this.backbone.outerLevels(inner);
        tf.dispose(inner.slice(1));
        upper = await this.level0Upper(inner[0], cut);
        rest = await this.rpn.levelValues(levels, sizes, 1);
      } catch (e) {
        // The other thread may still read the shared memory: settled before its next use.
        await away.catch(() => undefined);
        upper?.fpn.dispose();
        throw e;
      }
      // No thread was free, or it stopped: the lower band here, the same way.
      const lower = (await away) ?? (await this.level0Band(tf.tidy(() => tf.slice(inner[0], [0, from])), true));
      if (lower.fpn.length !== (height - cut) * width * channels || lower.head.length !== (height - cut) * width * 15) {
        upper.fpn.dispose();
        throw new Error(`Img2PoseModel: the other thread returned ${lower.fpn.length} + ${lower.head.length} values of level 0's lower ${height - cut} rows`);
      }
      // Level 0's inner map is read no more: its memory can hold the output map (the heap's
      // high-water mark of a forward was here, with both alive and the lower band copied in twice).
      tf.dispose(inner);
      const fpn0 = this.joinedBands(upper.fpn, lower.fpn, [1, height, width, channels]);
      upper.fpn.dispose();
      const head0 = new Float32Array(height * width * 15);
      head0.set(upper.head);
      head0.set(lower.head, upper.head.length);
      return { features: [fpn0, ...levels], head: [head0, ...rest] };
    } catch (e) {
      tf.dispose(levels);
      throw e;
    } finally {
      tf.dispose(inner);
    }
  }

  /**
   * A map of `shape` whose first rows are `upper`'s and the rest `lower`'s values: written in place
   * where the backend's tensors can be (the wasm backend), else concatenated.
   */
  private joinedBands(upper: tf.Tensor4D, lower: Float32Array, shape: [number, number, number, number]): tf.Tensor4D {
    const memory = this.runtime.rules.tensorMemory;
    if (!memory) return tf.tidy(() => tf.concat([upper, tf.tensor4d(lower, [1, shape[1] - upper.shape[1], shape[2], shape[3]])], 1));
    const joined = memory.unset<tf.Rank.R4>(shape);
    // The views after the last allocation (see TensorMemory.view).
    const out = memory.view(joined);
    const top = memory.view(upper);
    out.set(top);
    out.set(lower, top.length);
    return joined;
  }

  /**
   * The FPN's inner maps of one image (frees `image`), its body shared by rows with another thread
   * when `body` is given and this backend's tensors can be read in place (the wasm backend).
   */
  private async fpnInner(image: tf.Tensor4D, body: BodyOffload['body'] | undefined): Promise<tf.Tensor4D[]> {
    const memory = this.runtime.rules.tensorMemory;
    const [n, height, width, channels] = image.shape;
    if (!body || !memory) return this.backbone.fpnInner(image, true);
    const mapFloats = this.backbone.sharedMapFloats(height, width, channels);
    if (mapFloats > BODY_SHARE_MAX_FLOATS) return this.backbone.fpnInner(image, true);
    const asked = body([n, height, width, channels], mapFloats, memory);
    // Awaited below; a failure before that must not leave its rejection unobserved.
    asked.done.catch(() => undefined);
    let inner: tf.Tensor4D[];
    try {
      inner = this.backbone.fpnInner(image, true, asked.share);
    } finally {
      asked.share.leave();
    }
    try {
      // Settled before the next request: the other thread is free again, and done with the memory.
      await asked.done;
    } catch (e) {
      tf.dispose(inner);
      throw e;
    }
    return inner;
  }

  /**
   * Part 1 of the body of one image shared by rows (Backbone.bodyShared), for the thread that owns
   * it: this thread's bands of every map go to it through `share`. Frees `image`.
   */
  bodyBand(image: tf.Tensor4D, share: RowShare): void {
    if (this.disposed) throw new Error('Img2PoseModel: used after dispose()');
    try {
      tf.dispose(this.backbone.bodyShared(image, share, true));
    } finally {
      image.dispose();
    }
  }

  /** Rows [0, cut) of FPN level 0 (a tensor) and of the RPN head on it, from level 0's inner map. */
  private async level0Upper(inner: tf.Tensor4D, cut: number): Promise<{ fpn: tf.Tensor4D; head: Float32Array }> {
    const [fpn, head] = tf.tidy(() => {
      // Exact rows: the FPN conv's [0, cut + 4) of its band [0, cut + 8); the head's [0, cut).
      const out = this.backbone.outerLevel0(tf.slice(inner, [0, 0], [-1, cut + LEVEL0_HALO]));
      const hidden = this.rpn.levelHead(tf.slice(out, [0, 0], [-1, cut + LEVEL0_HALO / 2]));
      return [tf.slice(out, [0, 0], [-1, cut]), tf.slice(hidden, [0, 0], [-1, cut])];
    });
    try {
      return { fpn, head: (await head.data()) as Float32Array };
    } finally {
      head.dispose();
    }
  }

  /**
   * FPN level 0's output conv and RPN head on `inner`, rows [r - LEVEL0_HALO, H) of an image's
   * level-0 inner map: rows [r, H) of both (see PredictOptions.offload). With `dispose`, frees
   * `inner`.
   */
  async level0Band(inner: tf.Tensor4D, dispose = false): Promise<Level0Band> {
    if (this.disposed) throw new Error('Img2PoseModel: used after dispose()');
    const [fpn, head] = tf.tidy(() => {
      // Exact rows: the FPN conv's from LEVEL0_HALO / 2 on, the head's from LEVEL0_HALO / 2 of those.
      const out = this.backbone.outerLevel0(inner);
      if (dispose) inner.dispose();
      const hidden = this.rpn.levelHead(tf.slice(out, [0, LEVEL0_HALO / 2]));
      return [tf.slice(out, [0, LEVEL0_HALO]), tf.slice(hidden, [0, LEVEL0_HALO / 2])];
    });
    try {
      const [f, h] = await Promise.all([fpn.data(), head.data()]);
      return { fpn: f as Float32Array, head: h as Float32Array };
    } finally {
      tf.dispose([fpn, head]);
    }
  }

  /** The RPN head alone on one level's features [N, H, W, C]: another thread's share (see PredictOptions.offload). */
  rpnLevelHead(x: tf.Tensor4D): tf.Tensor4D {
    if (this.disposed) throw new Error('Img2PoseModel: used after dispose()');
    return this.rpn.levelHead(x);
  }

  /** True when batches run their host stages on worker threads (without starting them). */
  get usesHostThreads(): boolean {
    return this.runtime.host.usesThreads;
  }

  /** Frees the weights at once; settles once the host executor's threads have exited. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.backbone.dispose();
    this.rpn.dispose();
    this.roiHeads.dispose();
    await this.runtime.host.dispose();
  }
}

/** Adds a stage's time to the profile (waiting for `pending` first); a no-op without one. */
type StageTimer = (stage: keyof StageTimings, pending?: tf.Tensor) => Promise<void>;

function stageTimer(profile: StageTimings | undefined): StageTimer {
  let t0 = performance.now();
  return async (stage, pending) => {
    if (!profile) return;
    if (pending) await settle(pending);
    const t = performance.now();
    profile[stage] += t - t0;
    t0 = t;
  };
}
