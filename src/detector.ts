/**
 * The public detector (upstream `detector.py`, class `Img2Pose`): image inputs in, faces out.
 *
 * Upstream's split is kept: `detectFaces` routes a single image to `detectSingle` and a list of
 * several to `detectBatch` (one stacked forward per chunk of `batchSize`), and
 * `processPrediction` turns the network's raw detections into `Face`s. (Upstream's padded
 * batches change an image's detections when sizes differ; our network masks the padding so a
 * list gives each image its single-image result: that is src/model/model.ts's business, not ours.)
 *
 * Beyond upstream:
 * - a bad input in a list fails only its own index (`BatchError` / `detectFacesSettled`);
 * - calls may overlap: forwards take turns through an internal queue, in call order, one at a
 *   time (two where the network's backend queues GPU work: `DetectionModel.concurrentForwards`),
 *   and an input is decoded only when its turn comes, so memory stays that of one or two batches;
 * - every tensor made on the way is disposed, on errors too; `dispose()` frees the weights.
 */
import * as os from 'os';
import * as tf from '@tensorflow/tfjs-core';
import { BackendChoice, BACKEND_CHOICES, onBackend, onBackendSync, selectBackend, selectCpuForValues } from './runtime/backend';
import {
  AbortError,
  BatchError,
  DisposedError,
  Img2PoseError,
  IndexedError,
  InferenceError,
  InputError,
  OptionError,
  WeightsError,
} from './errors';
import { DEFAULT_MAX_PIXELS, ImageInput, RawImage, decodeImage, decodeNetworkImage, decodePixels } from './io/images';
import { imageSizeOf, NetworkImage } from './model/transform';
import { checkKnownKeys } from './options';
import { AlignOptions, AlignSize, AlignedFace, PosedFace, Rgb8Image, alignChecked, alignLimitsOf, alignPoses, alignSizeOf, checkPoses, decodeRgb8 } from './align';
import { ModelConfig, RawDetections } from './model/model';
import { collectGarbage, cores } from './runtime/threads';
import { DEFAULT_POOL_LIMIT, releaseGpuPool, useGpuPool } from './kernels/webgpu';
import { buildNetwork, isCpuBackend, runsOnWorkers, spawnNetworkWorkers } from './runtime/runtime';
import { KeypointName, projectKeypoints } from './model/pose';
import { LoadWeightsOptions } from './io/weights_io';
import { Environment, ReleaseOptions } from './io/weights_cache';
import { copyToActiveBackend, onActiveBackend } from './io/tensor_home';
import { DEFAULT_WEIGHTS, WeightsSource, isWeightsSource, openWeights } from './io/weights_source';

export type Box = [x1: number, y1: number, x2: number, y2: number];
export type Pose = [rx: number, ry: number, rz: number, tx: number, ty: number, tz: number];
export type Point = [x: number, y: number];

/** One detected face; the field and keypoint names are upstream's, so JSON compares one to one. */
export interface Face {
  /** x1, y1, x2, y2 in original image pixels. */
  box: Box;
  confidence: number;
  /** Rotation vector (radians) and translation of the head in the camera frame (focal w + h). */
  pose: Pose;
  /** The 5 landmarks of the 3D reference face, projected with `pose`. */
  keypoints: Record<KeypointName, Point>;
}

/** Per-call overrides of the detector's filtering, and the call's control. */
export interface DetectOptions {
  /** Keep faces with confidence >= this (0..1). */
  scoreThreshold?: number;
  /** Keep at most this many faces per image, best first; -1 keeps all. */
  maxFaces?: number;
  /**
   * Stops the call: it rejects with an `AbortError` once the forward in progress (if any) has
   * finished; images not yet run are not run, and nothing stays allocated. A signal already
   * aborted rejects at once. Results finished before the abort are not returned.
   */
  signal?: AbortSignal;
  /**
   * Called as each image's result (its faces or its error) is ready, with the number done so far
   * and the number of images: (1, n), (2, n), ... (n, n), never after an abort. A batch's images
   * are ready together, so their calls come together. If it throws, the call rejects with that
   * error and stops as an abort would.
   */
  onProgress?: (done: number, total: number) => void;
}

export interface DetectorOptions {
  scoreThreshold: number;
  maxFaces: number;
  /** Input transform: the short side is scaled to minSize unless the long side would pass maxSize. */
  minSize: number;
  maxSize: number;
  /** Images per stacked forward when a list is given. */
  batchSize: number;
  /**
   * Largest image accepted, in pixels (width x height), read from the file's header before it
   * is decoded: a bigger one is an `InputError`. Default 178956970, PIL's decompression-bomb error bound.
   */
  maxPixels: number;
}

export const DEFAULT_OPTIONS: Readonly<DetectorOptions> = {
  scoreThreshold: 0.5,
  maxFaces: -1,
  minSize: 640,
  maxSize: 1400,
  batchSize: 8,
  maxPixels: DEFAULT_MAX_PIXELS,
};

