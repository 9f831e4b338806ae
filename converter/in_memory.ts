/** Loading a .pth straight into tfjs tensors (no folder written). */
import * as tf from '@tensorflow/tfjs-core';
import { Img2PoseWeights } from './weights';
import { LoadedCheckpoint, loadCheckpoint } from './checkpoint';
import { sharedFloat32 } from './tensor_data';
import {
  DEFAULT_POSE_WARNING,
  PoseStatistics,
  PoseStatisticsInput,
  Warn,
  defaultWarn,
  entryValues,
  forEachEntry,
  prepareCheckpoint,
  resolvePoseStatistics,
} from './convert';

/**
 * Reads and validates an img2pose checkpoint and returns its weights as tensors on the current
 * backend (tfjs layout, upstream names). Without pose statistics, upstream's defaults for
 * custom models are used and a warning is given. The caller owns (and disposes) the tensors.
 * `shared`: the values are made as views of one SharedArrayBuffer (on the cpu backend the tensors
 * keep them as they are, so worker threads can share them without another copy).
 */
export async function checkpointToWeights(
  checkpoint: string,
  poseMean?: PoseStatisticsInput,
  poseStddev?: PoseStatisticsInput,
  warn: Warn = defaultWarn,
  shared = false,
): Promise<Img2PoseWeights> {
  const pose = await resolvePoseStatistics(poseMean, poseStddev);
  // Storages are read from the file one by one as they are converted: the whole file is never in memory.
  const loaded = await loadCheckpoint(checkpoint, { hash: false, fromFile: true });
  try {
    return await convertInMemory(checkpoint, loaded, pose, warn, shared);
  } finally {
    loaded.close();
  }
}

async function convertInMemory(
  checkpoint: string,
  loaded: LoadedCheckpoint,
  pose: PoseStatistics,
  warn: Warn,
  shared: boolean,
): Promise<Img2PoseWeights> {
  const prepared = prepareCheckpoint(loaded);
  if (pose.source === 'defaults') warn(DEFAULT_POSE_WARNING);
  const tensors = new Map<string, tf.Tensor>();
  const allocate = shared ? sharedFloat32(prepared.entries.reduce((a, e) => a + e.numel, 0)) : (n: number) => new Float32Array(n);
  try {
    await forEachEntry(prepared.entries, (e, source) => {
      tensors.set(e.name, tf.tensor(entryValues(e, source, checkpoint, allocate(e.numel)), e.shape, 'float32'));
    });
  } catch (err) {
    tf.dispose([...tensors.values()]);
    throw err;
  }
  return { depth: prepared.depth, tensors, poseMean: pose.mean, poseStddev: pose.stddev };
}
