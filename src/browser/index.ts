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
import { ModuleLoader, setDefaultModuleLoader } from '../runtime/backend';

/** The backend packages are part of this build: nothing to resolve at run time. */
const BUNDLED = new Set(['@tensorflow/tfjs-backend-webgpu', '@tensorflow/tfjs-backend-wasm']);
const browserLoader: ModuleLoader = {
  resolvable: (name) => BUNDLED.has(name),
  load: () => undefined,
};
setDefaultModuleLoader(browserLoader);

export { tf, setWasmPaths };

export * from '../public_api';

import { Img2Pose as CoreImg2Pose } from '../detector';
import type { AlignedDetection, DetectAlignOptions, DetectOptions, Face, LoadOptions, SettledDetection } from '../detector';
import type { AlignedFace, AlignOptions, PosedFace } from '../align';
import type { ImageInput as PageInput } from './io';

/**
 * The detector of this build: the same class, its image parameters typed with the page's inputs
 * (elements, ImageBitmap, ImageData, VideoFrame, Blob, URLs), which this build reads (./io.ts).
 */
export interface Img2Pose extends Omit<
  CoreImg2Pose,
  'detectFaces' | 'detectFacesSettled' | 'alignFaces' | 'alignFacesBatch' | 'detectAndAlign'
> {
  detectFaces(image: PageInput, options?: DetectOptions): Promise<Face[]>;
  detectFaces(images: readonly PageInput[], options?: DetectOptions): Promise<Face[][]>;
  detectFacesSettled(images: readonly PageInput[], options?: DetectOptions): Promise<SettledDetection[]>;
  alignFaces(image: PageInput, faces: readonly PosedFace[], options?: AlignOptions): Promise<AlignedFace[]>;
  alignFacesBatch(
    images: readonly PageInput[],
    facesPerImage: readonly (readonly PosedFace[])[],
    options?: AlignOptions,
  ): Promise<AlignedFace[][]>;
  detectAndAlign(image: PageInput, options?: DetectAlignOptions): Promise<AlignedDetection[]>;
  detectAndAlign(images: readonly PageInput[], options?: DetectAlignOptions): Promise<AlignedDetection[][]>;
}
export const Img2Pose = CoreImg2Pose as unknown as Omit<typeof CoreImg2Pose, 'load' | 'prototype'> & {
  load(options?: LoadOptions): Promise<Img2Pose>;
  prototype: Img2Pose;
};
// What the browser build adds to the shared surface (../public_api.ts): the page's inputs, weights
// from URLs and picked files, drawing on a canvas.
export type { DrawableSource, ImageInput, RawImage } from './io';
export { loadWeights, loadWeightsFromFiles } from './weights_io';
export { drawFaces } from './draw';
export type { DrawOptions } from './draw';
export { alignFaces } from './align';
