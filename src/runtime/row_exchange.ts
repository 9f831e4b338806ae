/**
 * Two threads running one image's body together (Backbone.bodyShared), each computing a band of
 * rows of every map: the shared memory their bands pass through, and the steps' handshake.
 *
 * The body is synchronous code between two tfjs instances, so the threads meet in shared memory
 * with Atomics rather than messages: step k, each publishes its rows of map k into data region
 * k % 2 and bumps its step counter, then waits for the other's counter to reach k and copies the
 * other's rows into its own map. A thread writes region k % 2 again (step k + 2) only after it has
 * the other's step k + 1, published after the other read step k: two regions are enough.
 *
 * A thread that is gone (never started: no worker was free; stopped; or failed) is marked in the
 * control words by whoever knows (the thread itself, or the parent that saw its worker stop), and
 * the other stops waiting: the image's own thread then makes the rest of every map alone, with
 * the same bits.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { RowShare } from '../model/backbone';
import type { Rows } from '../kernels/webgpu';
import type { TensorMemory } from '../model/runtime';

/** The shared memory of one exchange: sent to the helper and to the parent with the request. */
export interface RowExchangeBuffers {
  /** Int32 control words: per part its step counter and its state. */
  control: SharedArrayBuffer;
  /** Two regions of `regionFloats` float32 values each. */
  data: SharedArrayBuffer;
  regionFloats: number;
}

const STEP = [0, 1] as const;
const STATE = [2, 3] as const;
const CONTROL_WORDS = 4;
const GONE = 1;

/** Longest wait for the other thread's rows before it is given up on (its rows are then made here). */
const GIVE_UP_MS = 60_000;
/** Waits are sliced so that a mark made between a check and a wait is seen soon. */
const WAIT_SLICE_MS = 50;

/** Thrown by part 1's exchange when part 0 is gone: the helper's work is then of no use. */
export class PartnerGoneError extends Error {
  constructor() {
    super('row exchange: the thread that owns the image is gone');
    this.name = 'PartnerGoneError';
  }
}

/** Buffers for maps of up to `regionFloats` values; `reuse`'s data region when it is large enough (fresh control words). */
export function rowExchangeBuffers(regionFloats: number, reuse?: RowExchangeBuffers): RowExchangeBuffers {
  const control = new SharedArrayBuffer(CONTROL_WORDS * 4);
  if (reuse && reuse.regionFloats >= regionFloats) return { control, data: reuse.data, regionFloats: reuse.regionFloats };
  return { control, data: new SharedArrayBuffer(2 * regionFloats * 4), regionFloats };
}

/** Marks `part` gone (its worker stopped, or none took it) and wakes the other part. */
export function markGone(buffers: RowExchangeBuffers, part: 0 | 1): void {
  const control = new Int32Array(buffers.control);
  Atomics.store(control, STATE[part], GONE);
  // The other part waits on this part's step counter.
  Atomics.notify(control, STEP[part]);
}

/** One thread's side of an exchange (see the top of this file). */
export class RowExchange implements RowShare {
  private readonly control: Int32Array;
  private readonly regions: [Float32Array, Float32Array];
  private step = 0;
  private otherGone = false;

  constructor(
    readonly buffers: RowExchangeBuffers,
    readonly part: 0 | 1,
    private readonly memory: TensorMemory,
    private readonly giveUpMs = GIVE_UP_MS,
  ) {
    this.control = new Int32Array(buffers.control);
    const n = buffers.regionFloats;
    this.regions = [new Float32Array(buffers.data, 0, n), new Float32Array(buffers.data, n * 4, n)];
  }

  get alone(): boolean {
    return this.otherGone;
  }

  exchange(x: tf.Tensor4D, own: Rows, other: Rows): boolean {
    if (this.otherGone) return this.gone();
    const [, , width, channels] = x.shape;
    const row = width * channels;
    if (x.size > this.buffers.regionFloats)
      throw new Error(`row exchange: a map of ${x.size} values exceeds the shared ${this.buffers.regionFloats}`);
    this.step++;
    const region = this.regions[this.step % 2];
    // Heap views are taken and read with nothing allocated in between (see TensorMemory).
    if (own[1] > own[0]) region.set(this.memory.view(x).subarray(own[0] * row, own[1] * row), own[0] * row);
    Atomics.store(this.control, STEP[this.part], this.step);
    Atomics.notify(this.control, STEP[this.part]);
    if (other[1] <= other[0]) return true;
    if (!this.waitForOther()) {
      this.otherGone = true;
      return this.gone();
    }
    this.memory.view(x).set(region.subarray(other[0] * row, other[1] * row), other[0] * row);
    return true;
  }

  /** Marks this side gone (it stops taking part: done, failed or gave up), waking the other. */
  leave(): void {
    markGone(this.buffers, this.part);
  }

  private gone(): false {
    if (this.part === 1) throw new PartnerGoneError();
    return false;
  }

  /** Waits until the other part has published this step; false when it is gone or does not come. */
  private waitForOther(): boolean {
    const other = (1 - this.part) as 0 | 1;
    const deadline = Date.now() + this.giveUpMs;
    for (;;) {
      const seen = Atomics.load(this.control, STEP[other]);
      if (seen >= this.step) return true;
      if (Atomics.load(this.control, STATE[other]) === GONE) return false;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      Atomics.wait(this.control, STEP[other], seen, Math.min(WAIT_SLICE_MS, left));
    }
  }
}
