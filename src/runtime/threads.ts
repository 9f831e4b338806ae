/**
 * Worker threads for the work a batch can spread over CPU cores: the per-image host stages on GPU
 * backends (RPN proposal filtering, ROI post-processing) and, on single-threaded CPU backends,
 * whole forwards (one tfjs instance per worker). Node's own worker_threads, not a pool library:
 * what we need is small (tasks by id, errors carried back, workers that do not hold the process
 * open when idle) and the worker script has to be found next to our compiled sources.
 */
import { existsSync } from 'node:fs';
import { availableParallelism, cpus as cpuList, loadavg } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';

/** A message to a worker: `kind` names its handler in src/runtime/worker.ts. */
export interface TaskMessage {
  kind: string;
  payload: unknown;
}

interface Request extends TaskMessage {
  id: number;
}

/** What a worker posts back for request `id`. */
export type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: SerializedError };

/**
 * A worker's own request to this thread in the middle of a task (`askParent` in
 * src/runtime/parent.ts): handled by the pool's `AskHandler`, answered with the same `ask` id.
 */
export interface AskMessage extends TaskMessage {
  ask: number;
}

/** This thread's answer to a worker's `AskMessage`. */
export type Answer = { answer: number; ok: true; result: unknown } | { answer: number; ok: false; error: SerializedError };

/** What a task's handler gives back: its result and the buffers to transfer with it. */
export interface Done {
  result: unknown;
  transfer: ArrayBuffer[];
}

/** Handles a worker's `AskMessage`; `from` is the asking worker's index in the pool. */
export type AskHandler = (task: TaskMessage, from: number) => Promise<Done>;

export interface SerializedError {
  name: string;
  message: string;
  stack?: string;
}

/** An error raised inside a worker, rebuilt on this side with the worker's name, message and stack. */
export class WorkerTaskError extends Error {
  constructor(readonly remote: SerializedError) {
    super(remote.message);
    this.name = remote.name;
    if (remote.stack) this.stack = remote.stack;
  }
}

/**
 * A worker stopped (crashed, ran out of memory, was terminated) while holding the task: the task
 * never ran to its end there. The pool has dropped that worker; a later task starts a new one.
 */
export class WorkerExitError extends Error {
  constructor(readonly exitCode: number | undefined, readonly reason?: Error) {
    super(`a worker thread stopped ${exitCode === undefined ? `(${reason?.message ?? 'error'})` : `(exit code ${exitCode})`} with the task pending`);
    this.name = 'WorkerExitError';
  }
}

/** Environment variable naming the worker script, for bundles that move it. */
export const WORKER_SCRIPT_ENV = 'IMG2POSE_WORKER_SCRIPT';

/**
 * The compiled worker script: `worker.js` beside this module (the published dist), or, when this
 * module runs from TypeScript sources (jest), the build's copy. Null when neither exists.
 */
export function workerScript(): string | null {
  const named = process.env[WORKER_SCRIPT_ENV];
  if (named) return existsSync(named) ? named : null;
  for (const candidate of [join(__dirname, 'worker.js'), join(__dirname, '..', '..', 'dist', 'src', 'runtime', 'worker.js')]) {
    if (existsSync(candidate)) return candidate;
  }
  return null;
}

/** Cores this process may use (at least 1). */
export function cores(): number {
  return Math.max(1, availableParallelism());
}

/** The machine's busy CPU time (all processes) and this process's own, at one moment. */
export interface CpuSample {
  /** performance.now() */
  at: number;
  /** Busy time summed over the CPUs (user, nice, system, irq), ms; undefined where the OS gives none. */
  busyMs: number | undefined;
  /** This process's CPU time (all its threads), ms. */
  ownMs: number;
}

export function cpuSample(): CpuSample {
  const cpus = cpuList();
  let busy = 0;
  for (const c of cpus) busy += c.times.user + c.times.nice + c.times.sys + c.times.irq;
  const own = process.cpuUsage();
  return { at: performance.now(), busyMs: cpus.length > 0 ? busy : undefined, ownMs: (own.user + own.system) / 1000 };
}

/**
 * Cores that other processes kept busy between two samples (the machine's busy time less this
 * process's own, over the wall time), or undefined when the OS reports no CPU times or the
 * samples are too close to tell (under 50 ms: a few clock ticks).
 */
