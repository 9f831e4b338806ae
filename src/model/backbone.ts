/**
 * The ResNet-FPN backbone (torchvision `resnet_fpn_backbone` as upstream builds it: ResNet with
 * FrozenBatchNorm2d, layer1..4 returned, a 256-channel FeaturePyramidNetwork and a
 * LastLevelMaxPool 'pool' level), NHWC on tfjs.
 *
 * Batch == single. Images of different padded sizes share one zero-padded batch tensor. Any
 * op whose window reaches past an image's own padded region would then read its neighbour's
 * padding positions, which hold non-zero values after the first conv's bias, where the
 * image's own single run reads zero padding. So before every such op (per `readsBeyondRegion`:
 * the stride-1 3x3 convs; not the stride-2 3x3 convs, the 3x3/2 max-pool or the 1x1 convs,
 * whose windows end inside an even region; not conv1, whose input is zero outside) the input
 * is multiplied by a 0/1 mask of each image's region at that stride, and the four FPN outputs
 * are masked because the RPN's 3x3 conv reads them ('pool' samples even positions of the
 * masked level '3', so it is zero outside its region ceil(r / 2) without a mask). After ReLU
 * the max-pool sees values >= 0, so a zero equals PyTorch's -inf padding. When every image has
 * the batch's padded size nothing is masked.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Img2PoseWeights } from './weights';
import { Size } from '../ops/size';
import { Conv, convOutputSize, disposeConv, foldFrozenBatchNormTensors, makeConv, ownCopy, readsBeyondRegion } from './layers';
import { ConvOptions, Kernels, packStage, PORTABLE_KERNELS, prepareConvFilter, Rows, winogradEnabled } from '../kernels/webgpu';
import { placedRows } from '../kernels/wasm/gemm_conv';


/** Names of the returned levels, strides 4, 8, 16, 32, 64 (upstream's feature dict keys). */
export const FEATURE_NAMES = ['0', '1', '2', '3', 'pool'] as const;
export const FPN_CHANNELS = 256;

/** A residual block: BasicBlock (conv1 3x3 + conv2 3x3) or Bottleneck (1x1, 3x3, 1x1). */
interface ResidualBlock {
  convs: Conv[];
  downsample?: Conv;
}

/** A batch feature map with what batch == single needs to know about it. */
interface Feature {
  x: tf.Tensor4D;
  /** Each image's valid region in this map; null when the batch is uniform (no masking). */
  regions: Size[] | null;
  /** Whether the map is known to be zero outside every image's region. */
  zeroOutside: boolean;
}

/** 0/1 region masks, built once per forward per map size and reused by every op at that size. */
class RegionMasks {
  private readonly cache = new Map<string, tf.Tensor4D>();
  apply(x: tf.Tensor4D, regions: Size[]): tf.Tensor4D {
    return tf.mul(x, this.mask(x.shape[1], x.shape[2], regions));
  }

  private mask(h: number, w: number, regions: Size[]): tf.Tensor4D {
    const key = `${h}x${w}:${regions.join(';')}`;
    let m = this.cache.get(key);
    if (!m) {
      const data = new Float32Array(regions.length * h * w);
      regions.forEach(([rh, rw], n) => {
        for (let y = 0; y < Math.min(rh, h); y++) data.fill(1, (n * h + y) * w, (n * h + y) * w + Math.min(rw, w));
      });
      // Kept out of the callers' tidy scopes: the mask lives until the end of the forward.
      m = tf.keep(tf.tensor4d(data, [regions.length, h, w, 1]));
      this.cache.set(key, m);
    }
    return m;
  }

  dispose(): void {
    for (const m of this.cache.values()) m.dispose();
    this.cache.clear();
  }
}

function regionsAfter(regions: Size[] | null, kernel: number, stride: number, pad: number): Size[] | null {
  return regions && regions.map(([h, w]) => [convOutputSize(h, kernel, stride, pad), convOutputSize(w, kernel, stride, pad)] as Size);
}

/** Mask `f` if an op with this geometry would read non-zero values outside some image's region. */
function maskedInput(f: Feature, kernel: number, stride: number, pad: number, masks: RegionMasks): tf.Tensor4D {
  if (!f.regions || f.zeroOutside) return f.x;
  const [, H, W] = f.x.shape;
  const leaks = f.regions.some(
    ([h, w]) => (h < H && readsBeyondRegion(h, kernel, stride, pad)) || (w < W && readsBeyondRegion(w, kernel, stride, pad)),
  );
  return leaks ? masks.apply(f.x, f.regions) : f.x;
}

