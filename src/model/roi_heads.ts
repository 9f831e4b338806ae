/**
 * The box and class branches of DOFRoIHeads (upstream `_models.py`) on pooled RoI features:
 *
 *   box_head   (TwoMLPHead: fc6 12544->1024, ReLU, fc7 1024->1024, ReLU)
 *     -> box_predictor.dof_pred: Linear 1024->256, BatchNorm1d (eval), ReLU, Linear 256->12
 *   class_head (another TwoMLPHead, own weights, same pooled features)
 *     -> class_predictor.cls_score: Linear 1024->2
 *
 * Upstream pools twice with identical settings (box_roi_pool, class_roi_pool), so one pooled
 * tensor feeds both heads (fc6 on wasm as a sum of 8 smaller products, see fc6Chunked). fc6's rows
 * are reordered once so that it reads our (7, 7, C) pooled layout instead of torch's (C, 7, 7)
 * flatten order.
 *
 * The pose branch runs only where its output is used: post-processing keeps the dofs of rows
 * whose face score passes upstream's 0.05 filter, so `forward` classifies first and regresses the
 * dofs of those rows alone (on trained weights, a few percent of the 1000 proposals). Each row's
 * numbers are computed as in a run over all rows.
 */
import * as tf from '@tensorflow/tfjs-core';
import { faceScores } from './postprocess';
import { Img2PoseWeights } from './weights';
import { ROI_OUTPUT_SIZE } from './roi_align';
import { copyValuesInto, StageRuntime, TensorMemory } from './runtime';
import { ownCopy } from './layers';
import { copyRows, rowRange } from '../kernels/wasm/rows';
import { packingRun, packStage, usePacked } from '../kernels/wasm/packed';
import { prepareLinearWeight, releaseLinearWeight } from '../kernels/webgpu';

const BN_EPS = 1e-5;

export interface RoIHeadOutputs {
  /** (R, 2): background and face logits per box. */
  classLogits: Float32Array;
  /** (R, 12): normalised dofs for class 0 then class 1 (6 each). */
  dofRegression: Float32Array;
}

/**
 * Another thread with its own copy of these heads that can take some of the rows (on the CPU
 * backends: an idle worker, see src/runtime/threaded_model.ts). Rows are independent, so the rows
 * it returns are the bits this thread would have computed.
 */
export interface HeadsOffload {
  /**
   * Shared memory (a SharedArrayBuffer) for `length` values of rows to send: the offload's own,
   * reused from call to call (`forward` has settled by the next one), so that the memory of the
   * rows sent does not pile up until the threads' garbage collectors run.
   */
  sharedBuffer(length: number): Float32Array;
  /**
   * `forward(rows, scoreThresh)` there, on pooled rows [n, 7, 7, C] given as their values in
   * shared memory. Null when no thread is free now, or the one that took them stopped: the
   * caller then runs the rows itself.
   */
  forward(rows: { data: Float32Array; shape: [number, number, number, number] }, scoreThresh: number | undefined): Promise<RoIHeadOutputs | null>;
}

/**
 * The share of the rows `forwardPooling` keeps when it has an offload. This thread pools every
 * row, the offload's first, so the two finish together when the offload's heads take as long as
 * this thread's pooling of its own rows and its heads: with pooling at p and the heads at h per
 * row, the share kept is (p + h) / (p + 2h). On wasm p is ~0.27 ms and h ~1.6 ms (2 workers,
 * the default photo): ~0.46. At one half the offload sat idle ~30-90 ms at the end of each call.
 */
const POOLING_HERE_SHARE = 0.46;

/**
 * Pooled RoI rows [rows, ...rowShape] made on demand, a range at a time (RoIAlign of a range of
 * the proposals: each row depends on its own box alone), for `RoIHeads.forwardPooling`.
 */