/** Every key `Img2Pose.load` accepts; any other is refused (a typo would otherwise be ignored). */
export const LOAD_OPTION_KEYS: readonly string[] = [
  'weights',
  'release',
  'backend',
  'poseMean',
  'poseStddev',
  'warn',
  'webgpuKernels',
  'threads',
  'gpuPoolLimit',
  'warmup',
  'whileBuilding',
  ...Object.keys(DEFAULT_OPTIONS),
];

/** Every key of `DetectOptions`. */
export const DETECT_OPTION_KEYS: readonly string[] = ['scoreThreshold', 'maxFaces', 'signal', 'onProgress'];

export interface LoadOptions extends Partial<DetectorOptions>, LoadWeightsOptions {
  /**
   * 'img2pose_v1' (the default: the official weights, downloaded and cached on first use), a
   * converted weights folder or its model.json, a `.pth` checkpoint, an http(s):// URL of a
   * model.json or a file:// URL, weights already in memory, or a tf.io handler. The network keeps
   * its own (folded) copies: in-memory weights stay the caller's, who may dispose them once
   * `load` has resolved; weights loaded here are freed by `load` itself.
   */
  weights?: WeightsSource;
  /** For the official weights: cache folder, download URL, progress display. */
  release?: ReleaseOptions;
  /** Compute backend; 'auto' takes the fastest available (README, Backends). */
  backend?: BackendChoice;
  /**
   * On the webgpu backend, run our own WGSL kernels (implicit-GEMM and Winograd convolutions,
   * fused RoIAlign, GPU transform: 2-3x the stock tfjs kernels; results within float32 rounding of
   * them, the golden cases pass with both). Default true; false keeps the stock tfjs ops. No effect
   * on other backends.
   */
  webgpuKernels?: boolean;
  /**
   * CPU threads a batch may use. On wasm and cpu (single-threaded in Node) each thread is a
   * worker with its own copy of the network, and a batch is shared out among them; on webgpu and
   * tensorflow the per-image host stages of a batch (proposal filtering, post-processing) run on
   * them while the device waits. 1 keeps everything on the calling thread. 'auto' (default):
   * the `IMG2POSE_THREADS` environment variable if set, else the cores available, at most 4 on
   * wasm/cpu (each worker holds ~0.2 GB of weights and up to a few GB of activations) and 8
   * elsewhere. Results are the same whatever the count.
   */
  threads?: number | 'auto';
  /**
   * On the webgpu backend, the most bytes of free GPU buffers tfjs' pool keeps for reuse. Buffers
   * are pooled by size class (at most 25% above the size asked for), so images of any size reuse
   * them, and one released while the free ones already hold the limit is destroyed: the pool is at
   * most what a forward uses at once plus this. Default 8 GiB (a stream of single images of every
   * size keeps ~4 GiB at the default input size; batches of 8 and 16 alongside need more). The pool belongs to the backend, so this applies
   * to every tfjs model on it in the process; `dispose()` frees the free buffers.
   */
  gpuPoolLimit?: number;
  /**
   * Run `warmup()` before `load` resolves, so that the first detection does not pay for the
   * backend's one-time work (shader compilation on webgpu/webgl, code warm-up on wasm). Default false.
   */
  warmup?: boolean;
  /**
   * Called once the weights are read, as the network is built from them. Where it is built on
   * worker threads (wasm, cpu), this thread then only waits until `load` resolves (a second or
   * two): time to prepare the first inputs, as the CLI decodes its first images. Not awaited.
   */
  whileBuilding?: () => void;
}

/** What the detector needs of a network; `Img2PoseModel` is one, tests pass fakes. */
export interface DetectionModel {
  predict(images: tf.Tensor3D[], config: ModelConfig): Promise<RawDetections[]>;
  /**
   * Optional: `predict` for images that may also be 8-bit samples (`ImageBytes`: RGBA, RGB or gray,
   * row-major). A model that has it is handed decoded files, encoded bytes, Jimp images and 8-bit
   * raw pixels as their samples, so no float copy of a full-size image is made; tensors and float
   * pixels still come as tensors. Without it, every image comes as a float32 tensor.
   */
  predictImages?(images: NetworkImage[], config: ModelConfig): Promise<RawDetections[]>;
  /**
   * Optional: how many forwards may be in flight at once (default 1). `Img2PoseModel` allows two
   * where its backend queues work on a GPU: one call's work is then recorded while another's
   * results are read back and post-processed. Each result is still that of a call on its own.
   */
  readonly concurrentForwards?: number;
  /** Frees the model; a promise, where it has threads to stop, that settles once they have exited. */
  dispose(): void | Promise<void>;
}

function ignore(): void {}

/** The outcome for one input of `detectFacesSettled`. */
export type SettledDetection = { ok: true; faces: Face[] } | { ok: false; error: Img2PoseError };

interface Filter {
  scoreThreshold: number;
  maxFaces: number;
}

/** Stops a call (`DetectOptions.signal`, or `onProgress` throwing) and counts its finished images. */
class CallControl {
  private done = 0;
  private failure: { error: unknown } | undefined;

  constructor(
    private readonly total: number,
    private readonly signal?: AbortSignal,
    private readonly onProgress?: (done: number, total: number) => void,
  ) {}

  /** Throws if the call must stop. Checked before each stage that costs: decoding, a forward. */
  check(): void {
    if (this.failure) throw this.failure.error;
    if (this.signal?.aborted) throw new AbortError(this.signal.reason);
  }