/** What a conv step adds to conv + bias, in the order applied. */
interface ConvStep {
  /** Added after the bias; nearest-upsampled to the output first when `upsample`. */
  residual?: tf.Tensor4D;
  upsample?: boolean;
  relu: boolean;
  /** Allow the Winograd path (the caller's level decides, see ./webgpu). */
  winograd?: boolean;
}

/**
 * conv + bias (+ residual) (+ ReLU, after the residual), through the network's kernels: stock
 * tfjs ops, or our WebGPU programs when enabled.
 */
function convFeature(kernels: Kernels, f: Feature, conv: Conv, masks: RegionMasks, step: ConvStep): Feature {
  const input = maskedInput(f, conv.kernel, conv.stride, conv.pad, masks);
  const { relu, residual, upsample, winograd } = step;
  return {
    x: kernels.conv(input, conv.filter, conv.bias, { stride: conv.stride, pad: conv.pad, relu, residual, upsampleResidual: upsample, winograd }),
    regions: regionsAfter(f.regions, conv.kernel, conv.stride, conv.pad),
    zeroOutside: false, // the bias
  };
}

/** Max-pool with PyTorch's symmetric padding (values are post-ReLU, so padding cannot win). */
function maxPoolFeature(f: Feature, kernel: number, stride: number, pad: number, masks: RegionMasks): Feature {
  const input = maskedInput(f, kernel, stride, pad, masks);
  const regions = regionsAfter(f.regions, kernel, stride, pad);
  // Without a bias, an output outside the region stays zero if its window starts outside it.
  const zeroOutside =
    f.zeroOutside && (regions ?? []).every(([h, w], i) => h * stride - pad >= f.regions![i][0] && w * stride - pad >= f.regions![i][1]);
  return { x: tf.maxPool(input, kernel, stride, pad), regions, zeroOutside };
}

/** Run `fn` in a tidy scope, keeping only the returned feature's tensor. */
function tidyFeature(fn: () => Feature): Feature {
  let meta: Omit<Feature, 'x'> = { regions: null, zeroOutside: false };
  const x = tf.tidy(() => {
    const f = fn();
    meta = { regions: f.regions, zeroOutside: f.zeroOutside };
    return f.x;
  });
  return { ...meta, x };
}

/**
 * This thread's side of a body shared with another thread by rows (`Backbone.bodyShared`): both
 * run the same steps, each computing its band of every map, and `exchange` completes each map
 * with the other's band.
 */
export interface RowShare {
  /** 0: the upper band of every map (the thread that owns the image), 1: the lower. */
  readonly part: 0 | 1;
  /** True once the other thread is gone (it stopped, or never came): every map is then made whole here. */
  readonly alone: boolean;
  /**
   * Publishes rows `own` of `x` (one image's map, in this thread's heap) and, once the other thread
   * has published its rows `other` of the same map, writes them into `x`. Returns false, with `x`
   * incomplete, when the other thread is gone; part 1 throws then instead (its work is of no use).
   */
  exchange(x: tf.Tensor4D, own: Rows, other: Rows): boolean;
}

/**
 * The two bands of a map of `height` rows cut in half at a multiple of `align`, or null when the
 * map is too small to share (both threads then make it whole).
 */
export function rowBands(height: number, align: number): [Rows, Rows] | null {
  const cut = align * Math.round(height / 2 / align);
  return cut > 0 && cut < height
    ? [
        [0, cut],
        [cut, height],
      ]
    : null;
}

function take(weights: Img2PoseWeights, name: string): tf.Tensor {
  const t = weights.tensors.get(name);
  if (!t) throw new Error(`Backbone: weight ${name} is missing`);
  return t;
}

export class Backbone {
  private readonly stem: Conv;
  private readonly layers: ResidualBlock[][] = [];
  private readonly inner: Conv[] = [];
  private readonly outer: Conv[] = [];

