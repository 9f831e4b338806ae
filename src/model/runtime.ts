/**
 * What the network is handed to run on, built once by its owner (src/runtime/runtime.ts for
 * `Img2Pose.load`): the kernels its stages call, the rules of the backend it runs on, and where the
 * per-image host stages run. The stages never ask which backend is active or how many threads
 * there are; they read it here.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { Kernels } from '../kernels/webgpu';
import { Detections, postprocessDetections, PostprocessInput } from './postprocess';
import { ProposalJob, Proposals, proposalsOf } from '../ops/proposals';

/**
 * Where a CPU backend keeps its tensors' values, for host stages that read and write them in place
 * instead of copying them out and back (wasm: views on its heap, which tfjs' `data()` would copy).
 * A view is valid only until the backend next allocates (a wasm heap that grows is moved): take
 * the views after the last allocation and use them before any other op or `await`.
 */
export interface TensorMemory {
  /** The float32 values of `t`, a tensor of this backend, where they lie. */
  view(t: tf.Tensor): Float32Array;
  /** A new float32 tensor of this backend whose values are left unset, to be written through `view`. */
  unset<R extends tf.Rank>(shape: tf.ShapeMap[R]): tf.Tensor<R>;
}

/**
 * `t`'s values from the `from`-th on into `out`, as many as `out` holds: read where they lie when
 * `memory` is given (the view is taken and read with nothing allocated in between), else read back
 * first. For handing a tensor's rows to another thread in shared memory.
 */
export async function copyValuesInto(t: tf.Tensor, from: number, out: Float32Array, memory?: TensorMemory): Promise<void> {
  const values = memory ? memory.view(t) : ((await t.data()) as Float32Array);
  out.set(values.subarray(from, from + out.length));
}

/** How the network uses the backend it runs on (see src/runtime/runtime.ts for each backend's). */
export interface BackendRules {
  /**
   * Most ROIs pooled and run through the heads at once. 1000 proposals are ~50 MB of pooled
   * features, so CPU backends go image by image; GPU backends batch more for throughput.
   */
  readonly roiChunk: number;
  /**
   * Most rows (RoIs) through the heads at once. CPU backends take an image's 1000 proposals in
   * pieces: fc6's temporaries grow with the rows (~140 MB for 1000), a wasm heap keeps its
   * high-water mark for good, and each row's numbers do not depend on the others.
   */
  readonly headRows: number;
  /**
   * Most padded input pixels per stacked forward. One default-size photo (640x1152) on CPU
   * backends: there a stacked forward costs what its images cost one by one, while its
   * activations grow with every image (a wasm heap keeps its high-water mark: ~0.2 GB more per
   * stacked photo). More on GPUs, where batching pays.
   */
  readonly pixelBudget: number;
  /**
   * Whether the backend queues work and reads back asynchronously (GPU backends), so that forwards
   * of several groups can overlap. CPU backends compute inside each op call: interleaving there
   * would only hold every group's activations at once.
   */
  readonly queuesAsync: boolean;
  /** RoIAlign where our WebGPU kernels do not run: on the host (CPU backends) or with tfjs ops. */
  readonly roiAlign: 'host' | 'ops';
  /**
   * fc6 as a sum of smaller products over its inputs (wasm: XNNPACK's GEMM slows down at 12544
   * inputs, see src/model/roi_heads.ts).
   */
  readonly fc6Chunked: boolean;
  /**
   * Whether the stages, once built, run each weight once on a small input and then keep only the
   * copy the backend's library packed for itself (wasm: XNNPACK, see src/kernels/wasm/packed.ts),
   * freeing their own: about half the memory of the weights, paid once per thread.
   */
  readonly packedWeightsOnly: boolean;
  /**
   * In-place access to the tensors' values, where the backend has it (wasm): the host RoIAlign then
   * reads the feature maps and writes the pooled rows without a copy of either (~0.1 GB at the
   * default size, which on a worker thread sat on top of its heap's high-water mark).
   */
  readonly tensorMemory?: TensorMemory;
}

/**
 * Where the per-image host stages of a forward run (RPN proposal filtering, ROI post-processing):
 * in this thread, or spread over worker threads. Either way each image's result is the same.
 */
export interface HostExecutor {
  /**
   * Whether the host stages of a forward of `images` images leave this thread. Their inputs are
   * then sent away, so each image's RPN output is best read back on its own (it then owns its
   * buffers, which move to a worker without a copy).
   */
  sendsAway(images: number): boolean;
  /** True when batches run their host stages on worker threads (without starting them). */
  readonly usesThreads: boolean;
  proposals(jobs: ProposalJob[]): Promise<Proposals[]>;
  postprocess(inputs: PostprocessInput[]): Promise<Detections[]>;
  /** Stops its threads, if any: settles once they have exited. */
  dispose(): Promise<void>;
}

/** The host stages one image after another in this thread. */
export const IN_THREAD: HostExecutor = {
  sendsAway: () => false,
  usesThreads: false,
  proposals: async (jobs) => jobs.map(proposalsOf),
  postprocess: async (inputs) => inputs.map(postprocessDetections),
  dispose: async () => undefined,
};

/** What the stages need: their kernels and the backend's rules. */
export interface StageRuntime {
  readonly kernels: Kernels;
  readonly rules: BackendRules;
}

/** Everything the network runs on. */
export interface ModelRuntime extends StageRuntime {
  readonly host: HostExecutor;
}