export interface PooledRowSource {
  readonly rows: number;
  readonly rowShape: [number, number, number];
  /** Rows `start` .. `start + count` written into `out`. */
  into(start: number, count: number, out: Float32Array): Promise<void>;
  /** Rows `start` .. `start + count` as a tensor, the caller's to dispose. */
  tensor(start: number, count: number): Promise<tf.Tensor4D>;
  /** Called once no more rows will be asked for. */
  release(): void;
}

/**
 * Fewest rows for which `forward` shares the work with an offload: a row costs the heads ~1 ms on
 * wasm, the trip to another thread a few ms in all.
 */
const MIN_OFFLOAD_ROWS = 64;

/**
 * x (rows, in) @ w (in, out) + bias, optional ReLU, through the network's kernels
 * (src/kernels/webgpu; elsewhere tf.fused.matMul). On wasm this is XNNPACK's GEMM with the bias
 * as the accumulators' start, the same bits a 1x1 convolution gives; unlike the convolution,
 * which keeps a packed copy of its filter (about twice the filter's size in the heap) for as
 * long as the filter lives, the matMul holds nothing between calls, at the same speed.
 */
function dense(runtime: StageRuntime, x: tf.Tensor2D, w: tf.Tensor2D, bias: tf.Tensor1D, relu: boolean): tf.Tensor2D {
  return runtime.kernels.linear(x, w, bias, relu);
}

/**
 * fc6 on wasm, split along its 12544 inputs into FC6_CHUNKS partial products that are summed.
 * XNNPACK's GEMM runs ~29 GFLOP/s up to ~1.5k inputs but falls to ~9 GFLOP/s at 12544 x 2048
 * (its packed weight panels stop fitting in cache): 1000 boxes took ~3.0 s whole, ~2.0 s in 8 chunks.
 */
const FC6_CHUNKS = 8;

function fc6Chunked(x: tf.Tensor2D, chunks: tf.Tensor2D[], bias: tf.Tensor1D): tf.Tensor2D {
  return tf.tidy(() => {
    const [rows, k] = x.shape;
    const part = k / chunks.length;
    const all = rowRange(0, rows);
    const partials = chunks.map((w, i) => fc6Partial(copyRows(x, all, i * part, part), w, i === 0 ? bias : null));
    return tf.relu(tf.addN(partials)) as tf.Tensor2D;
  });
}

/** One of fc6Chunked's products, the first with the bias (XNNPACK packs each chunk for this call: src/kernels/wasm/packed.ts). */
function fc6Partial(x: tf.Tensor2D, w: tf.Tensor2D, bias: tf.Tensor1D | null): tf.Tensor2D {
  return usePacked(w, `matMul linear bias ${bias ? bias.id : 'none'}`, () => tf.fused.matMul({ a: x, b: w, bias: bias ?? undefined }) as tf.Tensor2D);
}

/** Rows `rows` of pooled features [R, 7, 7, C] (a copy in the wasm heap there, see copyRows). */
function pooledRows(pooled: tf.Tensor4D, rows: number[]): tf.Tensor4D {
  return tf.tidy(() => {
    const [r, h, w, c] = pooled.shape;
    return tf.reshape(copyRows(tf.reshape(pooled, [r, h * w * c]), rows), [rows.length, h, w, c]);
  });
}

/** fc6 rows in torch's (C, 7, 7) flatten order -> our NHWC (7, 7, C) order. */
function permuteFc6Rows(weight: tf.Tensor2D, channels: number): tf.Tensor2D {
  const cells = ROI_OUTPUT_SIZE * ROI_OUTPUT_SIZE;
  return tf.tidy(() =>
    tf.reshape(tf.transpose(tf.reshape(weight, [channels, cells, weight.shape[1]]), [1, 0, 2]), [cells * channels, weight.shape[1]]),
  );
}

