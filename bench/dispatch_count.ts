// Counts the WebGPU dispatches tfjs records, by program class, for the GPU bench scripts.
import * as tf from '@tensorflow/tfjs';

type RunProgram = (program: { constructor: { name: string } }, ...rest: unknown[]) => unknown;

export interface DispatchCounter {
  /** Dispatches so far, by program class name. */
  readonly byProgram: Map<string, number>;
  /** All dispatches so far. */
  total(): number;
  /** Puts the backend's own method back. */
  restore(): void;
}

/** Wraps the active webgpu backend's runWebGPUProgram to count what it records. */
export function countDispatches(): DispatchCounter {
  const backend = tf.backend() as unknown as { runWebGPUProgram: RunProgram };
  const byProgram = new Map<string, number>();
  const run = backend.runWebGPUProgram;
  let all = 0;
  backend.runWebGPUProgram = function (this: unknown, program, ...rest) {
    byProgram.set(program.constructor.name, (byProgram.get(program.constructor.name) ?? 0) + 1);
    all++;
    return run.call(this, program, ...rest);
  };
  return { byProgram, total: () => all, restore: () => void (backend.runWebGPUProgram = run) };
}
