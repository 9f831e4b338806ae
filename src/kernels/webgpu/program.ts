// Glue between our WGSL programs and tfjs' webgpu backend: programs are plain objects in the shape
// of the backend's own (conv2d_mm, matmul_packed ...), run through `backend.runWebGPUProgram`, so
// inputs and outputs are ordinary tfjs tensors that compose with every other op. Only types are
// imported from the backend package: the library must load where that package is absent.
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend, WebGPUProgram } from '@tensorflow/tfjs-backend-webgpu';

export type { WebGPUProgram };

/** A uniform the program declares in `uniforms` and fills per dispatch (int32 or float32 words). */
export interface ProgramUniform {
  type: 'int32' | 'float32';
  data: number[];
}

/** The active backend as the webgpu backend, or an error naming the active one. */
export function webgpuBackend(): WebGPUBackend {
  const name = tf.getBackend();
  if (name !== 'webgpu') throw new Error(`webgpu kernels need the webgpu backend (active: ${name})`);
  return tf.backend() as unknown as WebGPUBackend;
}

/** Runs `program` on `inputs` and wraps the result as a tensor owned by the current tidy scope. */
export function runProgram<R extends tf.Rank>(
  program: WebGPUProgram,
  inputs: tf.Tensor[],
  uniforms: ProgramUniform[] = [],
  dtype: 'float32' | 'int32' = 'float32',
): tf.Tensor<R> {
  const backend = webgpuBackend();
  const info = backend.runWebGPUProgram(program, inputs, dtype, uniforms);
  return tf.engine().makeTensorFromTensorInfo(info) as tf.Tensor<R>;
}

/** Waits until every command the webgpu backend has recorded so far has run on the GPU. */
export async function gpuSync(): Promise<void> {
  const backend = webgpuBackend();
  backend.ensureCommandEncoderReady();
  backend.endComputePassEncoder();
  backend.submitQueue();
  await backend.device.queue.onSubmittedWorkDone();
}

/** Bytes the webgpu backend holds in GPU buffers (in use, allocated incl. its free pool). */
export function gpuMemory(): { inUse: number; allocated: number } {
  const m = webgpuBackend().memory() as { numBytesInGPU: number; numBytesAllocatedInGPU: number };
  return { inUse: m.numBytesInGPU, allocated: m.numBytesAllocatedInGPU };
}