/** Linear (in, out) followed by eval-mode BatchNorm1d, as one Linear. */
function foldBatchNorm(
  weight: Float32Array,
  bias: Float32Array,
  gamma: Float32Array,
  beta: Float32Array,
  mean: Float32Array,
  variance: Float32Array,
): { weight: Float32Array; bias: Float32Array } {
  const outs = bias.length;
  const scale = Float64Array.from(gamma, (g, j) => g / Math.sqrt(variance[j] + BN_EPS));
  const w = new Float32Array(weight.length);
  for (let i = 0; i < weight.length; i++) w[i] = weight[i] * scale[i % outs];
  const b = Float32Array.from(bias, (v, j) => (v - mean[j]) * scale[j] + beta[j]);
  return { weight: w, bias: b };
}

/** fc6 of one head: [12544, 1024] as one matrix, or on wasm in FC6_CHUNKS row blocks. */
interface Fc6 {
  weight: tf.Tensor2D | null;
  chunks: tf.Tensor2D[];
  bias: tf.Tensor1D;
}

/**
 * fc6 from torch's weight [C * 49, out]: one permuted matrix, or (chunked) FC6_CHUNKS row blocks of
 * it, each made from the host values on its own, so that no full-size copy or transpose of the
 * 51 MB matrix passes through the backend's memory; with `packedOnly`, each kept only as packed
 * for fc6Partial before the next is made.
 */
function makeFc6(torchWeight: tf.Tensor2D, bias: tf.Tensor1D, chunked: boolean, packedOnly: boolean, memory?: TensorMemory): Fc6 {
  const [rows, outs] = torchWeight.shape;
  const cells = ROI_OUTPUT_SIZE * ROI_OUTPUT_SIZE;
  const channels = rows / cells;
  if (!(chunked && rows % FC6_CHUNKS === 0 && Number.isInteger(channels))) {
    return { weight: permuteFc6Rows(torchWeight, channels), chunks: [], bias };
  }
  const values = torchWeight.dataSync() as Float32Array;
  const part = rows / FC6_CHUNKS;
  const chunks: tf.Tensor2D[] = [];
  for (let k = 0; k < FC6_CHUNKS; k++) {
    // Where the backend's memory can be written in place, the rows go straight there (no host
    // copy to move in and collect after).
    const chunk = memory ? memory.unset<tf.Rank.R2>([part, outs]) : null;
    const block = chunk && memory ? memory.view(chunk) : new Float32Array(part * outs);
    for (let r = 0; r < part; r++) {
      // Our row (cell, channel) is torch's row channel * 49 + cell (see permuteFc6Rows).
      const row = k * part + r;
      const source = (row % channels) * cells + Math.floor(row / channels);
      block.set(values.subarray(source * outs, (source + 1) * outs), r * outs);
    }
    chunks.push(chunk ?? tf.tensor2d(block, [part, outs]));
    // Packed (and its own copy freed) before the next chunk is made, which then takes its place.
    if (packedOnly) {
      packingRun(() =>
        tf.tidy(() => {
          fc6Partial(tf.zeros([1, part]), chunks[k], k === 0 ? bias : null);
        }),
      );
    }
  }
  return { weight: null, chunks, bias };
}

function runFc6(runtime: StageRuntime, x: tf.Tensor2D, fc6: Fc6): tf.Tensor2D {
  return fc6.weight ? dense(runtime, x, fc6.weight, fc6.bias, true) : fc6Chunked(x, fc6.chunks, fc6.bias);
}

function disposeFc6(fc6: Fc6): void {
  tf.dispose([...(fc6.weight ? [fc6.weight] : []), ...fc6.chunks, fc6.bias]);
}

export class RoIHeads {
  /** box_head.fc6 and class_head.fc6, rows permuted for NHWC pooling. */
  private readonly boxFc6: Fc6;
  private readonly classFc6: Fc6;
  private readonly boxFc7: [tf.Tensor2D, tf.Tensor1D];
  private readonly classFc7: [tf.Tensor2D, tf.Tensor1D];
  /** dof_pred.0 with dof_pred.1 (BatchNorm) folded in. */
  private readonly dofHidden: [tf.Tensor2D, tf.Tensor1D];
  private readonly dofOut: [tf.Tensor2D, tf.Tensor1D];
  private readonly clsScore: [tf.Tensor2D, tf.Tensor1D];

