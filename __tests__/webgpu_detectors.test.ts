/**
 * @jest-environment ./__tests__/utils/webgpu_environment.js
 *
 * Two detectors on the webgpu backend in one process, one with our WGSL kernels and one with the
 * stock tfjs ops: after both are loaded, each runs its own (the kernel mode belongs to each
 * network's runtime, not to the process: the last `load` used to decide for both). An app on wasm
 * stays on wasm throughout.
 */
import * as tf from '@tensorflow/tfjs';
import { Img2Pose } from '../src/detector';
import * as conv2d from '../src/kernels/webgpu/conv2d';
import * as program from '../src/kernels/webgpu/program';
import { Img2PoseModel } from '../src/model/model';
import { disposeWeights } from '../src/model/weights';
import { formulaWeights } from './utils/formula';
import { imagePath } from './utils/golden';
import { describeWebGPU } from './utils/webgpu';

// Tiny inputs: SwiftShader runs WebGPU on the CPU.
const SIZES = { minSize: 32, maxSize: 32, scoreThreshold: 0.05 } as const;
const TEASER = imagePath('teaser.png');

/** Thrown by a spied kernel: ends a forward at the first kernel of the kind it watches. */
class Reached extends Error {}

describeWebGPU('two detectors on webgpu with and without our kernels', () => {
  it('each runs its own kernels after both are loaded; the app stays on its backend', async () => {
    await tf.setBackend('wasm');
    const weights = formulaWeights();
    const ours = await Img2Pose.load({ weights, backend: 'webgpu', webgpuKernels: true, threads: 1, ...SIZES });
    const stock = await Img2Pose.load({ weights, backend: 'webgpu', webgpuKernels: false, threads: 1, ...SIZES });
    disposeWeights(weights);
    expect(tf.getBackend()).toBe('wasm');
    // A forward stops at its first WGSL program of ours or its first stock convolution, whichever
    // comes first: which one it was says which kernels the detector runs (and spares the rest of a
    // forward on a CPU-emulated GPU).
    const programs = jest.spyOn(program, 'runProgram').mockImplementation(() => {
      throw new Reached('one of our WGSL programs');
    });
    const stockConvs = jest.spyOn(conv2d, 'conv2dPortable').mockImplementation(() => {
      throw new Reached('a stock tfjs convolution');
    });
    const firstKernel = async (det: Img2Pose): Promise<string> => {
      const error = await det.detectFaces(TEASER).then(
        () => new Error('the forward ran to its end'),
        (e: unknown) => e,
      );
      expect(tf.getBackend()).toBe('wasm');
      const cause = (error as { cause?: unknown }).cause;
      if (!(cause instanceof Reached)) throw error;
      return cause.message;
    };
    try {
      expect(await firstKernel(ours)).toBe('one of our WGSL programs');
      expect(await firstKernel(stock)).toBe('a stock tfjs convolution');
      expect(await firstKernel(ours)).toBe('one of our WGSL programs');
    } finally {
      programs.mockRestore();
      stockConvs.mockRestore();
      await Promise.all([ours.dispose(), stock.dispose()]);
    }
    expect(tf.getBackend()).toBe('wasm');
  });
});

describeWebGPU('overlapping calls on webgpu', () => {
  it('two forwards run at once; every call gets its result on its own', async () => {
    const weights = formulaWeights();
    const det = await Img2Pose.load({ weights, backend: 'webgpu', webgpuKernels: true, threads: 1, ...SIZES });
    disposeWeights(weights);
    // Two images: a forward takes ~13 s on SwiftShader.
    const images = ['teaser.png', 'portrait_1.png'].map(imagePath);
    const predict = Img2PoseModel.prototype.predict;
    let inFlight = 0;
    let most = 0;
    const spy = jest.spyOn(Img2PoseModel.prototype, 'predict').mockImplementation(async function (this: Img2PoseModel, ...args) {
      most = Math.max(most, ++inFlight);
      try {
        return await predict.apply(this, args);
      } finally {
        inFlight--;
      }
    });
    try {
      const alone = [];
      for (const image of images) alone.push(await det.detectFaces(image));
      expect(most).toBe(1);
      expect(alone.some((faces) => faces.length > 0)).toBe(true);
      const together = await Promise.all(images.map((image) => det.detectFaces(image)));
      expect(most).toBe(2);
      expect(together).toEqual(alone);
    } finally {
      spy.mockRestore();
      await det.dispose();
    }
  });
});
