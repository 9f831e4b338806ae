/**
 * The model side of a worker started by ThreadedModel: sets up its own tfjs backend, builds the
 * network from the weights in its `workerData` (or, when it was started before they were read,
 * in its 'model-weights' task) and runs forwards on the images it is sent.
 */
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend, selectCpuForValues } from './backend';
import { BodyOffload, Img2PoseModel, Level0Band, Level0Offload, RawDetections } from '../model/model';
import type { NetworkImage } from '../model/transform';
import type { HeadsOffload, RoIHeadOutputs } from '../model/roi_heads';
import type { RpnOffload } from '../model/rpn';
import type { BodyTask, HeadsTask, ModelWorkerData, PortableWeights, PredictTask, RpnTask } from './threaded_model';
import { PartnerGoneError, RowExchange, rowExchangeBuffers, RowExchangeBuffers } from './row_exchange';
import { WASM_HEAP } from './runtime';
import { askParent } from './parent';
import { collectGarbage, Done } from './threads';
import { disposeWeights, Img2PoseWeights } from '../model/weights';
import { createRuntime } from './runtime';

async function build(backend: ModelWorkerData['model']['backend'], given: Promise<PortableWeights>): Promise<Img2PoseModel> {
  // The backend first (the wasm module's compilation), while the weights may still be on their way.
  await selectBackend(backend);
  const weights = await given;
  // The weights as cpu-backend tensors over the shared values (no copy): the stages read them and
  // make their own on `backend`, so they never pass through this thread's wasm heap.
  await selectCpuForValues();
  const w: Img2PoseWeights = {
    depth: weights.depth,
    tensors: new Map(weights.tensors.map((t) => [t.name, tf.tensor(t.data, t.shape, t.dtype)])),
    poseMean: weights.poseMean,
    poseStddev: weights.poseStddev,
  };
  let name: string;
  try {
    name = await selectBackend(backend);
  } catch (e) {
    disposeWeights(w);
    throw e;
  }
  try {
    return new Img2PoseModel(w, createRuntime({ backend: name }));
  } finally {
    disposeWeights(w);
  }
}

/**
 * Parts of a forward for an idle worker, through the parent (ThreadedModel's 'model-rpn' and
 * 'model-heads'): the RPN head's largest level, a share (about half) of each image's RoI-head rows. Their values
 * travel in one SharedArrayBuffer kept for the worker's life (grown when too small; ~47 MB for
 * the largest level of a 640x1152 input), which as a new buffer each time would stay in every
 * thread that saw it until its next garbage collection. The parts run one after another, so one
 * buffer serves them all.
 */
function parentOffload(): HeadsOffload & RpnOffload & Level0Offload & BodyOffload {
  let shared = new SharedArrayBuffer(0);
  // The body's exchange memory (~24 MB for a 640x1152 input), kept as `shared` is, and reused
  // only once no helper of an earlier request may still write there (one whose image's thread
  // failed mid-way writes its next band before it learns that).
  let bodyBuffers: RowExchangeBuffers | undefined;
  let bodyRequests = 0;
  return {
    sharedBuffer(length) {
      if (shared.byteLength < length * 4) shared = new SharedArrayBuffer(length * 4);
      return new Float32Array(shared, 0, length);
    },
    level: (feature) => askParent<Float32Array | null>({ kind: 'model-rpn', payload: feature satisfies RpnTask }),
    forward: (rows, scoreThresh) => askParent<RoIHeadOutputs | null>({ kind: 'model-heads', payload: { rows, scoreThresh } satisfies HeadsTask }),
    level0: (band) => askParent<Level0Band | null>({ kind: 'model-level0', payload: band satisfies RpnTask }),
    body(shape, mapFloats, memory) {
      bodyBuffers = rowExchangeBuffers(mapFloats, bodyRequests === 0 ? bodyBuffers : undefined);
      const share = new RowExchange(bodyBuffers, 0, memory);
      bodyRequests++;
      const done = askParent<null>({ kind: 'model-body', payload: { shape, buffers: bodyBuffers } satisfies BodyTask });
      const settled = () => void bodyRequests--;
      done.then(settled, settled);
      return { share, done };
    },
  };
}

