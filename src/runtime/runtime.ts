/**
 * The runtime a network is built for (src/model/runtime.ts): built once per detector by
 * `Img2Pose.load`, for the backend it picked. Backend names are known here and nowhere below.
 */
import * as tf from '@tensorflow/tfjs-core';
import { asWasmBackend, unsetTensor } from '../kernels/wasm/backend';
import { Kernels, KernelMode, PORTABLE_KERNELS } from '../kernels/webgpu';
import { BackendRules, HostExecutor, IN_THREAD, ModelRuntime, TensorMemory } from '../model/runtime';
import { Detections, postprocessDetections, PostprocessInput } from '../model/postprocess';
import { ANCHORS_PER_LOCATION } from '../ops/anchors';
import { ownJob, ProposalJob, Proposals, proposalsOf } from '../ops/proposals';
import { Img2PoseModel } from '../model/model';
import { Img2PoseWeights } from '../model/weights';
import { ReopenWeights, ThreadedModel } from './threaded_model';
import { WorkerPool, workerScript } from './threads';

/** The backends that compute inside each op call, on the CPU. */
const CPU_BACKENDS: readonly string[] = ['wasm', 'cpu'];

/** Whether `backend` computes on the CPU inside each op call (wasm, cpu; single-threaded in Node). */
export function isCpuBackend(backend: string): boolean {
  return CPU_BACKENDS.includes(backend);
}

/** The rules for the tfjs backend named `backend` (see BackendRules for each one's reason). */
export function rulesFor(backend: string): BackendRules {
  const cpu = isCpuBackend(backend);
  const photo = 640 * 1152;
  return {
    roiChunk: cpu ? 1000 : 8000,
    headRows: cpu ? 250 : Infinity,
    pixelBudget: cpu ? photo : 16 * photo,
    queuesAsync: !cpu && backend !== 'tensorflow',
    roiAlign: cpu ? 'host' : 'ops',
    fc6Chunked: backend === 'wasm',
    packedWeightsOnly: backend === 'wasm',
    ...(backend === 'wasm' ? { tensorMemory: WASM_HEAP } : {}),
  };
}

/** The wasm backend's own access to its heap (public in tfjs-backend-wasm's BackendWasm). */
interface WasmHeapBackend {
  typedArrayFromHeap(t: tf.TensorInfo): tf.TypedArray;
}

/** Views on the wasm backend's heap: a tensor's values where they lie (`data()` copies them out). */
export const WASM_HEAP: TensorMemory = {
  view(t: tf.Tensor): Float32Array {
    const backend = tf.engine().state.tensorInfo.get(t.dataId)?.backend as Partial<WasmHeapBackend> | undefined;
    if (t.dtype !== 'float32' || backend !== tf.findBackend('wasm') || typeof backend?.typedArrayFromHeap !== 'function') {
      throw new Error(`tensorMemory: a float32 tensor of the wasm backend was expected (${t.dtype} [${t.shape}])`);
    }
    const values = backend.typedArrayFromHeap(t);
    if (!(values instanceof Float32Array) || values.length !== t.size) throw new Error('tensorMemory: the wasm heap view does not match the tensor');
    return values;
  },
  unset<R extends tf.Rank>(shape: tf.ShapeMap[R]): tf.Tensor<R> {
    const backend = asWasmBackend(tf.backend());
    if (!backend) throw new Error('tensorMemory: the wasm backend is not the active one');
    return unsetTensor<R>(backend, shape as number[]);
  },
};

export interface RuntimeOptions {
  /** The tfjs backend the network runs on. */
  backend: string;
  /** 'webgpu': our WebGPU programs where the backend is webgpu (default 'portable': stock ops). */
  kernels?: KernelMode;
  /**
   * Worker threads for the per-image host stages of a batch (RPN proposal filtering and ROI
   * post-processing), which otherwise run one image after another in this thread while the GPU
   * waits. 0 (default) keeps them in this thread. Started at the first batch; ignored, with the
   * work done in-thread, where the compiled worker script is missing.
   */
  hostThreads?: number;
}

/** A runtime for `options.backend`: its rules, the kernels asked for, host stages in or out of thread. */
export function createRuntime(options: RuntimeOptions): ModelRuntime {
  const { backend, kernels = 'portable', hostThreads = 0 } = options;
  if (!(Number.isInteger(hostThreads) && hostThreads >= 0)) throw new RangeError(`hostThreads must be an integer >= 0, got ${hostThreads}`);
  return {
    kernels: kernels === 'webgpu' && backend === 'webgpu' ? new Kernels('webgpu') : PORTABLE_KERNELS,
    rules: rulesFor(backend),
    host: hostThreads > 0 ? new WorkerPoolExecutor(hostThreads) : IN_THREAD,
  };
}

/**
 * Whether the network for `backend` on `threads` threads runs on worker threads (copies of it, one
 * per worker): on the CPU backends with several threads, where the compiled worker script exists.
 * This thread then only hands the weights' values on: they are best made on the cpu backend, in
 * plain arrays freed with the tensors (on wasm they would grow this thread's heap, which never
 * shrinks).
 */
export function runsOnWorkers(backend: string, threads: number): boolean {
  return threads > 1 && isCpuBackend(backend) && workerScript() !== null;
}

