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
import * as program from '../src/kernels/webgpu/program';
import { disposeWeights } from '../src/model/weights';
import { formulaWeights } from './utils/formula';
import { imagePath } from './utils/golden';
import { describeWebGPU } from './utils/webgpu';

// Tiny inputs: SwiftShader runs WebGPU on the CPU.
const SIZES = { minSize: 32, maxSize: 32, scoreThreshold: 0.05 } as const;
const TEASER = imagePath('teaser.png');

describeWebGPU('two detectors on webgpu with and without our kernels', () => {
  it('each runs its own kernels after both are loaded; the app stays on its backend', async () => {
    await tf.setBackend('wasm');
    const weights = formulaWeights();
    const ours = await Img2Pose.load({ weights, backend: 'webgpu', webgpuKernels: true, threads: 1, ...SIZES });
    const stock = await Img2Pose.load({ weights, backend: 'webgpu', webgpuKernels: false, threads: 1, ...SIZES });
    disposeWeights(weights);
    const programs = jest.spyOn(program, 'runProgram');
    const programsOf = async (det: Img2Pose): Promise<number> => {
      programs.mockClear();
      await det.detectFaces(TEASER);
      expect(tf.getBackend()).toBe('wasm');
      return programs.mock.calls.length;
    };
    try {
      expect(tf.getBackend()).toBe('wasm');
      expect(await programsOf(ours)).toBeGreaterThan(0);
      expect(await programsOf(stock)).toBe(0);
      expect(await programsOf(ours)).toBeGreaterThan(0);
    } finally {
      programs.mockRestore();
      await Promise.all([ours.dispose(), stock.dispose()]);
    }
    expect(tf.getBackend()).toBe('wasm');
  });
});