  /** Whether `e` is this call's stop, which ends the whole call rather than one image. */
  isStop(e: unknown): boolean {
    return e instanceof AbortError || (this.failure !== undefined && e === this.failure.error);
  }

  /** `n` more images have their result. */
  report(n: number): void {
    for (let k = 0; k < n; k++) {
      this.check();
      this.done++;
      if (!this.onProgress) continue;
      try {
        this.onProgress(this.done, this.total);
      } catch (e) {
        this.failure = { error: e };
        throw e;
      }
    }
  }
}

/**
 * An input taken at call time. Tensors are cloned then (sharing storage) so the caller may
 * dispose theirs before the queued work runs; the clone is ours to dispose.
 */
interface Pending {
  input: ImageInput;
  owned?: tf.Tensor3D;
}

export class Img2Pose {
  readonly options: Readonly<DetectorOptions>;
  /** The tfjs backend the detector was loaded on. */
  readonly backend: string;
  /** Threads a batch runs on (1: the calling thread only); see LoadOptions.threads. */
  readonly threads: number;
  private readonly model: DetectionModel;
  /** Forwards that may be in flight at once (the model's `concurrentForwards`). */
  private readonly concurrency: number;
  /** Jobs holding a turn now, and those waiting for one, first come first served. */
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  /** Every job queued and not yet settled (what `dispose` waits for). */
  private readonly jobs = new Set<Promise<void>>();
  private isDisposed = false;

  /**
   * Load the weights and pick the backend. Options are checked before anything heavy happens;
   * failures are `OptionError`, `BackendError` or `WeightsError`.
   */
  static async load(options: LoadOptions = {}): Promise<Img2Pose> {
    if (typeof options !== 'object' || options === null) {
      throw new OptionError('options', 'an object such as { weights }', options);
    }
    checkKnownKeys(options, LOAD_OPTION_KEYS, 'Img2Pose.load');
    const {
      weights = DEFAULT_WEIGHTS,
      release,
      backend = 'auto',
      poseMean,
      poseStddev,
      warn,
      webgpuKernels = true,
      threads = 'auto',
      gpuPoolLimit = DEFAULT_POOL_LIMIT,
      warmup = false,
      whileBuilding,
      ...rest
    } = options;
    const resolved = resolveOptions(rest);
    if (!(threads === 'auto' || isPositiveInt(threads))) throw new OptionError('threads', "'auto' or a positive integer", threads);
    if (threads !== 'auto') checkThreadLimit(threads, 'threads', backend);
    if (!(typeof gpuPoolLimit === 'number' && gpuPoolLimit > 0)) throw new OptionError('gpuPoolLimit', 'a number of bytes > 0 (Infinity: no limit)', gpuPoolLimit);
    if (!BACKEND_CHOICES.includes(backend)) {
      throw new OptionError('backend', `one of ${BACKEND_CHOICES.join(', ')}`, backend);
    }
    if (typeof warmup !== 'boolean') throw new OptionError('warmup', 'true or false', warmup);
    if (whileBuilding !== undefined && typeof whileBuilding !== 'function') throw new OptionError('whileBuilding', 'a function', whileBuilding);
    if (!isWeightsSource(weights)) {
      throw new OptionError('weights', "'img2pose_v1', a weights folder, model.json, .pth or URL, Img2PoseWeights or a tf.io handler", weights);
    }
    let sharedWeightsDropped = false;
    // The app's active backend is made active again once the network is built (see onBackend).
    const detector = await onBackend(null, async () => {
      const backendName = await selectBackend(backend);
      if (backendName === 'webgpu') useGpuPool(gpuPoolLimit);
      const threadsUsed = threadCount(threads, backendName);
      // Made on the chosen backend (in-memory weights made elsewhere are copied there), or, for a
      // network on worker threads, on the cpu backend (see runsOnWorkers).
      const onWorkers = runsOnWorkers(backendName, threadsUsed);
      if (onWorkers) await selectCpuForValues();
      // Workers start now and set up while the weights are read, straight into the memory they share.
      const workers = spawnNetworkWorkers(backendName, threadsUsed);
      let opened: Awaited<ReturnType<typeof openWeights>>;
      try {
        opened = await openWeights(weights, { poseMean, poseStddev, warn, release, sharedValues: onWorkers });
      } catch (e) {
        await workers?.dispose();
        throw e;
      }
      let built: { model: DetectionModel; threads: number };
      try {
        whileBuilding?.();
      } catch (e) {
        opened.release();
        await workers?.dispose();
        throw e;
      }
      try {
        built = await buildNetwork(opened.weights, { backend: backendName, threads: threadsUsed, kernels: webgpuKernels ? 'webgpu' : 'portable', workers, reopen: opened.reopen });
      } catch (e) {
        if (e instanceof Img2PoseError) throw e;
        throw new WeightsError(`These weights do not fit the img2pose network: ${messageOf(e)}`, { path: opened.path, cause: e });
      } finally {
        // The stages hold their own copies; tensors made for loading are ours to free.
        opened.release();
      }
      sharedWeightsDropped = onWorkers && opened.reopen !== undefined;
      return new Img2Pose(built.model, resolved, backendName, built.threads);
    });
    // The workers built their networks from weights in shared memory that nothing holds now:
    // collected here (and in each worker) they go before the first forward, the process's peak.
    if (sharedWeightsDropped) collectGarbage();
    // After load's exclusive lease: warmup takes the detector's own, as every call does.
    if (warmup) {
      try {
        await detector.warmup();
      } catch (e) {
        await detector.dispose();
        throw e;
      }
    }
    return detector;
  }

