/**
 * Fault injection for the service soak and the worker tests: the model worker of src/runtime/worker.ts,
 * plus a way to make it die the moment it receives a forward task, as a crash mid-batch would.
 * Hand the compiled copy (dist/bench/fault_worker.js) to `ThreadedModel.start` as its script.
 *
 * - `WorkerKiller.arm()` (main thread): exactly one of the workers now running exits (code
 *   KILLED_EXIT_CODE) on its next forward task ('model-predict'; or the task kind named, e.g.
 *   'model-heads', another worker's RoI-head rows); the others, and workers started later, go on.
 * - `WorkerKiller.killEvery(true)`: until `killEvery(false)`, every worker of this process exits
 *   on every forward task (a batch that kills any worker it lands on, replacements included).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BroadcastChannel, isMainThread, parentPort } from 'node:worker_threads';

const CHANNEL = 'img2pose-fault-injection';
export const KILLED_EXIT_CODE = 70;

/**
 * A file whose presence means "every forward task kills its worker": a file, not an environment
 * variable, so that it reaches workers already running and those started later alike (and a test
 * runner's sandboxed process.env cannot hide it). Workers share the process id.
 */
function killEveryFlag(): string {
  return path.join(os.tmpdir(), `img2pose-fault-${process.pid}.kill-every`);
}

type FaultMessage = { type: 'arm'; id: number; token: SharedArrayBuffer; kind: string } | { type: 'ack'; id: number };

/** Main-thread side: arms one kill at a time and waits until every live worker holds it. */
export class WorkerKiller {
  private readonly channel = new BroadcastChannel(CHANNEL);
  private nextId = 1;
  private token: Int32Array | undefined;

  /**
   * Arms a kill for the next task of `kind` any of the `workers` live workers receives; resolves
   * once each has acknowledged (so a task posted after this is the one that dies).
   */
  async arm(workers: number, kind = 'model-predict', timeoutMs = 10_000): Promise<void> {
    const id = this.nextId++;
    const buffer = new SharedArrayBuffer(4);
    this.token = new Int32Array(buffer);
    Atomics.store(this.token, 0, 1);
    await new Promise<void>((resolve, reject) => {
      let acks = 0;
      const timer = setTimeout(() => reject(new Error(`fault injection: ${acks} of ${workers} workers armed after ${timeoutMs} ms`)), timeoutMs);
      this.channel.onmessage = (event: unknown) => {
        const m = (event as { data: FaultMessage }).data;
        if (m.type === 'ack' && m.id === id && ++acks === workers) {
          clearTimeout(timer);
          resolve();
        }
      };
      this.channel.postMessage({ type: 'arm', id, token: buffer, kind } satisfies FaultMessage);
    });
  }

  /** Whether the armed kill has happened (a worker took it). */
  get fired(): boolean {
    return this.token !== undefined && Atomics.load(this.token, 0) === 0;
  }

  /** Every forward task of every worker of this process kills its worker, until turned off. */
  killEvery(on: boolean): void {
    if (on) fs.writeFileSync(killEveryFlag(), '');
    else fs.rmSync(killEveryFlag(), { force: true });
  }

  close(): void {
    this.killEvery(false);
    this.channel.close();
  }
}

if (!isMainThread && parentPort) {
  const flag = killEveryFlag();
  let token: Int32Array | undefined;
  let armedKind = '';
  const channel = new BroadcastChannel(CHANNEL);
  channel.unref();
  channel.onmessage = (event: unknown) => {
    const m = (event as { data: FaultMessage }).data;
    if (m.type !== 'arm') return;
    token = new Int32Array(m.token);
    armedKind = m.kind;
    channel.postMessage({ type: 'ack', id: m.id } satisfies FaultMessage);
  };
  // Registered before src/runtime/worker.ts's listener: a dying worker never starts the task.
  parentPort.on('message', (request: { kind?: string }) => {
    if (request.kind === 'model-predict' && fs.existsSync(flag)) process.exit(KILLED_EXIT_CODE);
    if (request.kind === armedKind && token !== undefined && Atomics.compareExchange(token, 0, 1, 0) === 1) process.exit(KILLED_EXIT_CODE);
  });
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require('../src/runtime/worker');
}
