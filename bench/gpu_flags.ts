/**
 * Library flags for GPU bench runs, from the environment, so one bundle compares both settings:
 * IMG2POSE_GPU_CANDIDATES=0 reads the whole RPN head output back instead of the GPU's top-k
 * candidates; IMG2POSE_GPU_RANK_CANDIDATES=0 sorts those candidates on the host instead of ranking
 * them on the GPU; IMG2POSE_GPU_BATCH_CANDIDATES=N uses those candidates for batches of up to N
 * images whose proposals run on worker threads (0: none; 8 by default); IMG2POSE_POSE_GATING=0 runs the pose head on every proposal; IMG2POSE_WINOGRAD=0
 * runs the stride-1 3x3 convs as direct convolutions; IMG2POSE_GPU_RECORD=0 records dispatches
 * with tfjs' own per-dispatch uniform buffers and bind groups; IMG2POSE_GPU_UPLOAD_CHUNK=N uploads in
 * writes of at most N bytes (0: one write). IMG2POSE_WINOGRAD_TILE=4 runs the Winograd
 * convolutions as F(4x4, 3x3) (2: F(2x2, 3x3); auto, the default: by layer), and with it
 * IMG2POSE_WINOGRAD_F4_FUSED_INPUT=1 computes F(4x4)'s input transform in the GEMM's loads instead
 * of a dispatch of its own. WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE=N sets tfjs' flag of that name
 * (dispatches per queue submit; tfjs' default 15).
 */
import * as tf from '@tensorflow/tfjs';
import {
  GPU_RECORD_FLAG, UPLOAD_CHUNK_FLAG, winogradEnabled, winogradTile, WINOGRAD_F4_FUSED_FLAG, WINOGRAD_FLAG, WINOGRAD_TILE_FLAG, WINOGRAD_AUTO_F4_MAX_CHANNELS,
} from '../src/kernels/webgpu';
import { POSE_GATING_FLAG } from '../src/model/model';
import { GPU_BATCH_CANDIDATES_FLAG, GPU_CANDIDATES_FLAG, GPU_RANK_CANDIDATES_FLAG } from '../src/model/rpn';

for (const flag of [GPU_CANDIDATES_FLAG, GPU_RANK_CANDIDATES_FLAG, POSE_GATING_FLAG, WINOGRAD_FLAG, GPU_RECORD_FLAG]) {
  if (process.env[flag] === '0') tf.env().set(flag, false);
}
const chunk = process.env[UPLOAD_CHUNK_FLAG];
if (chunk !== undefined && /^\d+$/.test(chunk)) tf.env().set(UPLOAD_CHUNK_FLAG, Number(chunk));
const tile = process.env[WINOGRAD_TILE_FLAG];
if (tile !== undefined) {
  if (tile !== 'auto' && tile !== '2' && tile !== '4') throw new Error(`${WINOGRAD_TILE_FLAG} must be auto, 2 or 4, got ${tile}`);
  tf.env().set(WINOGRAD_TILE_FLAG, tile === 'auto' ? tile : Number(tile));
}
if (process.env[WINOGRAD_F4_FUSED_FLAG] === '1') tf.env().set(WINOGRAD_F4_FUSED_FLAG, true);
const batchCandidates = process.env[GPU_BATCH_CANDIDATES_FLAG];
if (batchCandidates !== undefined && /^\d+$/.test(batchCandidates)) tf.env().set(GPU_BATCH_CANDIDATES_FLAG, Number(batchCandidates));

/** The Winograd settings in force, for a run's log: off, F(2x2), or F(4x4) with where its input transform runs. */
export function winogradSetting(): string {
  if (!winogradEnabled()) return 'winograd off';
  if (tf.env().get(WINOGRAD_TILE_FLAG) === 'auto') {
    return `winograd by layer: F(4x4, 3x3) up to ${WINOGRAD_AUTO_F4_MAX_CHANNELS} input channels, F(2x2, 3x3) above`;
  }
  const t = winogradTile();
  return t === 2 ? 'winograd F(2x2, 3x3)' : `winograd F(4x4, 3x3), input transform ${tf.env().getBool(WINOGRAD_F4_FUSED_FLAG) ? 'in the GEMM loads' : 'separate'}`;
}

/** The flags the webgpu backend registers itself: call once the backend is up. */
export function applyBackendFlags(): void {
  const submitBatch = Number(process.env.WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE);
  if (Number.isInteger(submitBatch) && submitBatch > 0) tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', submitBatch);
}
