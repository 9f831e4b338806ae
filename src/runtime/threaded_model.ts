/**
 * Whole forwards on worker threads, for the single-threaded CPU backends (wasm, cpu): each worker
 * holds its own tfjs instance and copy of the network, and a batch is shared out among them, one
 * stacked forward per worker. tfjs runs no wasm threads under Node, so this is how a batch uses
 * more than one core; each image's result is still exactly its single-image result (the network
 * never mixes images, and every worker runs the same kernels).
 */
import * as tf from '@tensorflow/tfjs-core';
import { InferenceError } from '../errors';
import type { Level0Band, ModelConfig, RawDetections } from '../model/model';
import type { RoIHeadOutputs } from '../model/roi_heads';
import { ImageBytes, imageSizeOf, NetworkImage, paddedSize, resizedSize } from '../model/transform';
import { Size } from '../ops/size';
import { collectGarbage, coreFree, Done, TaskMessage, WorkerExitError, WorkerPool } from './threads';
import { Img2PoseWeights, ResNetDepth } from '../model/weights';
import { markGone, RowExchangeBuffers } from './row_exchange';

/**
 * Weights as typed arrays to hand to workers (each builds its own tensors from them). Every array
 * is a view on one SharedArrayBuffer: workers started with it share this one copy instead of
 * getting one each, and a replaced worker rebuilds from it.
 */
export interface PortableWeights {
  depth: ResNetDepth;
  tensors: { name: string; shape: number[]; dtype: 'float32' | 'int32'; data: Float32Array | Int32Array }[];
  poseMean: Float64Array;
  poseStddev: Float64Array;
}

/**
 * What a model worker is started with (its `workerData`), so a replaced worker rebuilds itself.
 * Without `weights` (workers started while the weights are still being read), the worker sets
 * up its backend and waits for them in a 'model-weights' task.
 */
/** The weights read again from their source, for a replacement worker; `release` frees what was made. */
export type ReopenWeights = () => Promise<{ weights: Img2PoseWeights; release(): void }>;

export interface ModelWorkerData {
  model: { backend: 'wasm' | 'cpu'; weights?: PortableWeights };
}

/**
 * The tensors' own value arrays when every one is a view of the same SharedArrayBuffer (the cpu
 * backend's `dataSync` hands back the array it holds; other backends give a copy, and the first
 * such tensor ends the search), else undefined.
 */
function sharedViews(weights: Img2PoseWeights): PortableWeights['tensors'] | undefined {
  const out: PortableWeights['tensors'] = [];
  let buffer: SharedArrayBuffer | undefined;
  for (const [name, t] of weights.tensors) {
    const data = t.dataSync();
    const dtype = t.dtype === 'int32' ? 'int32' : 'float32';
    const typed = dtype === 'int32' ? data instanceof Int32Array : data instanceof Float32Array;
    if (!typed || !(data.buffer instanceof SharedArrayBuffer) || (buffer !== undefined && data.buffer !== buffer)) return undefined;
    buffer = data.buffer;
    out.push({ name, shape: t.shape.slice(), dtype, data: data as Float32Array | Int32Array });
  }
  return out;
}

/**
 * One image for a worker, in shared memory (a SharedArrayBuffer): copied once, read in place by the
 * worker, and still ours when a replaced worker runs the share again. 8-bit samples (decoded files,
 * and tensors whose values are all bytes) go as bytes, RGB or gray, and the worker's transform
 * resizes straight from them: no float copy of the full-size image is made on either side. Other
 * tensors go as their values.
 */
export type PortableImage =
  | { bytes: ImageBytes }
  | { values: { shape: [number, number, number]; dtype: 'float32' | 'int32'; data: Float32Array | Int32Array } };

export interface PredictTask {
  images: PortableImage[];
  config: ModelConfig;
  /** Whether to offer parts of each forward to an idle worker (ThreadedModel's 'model-rpn', 'model-heads'). */
  offload: boolean;
}

