/**
 * Worker threads (src/runtime/threads.ts, src/runtime/worker.ts, src/runtime/threaded_model.ts): the pool's plumbing on a
 * throwaway worker script, then the real thing. A batch shared out among model workers (wasm)
 * and a batch whose host stages run on workers must give exactly the results of one thread.
 *
 * Workers run the compiled build (dist/), as an installed package does: `npm ci` builds it and the
 * suite's global setup rebuilds it when src/ is newer; the first test checks it is current.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runInNewContext } from 'vm';
import * as tf from '@tensorflow/tfjs';
import { Img2Pose, threadCount, threadLimit } from '../src/detector';
import { BatchError, InputError, OptionError, WeightsError } from '../src/errors';
import { decodeImage } from '../src/io/images';
import { Img2PoseModel, RawDetections } from '../src/model/model';
import { activeRuntime } from '../src/runtime/runtime';
import { portableWeights, shareOut, ThreadedModel } from '../src/runtime/threaded_model';
import { WorkerExitError, WorkerPool, WorkerTaskError, collectGarbage, coreFree, coresUsedByOthers, cpuSample, workerScript } from '../src/runtime/threads';
import { disposeWeights, Img2PoseWeights } from '../src/model/weights';
import { formulaWeights } from './utils/formula';
import { imagePath } from './utils/golden';

const SMALL = { minSize: 160, maxSize: 288 };
const MIXED = ['teaser.png', 'portrait_1.png', 'wide_1.png', 'small_1.png', 'teaser.png'];

function newestMtime(dir: string): number {
  let newest = 0;
  for (const f of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, f.name);
    newest = Math.max(newest, f.isDirectory() ? newestMtime(p) : fs.statSync(p).mtimeMs);
  }
  return newest;
}

describe('the compiled worker script', () => {
  it('exists and is not older than the sources', () => {
    const script = workerScript();
    if (script === null) throw new Error('dist/src/runtime/worker.js is missing: run `npm run build`');
    const src = path.join(__dirname, '..', 'src');
    const built = newestMtime(path.dirname(script));
    if (built < newestMtime(src)) throw new Error(`${path.dirname(script)} is older than src/: run \`npm run build\``);
  });
});

describe('WorkerPool', () => {
  let dir: string;
  let script: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-pool-'));
    script = path.join(dir, 'echo.js');
    fs.writeFileSync(
      script,
      `const { parentPort, threadId, workerData } = require('node:worker_threads');
      const asked = new Map();
      parentPort.on('message', (message) => {
        if ('answer' in message) return asked.get(message.answer)(message);
        const { id, kind, payload } = message;
        if (kind === 'ask') {
          // Asks this thread, then replies with the answer as it came.
          asked.set(id * 100, (answer) => parentPort.postMessage({ id, ok: true, result: answer }));
          parentPort.postMessage({ ask: id * 100, kind: 'double', payload });
        } else if (kind === 'echo') parentPort.postMessage({ id, ok: true, result: { payload, threadId, workerData } });
        else if (kind === 'sum') parentPort.postMessage({ id, ok: true, result: payload.reduce((s, v) => s + v, 0) });
        else if (kind === 'slow') setTimeout(() => parentPort.postMessage({ id, ok: true, result: threadId }), payload);
        else if (kind === 'exit') process.exit(3);
        else parentPort.postMessage({ id, ok: false, error: { name: 'RangeError', message: 'no kind ' + kind, stack: 'remote stack' } });
      });`,
    );
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('matches replies to tasks, spreads them over the workers and passes workerData', async () => {
    const pool = new WorkerPool(script, 3, { tag: 7 });
    try {
      const replies = await Promise.all(
        Array.from({ length: 9 }, (_, i) => pool.run<{ payload: number; threadId: number; workerData: unknown }>({ kind: 'echo', payload: i })),
      );
      expect(replies.map((r) => r.payload)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
      expect(new Set(replies.map((r) => r.threadId)).size).toBe(3);
      expect(replies[0].workerData).toEqual({ tag: 7 });
      const data = Float32Array.from([1, 2, 3]);
      expect(await pool.run({ kind: 'sum', payload: data }, [data.buffer])).toBe(6);
      // Transferred, not copied.
      expect(data.length).toBe(0);
      expect((await pool.broadcast<{ threadId: number }>({ kind: 'echo', payload: null })).length).toBe(3);
    } finally {
      await pool.terminate();
    }
  });

  it("answers a worker's own requests through the handler given, with the asking worker's index; finds idle workers", async () => {
    const pool = new WorkerPool(script, 2, undefined, async (task, from) => {
      if (task.kind !== 'double') throw new RangeError(`no ${task.kind}`);
      return { result: { doubled: (task.payload as number) * 2, from }, transfer: [] };
    });
    const bare = new WorkerPool(script, 1);
    try {
      const first = await pool.run<{ answer: number; ok: boolean; result: unknown }>({ kind: 'ask', payload: 21 }, [], 1);
      expect(first).toMatchObject({ ok: true, result: { doubled: 42, from: 1 } });
      expect(first.answer % 100).toBe(0);
      // Without a handler the worker is told so.
      expect(await bare.run({ kind: 'ask', payload: 1 })).toMatchObject({ ok: false, error: { message: expect.stringMatching(/no handler for a worker's "double" request/) } });
      // A worker holding a task is not idle; the one asking is never its own helper.
      const slow = pool.run({ kind: 'slow', payload: 300 }, [], 0);
      expect(pool.idleWorker(0)).toBe(1);
      expect(pool.idleWorker(1)).toBeUndefined();
      await slow;
      expect(pool.idleWorker(1)).toBe(0);
    } finally {
      await pool.terminate();
      await bare.terminate();
    }
  });

  it("rebuilds a worker's error on this side, with its name, message and stack", async () => {
    const pool = new WorkerPool(script, 1);
    try {
      const failure = pool.run({ kind: 'nope', payload: null });
      await expect(failure).rejects.toBeInstanceOf(WorkerTaskError);
      await expect(failure).rejects.toMatchObject({ name: 'RangeError', message: 'no kind nope', stack: 'remote stack' });
    } finally {
      await pool.terminate();
    }
  });

  it('fails the tasks of a worker that dies and replaces it for later tasks', async () => {
    const pool = new WorkerPool(script, 1);
    try {
      const pending = pool.run({ kind: 'slow', payload: 2000 });
      const dying = pool.run({ kind: 'exit', payload: null });
      await expect(dying).rejects.toThrow(/a worker thread stopped \(exit code 3\) with the task pending/);
      await expect(dying).rejects.toBeInstanceOf(WorkerExitError);
      await expect(pending).rejects.toMatchObject({ name: 'WorkerExitError', exitCode: 3 });
      // Replaced lazily, at the slot's next task.
      expect(await pool.run({ kind: 'sum', payload: [2, 3] })).toBe(5);
      expect(await pool.run<{ threadId: number }>({ kind: 'echo', payload: 0 }, [], 0)).toMatchObject({ payload: 0 });
    } finally {
      await pool.terminate();
    }
  });

  it('starts replacements with the workerData set last; running workers keep theirs', async () => {
    const pool = new WorkerPool(script, 2, { weights: null });
    try {
      pool.setWorkerData({ weights: 'given' });
      await expect(pool.run({ kind: 'exit', payload: null }, [], 0)).rejects.toBeInstanceOf(WorkerExitError);
      const echo = (i: number) => pool.run<{ workerData: unknown }>({ kind: 'echo', payload: i }, [], i);
      expect((await echo(0)).workerData).toEqual({ weights: 'given' });
      expect((await echo(1)).workerData).toEqual({ weights: null });
    } finally {
      await pool.terminate();
    }
  });

  it('a worker that cannot start fails its task and is not restarted in a loop', async () => {
    const broken = path.join(dir, 'broken.js');
    const starts = path.join(dir, 'starts.txt');
    fs.writeFileSync(broken, `require('fs').appendFileSync(${JSON.stringify(starts)}, 'x'); throw new Error('cannot start');`);
    const pool = new WorkerPool(broken, 1);
    try {
      const failure = await pool.run({ kind: 'echo', payload: 1 }).catch((e: unknown) => e);
      expect(failure).toBeInstanceOf(WorkerExitError);
      expect((failure as Error).message).toMatch(/a worker thread stopped \(.*cannot start\) with the task pending/);
      // Nothing is respawned until asked: the next task tries once more and fails the same way.
      await new Promise((r) => setTimeout(r, 300));
      await expect(pool.run({ kind: 'echo', payload: 2 })).rejects.toThrow(/cannot start/);
      await new Promise((r) => setTimeout(r, 300));
      // The first worker (it got the first task, and died starting), and one for the second task.
      expect(fs.readFileSync(starts, 'utf8')).toBe('xx');
    } finally {
      await pool.terminate();
    }
  });

  it('rejects pending and later tasks once terminated', async () => {
    const pool = new WorkerPool(script, 2);
    const pending = expect(pool.run({ kind: 'slow', payload: 5000 })).rejects.toThrow(/terminated/);
    await pool.terminate();
    await pending;
    await expect(pool.run({ kind: 'echo', payload: 1 })).rejects.toThrow(/after terminate/);
    expect(() => new WorkerPool(script, 0)).toThrow(RangeError);
  });
});

describe('the weights handed to model workers', () => {
  it('are one SharedArrayBuffer that all workers share, holding every tensor\'s values', async () => {
    const w = formulaWeights();
    try {
      const portable = await portableWeights(w);
      const buffers = new Set(portable.tensors.map((t) => t.data.buffer));
      expect(buffers.size).toBe(1);
      expect([...buffers][0]).toBeInstanceOf(SharedArrayBuffer);
      expect(portable.tensors.map((t) => t.name)).toEqual([...w.tensors.keys()]);
      for (const t of portable.tensors) {
        const source = w.tensors.get(t.name)!;
        expect(t.shape).toEqual(source.shape);
        expect(t.dtype).toBe(source.dtype);
        expect(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).equals(Buffer.from((source.dataSync() as Float32Array).buffer))).toBe(true);
      }
    } finally {
      disposeWeights(w);
    }
  });
});

describe('a full collection on demand (shared weights returned after the workers built)', () => {
  it('collects an unreachable SharedArrayBuffer now, and leaves --expose-gc off for other contexts', async () => {
    let weak: WeakRef<SharedArrayBuffer> | undefined;
    (() => {
      weak = new WeakRef(new SharedArrayBuffer(64 << 20));
    })();
    // A WeakRef keeps its target through the job that made it.
    await new Promise((resolve) => setTimeout(resolve, 0));
    expect(collectGarbage()).toBe(true);
    expect(weak?.deref()).toBeUndefined();
    expect(runInNewContext('typeof gc')).toBe(typeof (globalThis as { gc?: unknown }).gc);
  });
});

describe('whether a core is free for an idle worker to help', () => {
  it("counts only other processes' CPU time, over the time between two samples", () => {
    const before = { at: 1000, busyMs: 5000, ownMs: 300 };
    // 2 s later: the machine was busy 3.4 s of CPU time, 2.2 s of it ours: others used 0.6 cores.
    expect(coresUsedByOthers(before, { at: 3000, busyMs: 8400, ownMs: 2500 })).toBeCloseTo(0.6, 10);
    // All of it ours (a photo just done on both cores): nobody else, whatever the load average says.
    expect(coresUsedByOthers(before, { at: 3000, busyMs: 9000, ownMs: 4300 })).toBe(0);
    // Too close to tell, or no CPU times from the OS.
    expect(coresUsedByOthers(before, { at: 1040, busyMs: 5080, ownMs: 340 })).toBeUndefined();
    expect(coresUsedByOthers({ ...before, busyMs: undefined }, { at: 3000, busyMs: undefined, ownMs: 500 })).toBeUndefined();
    const sample = cpuSample();
    expect(sample.ownMs).toBeGreaterThan(0);
    expect(typeof coreFree()).toBe('boolean');
  });
});

describe('sharing a batch out among workers', () => {
  it('balances estimated cost (pixels + a fixed share per image), largest first, each image once', () => {
    const photo: [number, number] = [640, 1152];
    expect(shareOut([photo, photo, photo, photo], 2)).toEqual([[0, 2], [1, 3]]);
    // Each image also costs a fixed share (its ~1000 ROIs): the tiny one joins a photo rather
    // than piling onto the worker with the two mid-size images.
    const shares = shareOut([[320, 320], photo, [640, 640], photo, [96, 96]], 3);
    expect(shares).toEqual([[1, 4], [3], [0, 2]]);
    expect(shareOut([photo], 4)).toEqual([[0], [], [], []]);
  });
});

describe('the threads option', () => {
  it("resolves 'auto' from IMG2POSE_THREADS, else from the cores with a cap per backend kind", () => {
    expect(threadCount(3, 'wasm', {})).toBe(3);
    expect(threadCount('auto', 'wasm', { IMG2POSE_THREADS: '6' })).toBe(6);
    const cpus = os.availableParallelism();
    expect(threadCount('auto', 'wasm', {})).toBe(Math.min(cpus, 4));
    expect(threadCount('auto', 'webgpu', {})).toBe(Math.min(cpus, 8));
    expect(() => threadCount('auto', 'wasm', { IMG2POSE_THREADS: 'many' })).toThrow(OptionError);
    expect(() => threadCount('auto', 'wasm', { IMG2POSE_THREADS: '0' })).toThrow(/IMG2POSE_THREADS: expected a positive integer, found "0"/);
  });

  it("'auto' and the limit on wasm/cpu are sized by memory too (~1 GB a worker, half the memory); GPU backends are not", () => {
    const GiB = 1024 ** 3;
    // The module object itself (the namespace import above is read-only).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeOs = require('os') as typeof os;
    jest.spyOn(nodeOs, 'availableParallelism').mockReturnValue(16);
    const memory = jest.spyOn(nodeOs, 'totalmem');
    try {
      memory.mockReturnValue(64 * GiB);
      expect(threadCount('auto', 'wasm', {})).toBe(4);
      expect(threadLimit('wasm')).toBe(32);
      memory.mockReturnValue(4 * GiB);
      expect(threadCount('auto', 'wasm', {})).toBe(2);
      expect(threadCount('auto', 'cpu', {})).toBe(2);
      expect(threadCount('auto', 'webgpu', {})).toBe(8);
      expect(threadLimit('wasm')).toBe(2);
      expect(() => threadCount('auto', 'wasm', { IMG2POSE_THREADS: '3' })).toThrow(/IMG2POSE_THREADS: expected at most 2 .*~1 GB of the 4 GB here/);
      memory.mockReturnValue(1 * GiB);
      expect(threadCount('auto', 'wasm', {})).toBe(1);
    } finally {
      jest.restoreAllMocks();
    }
  });

  it('rejects a bad value before loading anything', async () => {
    for (const threads of [0, 1.5, -2, 'all']) {
      await expect(Img2Pose.load({ weights: '/nonexistent', threads: threads as number })).rejects.toThrow(OptionError);
    }
  });

  it('stops the workers it started ahead of the weights when the weights cannot be read', async () => {
    const spawn = jest.spyOn(ThreadedModel, 'spawn');
    const dispose = jest.spyOn(ThreadedModel.prototype, 'dispose');
    try {
      await expect(Img2Pose.load({ weights: '/nonexistent/weights.pth', backend: 'wasm', threads: 2 })).rejects.toThrow(WeightsError);
      expect(spawn).toHaveBeenCalledTimes(1);
      expect(dispose.mock.instances).toEqual([spawn.mock.results[0].value]);
    } finally {
      spawn.mockRestore();
      dispose.mockRestore();
    }
  });
});

describe('results do not depend on threads', () => {
  let weights: Img2PoseWeights;
  beforeAll(() => {
    weights = formulaWeights();
  });
  afterAll(() => disposeWeights(weights));

  it('a mixed batch shared out among two wasm workers equals the one-thread results, bad input reported at its index', async () => {
    const load = (threads: number) => Img2Pose.load({ weights, ...SMALL, scoreThreshold: 0.05, threads });
    const one = await load(1);
    // The workers' weights pass through this thread as plain values: made on the cpu backend,
    // not on wasm, whose heap would keep their size for good.
    const build = jest.spyOn(ThreadedModel.prototype, 'build');
    let homes: string[] = [];
    build.mockImplementation(async function (this: ThreadedModel, w: Img2PoseWeights) {
      homes = [...new Set([...w.tensors.values()].map((t) => tf.engine().state.tensorInfo.get(t.dataId)?.backend))].map((b) =>
        b === tf.findBackend('cpu') ? 'cpu' : b === tf.findBackend('wasm') ? 'wasm' : 'other',
      );
      build.mockRestore();
      return this.build(w);
    });
    const two = await load(2);
    expect(homes).toEqual(['cpu']);
    const images = await Promise.all(MIXED.map((n) => decodeImage(imagePath(n))));
    try {
      expect(one.threads).toBe(1);
      expect(two.threads).toBe(2);
      const before = tf.memory().numTensors;
      const expected = await one.detectFaces(images);
      const got = await two.detectFaces(images);
      expect(got).toEqual(expected);
      expect(expected.flat().length).toBeGreaterThan(0);
      // Files reach the workers as their decoded bytes (in shared memory), tensors as values: the same results.
      expect(await two.detectFaces(MIXED.map(imagePath))).toEqual(expected);
      // One image alone goes to a worker too.
      expect(await two.detectFaces(images[1])).toEqual(expected[1]);
      // A bad input fails alone; the others still come back from the workers.
      const bad = [images[0], new Uint8Array([1, 2, 3]), images[2]];
      const failure = await two.detectFaces(bad).catch((e: unknown) => e);
      expect(failure).toBeInstanceOf(BatchError);
      const batchError = failure as BatchError<unknown>;
      expect(batchError.errors.map((e) => e.index)).toEqual([1]);
      expect(batchError.errors[0].error).toBeInstanceOf(InputError);
      expect(batchError.results[0]).toEqual(expected[0]);
      expect(batchError.results[2]).toEqual(expected[2]);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      tf.dispose(images);
      await one.dispose();
      await two.dispose();
    }
  });

  // Linux: each worker is one of the process's threads (/proc/self/task), gone once it has exited.
  (fs.existsSync('/proc/self/task') ? it : it.skip)('dispose settles once its workers have exited', async () => {
    const threads = (): number => fs.readdirSync('/proc/self/task').length;
    const model = ThreadedModel.spawn(workerScript()!, 'wasm', 2);
    const running = threads();
    await model.dispose();
    expect(threads()).toBe(running - 2);
  });

  it('workers spawned before the weights build once given them, with the one-thread results', async () => {
    const early = ThreadedModel.spawn(workerScript()!, 'wasm', 2);
    // Spawned workers that never get weights stop with dispose (no open handle is left).
    await ThreadedModel.spawn(workerScript()!, 'wasm', 2).dispose();
    const images = await Promise.all(MIXED.slice(0, 3).map((n) => decodeImage(imagePath(n))));
    const started = new Img2PoseModel(weights, activeRuntime());
    try {
      // Set up while this thread is busy elsewhere, as the detector's load reads the weights.
      await new Promise((r) => setTimeout(r, 200));
      await early.build(weights);
      const bits = (r: RawDetections) => [Array.from(r.boxes), Array.from(r.scores), Array.from(r.dofs)];
      const expected = (await started.predict(images, SMALL)).map(bits);
      expect(expected[0][1].length).toBeGreaterThan(0);
      expect((await early.predict(images, SMALL)).map(bits)).toEqual(expected);
    } finally {
      tf.dispose(images);
      await early.dispose();
      await started.dispose();
    }
  });

  it('leaves no tensors behind in the workers, after results and after a failed forward', async () => {
    const model = await ThreadedModel.start(workerScript()!, weights, 'wasm', 2);
    const images = await Promise.all(MIXED.slice(0, 3).map((n) => decodeImage(imagePath(n))));
    try {
      const base = await model.workerTensors();
      expect(base.length).toBe(2);
      expect((await model.predict(images, SMALL)).length).toBe(3);
      expect(await model.workerTensors()).toEqual(base);
      // The network takes RGB only (the detector converts before): the worker's error comes back.
      const rgba = tf.zeros([16, 16, 4]) as tf.Tensor3D;
      const failure = model.predict([images[0], rgba], SMALL);
      await expect(failure).rejects.toBeInstanceOf(WorkerTaskError);
      await expect(failure).rejects.toThrow(/3 \(RGB\) channels/);
      rgba.dispose();
      expect(await model.workerTensors()).toEqual(base);
    } finally {
      tf.dispose(images);
      await model.dispose();
    }
  });

  it('one image on two workers: the idle worker runs the lower rows of the body and of level 0 and half its RoI-head rows, and the raw detections are bit-identical to one thread', async () => {
    const inThread = new Img2PoseModel(weights, activeRuntime());
    const model = await ThreadedModel.start(workerScript()!, weights, 'wasm', 2);
    // Whatever else this machine runs now.
    model.offloadWhen = 'always';
    const images = await Promise.all(['teaser.png', 'portrait_1.png'].map((n) => decodeImage(imagePath(n))));
    const bits = (r: RawDetections) => [Array.from(r.boxes), Array.from(r.scores), Array.from(r.dofs)];
    try {
      const expected = (await inThread.predict(images, SMALL)).map(bits);
      expect(expected[0][1].length).toBeGreaterThan(0);
      const base = await model.workerTensors();
      const got = await model.predict([images[0]], SMALL);
      // The lower rows of every body map, level 0's lower rows (FPN output conv and RPN head) and
      // half of the image's ~1000 proposals went to the other worker.
      expect(model.offloaded.bodyBands).toBe(1);
      expect(model.offloaded.level0Bands).toBe(1);
      expect(model.offloaded.rpnLevels).toBe(0);
      expect(model.offloaded.headRows).toBeGreaterThanOrEqual(400);
      expect(got.map(bits)).toEqual([expected[0]]);
      // Two images keep both workers busy: nothing is offloaded, the results are the same.
      const rows = model.offloaded.headRows;
      expect((await model.predict(images, SMALL)).map(bits)).toEqual(expected);
      expect(model.offloaded).toEqual({ rpnLevels: 0, headRows: rows, level0Bands: 1, bodyBands: 1 });
      // No worker free to help: the image's own worker runs the lower band the same way.
      model.offloadWhen = 'never';
      expect((await model.predict([images[1]], SMALL)).map(bits)).toEqual([expected[1]]);
      expect(model.offloaded).toEqual({ rpnLevels: 0, headRows: rows, level0Bands: 1, bodyBands: 1 });
      expect(await model.workerTensors()).toEqual(base);
    } finally {
      tf.dispose(images);
      await inThread.dispose();
      await model.dispose();
    }
  });

  it('host stages on worker threads give bit-identical raw detections', async () => {
    const inThread = new Img2PoseModel(weights, activeRuntime());
    const threaded = new Img2PoseModel(weights, activeRuntime({ hostThreads: 2 }));
    const images = await Promise.all(MIXED.slice(0, 4).map((n) => decodeImage(imagePath(n))));
    try {
      expect(threaded.usesHostThreads).toBe(true);
      const before = tf.memory().numTensors;
      const a = await inThread.predict(images, SMALL);
      const b = await threaded.predict(images, SMALL);
      expect(tf.memory().numTensors).toBe(before);
      const bits = (r: RawDetections) => [Array.from(r.boxes), Array.from(r.scores), Array.from(r.dofs)];
      expect(b.map(bits)).toEqual(a.map(bits));
      expect(a.reduce((s, r) => s + r.scores.length, 0)).toBeGreaterThan(0);
    } finally {
      tf.dispose(images);
      await inThread.dispose();
      await threaded.dispose();
    }
  });
});