/** Handlers for src/runtime/worker.ts; the network is built once, when the worker starts. */
export function modelHandlers(data: ModelWorkerData): Record<string, (payload: unknown) => Promise<Done>> {
  let give: (weights: PortableWeights) => void = () => undefined;
  let weights: PortableWeights | Promise<PortableWeights> | undefined = data.model.weights ?? new Promise<PortableWeights>((resolve) => (give = resolve));
  const model = build(data.model.backend, Promise.resolve(weights)).then((net) => {
    // The stages hold their own copies: every reference to the shared weights goes here, and a
    // full collection at the first task lets their memory be returned before the first forward
    // (see collectGarbage).
    data.model.weights = undefined;
    weights = undefined;
    give = () => undefined;
    return net;
  });
  // At the first task, not right after the build: the message that brought the weights may be
  // held until the next one arrives.
  let collected = false;
  const firstTask = () => {
    if (!collected) {
      collected = true;
      collectGarbage();
    }
  };
  const offload = parentOffload();
  // A failed build is reported by the first task (model-ready), not as an unhandled rejection.
  model.catch(() => undefined);
  return {
    async 'model-ready'(): Promise<Done> {
      await model;
      return { result: tf.getBackend(), transfer: [] };
    },
    /** The weights, for a worker started without them (a no-op for one that has them); resolves once built. */
    async 'model-weights'(payload: unknown): Promise<Done> {
      give(payload as PortableWeights);
      await model;
      return { result: tf.getBackend(), transfer: [] };
    },
    /**
     * A full collection once the network is built, in a message of its own: the one that brought
     * the weights may be held until the next arrives, and with it the weights' shared memory.
     */
    async 'model-collect'(): Promise<Done> {
      await model;
      firstTask();
      return { result: null, transfer: [] };
    },
    async 'model-memory'(): Promise<Done> {
      await model;
      return { result: tf.memory().numTensors, transfer: [] };
    },
    async 'model-predict'(payload: unknown): Promise<Done> {
      const task = payload as PredictTask;
      const net = await model;
      firstTask();
      // Bytes go to the transform as they are (read in place, in shared memory); values become tensors.
      const images: NetworkImage[] = task.images.map((p) => ('bytes' in p ? p.bytes : tf.tensor3d(p.values.data, p.values.shape, p.values.dtype)));
      let out: RawDetections[];
      try {
        out = await net.predict(images, task.config, task.offload ? { offload } : {});
      } finally {
        tf.dispose(images.filter((image): image is tf.Tensor3D => image instanceof tf.Tensor));
      }
      const transfer = out.flatMap((r) => [r.boxes.buffer, r.scores.buffer, r.dofs.buffer] as ArrayBuffer[]);
      return { result: out, transfer };
    },
    async 'model-rpn'(payload: unknown): Promise<Done> {
      const { data, shape } = payload as RpnTask;
      const net = await model;
      firstTask();
      const out = tf.tidy(() => net.rpnLevelHead(tf.tensor4d(data, shape)));
      let values: Float32Array;
      try {
        values = (await out.data()) as Float32Array;
      } finally {
        out.dispose();
      }
      return { result: values, transfer: [values.buffer as ArrayBuffer] };
    },
    async 'model-level0'(payload: unknown): Promise<Done> {
      const { data, shape } = payload as RpnTask;
      const net = await model;
      firstTask();
      const out = await net.level0Band(tf.tensor4d(data, shape), true);
      return { result: out, transfer: [out.fpn.buffer, out.head.buffer] as ArrayBuffer[] };
    },
    async 'model-body'(payload: unknown): Promise<Done> {
      const { shape, buffers } = payload as BodyTask;
      const net = await model;
      firstTask();
      const exchange = new RowExchange(buffers, 1, WASM_HEAP);
      try {
        net.bodyBand(WASM_HEAP.unset<tf.Rank.R4>(shape), exchange);
      } catch (e) {
        // The image's own thread stopped or went on alone: nothing here is needed.
        if (!(e instanceof PartnerGoneError)) throw e;
      } finally {
        exchange.leave();
      }
      return { result: null, transfer: [] };
    },
    async 'model-heads'(payload: unknown): Promise<Done> {
      const { rows, scoreThresh } = payload as HeadsTask;
      const net = await model;
      firstTask();
      const pooled = tf.tensor4d(rows.data, rows.shape);
      let out: RoIHeadOutputs;
      try {
        out = await net.roiHeadsOnRows(pooled, scoreThresh);
      } finally {
        pooled.dispose();
      }
      return { result: out, transfer: [out.classLogits.buffer, out.dofRegression.buffer] as ArrayBuffer[] };
    },
  };
}