/** One FPN level's features [N, H, W, C] in shared memory, for another worker's RPN head. */
export interface RpnTask {
  data: Float32Array;
  shape: [number, number, number, number];
}

/** Part 1 of one image's body shared by rows (Backbone.bodyShared): the image comes through the exchange. */
export interface BodyTask {
  shape: [number, number, number, number];
  buffers: RowExchangeBuffers;
}

/** A share of an image's RoI-head rows for another worker: pooled rows [n, 7, 7, C] in shared memory. */
export interface HeadsTask {
  rows: { data: Float32Array; shape: [number, number, number, number] };
  scoreThresh: number | undefined;
}

/**
 * The weights' values in one SharedArrayBuffer (see PortableWeights): as they are when every
 * tensor's values already are views of one (weights loaded with `sharedValues`, on the cpu
 * backend, which keeps the arrays it is given), else copied into a new one.
 */
export async function portableWeights(weights: Img2PoseWeights): Promise<PortableWeights> {
  const views = sharedViews(weights);
  if (views) return { depth: weights.depth, tensors: views, poseMean: weights.poseMean.slice(), poseStddev: weights.poseStddev.slice() };
  // Both dtypes are 4 bytes a value, so every view is aligned.
  let total = 0;
  for (const t of weights.tensors.values()) total += t.size * 4;
  const shared = new SharedArrayBuffer(total);
  const tensors: PortableWeights['tensors'] = [];
  let offset = 0;
  for (const [name, t] of weights.tensors) {
    const dtype = t.dtype === 'int32' ? 'int32' : 'float32';
    const data = dtype === 'int32' ? new Int32Array(shared, offset, t.size) : new Float32Array(shared, offset, t.size);
    data.set((await t.data()) as Float32Array | Int32Array);
    tensors.push({ name, shape: t.shape.slice(), dtype, data });
    offset += t.size * 4;
  }
  return { depth: weights.depth, tensors, poseMean: weights.poseMean.slice(), poseStddev: weights.poseStddev.slice() };
}

/**
 * What an image costs a worker beyond its pixels, in padded-pixel equivalents: the ROI heads run
 * ~1000 proposals at any size. Measured on wasm (docs/benchmarks.md): ~3.5 s for a 160x288 input,
 * ~10 s for 640x1152, i.e. ~3.3 s fixed + ~9 µs per padded pixel.
 */
const FIXED_COST_PIXELS = 360_000;

/**
 * Splits images among `workers` by estimated cost (padded pixels + FIXED_COST_PIXELS), largest
 * first to the least loaded (LPT): a batch of equal images splits evenly. Returns each worker's
 * image indices, ascending.
 */
export function shareOut(padded: Size[], workers: number): number[][] {
  const shares: number[][] = Array.from({ length: workers }, () => []);
  const load = new Array<number>(workers).fill(0);
  const cost = padded.map(([h, w]) => h * w + FIXED_COST_PIXELS);
  const order = padded.map((_, i) => i).sort((a, b) => cost[b] - cost[a] || a - b);
  for (const i of order) {
    let w = 0;
    for (let k = 1; k < workers; k++) if (load[k] < load[w]) w = k;
    shares[w].push(i);
    load[w] += cost[i];
  }
  return shares.map((s) => s.sort((a, b) => a - b));
}

/**
 * The network on `threads` workers; a `DetectionModel` for the detector.
 *
 * A call with fewer images than workers (one photo on two cores) would leave workers idle: there
 * the worker running an image sends parts of its forward through this thread to an idle worker,
 * in shared memory: the lower rows of FPN level 0's output conv and RPN head (the largest level,
 * while it runs the upper rows and the other levels; for a batch of one, else the RPN head's
 * largest level), then the last 54% of its RoI-head rows (both heads and the pose gating,
 * while it pools and runs the rest: RoIHeads.forwardPooling). The same kernels run on the same values, and each band computes
 * its rows as the whole map would, so the results are the bits one worker computes.
 */