  /** `runtime`: the kernels and backend rules its dense layers follow. */
  constructor(weights: Img2PoseWeights, private readonly runtime: StageRuntime) {
    const get = (name: string): tf.Tensor => {
      const t = weights.tensors.get(`roi_heads.${name}`);
      if (!t) throw new Error(`RoIHeads: missing weight roi_heads.${name}`);
      return t;
    };
    const layer = (name: string): [tf.Tensor2D, tf.Tensor1D] => [
      ownCopy(get(`${name}.weight`) as tf.Tensor2D),
      ownCopy(get(`${name}.bias`) as tf.Tensor1D),
    ];
    const fc6 = (head: string): Fc6 =>
      makeFc6(get(`${head}.fc6.weight`) as tf.Tensor2D, ownCopy(get(`${head}.fc6.bias`) as tf.Tensor1D), runtime.rules.fc6Chunked, runtime.rules.packedWeightsOnly, runtime.rules.tensorMemory);
    this.boxFc6 = fc6('box_head');
    this.classFc6 = fc6('class_head');
    this.boxFc7 = layer('box_head.fc7');
    this.classFc7 = layer('class_head.fc7');
    this.dofOut = layer('box_predictor.dof_pred.3');
    this.clsScore = layer('class_predictor.cls_score');

    const host = (name: string): Float32Array => get(name).dataSync() as Float32Array;
    const hidden = get('box_predictor.dof_pred.0.weight');
    const folded = foldBatchNorm(
      host('box_predictor.dof_pred.0.weight'),
      host('box_predictor.dof_pred.0.bias'),
      host('box_predictor.dof_pred.1.weight'),
      host('box_predictor.dof_pred.1.bias'),
      host('box_predictor.dof_pred.1.running_mean'),
      host('box_predictor.dof_pred.1.running_var'),
    );
    this.dofHidden = [tf.tensor2d(folded.weight, hidden.shape as [number, number]), tf.tensor1d(folded.bias)];
    if (runtime.rules.packedWeightsOnly) {
      packStage(this, () => this.packWeights());
    }
    // The class score's 2 outputs: padded to 4 once here rather than at every call (webgpu only).
    prepareLinearWeight(...this.clsScore);
  }

  /**
   * Runs both heads once on one zero row inside `packStage`: afterwards every dense weight is
   * kept only as packed for the way `forward` calls it (the wasm backend; see
   * src/kernels/wasm/packed.ts). fc6's chunks, when chunked, were packed as they were made.
   */
  private packWeights(): void {
    const fc6In = this.classFc6.weight ? this.classFc6.weight.shape[0] : this.classFc6.chunks.reduce((k, c) => k + c.shape[0], 0);
    const channels = fc6In / (ROI_OUTPUT_SIZE * ROI_OUTPUT_SIZE);
    this.apply(tf.zeros([1, ROI_OUTPUT_SIZE, ROI_OUTPUT_SIZE, channels]));
  }

  /** class_head and cls_score: pooled features [R, 7, 7, C] -> class logits [R, 2]. */
  classify(pooled: tf.Tensor4D): tf.Tensor2D {
    return tf.tidy(() => {
      const x = tf.reshape(pooled, [pooled.shape[0], -1]) as tf.Tensor2D;
      const features = dense(this.runtime, runFc6(this.runtime, x, this.classFc6), ...this.classFc7, true);
      return dense(this.runtime, features, ...this.clsScore, false);
    });
  }

  /** box_head and dof_pred: pooled features [R, 7, 7, C] -> dof regression [R, 12]. */
  regressDofs(pooled: tf.Tensor4D): tf.Tensor2D {
    return tf.tidy(() => {
      const x = tf.reshape(pooled, [pooled.shape[0], -1]) as tf.Tensor2D;
      const features = dense(this.runtime, runFc6(this.runtime, x, this.boxFc6), ...this.boxFc7, true);
      return dense(this.runtime, dense(this.runtime, features, ...this.dofHidden, true), ...this.dofOut, false);
    });
  }