  /**
   * A detector around any `DetectionModel` (custom networks, tests). Takes ownership of it. Its
   * calls run with `backend` active (when tfjs knows that name), the app's made active again after.
   */
  constructor(model: DetectionModel, options: Partial<DetectorOptions> = {}, backend: string = tf.getBackend(), threads = 1) {
    this.model = model;
    this.threads = threads;
    const concurrent = model.concurrentForwards ?? 1;
    this.concurrency = Number.isInteger(concurrent) && concurrent >= 1 ? concurrent : 1;
    // load's own keys are tolerated: callers hand the same options object to both
    checkKnownKeys(options, LOAD_OPTION_KEYS, 'detector');
    this.options = Object.freeze(resolveOptions(options));
    this.backend = backend;
  }

  get disposed(): boolean {
    return this.isDisposed;
  }

  /**
   * Detect faces in one image (-> `Face[]`) or in each image of a list (-> `Face[][]`, input
   * order). For a list, a failing input does not stop the others: the promise rejects with a
   * `BatchError` whose `results` hold every other image's faces and whose `errors` say what
   * failed where. A single image rejects with its `InputError` / `InferenceError`.
   */
  detectFaces(image: ImageInput, options?: DetectOptions): Promise<Face[]>;
  detectFaces(images: readonly ImageInput[], options?: DetectOptions): Promise<Face[][]>;
  /** Either form, decided at run time: an array gives one `Face[]` per image. */
  detectFaces(input: ImageInput | readonly ImageInput[], options?: DetectOptions): Promise<Face[] | Face[][]>;
  async detectFaces(
    images: ImageInput | readonly ImageInput[],
    options?: DetectOptions,
  ): Promise<Face[] | Face[][]> {
    this.assertAlive();
    const filter = this.filterFor(options);
    const control = this.controlFor(options, Array.isArray(images) ? images.length : 1);
    if (!Array.isArray(images)) {
      return this.detectOne(this.take(images as ImageInput), filter, control);
    }
    const settled = await this.detectMany(images as readonly ImageInput[], filter, control);
    const errors: IndexedError[] = [];
    const results = settled.map((s, index) => {
      if (s.ok) return s.faces;
      errors.push({ index, error: s.error });
      return undefined;
    });
    if (errors.length > 0) throw new BatchError<Face[]>(results, errors);
    return results as Face[][];
  }

  /**
   * Like `detectFaces(images)`, but never rejects for a bad input: one `{ ok, faces }` or
   * `{ ok: false, error }` per input, in input order (for callers such as a CLI over many files).
   */
  async detectFacesSettled(images: readonly ImageInput[], options?: DetectOptions): Promise<SettledDetection[]> {
    this.assertAlive();
    if (!Array.isArray(images)) throw new OptionError('images', 'an array of image inputs', images);
    const filter = this.filterFor(options);
    return this.detectMany(images, filter, this.controlFor(options, images.length));
  }

  /**
   * One forward on a blank 64x48 image (the common 4:3 landscape shape, resized as a photo would
   * be), results discarded, so that the first real call does not pay for the backend's one-time
   * work: shader compilation on webgpu/webgl, code warm-up on wasm. On wasm and cpu with worker
   * threads, one image per worker (up to `batchSize`), so each warms its own copy. Queued like
   * any call; `Img2Pose.load({ warmup: true })` runs it before resolving.
   */
  async warmup(): Promise<void> {
    this.assertAlive();
    const count = isCpuBackend(this.backend) ? Math.min(this.threads, this.options.batchSize) : 1;
    await this.enqueue([], async () => {
      const images = Array.from({ length: count }, () => tf.fill([48, 64, 3], 128, 'float32') as tf.Tensor3D);
      try {
        await this.forward(images);
      } finally {
        for (const image of images) image.dispose();
      }
    });
  }

  /**
   * Free the network's weights. Work already queued is refused with a `DisposedError`; a
   * forward in progress finishes first. Later calls reject with `DisposedError`.
   */
  async dispose(): Promise<void> {
    if (this.isDisposed) return;
    this.isDisposed = true;
    await Promise.all(this.jobs);
    await onBackend(this.backend, async () => {
      await this.model.dispose();
      // The network's buffers are back in the pool now: give the free ones back to the device.
      if (this.backend === 'webgpu') releaseGpuPool();
    });
  }

  // --- upstream's routing: _detect_single / _detect_batch -------------------------------------

  private async detectOne(pending: Pending, filter: Filter, control: CallControl): Promise<Face[]> {
    const faces = await this.enqueue([pending], () => this.detectSingle(pending, filter, control));
    control.report(1);
    return faces;
  }