export class ThreadedModel {
  /** Work one worker did for another (tests and benchmarks): RPN levels, RoI-head rows, level-0 bands. */
  readonly offloaded = { rpnLevels: 0, headRows: 0, level0Bands: 0, bodyBands: 0 };
  /**
   * When an idle worker takes parts of another's forward: 'core-free' (default) while other
   * processes leave a core free (`coreFree`: their CPU time since the last ask, ours not
   * counted), 'always', or 'never'. On a machine whose cores are taken by
   * other work the helper only competes with the image's own worker for the same cores: measured
   * on 2 shared cores at load ~8-11, a photo took ~20-25% longer with the help than without.
   */
  offloadWhen: 'core-free' | 'always' | 'never' = 'core-free';
  private pool!: WorkerPool;
  private reopen: ReopenWeights | undefined;
  private readonly reviving = new Map<number, Promise<void>>();
  /** Per worker, the body exchange it shares as the image's owner (its helper is told when it stops). */
  private readonly bodyExchanges = new Map<number, RowExchangeBuffers>();
  private backend: 'wasm' | 'cpu' = 'wasm';

  private constructor() {}

  /**
   * Starts the workers and waits until each has built its network (errors surface here). The
   * workers get the weights' values in shared memory: `weights` may be disposed once this
   * returns, and are best made on the cpu backend (plain arrays, see `weightsBackend`).
   */
  static async start(script: string, weights: Img2PoseWeights, backend: 'wasm' | 'cpu', threads: number): Promise<ThreadedModel> {
    return ThreadedModel.spawn(script, backend, threads).build(weights);
  }

  /**
   * Starts the workers before the weights are at hand: they load their modules and set up their
   * backend (a few hundred ms each) while this thread reads the weights; `build` hands them over.
   * `dispose` stops them if the weights never come.
   */
  static spawn(script: string, backend: 'wasm' | 'cpu', threads: number): ThreadedModel {
    const model = new ThreadedModel();
    const data: ModelWorkerData = { model: { backend } };
    model.pool = new WorkerPool(script, threads, data, (task, from) => model.answer(task, from));
    model.backend = backend;
    return model;
  }

  /**
   * Gives spawned workers the weights and waits until each has built its network (see `start`).
   * With `reopen` (weights read from a file, which can be read again), nothing here keeps them
   * afterwards: once the caller has let go of `weights` too, their shared memory can be returned
   * (`collectGarbage`), and a worker that replaces a stopped one gets them from `reopen`. Without
   * it, replacements start with the values kept from now on.
   */
  async build(weights: Img2PoseWeights, reopen?: ReopenWeights): Promise<ThreadedModel> {
    const portable = await portableWeights(weights);
    this.reopen = reopen;
    this.pool.setWorkerData({ model: { backend: this.backend, weights: reopen ? undefined : portable } } satisfies ModelWorkerData);
    try {
      await this.pool.broadcast({ kind: 'model-weights', payload: portable });
      // A message after the weights' own: each worker lets go of them now (see 'model-collect'),
      // not at its first task, which a helper that is never asked may not get for a long time.
      await this.pool.broadcast({ kind: 'model-collect', payload: null });
    } catch (e) {
      await this.pool.terminate();
      throw e;
    }
    return this;
  }

