/**
 * A detector on worker threads run as a service: a worker killed in the middle of a batch is
 * replaced and only its share runs again (same results as with no kill); a batch that kills every
 * worker it lands on fails with an InferenceError, and the detector goes on. Then the bounded
 * service soak (bench/service_soak.ts --short): random sizes, bad inputs, two kills, flat tensors
 * and memory.
 *
 * Workers run the compiled build (dist/bench/fault_worker.js wraps dist/src/runtime/worker.js).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { selectBackend, selectCpuForValues } from '../src/runtime/backend';
import { Img2Pose } from '../src/detector';
import { InferenceError, InputError, WeightsError } from '../src/errors';
import { RawDetections } from '../src/model/model';
import { ThreadedModel } from '../src/runtime/threaded_model';
import { collectGarbage } from '../src/runtime/threads';
import { disposeWeights } from '../src/model/weights';
import { KILLED_EXIT_CODE, WorkerKiller } from '../bench/fault_worker';
import { serviceSoak, SHORT } from '../bench/service_soak';
import { formulaWeights } from './utils/formula';

const SCRIPT = path.join(__dirname, '..', 'dist', 'bench', 'fault_worker.js');
const TINY = { minSize: 64, maxSize: 96 };

function images(): tf.Tensor3D[] {
  return [
    [40, 60],
    [90, 30],
    [64, 64],
    [17, 120],
  ].map(([h, w], k) => tf.tidy(() => tf.range(k, k + h * w * 3, 1, 'int32').mod(251).reshape([h, w, 3])) as tf.Tensor3D);
}

const plain = (r: RawDetections[]) => r.map((d) => ({ boxes: Array.from(d.boxes), scores: Array.from(d.scores), dofs: Array.from(d.dofs) }));

describe('a worker killed mid-batch', () => {
  let model: ThreadedModel;
  let killer: WorkerKiller;
  let inputs: tf.Tensor3D[];
  let reference: ReturnType<typeof plain>;
  let baseTensors: number[];

  beforeAll(async () => {
    if (!fs.existsSync(SCRIPT)) throw new Error(`${SCRIPT} is missing: run \`npm run build\``);
    await selectBackend('wasm');
    const weights = formulaWeights();
    try {
      model = await ThreadedModel.start(SCRIPT, weights, 'wasm', 2);
      // Whatever else this machine runs now.
      model.offloadWhen = 'always';
    } finally {
      disposeWeights(weights);
    }
    killer = new WorkerKiller();
    inputs = images();
    reference = plain(await model.predict(inputs, TINY));
    baseTensors = await model.workerTensors();
  }, 300_000);

  afterAll(async () => {
    killer?.close();
    await model?.dispose();
    tf.dispose(inputs);
  });

  it('is replaced, and its share runs again on the new worker: the same results as with no kill', async () => {
    expect(reference.length).toBe(4);
    expect(reference.some((r) => r.scores.length > 0)).toBe(true);
    await killer.arm(2);
    const killed = await model.predict(inputs, TINY);
    expect(killer.fired).toBe(true);
    expect(plain(killed)).toEqual(reference);
    // Both workers hold the network and nothing else (the new one included).
    expect(await model.workerTensors()).toEqual(baseTensors);
  }, 300_000);

  it('one image: the worker taking part of its forward dies; the image\'s own worker runs that part, the same results', async () => {
    // Its 220 proposals are enough to share: 118 rows (54%, see RoIHeads.forwardPooling) go to the idle worker.
    const rows = model.offloaded.headRows;
    expect(plain(await model.predict([inputs[0]], TINY))).toEqual([reference[0]]);
    expect(model.offloaded.headRows).toBe(rows + 118);
    await killer.arm(2, 'model-heads');
    expect(plain(await model.predict([inputs[0]], TINY))).toEqual([reference[0]]);
    expect(killer.fired).toBe(true);
    // The dead helper is replaced at its next task; both hold the network and nothing else.
    expect(await model.workerTensors()).toEqual(baseTensors);
    const after = model.offloaded.headRows;
    expect(plain(await model.predict([inputs[0]], TINY))).toEqual([reference[0]]);
    expect(model.offloaded.headRows).toBe(after + 118);
    // The same with level 0's lower rows (a larger input, whose level 0 is cut in two bands).
    const SMALL = { minSize: 160, maxSize: 288 };
    const bands = model.offloaded.level0Bands;
    const small = plain(await model.predict([inputs[0]], SMALL));
    expect(model.offloaded.level0Bands).toBe(bands + 1);
    await killer.arm(2, 'model-level0');
    expect(plain(await model.predict([inputs[0]], SMALL))).toEqual(small);
    expect(killer.fired).toBe(true);
    expect(model.offloaded.level0Bands).toBe(bands + 1);
    expect(await model.workerTensors()).toEqual(baseTensors);
    // The same with the body's lower rows: the image's worker waits for them in shared memory and
    // is told there that the helper is gone.
    const bodies = model.offloaded.bodyBands;
    await killer.arm(2, 'model-body');
    expect(plain(await model.predict([inputs[0]], SMALL))).toEqual(small);
    expect(killer.fired).toBe(true);
    expect(model.offloaded.bodyBands).toBe(bodies);
    expect(await model.workerTensors()).toEqual(baseTensors);
    expect(plain(await model.predict([inputs[0]], SMALL))).toEqual(small);
    expect(model.offloaded.bodyBands).toBe(bodies + 1);
    // The same with the RPN head's level: the helper dies on receiving it.
    const levels = model.offloaded.rpnLevels;
    await killer.arm(2, 'model-rpn');
    expect(plain(await model.predict([inputs[0]], TINY))).toEqual([reference[0]]);
    expect(killer.fired).toBe(true);
    expect(model.offloaded.rpnLevels).toBe(levels);
    expect(await model.workerTensors()).toEqual(baseTensors);
  }, 300_000);

  it('a batch that kills the replacement too fails with an InferenceError; later calls work', async () => {
    // Every worker dies on every forward task: the retry on the replacement dies too.
    killer.killEvery(true);
    const failure = await model.predict(inputs, TINY).catch((e: unknown) => e);
    killer.killEvery(false);
    expect(failure).toBeInstanceOf(InferenceError);
    expect((failure as Error).message).toMatch(
      new RegExp(`worker thread stopped twice on these 2 images: .*exit code ${KILLED_EXIT_CODE}.*then on the retry .*exit code ${KILLED_EXIT_CODE}`),
    );
    // The dead slot gets a healthy worker at its next task.
    expect(plain(await model.predict(inputs, TINY))).toEqual(reference);
    expect(await model.workerTensors()).toEqual(baseTensors);
  }, 300_000);

  it('through the detector: only the affected call fails, typed; the calls before and after get their faces', async () => {
    const weights = formulaWeights();
    let threaded: ThreadedModel;
    try {
      threaded = await ThreadedModel.start(SCRIPT, weights, 'wasm', 2);
    } finally {
      disposeWeights(weights);
    }
    const det = new Img2Pose(threaded, { ...TINY, scoreThreshold: 0.5 }, 'wasm', 2);
    try {
      const expected = await det.detectFacesSettled([...inputs, 'no-such-file.png']);
      expect(expected.slice(0, 4).every((s) => s.ok)).toBe(true);
      expect(!expected[4].ok && expected[4].error).toBeInstanceOf(InputError);

      expect(await det.detectFaces(inputs[0])).toEqual((expected[0] as { faces: unknown }).faces);
      killer.killEvery(true);
      const error = await det.detectFaces(inputs.slice(0, 2)).catch((e: unknown) => e);
      killer.killEvery(false);
      expect(error).toMatchObject({ name: 'BatchError' });
      const { errors } = error as { errors: { index: number; error: Error }[] };
      expect(errors.map((e) => e.index)).toEqual([0, 1]);
      for (const e of errors) expect(e.error).toBeInstanceOf(InferenceError);
      expect(errors[0].error.message).toMatch(/worker thread stopped twice/);
      // The next calls, on a new worker, get exactly their faces again.
      expect(await det.detectFacesSettled([...inputs, 'no-such-file.png'])).toEqual(expected);
    } finally {
      killer.killEvery(false);
      await det.dispose();
    }
  }, 300_000);
});

describe('workers that keep no copy of the weights (read again for a replacement)', () => {
  it('let go of the weights once built, before any task: their shared memory is returned', async () => {
    // The values as plain arrays, as the detector makes them for workers.
    await selectBackend('wasm');
    await selectCpuForValues();
    const weights = formulaWeights();
    const reopen = async () => {
      const w = formulaWeights();
      return { weights: w, release: () => disposeWeights(w) };
    };
    let model: ThreadedModel | undefined;
    try {
      collectGarbage();
      const held = process.memoryUsage().arrayBuffers;
      // Built from a shared copy of the values (~160 MB), which only the workers saw after this.
      model = await ThreadedModel.spawn(SCRIPT, 'wasm', 2).build(weights, reopen);
      let extra = Infinity;
      for (let attempt = 0; attempt < 20 && extra >= 16 << 20; attempt++) {
        if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, 100));
        collectGarbage();
        extra = process.memoryUsage().arrayBuffers - held;
      }
      expect(extra).toBeLessThan(16 << 20);
    } finally {
      disposeWeights(weights);
      await model?.dispose();
      await selectBackend('wasm');
    }
  }, 120_000);

  it("a killed worker's replacement is given the weights read again: the same results; a failed read fails that call, typed", async () => {
    await selectBackend('wasm');
    const inputs = images();
    const killer = new WorkerKiller();
    let reads = 0;
    let readFails = false;
    const reopen = async () => {
      reads++;
      if (readFails) throw new WeightsError('the file is gone');
      const w = formulaWeights();
      return { weights: w, release: () => disposeWeights(w) };
    };
    const weights = formulaWeights();
    let model: ThreadedModel | undefined;
    try {
      model = await ThreadedModel.spawn(SCRIPT, 'wasm', 2).build(weights, reopen);
      const reference = plain(await model.predict(inputs, TINY));
      const tensors = await model.workerTensors();
      expect(reads).toBe(0);
      await killer.arm(2);
      expect(plain(await model.predict(inputs, TINY))).toEqual(reference);
      expect(killer.fired).toBe(true);
      expect(reads).toBe(1);
      expect(await model.workerTensors()).toEqual(tensors);

      readFails = true;
      await killer.arm(2);
      const failure = await model.predict(inputs, TINY).catch((e: unknown) => e);
      expect(failure).toBeInstanceOf(InferenceError);
      expect((failure as Error).message).toBe('A worker thread stopped and its replacement could not be given the weights: the file is gone');
      readFails = false;
      expect(plain(await model.predict(inputs, TINY))).toEqual(reference);
      expect(reads).toBe(3);
      expect(await model.workerTensors()).toEqual(tensors);
    } finally {
      disposeWeights(weights);
      killer.close();
      await model?.dispose();
      tf.dispose(inputs);
    }
  }, 300_000);
});

describe('the service soak, short version', () => {
  it('60 calls with random sizes, bad inputs and two workers killed mid-batch: every outcome right, tensors and RSS flat', async () => {
    const lines: string[] = [];
    const report = await serviceSoak({ ...SHORT, log: (l) => lines.push(l) });
    if (report.problems.length > 0) throw new Error(lines.join('\n'));
    expect(report.calls).toBe(60);
    expect(report.kills).toBe(2);
    expect(report.goodInputs).toBeGreaterThan(30);
    expect(report.badInputs).toBeGreaterThan(10);
    // Flat: the same counts at every sample after the warm-up, the network's own in each worker.
    const after = report.samples.filter((s) => s.call >= report.baseline.call);
    expect(after.length).toBeGreaterThanOrEqual(3);
    for (const s of after) {
      expect(s.mainTensors).toBe(0);
      expect(s.workerTensors).toEqual(report.samples[0].workerTensors);
    }
    expect(tf.memory().numTensors).toBe(0);
  }, 300_000);
});