  private async detectMany(images: readonly ImageInput[], filter: Filter, control: CallControl): Promise<SettledDetection[]> {
    control.check();
    const pendings = images.map((image) => this.take(image));
    if (pendings.length === 0) return [];
    if (pendings.length === 1) {
      // Upstream: a one-element list is a single detection, without batch overhead.
      const pending = pendings[0];
      const settled = await settle(this.enqueue([pending], () => this.detectSingle(pending, filter, control)), 0, control);
      control.report(1);
      return [settled];
    }
    return this.detectBatch(pendings, filter, control);
  }

  private async detectSingle(pending: Pending, filter: Filter, control: CallControl): Promise<Face[]> {
    control.check();
    const image = await this.decode(pending.input);
    try {
      const [height, width] = imageSizeOf(image);
      control.check();
      const [prediction] = await this.forward([image]);
      control.check();
      return processPrediction(prediction, width, height, filter.scoreThreshold, filter.maxFaces);
    } finally {
      disposeImage(image);
    }
  }

  /** One stacked forward per chunk of `batchSize`; a bad input fails only its own index. */
  private async detectBatch(pendings: Pending[], filter: Filter, control: CallControl): Promise<SettledDetection[]> {
    const { batchSize } = this.options;
    const chunks: Promise<SettledDetection[]>[] = [];
    for (let start = 0; start < pendings.length; start += batchSize) {
      const chunk = pendings.slice(start, start + batchSize);
      // A call's chunks run one after another, also where calls overlap (then each queues once
      // the one before has settled): progress stays in order and a stop keeps the next from starting.
      const after = this.concurrency > 1 ? chunks[chunks.length - 1] : undefined;
      const run = this.enqueue(chunk, () => this.detectChunk(chunk, start, filter, control), after);
      const settled = run.catch((e: unknown) => {
        if (control.isStop(e)) throw e;
        return chunk.map((_, i) => ({ ok: false as const, error: asDetectionError(e, start + i) }));
      });
      // Chunks settle in queue order, so the count only grows; a stop here keeps the next chunk from running.
      chunks.push(
        settled.then((results) => {
          control.report(results.length);
          return results;
        }),
      );
    }
    return (await Promise.all(chunks)).flat();
  }

  private async detectChunk(chunk: Pending[], start: number, filter: Filter, control: CallControl): Promise<SettledDetection[]> {
    control.check();
    const out: SettledDetection[] = new Array(chunk.length);
    const decoded: { slot: number; image: NetworkImage }[] = [];
    try {
      for (let slot = 0; slot < chunk.length; slot++) {
        try {
          decoded.push({ slot, image: await this.decode(chunk[slot].input, start + slot) });
        } catch (e) {
          out[slot] = { ok: false, error: asDetectionError(e, start + slot) };
        }
      }
      if (decoded.length === 0) return out;
      control.check();
      let predictions: RawDetections[];
      try {
        predictions = await this.forward(decoded.map((d) => d.image));
      } catch (e) {
        for (const { slot } of decoded) out[slot] = { ok: false, error: asDetectionError(e, start + slot) };
        return out;
      }
      control.check();
      decoded.forEach(({ slot, image }, k) => {
        const [height, width] = imageSizeOf(image);
        const faces = processPrediction(predictions[k], width, height, filter.scoreThreshold, filter.maxFaces);
        out[slot] = { ok: true, faces };
      });
      return out;
    } finally {
      for (const { image } of decoded) disposeImage(image);
    }
  }

  /**
   * An input decoded for the network: as its 8-bit samples where the model reads them
   * (`predictImages`), else as a float32 tensor.
   */
  private decode(input: ImageInput, index?: number): Promise<NetworkImage> {
    const limits = { maxPixels: this.options.maxPixels };
    return this.model.predictImages ? decodeNetworkImage(input, index, limits) : decodeImage(input, index, limits);
  }

  private async forward(images: NetworkImage[]): Promise<RawDetections[]> {
    const { minSize, maxSize } = this.options;
    let predictions: RawDetections[];
    try {
      predictions = this.model.predictImages
        ? await this.model.predictImages(images, { minSize, maxSize })
        : await this.model.predict(images.map(asTensor), { minSize, maxSize });
    } catch (e) {
      if (e instanceof Img2PoseError) throw e;
      const n = images.length;
      throw new InferenceError(
        `The network failed on ${n === 1 ? 'this image' : `a batch of ${n} images`} ` +
          '(its cause says why; if memory ran out, lower batchSize or maxSize)',
        { cause: e },
      );
    }
    if (!Array.isArray(predictions) || predictions.length !== images.length) {
      throw new InferenceError(
        `The network returned ${Array.isArray(predictions) ? predictions.length : 'no'} results for ${images.length} images`,
      );
    }
    return predictions;
  }

  // --- plumbing -------------------------------------------------------------------------------

