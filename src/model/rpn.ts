/**
 * Region proposal network (upstream `_rpn.py`, img2pose's own copy of torchvision's RPN).
 *
 *   head:  shared 3x3 conv + ReLU, then 1x1 objectness (3 per location) and 1x1 box deltas (12)
 *   post:  src/ops/proposals.ts, per image, on the host (where the runtime's executor runs it); with our
 *          WebGPU kernels the GPU first narrows each level to its top-k candidates, so only those
 *          are read back (src/kernels/webgpu/rpn_candidates.ts)
 *
 * The head runs on the whole batch; features outside each image's own region are masked so its
 * output there equals the single-image run's.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Kernels, packStage, PORTABLE_KERNELS, prepareConvFilter, releaseConvFilter, winogradEnabled } from '../kernels/webgpu';
import { rpnCandidates } from '../kernels/webgpu/rpn_candidates';
import { copyValuesInto, HostExecutor, IN_THREAD, TensorMemory } from './runtime';
import { ownCopy } from './layers';
import { Img2PoseWeights } from './weights';
import { featureSizes } from '../ops/anchors';
import { candidateLayout, candidatesOf, rankedCandidatesOf, ProposalJob, Proposals, RPN_CONFIG, RpnConfig } from '../ops/proposals';
import { Size } from '../ops/size';

export * from '../ops/proposals';

/**
 * tfjs flag: with our WebGPU kernels, preselect the RPN's top-k candidates on the GPU and read back
 * only those (true), or read back the whole head output (false). Results are the same either way.
 */
export const GPU_CANDIDATES_FLAG = 'IMG2POSE_GPU_CANDIDATES';
// Registered once per tfjs instance, also when this module is bundled twice.
if (!(GPU_CANDIDATES_FLAG in (tf.env() as unknown as { flagRegistry: object }).flagRegistry)) {
  tf.env().registerFlag(GPU_CANDIDATES_FLAG, () => true);
}

/**
 * tfjs flag: with the GPU's candidates, also rank them on the GPU in the order the host's selection
 * sorts them (true), so the host takes prefixes instead of sorting. Results are the same either way.
 */
export const GPU_RANK_CANDIDATES_FLAG = 'IMG2POSE_GPU_RANK_CANDIDATES';
if (!(GPU_RANK_CANDIDATES_FLAG in (tf.env() as unknown as { flagRegistry: object }).flagRegistry)) {
  tf.env().registerFlag(GPU_RANK_CANDIDATES_FLAG, () => true);
}

/**
 * tfjs flag: the largest batch whose proposals run on worker threads that still uses the GPU's
 * candidates (0: none); larger ones read back the whole head output, split per image. Measured on
 * an H100: batch 8 6.3 against 7.2 ms per image with them, batch 16 5.9 against 5.8. Results are
 * the same either way.
 */
export const GPU_BATCH_CANDIDATES_FLAG = 'IMG2POSE_GPU_BATCH_CANDIDATES';
if (!(GPU_BATCH_CANDIDATES_FLAG in (tf.env() as unknown as { flagRegistry: object }).flagRegistry)) {
  tf.env().registerFlag(GPU_BATCH_CANDIDATES_FLAG, () => 8);
}

/** One image's own region of a level (rows/cols from 0), for images padded to a larger batch. */
interface OwnRegion {
  height: number;
  width: number;
}

function ownRegions(paddedSizes: Size[]): OwnRegion[][] {
  return paddedSizes.map(([h, w]) => featureSizes(h, w).map(([height, width]) => ({ height, width })));
}

/**
 * Another thread with its own copy of the head that can run it on one level (on the CPU backends:
 * an idle worker, see src/runtime/threaded_model.ts): the same kernels on the same values, so the
 * same bits as this thread's.
 */
export interface RpnOffload {
  /** Shared memory (a SharedArrayBuffer) for `length` values to send, reused from call to call. */
  sharedBuffer(length: number): Float32Array;
  /**
   * `levelHead(feature)` there, read back: [N, H, W, 15] values. Null when no thread is free now,
   * or the one that took it stopped: the caller then runs it itself.
   */
  level(feature: { data: Float32Array; shape: [number, number, number, number] }): Promise<Float32Array | null>;
}

export class RegionProposalNetwork {
  private readonly convWeight: tf.Tensor4D;
  private readonly convBias: tf.Tensor1D;
  /** cls_logits (3) and bbox_pred (12) as one 1x1 conv: channels 0..2 logits, 3..14 deltas. */
  private readonly predWeight: tf.Tensor4D;
  private readonly predBias: tf.Tensor1D;