  /**
   * Folds every FrozenBatchNorm into its conv (new tensors owned by the Backbone) and clones
   * the FPN weights (`ownCopy`); `weights` stays owned by the caller, and its `backbone.*` tensors are not
   * needed afterwards. `kernels`: the convolutions' (stock tfjs ops unless given).
   * `packedWeightsOnly` (BackendRules): keep the filters only as packed by the backend's library.
   */
  constructor(weights: Img2PoseWeights, private readonly kernels: Kernels = PORTABLE_KERNELS, packedWeightsOnly = false) {
    const body = 'backbone.body.';
    this.stem = this.foldedConv(weights, `${body}conv1`, `${body}bn1`, 2);
    for (let l = 1; l <= 4; l++) {
      const blocks: ResidualBlock[] = [];
      for (let b = 0; weights.tensors.has(`${body}layer${l}.${b}.conv1.weight`); b++) {
        const p = `${body}layer${l}.${b}.`;
        const stride = l > 1 && b === 0 ? 2 : 1;
        const bottleneck = weights.tensors.has(`${p}conv3.weight`);
        const convs: Conv[] = [];
        const count = bottleneck ? 3 : 2;
        for (let k = 1; k <= count; k++) {
          // torchvision ResNet v1.5: the stride sits on the 3x3 conv (conv1 of a BasicBlock, conv2 of a Bottleneck).
          const s = k === (bottleneck ? 2 : 1) ? stride : 1;
          convs.push(this.foldedConv(weights, `${p}conv${k}`, `${p}bn${k}`, s));
        }
        const downsample = weights.tensors.has(`${p}downsample.0.weight`)
          ? this.foldedConv(weights, `${p}downsample.0`, `${p}downsample.1`, stride)
          : undefined;
        blocks.push({ convs, downsample });
      }
      if (blocks.length === 0) throw new Error(`Backbone: no blocks found for layer${l}`);
      this.layers.push(blocks);
    }
    for (let i = 0; i < 4; i++) {
      for (const [kind, list] of [['inner_blocks', this.inner], ['layer_blocks', this.outer]] as const) {
        const p = `backbone.fpn.${kind}.${i}.0.`;
        const filter = ownCopy(take(weights, `${p}weight`) as tf.Tensor4D);
        const bias = ownCopy(take(weights, `${p}bias`) as tf.Tensor1D);
        list.push(makeConv(filter, bias, 1));
      }
    }
    if (packedWeightsOnly) {
      // The Winograd filters are then made (and packed one by one) in the warm-up.
      packStage(this, () => this.packWeights());
      return;
    }
    // The stride-1 3x3 convs may take the Winograd path on the GPU (prepareConvFilter skips the rest).
    for (const blocks of this.layers) for (const b of blocks) for (const c of b.convs) if (c.stride === 1) prepareConvFilter(c.filter);
    for (const c of this.outer) prepareConvFilter(c.filter);
    prepareConvFilter(this.stem.filter, this.stem.bias); // RGB: channel-padded once
  }

  /**
   * Runs every convolution once on a small zero image inside `packStage`: afterwards each filter
   * is kept only as packed for the way `forward` calls it (the wasm backend; see
   * src/kernels/wasm/packed.ts).
   */
  private packWeights(): void {
    this.forward(tf.zeros([1, 32, 32, 3]), [[32, 32]]);
  }

  private foldedConv(weights: Img2PoseWeights, conv: string, bn: string, stride: number): Conv {
    const w = take(weights, `${conv}.weight`);
    if (w.rank !== 4) throw new Error(`Backbone: ${conv}.weight must be 4-D (kh, kw, in, out), got [${w.shape}]`);
    const folded = foldFrozenBatchNormTensors(w.dataSync() as Float32Array, w.shape as [number, number, number, number], {
      weight: take(weights, `${bn}.weight`).dataSync(),
      bias: take(weights, `${bn}.bias`).dataSync(),
      runningMean: take(weights, `${bn}.running_mean`).dataSync(),
      runningVar: take(weights, `${bn}.running_var`).dataSync(),
    });
    return makeConv(folded.filter, folded.bias, stride);
  }

  /**
   * images: NHWC float32 batch (prepareBatch's), H and W multiples of 32 wherever images differ;
   * paddedSizes: each image's own padded size. Returns the 5 levels '0','1','2','3','pool'
   * (NHWC, 256 channels), each zero outside an image's region when the batch is mixed. The
   * caller owns (disposes) them. With `disposeInput`, `images` is disposed once the stem has read
   * it (its memory then serves the layers after).
   */
  forward(images: tf.Tensor4D, paddedSizes: Size[], disposeInput = false): tf.Tensor4D[] {
    const regions = this.checkRegions(images, paddedSizes);
    const masks = new RegionMasks();
    try {
      const c = this.runBody({ x: images, regions, zeroOutside: true }, masks, disposeInput);
      try {
        return this.runFpn(c, masks);
      } finally {
        for (const f of c) f.x.dispose();
      }
    } finally {
      masks.dispose();
    }
  }