  /**
   * Run `job` once its turn comes: jobs take turns in the order they were queued, at most
   * `concurrency` at once (and a job given `after` queues only once that has settled). Results
   * equal those of sequential calls: each forward depends only on its own images. `pendings` are
   * the job's inputs: their owned clones are released whether or not the job runs.
   */
  private enqueue<T>(pendings: Pending[], job: () => Promise<T>, after?: Promise<unknown>): Promise<T> {
    const run = (async (): Promise<T> => {
      if (after) await after.then(ignore, ignore);
      await this.turn();
      try {
        if (this.isDisposed) throw new DisposedError();
        return await onBackend(this.backend, job);
      } finally {
        this.endTurn();
      }
    })();
    const released = run.finally(() => {
      for (const p of pendings) p.owned?.dispose();
    });
    const settled = released.then(ignore, ignore);
    this.jobs.add(settled);
    void settled.then(() => this.jobs.delete(settled));
    return released;
  }

  /** Waits for a turn (queued behind every job already waiting). */
  private async turn(): Promise<void> {
    if (this.running < this.concurrency && this.waiting.length === 0) {
      this.running++;
      return;
    }
    // The job that ends its turn hands it over: `running` stays as it is.
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  private endTurn(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.running--;
  }

  /** `take` with the detector's backend active: a tensor input is copied there at call time. */
  private take(input: ImageInput): Pending {
    return onBackendSync(this.backend, () => take(input));
  }

  private assertAlive(): void {
    if (this.isDisposed) throw new DisposedError();
  }

  private filterFor(options: DetectOptions | undefined): Filter {
    if (options !== undefined && (typeof options !== 'object' || options === null)) {
      throw new OptionError('options', 'an object { scoreThreshold?, maxFaces? }', options);
    }
    if (typeof options === 'object' && options !== null) checkKnownKeys(options, DETECT_OPTION_KEYS, 'detectFaces');
    const scoreThreshold = options?.scoreThreshold ?? this.options.scoreThreshold;
    const maxFaces = options?.maxFaces ?? this.options.maxFaces;
    checkThreshold(scoreThreshold);
    checkMaxFaces(maxFaces);
    return { scoreThreshold, maxFaces };
  }

  /** The call's `signal` and `onProgress` (options already checked by `filterFor`). */
  private controlFor(options: DetectOptions | undefined, total: number): CallControl {
    const signal = options?.signal;
    const onProgress = options?.onProgress;
    if (signal !== undefined && !(typeof signal === 'object' && signal !== null && typeof signal.aborted === 'boolean')) {
      throw new OptionError('signal', 'an AbortSignal', signal);
    }
    if (onProgress !== undefined && typeof onProgress !== 'function') {
      throw new OptionError('onProgress', 'a function (done, total) => void', onProgress);
    }
    const control = new CallControl(total, signal, onProgress);
    control.check();
    return control;
  }

  // --- alignment (upstream align_faces, align_faces_batch, detect_and_align) -----------------

  /** `alignFaces` (src/align.ts): needs no network, only each face's pose. */
  async alignFaces(image: ImageInput, faces: readonly PosedFace[], options?: AlignOptions): Promise<AlignedFace[]> {
    this.assertAlive();
    const size = alignSizeOf(options);
    const poses = checkPoses(faces, 'faces');
    return alignChecked(poses.length > 0 ? await decodePixels(image) : image, poses, size, undefined, 'faces', alignLimitsOf(options, this.options.maxPixels));
  }

  /**
   * `alignFaces` per image: `facesPerImage[i]` are the faces of `images[i]` (e.g. a list's
   * `detectFaces` result). Sizes, lengths and poses are checked before any image is read; an
   * image that cannot be read rejects with its `InputError` (its `index` says which).
   */
  async alignFacesBatch(
    images: readonly ImageInput[],
    facesPerImage: readonly (readonly PosedFace[])[],
    options?: AlignOptions,
  ): Promise<AlignedFace[][]> {
    this.assertAlive();
    const size = alignSizeOf(options);
    const limits = alignLimitsOf(options, this.options.maxPixels);
    if (!Array.isArray(images)) throw new OptionError('images', 'an array of image inputs', images);
    if (!Array.isArray(facesPerImage) || facesPerImage.length !== images.length) {
      throw new OptionError('facesPerImage', `an array of ${images.length} face lists, one per image`, facesPerImage);
    }
    const poses = facesPerImage.map((faces, i) => checkPoses(faces, `facesPerImage[${i}]`, i));
    const out: AlignedFace[][] = [];
    // One image decoded at a time: memory stays that of one image.
    for (let i = 0; i < images.length; i++) {
      out.push(await alignChecked(poses[i].length > 0 ? await decodePixels(images[i], i) : images[i], poses[i], size, i, `facesPerImage[${i}]`, limits));
    }
    return out;
  }

  /**
   * `detectFaces` then `alignFaces`, each image decoded once: every face with its `crop`. A list
   * is processed `batchSize` images at a time and, like `detectFaces`, rejects with a
   * `BatchError` (the other images' results included) when some images fail.
   */
  detectAndAlign(image: ImageInput, options?: DetectAlignOptions): Promise<AlignedDetection[]>;
  detectAndAlign(images: readonly ImageInput[], options?: DetectAlignOptions): Promise<AlignedDetection[][]>;
  /** Either form, decided at run time: an array gives one list per image. */
  detectAndAlign(input: ImageInput | readonly ImageInput[], options?: DetectAlignOptions): Promise<AlignedDetection[] | AlignedDetection[][]>;
  async detectAndAlign(
    images: ImageInput | readonly ImageInput[],
    options?: DetectAlignOptions,
  ): Promise<AlignedDetection[] | AlignedDetection[][]> {
    this.assertAlive();
    const { size, onProgress: _progress, ...detect } = options ?? {};
    const alignSize = alignSizeOf({ size });
    this.filterFor(detect);
    const control = this.controlFor(options, Array.isArray(images) ? images.length : 1);
    if (!Array.isArray(images)) {
      // Tensors are taken at call time, as detectFaces does, so callers may dispose theirs at once.
      const pending = this.take(images as ImageInput);
      try {
        const rgb = await decodeRgb8(await decodePixels(pending.input), undefined, { maxPixels: this.options.maxPixels });
        const faces = await this.detectFaces(rgb.exact ? asRawImage(rgb) : pending.input, detect);
        const detections = withCrops(faces, rgb, alignSize);
        control.report(1);
        return detections;
      } finally {
        pending.owned?.dispose();
      }
    }
    const pendings = (images as readonly ImageInput[]).map((image) => this.take(image));
    const results: (AlignedDetection[] | undefined)[] = new Array(pendings.length).fill(undefined);
    const errors: IndexedError[] = [];
    try {
      for (let start = 0; start < pendings.length; start += this.options.batchSize) {
        control.check();
        const end = Math.min(pendings.length, start + this.options.batchSize);
        const chunk: { slot: number; rgb: Rgb8Image & { exact: boolean }; input: ImageInput }[] = [];
        for (let slot = start; slot < end; slot++) {
          const { input } = pendings[slot];
          try {
            chunk.push({ slot, rgb: await decodeRgb8(await decodePixels(input, slot), slot, { maxPixels: this.options.maxPixels }), input });
          } catch (e) {
            errors.push({ index: slot, error: asDetectionError(e, slot) });
          }
        }
        // Detect on the decoded pixels when they are the input's own (no second decode). The
        // signal goes with them (an abort rejects that call), the progress is this call's.
        const inputs = chunk.map(({ rgb, input }) => (rgb.exact ? asRawImage(rgb) : input));
        const detections = inputs.length > 0 ? await this.detectFacesSettled(inputs, detect) : [];
        chunk.forEach(({ slot, rgb }, k) => {
          const s = detections[k];
          try {
            if (!s.ok) throw s.error;
            results[slot] = withCrops(s.faces, rgb, alignSize, slot);
          } catch (e) {
            errors.push({ index: slot, error: asDetectionError(e, slot) });
          }
        });
        control.report(end - start);
      }
    } finally {
      for (const p of pendings) p.owned?.dispose();
    }
    if (errors.length > 0) throw new BatchError<AlignedDetection[]>(results, errors.sort((a, b) => a.index - b.index));
    return results as AlignedDetection[][];
  }
}

/** `detectAndAlign`'s options: the detection filter and the crop size. */
export interface DetectAlignOptions extends DetectOptions, AlignOptions {}

/** A detected face with its aligned crop (upstream `detect_and_align`'s "image"). */
export interface AlignedDetection extends Face {
  crop: AlignedFace;
}

function withCrops(faces: Face[], rgb: Rgb8Image, size: AlignSize, index?: number): AlignedDetection[] {
  const crops = alignPoses(rgb, checkPoses(faces, 'faces', index), size, undefined, index);
  return faces.map((face, k) => ({ ...face, crop: crops[k] }));
}

function asRawImage(rgb: Rgb8Image): RawImage {
  return { data: rgb.data, width: rgb.width, height: rgb.height, channels: 3 };
}

/** The `threads` option resolved for `backend` (see LoadOptions.threads). */
export function threadCount(threads: number | 'auto', backend: string, env: Environment = process.env): number {
  if (threads !== 'auto') return threads;
  const fromEnv = env.IMG2POSE_THREADS;
  if (fromEnv !== undefined && fromEnv !== '') {
    const n = Number(fromEnv);
    if (!isPositiveInt(n)) throw new OptionError('IMG2POSE_THREADS', 'a positive integer', fromEnv);
    checkThreadLimit(n, 'IMG2POSE_THREADS', backend);
    return n;
  }
  return Math.max(1, Math.min(cores(), isCpuBackend(backend) ? 4 : 8, memoryThreads(backend)));
}

/**
 * Memory a worker of the CPU backends may take at the default sizes: its wasm heap (weights, the
 * Winograd filters and XNNPACK's packed copies, one photo's activations; ~0.8 GB measured on the
 * 4-photo job) and what Node and tfjs hold beside it.
 */
const WORKER_BYTES = 1024 ** 3;

/** Workers that half of this machine's memory holds (no bound on the GPU backends). */
function memoryThreads(backend: string): number {
  return isCpuBackend(backend) ? Math.max(1, Math.floor(os.totalmem() / 2 / WORKER_BYTES)) : Infinity;
}

/** The most threads accepted: twice the cores (at least 8; more only queue), within what memory holds. */
export function threadLimit(backend: string): number {
  return Math.max(1, Math.min(Math.max(8, 2 * cores()), memoryThreads(backend)));
}

function checkThreadLimit(n: number, option: string, backend: string): void {
  // 'auto' is resolved later: check against the tighter CPU bound unless a GPU backend is named
  const limit = threadLimit(backend === 'auto' ? 'wasm' : backend);
  if (n > limit) {
    throw new OptionError(option, `at most ${limit} (more threads than max(8, twice the ${cores()} CPU cores) only wait, and each worker takes ~${(WORKER_BYTES / 1024 ** 3).toFixed(0)} GB of the ${(os.totalmem() / 1024 ** 3).toFixed(0)} GB here)`, n);
  }
}

/**
 * Raw network output of one image -> faces (upstream `Img2Pose._process_prediction`): keep
 * scores >= `scoreThreshold`, project the keypoints with the ORIGINAL image's camera (focal
 * w + h, centre (w/2, h/2)), sort by confidence descending (stable: ties keep network order),
 * keep the first `maxFaces` (all when -1).
 */
export function processPrediction(
  prediction: RawDetections,
  width: number,
  height: number,
  scoreThreshold: number,
  maxFaces: number,
): Face[] {
  const { boxes, scores, dofs } = prediction;
  const faces: Face[] = [];
  for (let i = 0; i < scores.length; i++) {
    if (!(scores[i] >= scoreThreshold)) continue;
    const pose = Array.from(dofs.subarray(i * 6, i * 6 + 6)) as Pose;
    faces.push({
      box: Array.from(boxes.subarray(i * 4, i * 4 + 4)) as Box,
      confidence: scores[i],
      pose,
      keypoints: projectKeypoints(pose, width, height),
    });
  }
  faces.sort((a, b) => b.confidence - a.confidence);
  return maxFaces > 0 ? faces.slice(0, maxFaces) : faces;
}

function resolveOptions(given: Partial<DetectorOptions>): DetectorOptions {
  const pick = <K extends keyof DetectorOptions>(k: K): DetectorOptions[K] => given[k] ?? DEFAULT_OPTIONS[k];
  const o: DetectorOptions = {
    scoreThreshold: pick('scoreThreshold'),
    maxFaces: pick('maxFaces'),
    minSize: pick('minSize'),
    maxSize: pick('maxSize'),
    batchSize: pick('batchSize'),
    maxPixels: pick('maxPixels'),
  };
  checkThreshold(o.scoreThreshold);
  checkMaxFaces(o.maxFaces);
  for (const k of ['minSize', 'maxSize', 'batchSize', 'maxPixels'] as const) {
    if (!isPositiveInt(o[k])) throw new OptionError(k, 'a positive integer', o[k]);
  }
  if (o.minSize > o.maxSize) throw new OptionError('minSize', `at most maxSize (${o.maxSize})`, o.minSize);
  return o;
}

function checkThreshold(t: unknown): asserts t is number {
  if (typeof t !== 'number' || !(t >= 0 && t <= 1)) throw new OptionError('scoreThreshold', 'a number in 0..1', t);
}

/** Upstream treats every max_faces <= 0 as "no limit"; only -1 is accepted here, so 0 is not a silent "all". */
function checkMaxFaces(m: unknown): asserts m is number {
  if (!(m === -1 || isPositiveInt(m))) throw new OptionError('maxFaces', '-1 (no limit) or a positive integer', m);
}

function isPositiveInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
}

