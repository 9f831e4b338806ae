import * as tf from '@tensorflow/tfjs';
import { Img2PoseWeights } from './weights';

/** Sizes of the input transform (upstream's min_size / max_size). */
export interface ModelConfig {
  minSize: number;
  maxSize: number;
}

/**
 * The network's output for one image, after upstream's ROI post-processing and final NMS:
 * boxes in ORIGINAL image coordinates (N*4, x1 y1 x2 y2), scores (N), global dofs (N*6:
 * rx ry rz tx ty tz). Every detection with score > 0.05 is kept; thresholds are the detector's job.
 */
export interface RawDetections {
  boxes: Float32Array;
  scores: Float32Array;
  dofs: Float64Array;
}

/**
 * The img2pose network: transform -> ResNet-FPN -> RPN -> multi-scale RoIAlign -> heads -> pose
 * post-processing. (Being assembled by the lead from the stage modules; interface is fixed.)
 */
export class Img2PoseModel {
  constructor(readonly weights: Img2PoseWeights) {}

  /** images: HWC RGB tensors with values 0..255. One stacked forward for all of them. */
  async predict(images: tf.Tensor3D[], config: ModelConfig): Promise<RawDetections[]> {
    void images;
    void config;
    throw new Error('Img2PoseModel.predict: not assembled yet');
  }

  dispose(): void {
    for (const t of this.weights.tensors.values()) t.dispose();
    this.weights.tensors.clear();
  }
}