  /**
   * `forward` of one image in two steps, so that FPN level 0's 3x3 output conv (the largest) can
   * be run in bands of rows on two threads (`outerLevel0`): first the FPN's inner maps (lateral
   * conv plus top-down path, the output convs' inputs), levels 0..3; then `outerLevels`. With
   * `share`, the body runs shared by rows with another thread (`bodyShared`).
   */
  fpnInner(image: tf.Tensor4D, disposeInput = false, share?: RowShare): tf.Tensor4D[] {
    if (image.shape[0] !== 1) throw new Error(`Backbone.fpnInner: one image, got a batch of ${image.shape[0]}`);
    const masks = new RegionMasks();
    try {
      const c = share
        ? this.bodyShared(image, share, disposeInput).map((x): Feature => ({ x, regions: null, zeroOutside: false }))
        : this.runBody({ x: image, regions: null, zeroOutside: true }, masks, disposeInput);
      try {
        return tf.tidy(() => {
          const inner: Feature[] = new Array(4);
          for (let i = 3; i >= 0; i--) {
            inner[i] = this.lateral(i, c[i], i < 3 ? inner[i + 1] : null, masks);
            c[i].x.dispose();
          }
          return inner.map((f) => f.x);
        });
      } finally {
        for (const f of c) f.x.dispose();
      }
    } finally {
      masks.dispose();
    }
  }

  /**
   * The FPN levels '1', '2', '3' and 'pool' of one image from its inner maps (`fpnInner`; level
   * 0's is not read). The same values as `forward`'s.
   */
  outerLevels(inner: tf.Tensor4D[]): tf.Tensor4D[] {
    const masks = new RegionMasks();
    try {
      return tf.tidy(() => {
        const levels = [1, 2, 3].map((i) => this.output(i, { x: inner[i], regions: null, zeroOutside: false }, masks));
        return [...levels, this.lastLevelPool(levels[2], masks)].map((f) => f.x);
      });
    } finally {
      masks.dispose();
    }
  }

  /**
   * FPN level 0's 3x3 output conv (one image) on `inner`, its input map or a band of its rows. A
   * band's output rows equal the whole map's except the 4 nearest each cut edge (one Winograd tile
   * row; 1 for the direct convolution): tiles start at the band's first row, so a band that
   * starts at a multiple of 4 has the whole map's tiles.
   */
  outerLevel0(inner: tf.Tensor4D): tf.Tensor4D {
    const masks = new RegionMasks();
    try {
      return tf.tidy(() => this.output(0, { x: inner, regions: null, zeroOutside: false }, masks).x);
    } finally {
      masks.dispose();
    }
  }

  private checkRegions(images: tf.Tensor4D, paddedSizes: Size[]): Size[] | null {
    const [n, H, W] = images.shape;
    if (paddedSizes.length !== n) throw new Error(`Backbone.forward: ${paddedSizes.length} padded sizes for a batch of ${n}`);
    if (paddedSizes.every(([h, w]) => h === H && w === W)) return null;
    for (const [h, w] of paddedSizes) {
      if (h > H || w > W) throw new Error(`Backbone.forward: padded size ${h}x${w} exceeds the batch's ${H}x${W}`);
      // Masking relies on every stride-2 op and the 2x top-down upsampling mapping an image's
      // region exactly onto its region at the next level, which multiples of 32 guarantee.
      if (h % 32 !== 0 || w % 32 !== 0 || H % 32 !== 0 || W % 32 !== 0) {
        throw new Error(`Backbone.forward: a mixed batch needs sizes that are multiples of 32, got ${h}x${w} in ${H}x${W}`);
      }
    }
    return paddedSizes.map(([h, w]) => [h, w] as Size);
  }

  /** ResNet body: stem, then layer1..4; returns their outputs (strides 4, 8, 16, 32). */
  private runBody(input: Feature, masks: RegionMasks, disposeInput: boolean): Feature[] {
    const stem = tidyFeature(() => {
      const c1 = convFeature(this.kernels, input, this.stem, masks, { relu: true });
      if (disposeInput) input.x.dispose();
      return maxPoolFeature(c1, 3, 2, 1, masks);
    });
    const outputs: Feature[] = [];
    let f = stem;
    for (const blocks of this.layers) {
      for (const block of blocks) {
        const next = tidyFeature(() => this.runBlock(block, f, masks, winogradEnabled()));
        if (!outputs.includes(f)) f.x.dispose();
        f = next;
      }
      outputs.push(f);
    }
    return outputs;
  }