  /**
   * `kernels`: the head's convolutions' (stock tfjs ops unless given). `packedWeightsOnly`
   * (BackendRules): keep the filters only as packed by the backend's library. `memory`: the
   * backend's in-place access to tensors, where it has one (a level sent to an offload is copied
   * from there).
   */
  constructor(
    weights: Img2PoseWeights,
    private readonly kernels: Kernels = PORTABLE_KERNELS,
    readonly config: RpnConfig = RPN_CONFIG,
    packedWeightsOnly = false,
    private readonly memory?: TensorMemory,
  ) {
    const get = (name: string): tf.Tensor => {
      const t = weights.tensors.get(name);
      if (!t) throw new Error(`RegionProposalNetwork: missing weight ${name}`);
      return t;
    };
    // Own copies, so the caller may dispose its weights map independently.
    this.convWeight = ownCopy(get('rpn.head.conv.weight') as tf.Tensor4D);
    this.convBias = ownCopy(get('rpn.head.conv.bias') as tf.Tensor1D);
    this.predWeight = tf.concat4d(
      [get('rpn.head.cls_logits.weight') as tf.Tensor4D, get('rpn.head.bbox_pred.weight') as tf.Tensor4D],
      3,
    );
    this.predBias = tf.concat1d([get('rpn.head.cls_logits.bias') as tf.Tensor1D, get('rpn.head.bbox_pred.bias') as tf.Tensor1D]);
    if (packedWeightsOnly) {
      // The Winograd filter is then made (and packed) in the warm-up.
      packStage(this, () => this.packWeights());
      return;
    }
    prepareConvFilter(this.convWeight);
    prepareConvFilter(this.predWeight, this.predBias); // 15 channels: padded once
  }

  /**
   * Runs the head once on a small zero map inside `packStage`: afterwards its filters are kept
   * only as packed for the way `head` calls them (the wasm backend; see src/kernels/wasm/packed.ts).
   */
  private packWeights(): void {
    this.head([tf.zeros([1, 8, 8, this.convWeight.shape[2]])], [[32, 32]]);
  }

  /**
   * The head on every level of the batch: [N, H, W, 15] per level. Features outside an image's
   * own region are zeroed first, so the 3x3 conv at the region's border sees the zero padding a
   * single-image run sees, not the neighbouring batch padding.
   */
  head(features: tf.Tensor4D[], paddedSizes: Size[], paddedChannels = false): tf.Tensor4D[] {
    return features.map((feature, level) => tf.tidy(() => this.levelHead(this.masked(feature, level, paddedSizes), paddedChannels)));
  }

  /**
   * The head on one level's (masked) features [N, H, W, C] -> [N, H, W, 15]; with `paddedChannels`
   * (for the GPU's candidates, which read the channels by the shape), [N, H, W, 16] where our
   * webgpu kernels run, a 16th channel of zeros kept rather than sliced off.
   */
  levelHead(x: tf.Tensor4D, paddedChannels = false): tf.Tensor4D {
    return tf.tidy(() => {
      const hidden = this.kernels.conv(x, this.convWeight, this.convBias, { stride: 1, pad: 1, relu: true, winograd: winogradEnabled() });
      return this.kernels.conv(hidden, this.predWeight, this.predBias, { stride: 1, pad: 0, relu: false, paddedChannels });
    });
  }

  /** `feature` (FPN level `level` of the batch) with everything outside each image's own region zeroed. */
  private masked(feature: tf.Tensor4D, level: number, paddedSizes: Size[]): tf.Tensor4D {
    const [n, height, width] = feature.shape;
    return maskOutsideRegions(feature, ownRegions(paddedSizes).map((r) => r[level]), n, height, width);
  }

  /**
   * Every level's head output read back, the first (largest: ~3/4 of the work) on the offload's
   * thread while this one runs the others.
   */
  private async offloadedHead(features: tf.Tensor4D[], paddedSizes: Size[], offload: RpnOffload): Promise<Float32Array[]> {
    const x = tf.tidy(() => this.masked(features[0], 0, paddedSizes));
    const [n, h, w, c] = x.shape;
    const data = offload.sharedBuffer(n * h * w * c);
    try {
      await copyValuesInto(x, 0, data, this.memory);
    } finally {
      if (x !== features[0]) x.dispose();
    }
    const away = offload.level({ data, shape: [n, h, w, c] });
    let rest: Float32Array[];
    try {
      rest = await this.levelValues(features.slice(1), paddedSizes, 1);
    } catch (e) {
      // The other thread may still read `data`: settled before the offload's next call reuses it.
      await away.catch(() => undefined);
      throw e;
    }
    let first = await away;
    if (first === null) {
      const out = tf.tidy(() => this.levelHead(this.masked(features[0], 0, paddedSizes)));
      try {
        first = (await out.data()) as Float32Array;
      } finally {
        out.dispose();
      }
    }
    if (first.length !== n * h * w * 15) throw new Error(`RegionProposalNetwork: the other thread returned ${first.length} values for ${n * h * w * 15}`);
    return [first, ...rest];
  }

  /** Proposal jobs, one per image, from every level's head output of the batch read back. */
  jobsOf(values: Float32Array[], levelSizes: Size[], imageSizes: Size[], paddedSizes: Size[]): ProposalJob[] {
    return paddedSizes.map((paddedSize, image) => ({ levels: values, levelSizes, image, paddedSize, imageSize: imageSizes[image], config: this.config }));
  }

  /** The head on the given levels (`first`: the first one's level), read back. */
  async levelValues(features: tf.Tensor4D[], paddedSizes: Size[], first = 0): Promise<Float32Array[]> {
    const outputs = features.map((feature, i) => tf.tidy(() => this.levelHead(this.masked(feature, first + i, paddedSizes))));
    try {
      return await Promise.all(outputs.map((o) => o.data() as Promise<Float32Array>));
    } finally {
      tf.dispose(outputs);
    }
  }

