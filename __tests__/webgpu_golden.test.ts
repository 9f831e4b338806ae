/**
 * @jest-environment ./__tests__/utils/webgpu_environment.js
 *
 * The whole pipeline on the webgpu backend (Dawn; SwiftShader in CI), against the upstream
 * PyTorch run: the tiny golden cases within the fixtures' end-to-end tolerances, with the stock
 * tfjs ops ('portable') and with our WGSL kernels ('webgpu'); and with our kernels, a padded
 * batch of two sizes gives each image exactly (bit for bit) its single-image detections.
 */
import * as tf from '@tensorflow/tfjs';
import { decodeImage } from '../src/io/images';
import { Img2PoseModel, RawDetections } from '../src/model/model';
import { activeRuntime } from '../src/runtime/runtime';
import { disposeWeights } from '../src/model/weights';
import { KernelMode } from '../src/kernels/webgpu';
import { formulaWeights } from './utils/formula';
import { golden, goldenCase, imagePath } from './utils/golden';
import { expectWithinTolerance, matchDetections } from './utils/match';
import { describeWebGPU } from './utils/webgpu';
import { countDispatches } from '../bench/dispatch_count';

const CASES = ['tiny_portrait', 'tiny_teaser'];

function reference(id: string): RawDetections {
  return {
    boxes: Float32Array.from(golden(id, 'final_boxes').data),
    scores: Float32Array.from(golden(id, 'final_scores').data),
    dofs: Float64Array.from(golden(id, 'final_dofs').data),
  };
}

function expectIdentical(got: RawDetections, want: RawDetections): void {
  expect(got.scores.length).toBe(want.scores.length);
  expect(Array.from(got.boxes)).toEqual(Array.from(want.boxes));
  expect(Array.from(got.scores)).toEqual(Array.from(want.scores));
  expect(Array.from(got.dofs)).toEqual(Array.from(want.dofs));
}

describeWebGPU('webgpu backend end to end (tiny golden cases)', () => {
  // One network per kernel mode, as two detectors loaded with and without webgpuKernels.
  const models = new Map<KernelMode, Img2PoseModel>();
  const images = new Map<string, tf.Tensor3D>();
  const singles = new Map<string, RawDetections>();

  beforeAll(async () => {
    const w = formulaWeights();
    for (const mode of ['portable', 'webgpu'] as const) models.set(mode, new Img2PoseModel(w, activeRuntime({ kernels: mode })));
    disposeWeights(w);
    for (const id of CASES) {
      const name = goldenCase(id).image as string;
      images.set(id, await decodeImage(imagePath(name)));
    }
  });
  afterAll(async () => {
    for (const model of models.values()) await model.dispose();
    tf.dispose([...images.values()]);
  });

  // SwiftShader runs on the CPU, about a minute per tiny forward on 2 cores: the stock ops on the
  // teaser only (the portrait has no detection above 0.05 to compare), ours
  // on both, whose single runs the batch is then compared with.
  const RUNS: [KernelMode, string[]][] = [
    ['portable', ['tiny_teaser']],
    ['webgpu', CASES],
  ];

  describe.each(RUNS)('kernels: %s', (mode, ids) => {
    it.each(ids)('%s matches upstream within the golden tolerances, no tensor left behind', async (id) => {
      const c = goldenCase(id);
      const before = tf.memory().numTensors;
      const t0 = performance.now();
      const dispatches = countDispatches();
      let det: RawDetections;
      try {
        [det] = await models.get(mode)!.predict([images.get(id)!], { minSize: c.min_size, maxSize: c.max_size });
      } finally {
        dispatches.restore();
      }
      const ms = performance.now() - t0;
      expect(tf.memory().numTensors).toBe(before);
      if (mode === 'webgpu') {
        // Channel padding costs one dispatch a forward, the RGB image's (3 -> 4 channels), and
        // unpadding one, the class logits' (2 of 4): the other layers whose channels are not a
        // multiple of 4 keep padded weights, and the RPN head's padded 16th channel goes to the
        // GPU's candidates as it is.
        const count = (prefix: string) => [...dispatches.byProgram].filter(([name]) => name.startsWith(prefix)).reduce((sum, [, n]) => sum + n, 0);
        expect([count('Pad'), count('Slice')]).toEqual([1, 1]);
      }
      const ref = reference(id);
      const report = matchDetections(det, ref);
      console.log(`${mode} ${id} (${ms.toFixed(0)} ms): ${JSON.stringify(report)}`);
      expectWithinTolerance(report);
      expect(Math.abs(det.scores.length - ref.scores.length)).toBeLessThanOrEqual(Math.max(2, 0.02 * ref.scores.length));
      if (mode === 'webgpu') singles.set(id, det);
    });
  });

  it('with our kernels, a padded batch of both images equals their single runs bit for bit', async () => {
    const c = goldenCase('tiny_batch');
    const before = tf.memory().numTensors;
    const batch = await models.get('webgpu')!.predictStacked(CASES.map((id) => images.get(id)!), { minSize: c.min_size, maxSize: c.max_size });
    expect(tf.memory().numTensors).toBe(before);
    CASES.forEach((id, i) => {
      const single = singles.get(id);
      if (!single) throw new Error(`the single run of ${id} failed, nothing to compare the batch with`);
      expectIdentical(batch[i], single);
    });
    // The teaser must produce detections, or equality would prove little.
    expect(batch[CASES.indexOf('tiny_teaser')].scores.length).toBeGreaterThan(100);
  });
});
