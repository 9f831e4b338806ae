/**
 * Library flags for GPU bench runs, from the environment, so one bundle compares both settings:
 * IMG2POSE_GPU_CANDIDATES=0 reads the whole RPN head output back instead of the GPU's top-k
 * candidates; IMG2POSE_POSE_GATING=0 runs the pose head on every proposal; IMG2POSE_WINOGRAD=0
 * runs the stride-1 3x3 convs as direct convolutions.
 */
import * as tf from '@tensorflow/tfjs';
import { WINOGRAD_FLAG } from '../src/kernels/webgpu';
import { POSE_GATING_FLAG } from '../src/model/model';
import { GPU_CANDIDATES_FLAG } from '../src/model/rpn';

for (const flag of [GPU_CANDIDATES_FLAG, POSE_GATING_FLAG, WINOGRAD_FLAG]) {
  if (process.env[flag] === '0') tf.env().set(flag, false);
}