export function coresUsedByOthers(before: CpuSample, after: CpuSample): number | undefined {
  const wall = after.at - before.at;
  if (before.busyMs === undefined || after.busyMs === undefined || wall < 50) return undefined;
  return Math.max(0, after.busyMs - before.busyMs - (after.ownMs - before.ownMs)) / wall;
}

let lastSample = cpuSample();

/**
 * Whether a core is free besides one busy thread of ours (the worker asking for help): other
 * processes used less than `cores - 1.5` cores since the previous call (or since this module
 * loaded). This process's own threads do not count, so its earlier work (a photo just done) never
 * stops the help, as the 1-min load average would; that average decides only when the CPU times
 * cannot (samples too close, or an OS without them).
 */
export function coreFree(): boolean {
  const now = cpuSample();
  const others = coresUsedByOthers(lastSample, now);
  if (others === undefined) return loadavg()[0] < cores() - 0.5;
  lastSample = now;
  return others < cores() - 1.5;
}

interface Slot {
  worker: Worker;
  /** Set once the worker has stopped: the slot is refilled at its next task. */
  dead: boolean;
  pending: Map<number, { resolve(v: unknown): void; reject(e: unknown): void }>;
}

/**
 * A fixed set of workers running `script`. `run` gives a task to the least busy worker (or the
 * one named); replies are matched by id. A worker that dies fails its own pending tasks with a
 * `WorkerExitError` (the other workers' tasks go on) and is replaced, with the same `workerData`,
 * when its slot gets its next task: lazily, so a worker that cannot start never spins in a
 * restart loop. Idle workers are unref'd, so a forgotten pool never keeps the process alive;
 * `terminate` stops them.
 */
export class WorkerPool {
  private readonly slots: Slot[] = [];
  private nextId = 1;
  private closed = false;

  /** `onAsk`: answers the workers' own requests (`AskMessage`); without it they are refused. */
  constructor(
    private readonly script: string,
    size: number,
    private workerData?: unknown,
    private readonly onAsk?: AskHandler,
  ) {
    if (!(Number.isInteger(size) && size >= 1)) throw new RangeError(`WorkerPool: size ${size} is not a positive integer`);
    for (let i = 0; i < size; i++) this.slots.push(this.spawn(i));
  }

  get size(): number {
    return this.slots.length;
  }

  /** The `workerData` of workers started from now on (replacements); running ones keep theirs. */
  setWorkerData(data: unknown): void {
    this.workerData = data;
  }

  /** Whether worker `index` has stopped (its slot gets a new worker, without running state, at its next task). */
  isDead(index: number): boolean {
    return this.slots[index]?.dead ?? false;
  }

  /** Runs `task` on worker `index`, or on the worker with the fewest pending tasks. */
  run<R>(task: TaskMessage, transfer: ArrayBuffer[] = [], index?: number): Promise<R> {
    if (this.closed) return Promise.reject(new Error('WorkerPool: used after terminate()'));
    const at = index ?? this.leastBusy();
    if (!this.slots[at]) return Promise.reject(new RangeError(`WorkerPool: no worker ${index}`));
    if (this.slots[at].dead) this.slots[at] = this.spawn(at);
    const slot = this.slots[at];
    const id = this.nextId++;
    return new Promise<R>((resolve, reject) => {
      slot.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      slot.worker.ref();
      const request: Request = { id, kind: task.kind, payload: task.payload };
      try {
        slot.worker.postMessage(request, transfer);
      } catch (e) {
        slot.pending.delete(id);
        this.unrefIfIdle(slot);
        reject(e);
      }
    });
  }

  /** Runs `task` once on every worker (set-up messages); one result per worker. */
  broadcast<R>(task: TaskMessage): Promise<R[]> {
    return Promise.all(this.slots.map((_, i) => this.run<R>(task, [], i)));
  }

  /**
   * A worker other than `except` that is alive and holds no task, or undefined. A dead slot does
   * not count: its replacement would first have to start (seconds for a model worker).
   */
  idleWorker(except: number): number | undefined {
    const at = this.slots.findIndex((s, i) => i !== except && !s.dead && s.pending.size === 0);
    return at < 0 ? undefined : at;
  }

