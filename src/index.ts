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
// tfjs' cpu backend registered on import, as the @tensorflow/tfjs package does: an app may make
// tensors (in-memory weights, input images) before a detector picks its backend. Only this entry
// loads it: worker threads register it when they choose it (src/runtime/backend.ts).
import '@tensorflow/tfjs-backend-cpu';

export * from './public_api';

// What the Node entry adds to the shared surface (./public_api.ts): the detector class with
// Node's image inputs, worker threads' errors, the weights cache and files, drawing into images.
export { Img2Pose } from './detector';
export { WorkerTaskError } from './runtime/threads';
export type { ImageInput, JimpImageLike, RawImage } from './io/images';

export { loadWeights } from './io/weights_io';
export type { LoadWeightsOptions } from './io/weights_io';
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

export { alignFaces, cropToPng } from './align';

export { visualize } from './visualize';
export type { DrawableFace, RGB, VisualizeImage, VisualizeOptions } from './visualize';
