/**
 * src/runtime/threads.ts for browsers (the browser build swaps it in): the page's own thread only. Worker
 * threads there would need a second bundle and a model copy per worker; a browser's backends
 * (webgpu, webgl) already run the heavy work off the main thread on the GPU.
 */
export type { Reply, SerializedError, TaskMessage } from '../runtime/threads';
import type { TaskMessage } from '../runtime/threads';

export class WorkerTaskError extends Error {}

export class WorkerExitError extends Error {}

export const WORKER_SCRIPT_ENV = 'IMG2POSE_WORKER_SCRIPT';

/** No worker script in browsers: every stage runs on the calling thread. */
export function workerScript(): string | null {
  return null;
}

export function cores(): number {
  const n = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency;
  return Math.max(1, typeof n === 'number' ? n : 1);
}

/** Pages cannot ask for a collection; nothing here needs one (no worker threads). */
export function collectGarbage(): boolean {
  return false;
}

/** No worker threads to lend a core to in browsers. */
export function coreFree(): boolean {
  return false;
}

/** Never constructed in browsers (no worker script); kept so the model's code paths type-check. */
export class WorkerPool {
  constructor(_script: string, _size: number, _workerData?: unknown) {
    throw new Error('worker threads are not available in the browser build');
  }

  get size(): number {
    return 0;
  }

  isDead(_index: number): boolean {
    return false;
  }

  run<R>(_task: TaskMessage, _transfer: ArrayBuffer[] = [], _index?: number): Promise<R> {
    return Promise.reject(new Error('worker threads are not available in the browser build'));
  }

  broadcast<R>(_task: TaskMessage): Promise<R[]> {
    return Promise.reject(new Error('worker threads are not available in the browser build'));
  }

  async terminate(): Promise<void> {}
}
