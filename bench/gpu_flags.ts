/**
 * Library flags for GPU bench runs, from the environment, so one bundle compares both settings:
 * IMG2POSE_GPU_CANDIDATES=0 reads the whole RPN head output back instead of the GPU's top-k
 * candidates; IMG2POSE_POSE_GATING=0 runs the pose head on every proposal; IMG2POSE_WINOGRAD=0
 * runs the stride-1 3x3 convs as direct convolutions; IMG2POSE_GPU_RECORD=0 records dispatches
 * with tfjs' own per-dispatch uniform buffers and bind groups; IMG2POSE_GPU_UPLOAD_CHUNK=N uploads in
 * writes of at most N bytes (0: one write). WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE=N
 * sets tfjs' flag of that name (dispatches per queue submit; tfjs' default 15).
 */
import * as tf from '@tensorflow/tfjs';
import { GPU_RECORD_FLAG, UPLOAD_CHUNK_FLAG, WINOGRAD_FLAG } from '../src/kernels/webgpu';
import { POSE_GATING_FLAG } from '../src/model/model';
import { GPU_CANDIDATES_FLAG } from '../src/model/rpn';

for (const flag of [GPU_CANDIDATES_FLAG, POSE_GATING_FLAG, WINOGRAD_FLAG, GPU_RECORD_FLAG]) {
  if (process.env[flag] === '0') tf.env().set(flag, false);
}
const chunk = process.env[UPLOAD_CHUNK_FLAG];
if (chunk !== undefined && /^\d+$/.test(chunk)) tf.env().set(UPLOAD_CHUNK_FLAG, Number(chunk));

/** The flags the webgpu backend registers itself: call once the backend is up. */
export function applyBackendFlags(): void {
  const submitBatch = Number(process.env.WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE);
  if (Number.isInteger(submitBatch) && submitBatch > 0) tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', submitBatch);
}