  /** Both heads on every row: class logits [R, 2] and dof regression [R, 12]. */
  apply(pooled: tf.Tensor4D): { classLogits: tf.Tensor2D; dofRegression: tf.Tensor2D } {
    return { classLogits: this.classify(pooled), dofRegression: this.regressDofs(pooled) };
  }

  /**
   * Both heads, read back. With `scoreThresh`, the dofs are regressed only for rows whose face
   * score (post-processing's softmax) is above it; the other rows' dofs are zero, and
   * post-processing never reads them. With `offload`, another thread runs the second half of the
   * rows meanwhile; the numbers are the same.
   */
  async forward(pooled: tf.Tensor4D, scoreThresh?: number, offload?: HeadsOffload): Promise<RoIHeadOutputs> {
    const rows = pooled.shape[0];
    if (!offload || rows < 2 * MIN_OFFLOAD_ROWS) return this.forwardRange(pooled, 0, rows, scoreThresh);
    const [, h, w, c] = pooled.shape;
    const split = Math.ceil(rows / 2);
    return this.shareRows(rows, split, [h, w, c], offload, scoreThresh, {
      send: (data) => copyValuesInto(pooled, split * h * w * c, data, this.runtime.rules.tensorMemory),
      here: () => this.forwardRange(pooled, 0, split, scoreThresh),
      there: () => this.forwardRange(pooled, split, rows - split, scoreThresh),
    });
  }

  /**
   * `forward` on rows pooled on demand (`PooledRowSource`). With `offload`, the other thread's
   * share (the last rows, a little over half: POOLING_HERE_SHARE) is pooled first, straight into
   * the memory it reads, so that it starts on them while this one pools and runs its own.
   */
  async forwardPooling(source: PooledRowSource, scoreThresh?: number, offload?: HeadsOffload): Promise<RoIHeadOutputs> {
    const rows = source.rows;
    const [h, w, c] = source.rowShape;
    const pooledRange = async (start: number, count: number): Promise<RoIHeadOutputs> => {
      const pooled = await source.tensor(start, count);
      // Everything is pooled: what it was pooled from can go before the heads add their memory.
      source.release();
      try {
        return await this.forwardRange(pooled, 0, count, scoreThresh);
      } finally {
        pooled.dispose();
      }
    };
    if (!offload || rows < 2 * MIN_OFFLOAD_ROWS) return pooledRange(0, rows);
    const split = Math.ceil(rows * POOLING_HERE_SHARE);
    return this.shareRows(rows, split, [h, w, c], offload, scoreThresh, {
      send: (data) => source.into(split, rows - split, data),
      here: () => pooledRange(0, split),
      there: async (sent) => {
        const pooled = tf.tensor4d(sent, [rows - split, h, w, c]);
        try {
          return await this.forwardRange(pooled, 0, rows - split, scoreThresh);
        } finally {
          pooled.dispose();
        }
      },
    });
  }

