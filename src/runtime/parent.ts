/**
 * A worker's own requests to the thread that started it, in the middle of a task: the other half
 * of `WorkerPool`'s `AskHandler` (src/runtime/threads.ts). src/runtime/worker.ts hands the
 * answers here.
 */
import { parentPort } from 'node:worker_threads';
import type { Answer, AskMessage, TaskMessage } from './threads';
import { WorkerTaskError } from './threads';

const waiting = new Map<number, { resolve(v: unknown): void; reject(e: unknown): void }>();
let nextAsk = 1;

/** Posts `task` to the parent thread; resolves with its answer. Only in a worker thread. */
export function askParent<R>(task: TaskMessage, transfer: ArrayBuffer[] = []): Promise<R> {
  const port = parentPort;
  if (!port) return Promise.reject(new Error('askParent: not in a worker thread'));
  const ask = nextAsk++;
  return new Promise<R>((resolve, reject) => {
    waiting.set(ask, { resolve: resolve as (v: unknown) => void, reject });
    try {
      port.postMessage({ ask, kind: task.kind, payload: task.payload } satisfies AskMessage, transfer);
    } catch (e) {
      waiting.delete(ask);
      reject(e);
    }
  });
}

/** Whether `message` (from the parent) answers an `askParent` request. */
export function isAnswer(message: unknown): message is Answer {
  return typeof message === 'object' && message !== null && 'answer' in message;
}

/** Settles the request `answer` belongs to (one that is no longer waited for is dropped). */
export function settleAnswer(answer: Answer): void {
  const w = waiting.get(answer.answer);
  if (!w) return;
  waiting.delete(answer.answer);
  if (answer.ok) w.resolve(answer.result);
  else w.reject(new WorkerTaskError(answer.error));
}