  /**
   * The ResNet body of one image (`runBody`'s layer outputs) with another thread that runs this
   * same method on its side of `share`: every map is made in two bands of rows, one here and one
   * there, and completed by `share.exchange` before the next step reads it. Each band computes its
   * rows as the whole map would (`ConvOptions.rows`), so the maps are the bits of `runBody`'s.
   * Part 1 passes any tensor of the image's shape: the image itself comes through the exchange.
   * The wasm backend only. With `disposeInput`, `image` is disposed once the stem has read it.
   */
  bodyShared(image: tf.Tensor4D, share: RowShare, disposeInput = false): tf.Tensor4D[] {
    const [n, height] = image.shape;
    if (n !== 1) throw new Error(`Backbone.bodyShared: one image, got a batch of ${n}`);
    // The image itself: all of it from part 0.
    const all: Rows = [0, height];
    const none: Rows = [height, height];
    if (!share.alone) share.exchange(image, share.part === 0 ? all : none, share.part === 0 ? none : all);
    // In a tidy scope: a step that throws (part 1 when part 0 is gone) leaves nothing behind.
    return tf.tidy(() => {
      const winograd = winogradEnabled();
      const c1 = convOutputSize(height, this.stem.kernel, this.stem.stride, this.stem.pad);
      let x = this.sharedMap(share, convOutputSize(c1, 3, 2, 1), 1, (rows) => this.stemRows(image, rows));
      if (disposeInput) image.dispose();
      const outputs: tf.Tensor4D[] = [];
      for (const blocks of this.layers) {
        for (const block of blocks) {
          const input = x;
          let y = input;
          block.convs.forEach((conv, k) => {
            const last = k === block.convs.length - 1;
            const opts: ConvOptions = { stride: conv.stride, pad: conv.pad, relu: true, winograd };
            const from = y;
            const height = convOutputSize(from.shape[1], conv.kernel, conv.stride, conv.pad);
            y = this.sharedMap(share, height, this.kernels.rowAlign(conv.filter, opts), (rows) =>
              tf.tidy(() => {
                // The residual is read at the rows computed: the downsample's band is this conv's.
                const ds = block.downsample;
                const residual = !last
                  ? undefined
                  : ds
                    ? this.kernels.conv(input, ds.filter, ds.bias, { stride: ds.stride, pad: ds.pad, relu: false, rows })
                    : input;
                return this.kernels.conv(from, conv.filter, conv.bias, { ...opts, residual, rows });
              }),
            );
            if (from !== input) from.dispose();
          });
          if (!outputs.includes(input)) input.dispose();
          x = y;
        }
        outputs.push(x);
      }
      return outputs;
    });
  }

  /**
   * The most values a map of `bodyShared` holds (the image included) for an image of this size: the
   * shared memory its exchange needs.
   */
  sharedMapFloats(height: number, width: number, channels: number): number {
    const out = (h: number, w: number, conv: Conv): [number, number] => [
      convOutputSize(h, conv.kernel, conv.stride, conv.pad),
      convOutputSize(w, conv.kernel, conv.stride, conv.pad),
    ];
    let [h, w] = out(height, width, this.stem);
    [h, w] = [convOutputSize(h, 3, 2, 1), convOutputSize(w, 3, 2, 1)];
    let most = Math.max(height * width * channels, h * w * this.stem.filter.shape[3]);
    for (const blocks of this.layers) {
      for (const block of blocks) {
        for (const conv of block.convs) {
          [h, w] = out(h, w, conv);
          most = Math.max(most, h * w * conv.filter.shape[3]);
        }
      }
    }
    return most;
  }

  /**
   * A map of `height` rows made by `make` (all of it, or rows `rows` of it in a map of its whole
   * shape) in two bands cut at a multiple of `align`, this thread's here and the other's there,
   * completed by the exchange. Made whole here when it is too small to share (on both sides: the
   * cut depends on the map only) or the other thread is gone.
   */
  private sharedMap(share: RowShare, height: number, align: number, make: (rows?: Rows) => tf.Tensor4D): tf.Tensor4D {
    const bands = rowBands(height, align);
    if (share.alone || !bands) return make();
    const [own, other] = share.part === 0 ? bands : [bands[1], bands[0]];
    const y = make(own);
    if (share.exchange(y, own, other)) return y;
    y.dispose();
    return make();
  }