  /**
   * The head's raw output, read back, as one proposal job per image. Every level's readback is
   * requested before any is awaited, so on a GPU they overlap. With `perImage`, each image's part
   * of every level is split off on the device and read back on its own, so each job owns its
   * buffers (they can move to another thread without a copy); otherwise the jobs share the batch's
   * buffers.
   */
  async predictHead(features: tf.Tensor4D[], imageSizes: Size[], paddedSizes: Size[], perImage = false, offload?: RpnOffload): Promise<ProposalJob[]> {
    if (offload && !perImage && !this.candidatesOnGpu() && features.length > 1) {
      const values = await this.offloadedHead(features, paddedSizes, offload);
      return this.jobsOf(values, features.map((f) => [f.shape[1], f.shape[2]] as Size), imageSizes, paddedSizes);
    }
    // Batches whose proposals run on worker threads use the candidates up to a size (the flag's).
    const candidates = (!perImage || paddedSizes.length <= tf.env().getNumber(GPU_BATCH_CANDIDATES_FLAG)) && this.candidatesOnGpu();
    const outputs = this.head(features, paddedSizes, candidates);
    if (candidates) return this.candidateJobs(outputs, imageSizes, paddedSizes);
    const n = paddedSizes.length;
    const parts = perImage && n > 1 ? outputs.map((o) => tf.split(o, n, 0)) : outputs.map((o) => [o]);
    try {
      const values = await Promise.all(parts.map((level) => Promise.all(level.map((t) => t.data() as Promise<Float32Array>))));
      const levelSizes = outputs.map((o) => [o.shape[1], o.shape[2]] as Size);
      const perImage = parts[0].length > 1;
      return paddedSizes.map((paddedSize, image) => ({
        levels: values.map((v) => (perImage ? v[image] : v[0])),
        levelSizes,
        image: perImage ? 0 : image,
        paddedSize,
        imageSize: imageSizes[image],
        config: this.config,
      }));
    } finally {
      tf.dispose(outputs);
      tf.dispose(parts.flat());
    }
  }

  private candidatesOnGpu(): boolean {
    const topN = this.config.preNmsTopN;
    return this.kernels.webgpu && tf.env().getBool(GPU_CANDIDATES_FLAG) && Number.isInteger(topN) && topN >= 1 && topN <= 2 ** 19;
  }

  /**
   * predictHead with the GPU's top-k preselection: one small readback for the batch; an image
   * whose candidates overflow their slots (many near-equal logits) gets its whole head output.
   */
  private async candidateJobs(outputs: tf.Tensor4D[], imageSizes: Size[], paddedSizes: Size[]): Promise<ProposalJob[]> {
    try {
      const layout = candidateLayout(paddedSizes, this.config.preNmsTopN);
      const ranked = tf.env().getBool(GPU_RANK_CANDIDATES_FLAG);
      const result = rpnCandidates(outputs, layout, ranked);
      const words = await result.data().finally(() => result.dispose());
      const read = ranked ? rankedCandidatesOf : candidatesOf;
      const candidates = paddedSizes.map((_, image) => read(words as Int32Array, layout, image));
      const full = candidates.some((c) => c === null) ? await Promise.all(outputs.map(headValues)) : [];
      const levelSizes = outputs.map((o) => [o.shape[1], o.shape[2]] as Size);
      return paddedSizes.map((paddedSize, image) => ({
        levels: candidates[image] ? [] : full,
        levelSizes,
        image,
        paddedSize,
        imageSize: imageSizes[image],
        config: this.config,
        ...(candidates[image] ? { candidates: candidates[image] } : {}),
      }));
    } finally {
      tf.dispose(outputs);
    }
  }

  /**
   * Proposals of every image. features: the five FPN levels of the batch (NHWC); imageSizes:
   * each image's resized size; paddedSizes: each image's own padded size (multiple of 32).
   * `host` runs the images' proposal filtering (in this thread unless given).
   */
  async forward(features: tf.Tensor4D[], imageSizes: Size[], paddedSizes: Size[], host: HostExecutor = IN_THREAD): Promise<Proposals[]> {
    return host.proposals(await this.predictHead(features, imageSizes, paddedSizes, host.sendsAway(paddedSizes.length)));
  }

  dispose(): void {
    releaseConvFilter(this.convWeight);
    releaseConvFilter(this.predWeight, this.predBias);
    tf.dispose([this.convWeight, this.convBias, this.predWeight, this.predBias]);
  }
}

/** A level's head output read back as [N, H, W, 15] values, without the padding channel it may have. */
async function headValues(output: tf.Tensor4D): Promise<Float32Array> {
  const [n, h, w, c] = output.shape;
  if (c === 15) return (await output.data()) as Float32Array;
  const own = tf.slice(output, [0, 0, 0, 0], [n, h, w, 15]);
  try {
    return (await own.data()) as Float32Array;
  } finally {
    own.dispose();
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
