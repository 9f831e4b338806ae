/**
 * img2pose-tfjs: face detection and 6DoF head pose (img2pose) on TensorFlow.js.
 *
 *   const detector = await Img2Pose.load();   // the official weights, downloaded and cached on first use
 *   const faces = await detector.detectFaces('photo.jpg');   // Face[]
 *   const all = await detector.detectFaces(['a.jpg', 'b.png']); // Face[][]
 *   const crops = await alignFaces('photo.jpg', faces, { size: 112 }); // AlignedFace[]
 *   await detector.dispose();
 *
 * This is the whole public surface: the detector, its options and results, the errors, alignment,
 * head angles, drawing, and the weights helpers. The network, its stages and runtime are internal
 * (they change without notice); a custom network plugs in through `DetectionModel`.
 * The declarations use web-standard types only (`Uint8Array`, no `Buffer` or `NodeJS.*`), so an app
 * compiles against them without `@types/node`.
 */
export { Img2Pose, DEFAULT_OPTIONS } from './detector';
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
export { WorkerTaskError } from './runtime/threads';

export type { ImageInput, JimpImageLike, RawImage } from './io/images';
export { BACKEND_CHOICES } from './runtime/backend';
export type { BackendChoice } from './runtime/backend';

export { loadWeights } from './io/weights_io';
export type { LoadWeightsOptions } from './io/weights_io';
export type { WeightsSource } from './io/weights_source';
export type { Img2PoseWeights, ResNetDepth } from './model/weights';
export {
  cacheRoot,
  clearReleaseCache,
  ensureReleaseWeights,
  installReleaseZip,
  releaseFolder,
  verifyReleaseFolder,
} from './io/weights_cache';
export type { CacheRecord, Environment, ReleaseEvent, ReleaseOptions } from './io/weights_cache';
export { writeFormulaWeights } from './io/formula_weights';

export { alignFaces, cropToPng, ALIGN_SIZES } from './align';
export type { AffineTransform, AlignedFace, AlignedImage, AlignOptions, AlignSize, PosedFace } from './align';

export { poseToEuler } from './euler';
export type { EulerAngles } from './euler';

export { visualize } from './visualize';
export type { DrawableFace, RGB, VisualizeImage, VisualizeOptions } from './visualize';

export type { KeypointName } from './model/pose';