  /**
   * The stem (conv1 + ReLU, 3x3/2 max-pool) of one image, or rows `rows` of its output in a map of
   * the whole output's shape: the pool on the conv rows its windows read, padded above and below
   * where the map ends, as the whole map's pool is.
   */
  private stemRows(image: tf.Tensor4D, rows?: Rows): tf.Tensor4D {
    const { filter, bias, stride, pad } = this.stem;
    return tf.tidy(() => {
      if (!rows) return tf.maxPool(this.kernels.conv(image, filter, bias, { stride, pad, relu: true }), 3, 2, 1);
      const [start, end] = rows;
      const convHeight = convOutputSize(image.shape[1], this.stem.kernel, stride, pad);
      // Pool output row r reads conv rows 2r - 1 .. 2r + 1.
      const [from, to] = [Math.max(0, 2 * start - 1), Math.min(convHeight, 2 * end)];
      const c = this.kernels.conv(image, filter, bias, { stride, pad, relu: true, rows: [from, to], bandOnly: true });
      const padding: [[number, number], [number, number], [number, number], [number, number]] = [
        [0, 0],
        [from - (2 * start - 1), 2 * end - to],
        [1, 1],
        [0, 0],
      ];
      const pooled = tf.maxPool(c, 3, 2, padding);
      return placedRows(pooled, start, convOutputSize(convHeight, 3, 2, 1));
    });
  }

  private runBlock(block: ResidualBlock, input: Feature, masks: RegionMasks, winograd: boolean): Feature {
    const identity = block.downsample ? convFeature(this.kernels, input, block.downsample, masks, { relu: false }).x : input.x;
    let y = input;
    block.convs.forEach((conv, k) => {
      // The residual add and the ReLU after it are the last conv's epilogue.
      y = convFeature(this.kernels, y, conv, masks, { relu: true, residual: k === block.convs.length - 1 ? identity : undefined, winograd });
    });
    return { x: y.x, regions: y.regions, zeroOutside: false };
  }

  /**
   * FPN: lateral 1x1 convs, top-down nearest upsampling + add, 3x3 output convs, 'pool'. Each body
   * output and each coarser lateral map is freed as soon as the next lateral has read it, so that
   * at the finest level (the largest maps) only what is still needed is alive.
   */
  /** FPN level i's inner map: its lateral 1x1 conv plus the nearest-upsampled coarser one (none at the top). */
  private lateral(i: number, c: Feature, coarser: Feature | null, masks: RegionMasks): Feature {
    // Top-down pathway: torch interpolate 'nearest' (source index floor(d * in / out)), fused into the conv.
    const residual: Partial<ConvStep> = coarser ? { residual: coarser.x, upsample: true } : {};
    return convFeature(this.kernels, c, this.inner[i], masks, { relu: false, ...residual });
  }

  /** FPN level i's 3x3 output conv. */
  private output(i: number, inner: Feature, masks: RegionMasks): Feature {
    return convFeature(this.kernels, inner, this.outer[i], masks, { relu: false, winograd: winogradEnabled() });
  }

  /** LastLevelMaxPool: max_pool2d(kernel 1, stride 2) is a plain subsampling. */
  private lastLevelPool(level3: Feature, masks: RegionMasks): Feature {
    return maxPoolFeature(level3, 1, 2, 0, masks);
  }

  private runFpn(c: Feature[], masks: RegionMasks): tf.Tensor4D[] {
    return tf.tidy(() => {
      const results: Feature[] = new Array(4);
      let last: Feature | null = null;
      for (let i = 3; i >= 0; i--) {
        // Top-down pathway: lateral 1x1 conv + nearest-upsampled coarser level (torch
        // interpolate 'nearest': source index floor(d * in / out)), fused into the conv.
        const lateral = this.lateral(i, c[i], last, masks);
        c[i].x.dispose();
        last?.x.dispose();
        last = lateral;
        results[i] = this.output(i, last, masks);
      }
      last?.x.dispose();
      // The RPN head's 3x3 conv reads these maps: zero them outside each image's region.
      const levels: Feature[] = results.map((r) =>
        r.regions ? { x: masks.apply(r.x, r.regions), regions: r.regions, zeroOutside: true } : r,
      );
      levels.push(this.lastLevelPool(levels[3], masks));
      return levels.map((l) => l.x);
    });
  }

  dispose(): void {
    disposeConv(this.stem);
    for (const blocks of this.layers) {
      for (const b of blocks) {
        b.convs.forEach(disposeConv);
        if (b.downsample) disposeConv(b.downsample);
      }
    }
    this.inner.forEach(disposeConv);
    this.outer.forEach(disposeConv);
    this.layers.length = 0;
    this.inner.length = 0;
    this.outer.length = 0;
  }
}