  /**
   * Rows `split` .. `rows` on `offload`'s thread (`send` writes their pooled values into the
   * memory it reads; `there` runs them here, given that memory, when it cannot), rows 0 .. `split` here meanwhile
   * (`here`); the outputs stitched in row order.
   */
  private async shareRows(
    rows: number,
    split: number,
    [h, w, c]: [number, number, number],
    offload: HeadsOffload,
    scoreThresh: number | undefined,
    parts: { send(data: Float32Array): Promise<void>; here(): Promise<RoIHeadOutputs>; there(data: Float32Array): Promise<RoIHeadOutputs> },
  ): Promise<RoIHeadOutputs> {
    const data = offload.sharedBuffer((rows - split) * h * w * c);
    await parts.send(data);
    const away = offload.forward({ data, shape: [rows - split, h, w, c] }, scoreThresh);
    let here: RoIHeadOutputs;
    try {
      here = await parts.here();
    } catch (e) {
      // The other thread may still read `data`: settled before the offload's next call reuses it.
      await away.catch(() => undefined);
      throw e;
    }
    const there = (await away) ?? (await parts.there(data));
    if (there.classLogits.length !== (rows - split) * 2 || there.dofRegression.length !== (rows - split) * 12) {
      throw new Error(`RoIHeads: the other thread returned ${there.classLogits.length / 2} rows for ${rows - split}`);
    }
    const classLogits = new Float32Array(rows * 2);
    const dofRegression = new Float32Array(rows * 12);
    classLogits.set(here.classLogits);
    classLogits.set(there.classLogits, split * 2);
    dofRegression.set(here.dofRegression);
    dofRegression.set(there.dofRegression, split * 12);
    return { classLogits, dofRegression };
  }

  /** `forward` on rows `start` .. `start + count`, in pieces of `headRows` (see BackendRules.headRows). */
  private async forwardRange(pooled: tf.Tensor4D, start: number, count: number, scoreThresh?: number): Promise<RoIHeadOutputs> {
    const step = this.runtime.rules.headRows;
    if (start === 0 && count === pooled.shape[0] && count <= step) return this.forwardRows(pooled, scoreThresh);
    const classLogits = new Float32Array(count * 2);
    const dofRegression = new Float32Array(count * 12);
    // Each piece freed before the next.
    for (let at = 0; at < count; at += step) {
      const n = Math.min(step, count - at);
      const piece = pooledRows(pooled, rowRange(start + at, n));
      try {
        const out = await this.forwardRows(piece, scoreThresh);
        classLogits.set(out.classLogits, at * 2);
        dofRegression.set(out.dofRegression, at * 12);
      } finally {
        piece.dispose();
      }
    }
    return { classLogits, dofRegression };
  }

  /** `forward` on all of `pooled`'s rows at once. */
  private async forwardRows(pooled: tf.Tensor4D, scoreThresh?: number): Promise<RoIHeadOutputs> {
    const rows = pooled.shape[0];
    if (rows === 0) return { classLogits: new Float32Array(0), dofRegression: new Float32Array(0) };
    if (scoreThresh === undefined) {
      const { classLogits, dofRegression } = this.apply(pooled);
      try {
        const [c, d] = await Promise.all([classLogits.data(), dofRegression.data()]);
        return { classLogits: c as Float32Array, dofRegression: d as Float32Array };
      } finally {
        tf.dispose([classLogits, dofRegression]);
      }
    }
    const logitsTensor = this.classify(pooled);
    let classLogits: Float32Array;
    try {
      classLogits = (await logitsTensor.data()) as Float32Array;
    } finally {
      logitsTensor.dispose();
    }
    const dofRegression = new Float32Array(rows * 12);
    const thresh = Math.fround(scoreThresh);
    const kept: number[] = [];
    faceScores(classLogits).forEach((score, i) => {
      if (score > thresh) kept.push(i);
    });
    if (kept.length === 0) return { classLogits, dofRegression };
    const dofs = tf.tidy(() => {
      const subset = kept.length === rows ? pooled : pooledRows(pooled, kept);
      return this.regressDofs(subset);
    });
    try {
      const values = (await dofs.data()) as Float32Array;
      kept.forEach((row, k) => dofRegression.set(values.subarray(k * 12, k * 12 + 12), row * 12));
    } finally {
      dofs.dispose();
    }
    return { classLogits, dofRegression };
  }

  dispose(): void {
    disposeFc6(this.boxFc6);
    disposeFc6(this.classFc6);
    releaseLinearWeight(...this.clsScore);
    tf.dispose([...this.boxFc7, ...this.classFc7, ...this.dofHidden, ...this.dofOut, ...this.clsScore]);
  }
}
