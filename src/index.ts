/**
 * img2pose-tfjs: face detection and 6DoF head pose (img2pose) on TensorFlow.js.
 *
 *   const detector = await Img2Pose.load();   // the official weights, downloaded and cached on first use
 *   const faces = await detector.detectFaces('photo.jpg');   // Face[]
 *   const all = await detector.detectFaces(['a.jpg', 'b.png']); // Face[][]
 *   const crops = await alignFaces('photo.jpg', faces, { size: 112 }); // AlignedFace[]
 *   await detector.dispose();
 */
export { Img2Pose, processPrediction, DEFAULT_OPTIONS, threadCount } from './detector';
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

export {
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

export { decodeImage, describeInput } from './io/images';
export type { ImageInput, JimpImageLike, RawImage } from './io/images';

export { selectBackend, BACKEND_CHOICES, AUTO_ORDER } from './runtime/backend';
export type { BackendChoice, ModuleLoader } from './runtime/backend';

export { loadWeights } from './io/weights_io';
export type { LoadWeightsOptions } from './io/weights_io';
export { loadWeightsFromUrl } from './io/weights_url';
export type { WeightsSource } from './io/weights_source';
export {
  RELEASE,
  cacheRoot,
  clearReleaseCache,
  ensureReleaseWeights,
  installReleaseZip,
  releaseFolder,
  verifyReleaseFolder,
} from './io/weights_cache';
export type { CacheRecord, ReleaseEvent, ReleaseOptions } from './io/weights_cache';
export { writeFormulaWeights } from './io/formula_weights';

export { alignFaces, cropToPng, ALIGN_SIZES } from './align';
export type { AffineTransform, AlignedFace, AlignedImage, AlignOptions, AlignSize, PosedFace } from './align';

export { poseToEuler } from './euler';
export type { EulerAngles } from './euler';

export { visualize } from './visualize';
export type { DrawableFace, VisualizeImage, VisualizeOptions } from './visualize';

export { Img2PoseModel, SUBBATCH_OVERLAP } from './model/model';
export type { ModelConfig, PredictOptions, RawDetections, StageTimings } from './model/model';
export { createRuntime } from './runtime/runtime';
export type { RuntimeOptions } from './runtime/runtime';
export type { BackendRules, HostExecutor, ModelRuntime } from './model/runtime';

export { WorkerTaskError } from './runtime/threads';

export { KEYPOINT_INDICES, REFERENCE_POINTS_68, projectKeypoints, projectPoints } from './model/pose';
export type { KeypointName } from './model/pose';

export * from './model/weights';
