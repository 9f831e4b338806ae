/// <reference lib="dom" />
/**
 * img2pose-tfjs for browsers (the package's `browser` export). The same detector as in Node, with
 * the page's inputs (see ./io.ts), weights from a URL or picked files (./weights_io.ts), drawing on
 * a canvas (./draw.ts), and the backends a browser has: webgpu (with our WGSL kernels), webgl,
 * wasm, cpu; 'auto' takes the first that starts, in that order.
 *
 *   import { Img2Pose, drawFaces } from 'img2pose-tfjs';
 *   const detector = await Img2Pose.load({ weights: '/models/img2pose_v1/' });
 *   const faces = await detector.detectFaces(document.querySelector('img'));
 */
import * as tf from '@tensorflow/tfjs';
// Both register their backend when evaluated; webgpu only where the page has navigator.gpu.
import '@tensorflow/tfjs-backend-webgpu';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { ModuleLoader, setDefaultModuleLoader } from '../backend';

/** The backend packages are part of this build: nothing to resolve at run time. */
const BUNDLED = new Set(['@tensorflow/tfjs-backend-webgpu', '@tensorflow/tfjs-backend-wasm']);
const browserLoader: ModuleLoader = {
  resolvable: (name) => BUNDLED.has(name),
  load: () => undefined,
};
setDefaultModuleLoader(browserLoader);

export { tf, setWasmPaths };

export { Img2Pose, processPrediction, DEFAULT_OPTIONS } from '../detector';
export type { Box, DetectionModel, DetectOptions, DetectorOptions, Face, LoadOptions, Point, Pose, SettledDetection } from '../detector';
export { BackendError, BatchError, DisposedError, Img2PoseError, InferenceError, InputError, OptionError, WeightsError } from '../errors';
export type { Img2PoseErrorCode, IndexedError, InputErrorDetails } from '../errors';
export { decodeImage, describeInput } from './io';
export type { DrawableSource, ImageInput, RawImage } from './io';
export { loadWeights, loadWeightsFromFiles } from './weights_io';
export { drawFaces } from './draw';
export { alignFaces } from './align';
export { ALIGN_SIZES } from '../align';
export type { AffineTransform, AlignedFace, AlignedImage, AlignOptions, AlignSize, PosedFace } from '../align';
export { poseToEuler } from '../euler';
export type { EulerAngles } from '../euler';
export type { DrawOptions } from './draw';
export { selectBackend, BACKEND_CHOICES, AUTO_ORDER } from '../backend';
export type { BackendChoice } from '../backend';
export { Img2PoseModel } from '../model';
export type { ModelConfig, RawDetections } from '../model';
export { KEYPOINT_INDICES, projectKeypoints, projectPoints } from '../pose';
export type { KeypointName } from '../pose';
export * from '../weights';