  async terminate(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const slots = this.slots.splice(0);
    for (const slot of slots) this.failPending(slot, new Error('WorkerPool: terminated with tasks pending'));
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  private spawn(index: number): Slot {
    const worker = new Worker(this.script, { workerData: this.workerData });
    const slot: Slot = { worker, dead: false, pending: new Map() };
    worker.on('message', (message: Reply | AskMessage) => {
      if ('ask' in message) {
        void this.answer(slot, index, message);
        return;
      }
      const reply = message;
      const waiting = slot.pending.get(reply.id);
      if (!waiting) return;
      slot.pending.delete(reply.id);
      this.unrefIfIdle(slot);
      if (reply.ok) waiting.resolve(reply.result);
      else waiting.reject(new WorkerTaskError(reply.error));
    });
    // 'error' (an uncaught exception, out of memory) is followed by 'exit': the first one says why.
    let reason: Error | undefined;
    worker.on('error', (e) => {
      reason = e instanceof Error ? e : new Error(String(e));
      slot.dead = true;
      this.failPending(slot, new WorkerExitError(undefined, reason));
    });
    worker.on('exit', (code) => {
      slot.dead = true;
      if (!this.closed) this.failPending(slot, new WorkerExitError(reason === undefined ? code : undefined, reason));
    });
    worker.unref();
    return slot;
  }

  /**
   * Answers `slot`'s request, unless the worker has stopped meanwhile (its task then runs again
   * on a new worker, which asks again).
   */
  private async answer(slot: Slot, index: number, ask: AskMessage): Promise<void> {
    let answer: Answer;
    let transfer: ArrayBuffer[] = [];
    try {
      if (!this.onAsk) throw new Error(`WorkerPool: no handler for a worker's ${JSON.stringify(ask.kind)} request`);
      const done = await this.onAsk({ kind: ask.kind, payload: ask.payload }, index);
      answer = { answer: ask.ask, ok: true, result: done.result };
      transfer = done.transfer;
    } catch (e) {
      answer = { answer: ask.ask, ok: false, error: serializeError(e) };
    }
    if (slot.dead || this.slots[index] !== slot) return;
    try {
      slot.worker.postMessage(answer, transfer);
    } catch {
      // The worker stopped between the check and the post: its task fails with a WorkerExitError.
    }
  }

  /** The index of the worker with the fewest pending tasks (a dead one has none). */
  private leastBusy(): number {
    let best = 0;
    this.slots.forEach((s, i) => {
      if (s.pending.size < this.slots[best].pending.size) best = i;
    });
    return best;
  }

  private failPending(slot: Slot, error: Error): void {
    const waiting = [...slot.pending.values()];
    slot.pending.clear();
    for (const w of waiting) w.reject(error);
    slot.worker.unref();
  }

  private unrefIfIdle(slot: Slot): void {
    if (slot.pending.size === 0) slot.worker.unref();
  }
}

/** An error as it travels between threads (the structured clone of an Error loses its class). */
export function serializeError(e: unknown): SerializedError {
  if (e instanceof Error) return { name: e.name, message: e.message, stack: e.stack };
  return { name: 'Error', message: String(e) };
}

let fullCollection: (() => void) | null | undefined;

/**
 * Runs a full garbage collection on this thread now; false where the runtime gives no way to.
 * Why: a SharedArrayBuffer's memory is returned only once every thread that saw it has collected
 * its last view, and V8 has no reason to collect soon after a few large objects die: the weights
 * handed to the workers (~160 MB) would stay resident through the first forwards, the process's
 * peak. Node exposes `gc` only under --expose-gc; the flag is set just long enough to take the
 * function from a fresh context, then cleared again.
 */
export function collectGarbage(): boolean {
  if (fullCollection === undefined) {
    const exposed = (globalThis as { gc?: unknown }).gc;
    if (typeof exposed === 'function') {
      fullCollection = exposed as () => void;
    } else {
      fullCollection = null;
      // The flag is the process's: another thread may clear it between the two calls, hence a retry.
      for (let attempt = 0; attempt < 3 && fullCollection === null; attempt++) {
        try {
          setFlagsFromString('--expose-gc');
          const gc: unknown = runInNewContext('gc');
          if (typeof gc === 'function') fullCollection = gc as () => void;
        } catch {
          // Not a V8 that takes the flag: no collection on demand.
        } finally {
          setFlagsFromString('--no-expose-gc');
        }
      }
    }
  }
  fullCollection?.();
  return fullCollection !== null;
}