/**
 * The network for `options.backend`: on the CPU backends with several threads, copies of it on
 * worker threads; otherwise one in this thread, with host-stage workers when threads > 1. Without
 * the compiled worker script (running from TypeScript sources), everything stays in this thread.
 * Each network gets a runtime of its own, so networks built with other settings do not mix.
 * `threads` in the result: the threads it runs on. The caller may dispose `weights` once it
 * resolves. `reopen` reads the weights again: workers then keep none (see `ThreadedModel.build`).
 */
export async function buildNetwork(
  weights: Img2PoseWeights,
  options: { backend: string; threads: number; kernels: KernelMode; workers?: ThreadedModel; reopen?: ReopenWeights },
): Promise<{ model: Img2PoseModel | ThreadedModel; threads: number }> {
  const { backend, threads, kernels } = options;
  const script = threads > 1 ? workerScript() : null;
  if (!script) return { model: new Img2PoseModel(weights, createRuntime({ backend, kernels })), threads: 1 };
  if (runsOnWorkers(backend, threads)) {
    const workers = options.workers ?? ThreadedModel.spawn(script, backend as 'wasm' | 'cpu', threads);
    return { model: await workers.build(weights, options.reopen), threads };
  }
  return { model: new Img2PoseModel(weights, createRuntime({ backend, kernels, hostThreads: threads })), threads };
}

/**
 * The network's worker threads started ahead of its weights (see `ThreadedModel.spawn`), when
 * `buildNetwork` will run it on workers; hand them to it as `workers`.
 */
export function spawnNetworkWorkers(backend: string, threads: number): ThreadedModel | undefined {
  const script = workerScript();
  return script && runsOnWorkers(backend, threads) ? ThreadedModel.spawn(script, backend as 'wasm' | 'cpu', threads) : undefined;
}

/** `createRuntime` for the backend active now (for networks built outside `Img2Pose.load`). */
export function activeRuntime(options: Omit<RuntimeOptions, 'backend'> = {}): ModelRuntime {
  return createRuntime({ ...options, backend: tf.getBackend() });
}

/**
 * The host stages of a batch on a pool of worker threads (src/runtime/worker.ts), one task per
 * image, their inputs' buffers transferred rather than copied. A single image stays in this thread
 * (a round trip to a worker would only add to its latency). The pool starts at the first batch.
 */
export class WorkerPoolExecutor implements HostExecutor {
  private pool: WorkerPool | null | undefined;
  private disposed = false;

  constructor(private readonly threads: number) {
    if (!(Number.isInteger(threads) && threads >= 1)) throw new RangeError(`WorkerPoolExecutor: threads ${threads} is not a positive integer`);
  }

  get usesThreads(): boolean {
    return this.pool ? true : this.pool === undefined && workerScript() !== null;
  }

  sendsAway(images: number): boolean {
    return this.poolFor(images) !== undefined;
  }

  async proposals(jobs: ProposalJob[]): Promise<Proposals[]> {
    const pool = this.poolFor(jobs.length);
    if (!pool) return jobs.map(proposalsOf);
    return Promise.all(
      jobs.map((job) => {
        if (job.candidates) {
          const { index, objectness, deltas } = job.candidates;
          return pool.run<Proposals>({ kind: 'proposals', payload: job }, [index.buffer, objectness.buffer, deltas.buffer] as ArrayBuffer[]);
        }
        const own = ownsBuffers(job) ? job : ownJob(job);
        return pool.run<Proposals>({ kind: 'proposals', payload: own }, own.levels.map((l) => l.buffer as ArrayBuffer));
      }),
    );
  }

  async postprocess(inputs: PostprocessInput[]): Promise<Detections[]> {
    const pool = this.poolFor(inputs.length);
    if (!pool) return inputs.map(postprocessDetections);
    return Promise.all(
      inputs.map((input) => {
        // Own copies: a view would carry its whole chunk's buffer along.
        const own = { ...input, classLogits: input.classLogits.slice(), dofRegression: input.dofRegression.slice() };
        return pool.run<Detections>({ kind: 'postprocess', payload: own }, [own.classLogits.buffer as ArrayBuffer, own.dofRegression.buffer as ArrayBuffer]);
      }),
    );
  }

  async dispose(): Promise<void> {
    this.disposed = true;
    await this.pool?.terminate();
  }

  /** The pool for work on `images` images (started on first use), or undefined for in-thread work. */
  private poolFor(images: number): WorkerPool | undefined {
    if (images <= 1 || this.disposed) return undefined;
    if (this.pool === undefined) {
      const script = workerScript();
      this.pool = script ? new WorkerPool(script, this.threads) : null;
    }
    return this.pool ?? undefined;
  }
}

/** Whether the job's level arrays are whole buffers of one image's values (safe to transfer). */
function ownsBuffers(job: ProposalJob): boolean {
  return (
    job.image === 0 &&
    job.levels.every((l, level) => {
      const [h, w] = job.levelSizes[level];
      return l.length === h * w * ANCHORS_PER_LOCATION * 5 && l.byteOffset === 0 && l.byteLength === l.buffer.byteLength;
    })
  );
}
