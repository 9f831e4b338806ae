/**
 * The worker-thread side of src/runtime/threads.ts: answers tasks by `kind`. The host stages are plain
 * functions on typed arrays; results travel back with their buffers transferred, not copied.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { postprocessDetections, PostprocessInput } from '../model/postprocess';
import { ProposalJob, proposalsOf } from '../ops/proposals';
import { isAnswer, settleAnswer } from './parent';
import { Done, Reply, serializeError } from './threads';

type Handler = (payload: unknown) => Promise<Done> | Done;

const handlers: Record<string, Handler> = {
  proposals(payload) {
    const p = proposalsOf(payload as ProposalJob);
    return { result: p, transfer: [p.boxes.buffer as ArrayBuffer, p.scores.buffer as ArrayBuffer] };
  },
  postprocess(payload) {
    const d = postprocessDetections(payload as PostprocessInput);
    return { result: d, transfer: [d.boxes.buffer as ArrayBuffer, d.scores.buffer as ArrayBuffer, d.dofs.buffer as ArrayBuffer] };
  },
};

/** Adds handlers (the model worker's, loaded only by workers that run forwards). */
export function registerHandlers(more: Record<string, Handler>): void {
  Object.assign(handlers, more);
}

if (parentPort) {
  const data = workerData as { model?: unknown } | undefined;
  if (data?.model) {
    // Only model workers load tfjs and the network.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { modelHandlers } = require('./model_worker') as typeof import('./model_worker');
    registerHandlers(modelHandlers(data as import('./threaded_model').ModelWorkerData));
  }
  const port = parentPort;
  port.on('message', async (message: unknown) => {
    // Answers to this worker's own requests (askParent), not tasks.
    if (isAnswer(message)) {
      settleAnswer(message);
      return;
    }
    const request = message as { id: number; kind: string; payload: unknown };
    let reply: Reply;
    let transfer: ArrayBuffer[] = [];
    try {
      const handler = handlers[request.kind];
      if (!handler) throw new Error(`worker: no handler for task kind ${JSON.stringify(request.kind)}`);
      const done = await handler(request.payload);
      reply = { id: request.id, ok: true, result: done.result };
      // A buffer listed twice, or a view on a shared one, cannot be transferred: copy instead.
      transfer = [...new Set(done.transfer)].filter((b) => b.byteLength > 0);
    } catch (e) {
      reply = { id: request.id, ok: false, error: serializeError(e) };
    }
    try {
      port.postMessage(reply, transfer);
    } catch {
      port.postMessage(reply);
    }
  });
}
