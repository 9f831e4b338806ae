/**
 * The detector as a guest in an app's tfjs: the app's active backend is the same after
 * `Img2Pose.load`, after each call and after `dispose` as before them, whatever backend the
 * detector runs on; the detections are those of a detector loaded with its own backend active.
 * (Two detectors with different kernels on one backend: webgpu_detectors.test.ts.)
 */
import * as tf from '@tensorflow/tfjs';
import { DetectionModel, Face, Img2Pose } from '../src/detector';
import { decodeImage } from '../src/io/images';
import { RawDetections } from '../src/model/model';
import { disposeWeights } from '../src/model/weights';
import { formulaWeights } from './utils/formula';
import { imagePath } from './utils/golden';

// Small inputs: a forward is then ~1 s on wasm.
const SIZES = { minSize: 64, maxSize: 96, scoreThreshold: 0.05 } as const;
const TEASER = imagePath('teaser.png');

let reference: Face[];
/** A detector loaded while its own backend was the app's. */
let onWasm: Img2Pose;

beforeAll(async () => {
  expect(tf.getBackend()).toBe('wasm');
  const weights = formulaWeights();
  onWasm = await Img2Pose.load({ weights, backend: 'wasm', threads: 1, ...SIZES });
  disposeWeights(weights);
  reference = await onWasm.detectFaces(TEASER);
  expect(reference.length).toBeGreaterThan(0);
});

afterAll(() => onWasm.dispose());

afterEach(async () => {
  await tf.setBackend('wasm');
});

describe('the app keeps its backend', () => {
  it('an app on cpu stays on cpu through load, each call and dispose of a detector on wasm', async () => {
    await tf.setBackend('cpu');
    // The app's weights and image tensor are made on its own backend.
    const weights = formulaWeights();
    const image = await decodeImage(TEASER);
    const det = await Img2Pose.load({ weights, backend: 'wasm', threads: 1, ...SIZES });
    try {
      expect(tf.getBackend()).toBe('cpu');
      expect(det.backend).toBe('wasm');
      disposeWeights(weights);
      expect(await det.detectFaces(TEASER)).toEqual(reference);
      expect(tf.getBackend()).toBe('cpu');
      // A tensor of the app's is copied to the detector's backend at call time; calls overlap.
      const [list, aligned] = await Promise.all([det.detectFaces([TEASER, image]), det.detectAndAlign(image)]);
      expect(list).toEqual([reference, reference]);
      expect(aligned.map(({ crop: _, ...face }) => face)).toEqual(reference);
      expect(tf.getBackend()).toBe('cpu');
      // The app's own ops still run on its backend between calls.
      const sum = tf.add(image, 1);
      expect(tf.engine().state.tensorInfo.get(sum.dataId)?.backend).toBe(tf.findBackend('cpu'));
      sum.dispose();
    } finally {
      await det.dispose();
      image.dispose();
    }
    expect(tf.getBackend()).toBe('cpu');
  });

  it("backend 'auto' too", async () => {
    await tf.setBackend('cpu');
    const weights = formulaWeights();
    const det = await Img2Pose.load({ weights, backend: 'auto', threads: 1, ...SIZES });
    disposeWeights(weights);
    expect(tf.getBackend()).toBe('cpu');
    expect(det.backend).not.toBe('cpu');
    await det.dispose();
    expect(tf.getBackend()).toBe('cpu');
  });

  it('a failed load leaves the app on its backend too', async () => {
    await tf.setBackend('cpu');
    await expect(Img2Pose.load({ weights: '/nonexistent/weights', backend: 'wasm' })).rejects.toThrow();
    expect(tf.getBackend()).toBe('cpu');
  });

  it("calls of detectors on two backends in flight at once each run on the detector's own", async () => {
    // A network that notes the backend active at each step of its (asynchronous) forward.
    const seen: string[] = [];
    const noting: DetectionModel = {
      async predict(images: tf.Tensor3D[]): Promise<RawDetections[]> {
        for (let step = 0; step < 3; step++) {
          seen.push(tf.getBackend());
          await new Promise((r) => setTimeout(r, 5));
        }
        return images.map(() => ({ boxes: new Float32Array(0), scores: new Float32Array(0), dofs: new Float32Array(0) }));
      },
      dispose: () => undefined,
    };
    const onCpu = new Img2Pose(noting, SIZES, 'cpu');
    try {
      const [cpuFaces, wasmFaces] = await Promise.all([onCpu.detectFaces([TEASER, TEASER]), onWasm.detectFaces(TEASER), onCpu.detectFaces(TEASER)]);
      expect(cpuFaces).toEqual([[], []]);
      expect(wasmFaces).toEqual(reference);
      expect(seen).toEqual(new Array(6).fill('cpu'));
      expect(tf.getBackend()).toBe('wasm');
    } finally {
      await onCpu.dispose();
    }
    expect(tf.getBackend()).toBe('wasm');
  });
});