/** Frees a decoded image: a tensor is ours to dispose, samples are plain memory. */
function disposeImage(image: NetworkImage): void {
  if (image instanceof tf.Tensor) image.dispose();
}

/** An image for a model without `predictImages`: `decode` made it a tensor. */
function asTensor(image: NetworkImage): tf.Tensor3D {
  if (image instanceof tf.Tensor) return image;
  throw new Error('detector: 8-bit samples for a model without predictImages');
}

function take(input: ImageInput): Pending {
  if (input instanceof tf.Tensor && !input.isDisposed) {
    // A tensor made on another backend is copied over, not moved lazily (see tensor_home.ts).
    const owned = (onActiveBackend(input) ? tf.clone(input) : copyToActiveBackend(input)) as tf.Tensor3D;
    return { input: owned, owned };
  }
  return { input };
}

async function settle(run: Promise<Face[]>, index: number, control: CallControl): Promise<SettledDetection> {
  try {
    return { ok: true, faces: await run };
  } catch (e) {
    if (control.isStop(e)) throw e;
    return { ok: false, error: asDetectionError(e, index) };
  }
}

/** Any failure as the library's error, located at `index` of the caller's list. */
function asDetectionError(e: unknown, index: number): Img2PoseError {
  if (e instanceof InputError) return e.index === index ? e : e.atIndex(index);
  if (e instanceof Img2PoseError) return e;
  // the cause's own words belong in the message: the CLI prints messages, not causes
  return new InferenceError(`Detection failed on input #${index}: ${causeText(e)}`, { cause: e });
}

/** A lower-level error as one line: its class and message (a worker's error keeps its own name). */
function causeText(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  return `${e.name && e.name !== 'Error' ? `${e.name}: ` : ''}${e.message.split('\n')[0]}`;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
