/**
 * The public surface both entry points share: the Node package root (./index.ts) and the browser
 * build (./browser/index.ts) re-export all of this, so the two cannot drift apart. Each entry adds
 * what differs between them: the detector class typed for its inputs, the image input types,
 * `loadWeights`, `alignFaces` and drawing (Node: files, `visualize`, the weights cache; browser:
 * page elements, `drawFaces`, weights from URLs or picked files).
 */
export { DEFAULT_OPTIONS } from './detector';
export type {
  AlignedDetection,
  Box,
  DetectionModel,
  DetectAlignOptions,
  DetectOptions,
  DetectorOptions,
  Face,
  LoadOptions,
  Point,
  Pose,
  SettledDetection,
} from './detector';
export type { ModelConfig, RawDetections } from './model/model';
export type { ImageBytes, NetworkImage } from './model/transform';

export {
  AbortError,
  BackendError,
  BatchError,
  DisposedError,
  Img2PoseError,
  InferenceError,
  InputError,
  OptionError,
  WeightsError,
} from './errors';
export type { Img2PoseErrorCode, IndexedError, InputErrorDetails } from './errors';

export { BACKEND_CHOICES } from './runtime/backend';
export type { BackendChoice } from './runtime/backend';

export type { WeightsSource } from './io/weights_source';
export type { Img2PoseWeights, ResNetDepth } from './model/weights';

export { ALIGN_SIZES } from './align';
export type { AffineTransform, AlignedFace, AlignedImage, AlignOptions, AlignSize, PosedFace } from './align';

export { poseToEuler } from './euler';
export type { EulerAngles } from './euler';

export type { KeypointName } from './model/pose';