  /**
   * Worker `index` made ready for a task: when it has stopped and the weights were not kept, its
   * replacement is started now and given them, read again (`reopen`). Concurrent callers share one
   * replacement.
   */
  private revive(index: number): Promise<void> {
    const reopen = this.reopen;
    if (!reopen || !this.pool.isDead(index)) return Promise.resolve();
    let pending = this.reviving.get(index);
    if (!pending) {
      pending = (async () => {
        let opened: Awaited<ReturnType<ReopenWeights>>;
        try {
          opened = await reopen();
        } catch (e) {
          throw new InferenceError(`A worker thread stopped and its replacement could not be given the weights: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
        }
        try {
          await this.pool.run({ kind: 'model-weights', payload: await portableWeights(opened.weights) }, [], index);
          await this.pool.run({ kind: 'model-collect', payload: null }, [], index);
        } finally {
          opened.release();
        }
      })().finally(() => {
        this.reviving.delete(index);
        // This thread's views of the values read again go too (see build).
        setTimeout(collectGarbage, 0);
      });
      this.reviving.set(index, pending);
    }
    return pending;
  }

  get threads(): number {
    return this.pool.size;
  }

  async predict(images: NetworkImage[], config: ModelConfig): Promise<RawDetections[]> {
    const padded = images.map((image) => paddedSize(resizedSize(...imageSizeOf(image), config.minSize, config.maxSize)));
    const shares = shareOut(padded, Math.min(this.pool.size, images.length));
    // Workers left without an image, or done before the others, can take RoI-head rows.
    const offload = this.pool.size > 1 && (shares.length < this.pool.size || shares.some((s) => s.length !== shares[0].length));
    const results: RawDetections[] = new Array(images.length);
    await Promise.all(
      shares.map(async (share, worker) => {
        if (share.length === 0) return;
        const out = await this.predictShare(share.map((i) => images[i]), config, worker, offload);
        share.forEach((i, k) => (results[i] = out[k]));
      }),
    );
    return results;
  }

  /**
   * One worker's share. A worker that stops while holding it (a crash, or killed) is replaced and
   * the share runs once more on the new one: the images are still ours, and a forward has no side
   * effects, so the caller gets the same results. A second stop is not retried again (the images
   * themselves may be what kills it): the call fails with an `InferenceError`.
   */
  private async predictShare(images: NetworkImage[], config: ModelConfig, worker: number, offload: boolean): Promise<RawDetections[]> {
    // One at a time: with tensors, one full-size read is alive at once besides the shared copies.
    const portable: PortableImage[] = [];
    for (const image of images) portable.push(await portableImage(image));
    const attempt = async () => {
      await this.revive(worker);
      return this.pool.run<RawDetections[]>({ kind: 'model-predict', payload: { images: portable, config, offload } satisfies PredictTask }, [], worker);
    };
    try {
      return await attempt();
    } catch (first) {
      if (!(first instanceof WorkerExitError)) throw first;
      // A helper sharing its body need not wait for it any longer.
      const exchange = this.bodyExchanges.get(worker);
      if (exchange) markGone(exchange, 0);
      try {
        return await attempt();
      } catch (second) {
        if (!(second instanceof WorkerExitError)) throw second;
        const n = images.length;
        throw new InferenceError(
          `The network's worker thread stopped twice on ${n === 1 ? 'this image' : `these ${n} images`}: ` +
            `${first.message}, then on the retry ${second.message}; the worker was replaced for later calls ` +
            '(if memory ran out, lower batchSize, maxSize or threads)',
          { cause: second },
        );
      }
    }
  }

  /**
   * A worker's request (src/runtime/parent.ts): 'model-rpn', the RPN head on a level, or
   * 'model-heads', RoI-head rows, for an idle worker. The answer is null when none is idle now, or the one that took them stopped (it is replaced
   * at its next task); the asking worker then runs the rows itself, so a crash there costs time,
   * never the call.
   */
  private async answer(task: TaskMessage, from: number): Promise<Done> {
    if (task.kind !== 'model-heads' && task.kind !== 'model-rpn' && task.kind !== 'model-level0' && task.kind !== 'model-body') {
      throw new Error(`ThreadedModel: no request ${JSON.stringify(task.kind)}`);
    }
    const helper = this.offloadWhen === 'never' || (this.offloadWhen === 'core-free' && !coreFree()) ? undefined : this.pool.idleWorker(from);
    if (task.kind === 'model-body') return this.answerBody(task, from, helper);
    if (helper === undefined) return { result: null, transfer: [] };
    try {
      if (task.kind === 'model-level0') {
        const band = await this.pool.run<Level0Band>(task, [], helper);
        this.offloaded.level0Bands++;
        return { result: band, transfer: [band.fpn.buffer, band.head.buffer] as ArrayBuffer[] };
      }
      if (task.kind === 'model-rpn') {
        const values = await this.pool.run<Float32Array>(task, [], helper);
        this.offloaded.rpnLevels++;
        return { result: values, transfer: [values.buffer as ArrayBuffer] };
      }
      const out = await this.pool.run<RoIHeadOutputs>(task, [], helper);
      this.offloaded.headRows += out.classLogits.length / 2;
      return { result: out, transfer: [out.classLogits.buffer, out.dofRegression.buffer] as ArrayBuffer[] };
    } catch (e) {
      if (e instanceof WorkerExitError) return { result: null, transfer: [] };
      throw e;
    }
  }

  /**
   * 'model-body': part 1 of worker `from`'s body on `helper`. The asking worker waits for it in
   * shared memory, not for this answer: when no worker is free or the helper stops, it is told
   * there (`markGone`) and makes the rest alone.
   */
  private async answerBody(task: TaskMessage, from: number, helper: number | undefined): Promise<Done> {
    const { buffers } = task.payload as BodyTask;
    if (helper === undefined) {
      markGone(buffers, 1);
      return { result: null, transfer: [] };
    }
    this.bodyExchanges.set(from, buffers);
    try {
      await this.pool.run<null>(task, [], helper);
      this.offloaded.bodyBands++;
    } catch (e) {
      markGone(buffers, 1);
      if (!(e instanceof WorkerExitError)) throw e;
    } finally {
      if (this.bodyExchanges.get(from) === buffers) this.bodyExchanges.delete(from);
    }
    return { result: null, transfer: [] };
  }

  /** `predict` as `DetectionModel.predictImages`: decoded files reach the workers as their 8-bit samples. */
  predictImages(images: NetworkImage[], config: ModelConfig): Promise<RawDetections[]> {
    return this.predict(images, config);
  }

  /** Tensors alive in each worker's tfjs (leak checks). */
  async workerTensors(): Promise<number[]> {
    await Promise.all(Array.from({ length: this.pool.size }, (_, i) => this.revive(i)));
    return this.pool.broadcast<number>({ kind: 'model-memory', payload: null });
  }

  /** Stops the workers: settles once they have exited. */
  dispose(): Promise<void> {
    return this.pool.terminate();
  }
}

async function portableImage(image: NetworkImage): Promise<PortableImage> {
  if (!(image instanceof tf.Tensor)) return { bytes: sharedBytes(image) };
  const shape: [number, number, number] = [image.shape[0], image.shape[1], image.shape[2]];
  const values = (await image.data()) as Float32Array | Int32Array;
  // Anything but RGB goes as it is, for the worker's transform to refuse.
  const bytes = shape[2] === 3 ? asSharedBytes(values) : null;
  if (bytes) return { bytes: { data: bytes, height: shape[0], width: shape[1], channels: 3 } };
  const data = image.dtype === 'int32' ? new Int32Array(new SharedArrayBuffer(values.length * 4)) : new Float32Array(new SharedArrayBuffer(values.length * 4));
  data.set(values);
  return { values: { shape, dtype: image.dtype === 'int32' ? 'int32' : 'float32', data } };
}

/** 8-bit samples in shared memory: RGB(A) as RGB (the alpha is never read), gray as it is. */
function sharedBytes({ data, height, width, channels }: ImageBytes): ImageBytes {
  const kept = channels === 4 ? 3 : channels;
  const out = new Uint8Array(new SharedArrayBuffer(height * width * kept));
  if (kept === channels) {
    out.set(data);
  } else {
    for (let p = 0, s = 0, o = 0; p < height * width; p++, s += 4, o += 3) {
      out[o] = data[s];
      out[o + 1] = data[s + 1];
      out[o + 2] = data[s + 2];
    }
  }
  return { data: out, height, width, channels: kept };
}

/** The values as bytes in shared memory when all are integers in 0..255, else null. */
function asSharedBytes(values: Float32Array | Int32Array): Uint8Array | null {
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!(v >= 0 && v <= 255) || v !== Math.floor(v)) return null;
  }
  const out = new Uint8Array(new SharedArrayBuffer(values.length));
  out.set(values);
  return out;
}
