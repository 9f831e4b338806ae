// The size-class GPU buffer pool on tfjs' real webgpu backend class, driven by a fake device that
// keeps buffer contents in memory: tfjs' own BufferManager, tensor map, upload and readback paths
// run as they do on a GPU. (The same pool runs on a real adapter in the webgpu suites.)
import * as tf from '@tensorflow/tfjs';
import { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { sizeClass, trimPool, useSizeClassPool } from '../src/kernels/webgpu/buffer_pool';

class FakeBuffer {
  destroyed = false;
  mapState = 'unmapped';
  readonly bytes: Uint8Array;
  constructor(
    readonly size: number,
    readonly usage: number,
    mapped: boolean,
  ) {
    this.bytes = new Uint8Array(size);
    if (mapped) this.mapState = 'mapped';
  }
  destroy(): void {
    this.destroyed = true;
  }
  async mapAsync(): Promise<void> {
    this.mapState = 'mapped';
  }
  getMappedRange(offset = 0, size = this.size - offset): ArrayBuffer {
    return (this.bytes.buffer as ArrayBuffer).slice(offset, offset + size);
  }
  unmap(): void {
    this.mapState = 'unmapped';
  }
}

interface FakeDevice {
  created: FakeBuffer[];
  writes: number;
}

function fakeBackend(): { backend: WebGPUBackend; device: FakeDevice } {
  const g = globalThis as Record<string, unknown>;
  g.navigator ??= { gpu: {} };
  g.GPUBuffer = FakeBuffer;
  g.GPUTexture ??= class {};
  const state: FakeDevice = { created: [], writes: 0 };
  const device = {
    features: new Set<string>(),
    limits: { maxStorageBufferBindingSize: 2 ** 31 - 4 },
    createBuffer: ({ size, usage, mappedAtCreation }: { size: number; usage: number; mappedAtCreation?: boolean }) => {
      const b = new FakeBuffer(size, usage, mappedAtCreation === true);
      state.created.push(b);
      return b;
    },
    createCommandEncoder: () => ({
      copyBufferToBuffer: (src: FakeBuffer, so: number, dst: FakeBuffer, d: number, size: number) => dst.bytes.set(src.bytes.subarray(so, so + size), d),
      finish: () => ({}),
    }),
    queue: {
      submit: () => undefined,
      writeBuffer: (dst: FakeBuffer, offset: number, data: ArrayBuffer, dataOffset: number, size: number) => {
        state.writes++;
        dst.bytes.set(new Uint8Array(data, dataOffset, size), offset);
      },
    },
  };
  const backend = new WebGPUBackend(device as unknown as GPUDevice, undefined);
  return { backend, device: state };
}

interface Internals {
  bufferManager: { numBytesAllocated: number; numBytesUsed: number };
  tensorMap: { get(id: object): { resource: FakeBuffer } };
  uploadToGPU(id: object): void;
  getBufferData(b: FakeBuffer): Promise<ArrayBuffer>;
  disposeData(id: object): boolean;
  write(values: Float32Array | Int32Array, shape: number[], dtype: string): object;
  tensorToBinding(t: { dataId: object; shape: number[] }): unknown;
}

const internals = (b: WebGPUBackend): Internals => b as unknown as Internals;

/** Uploads `values` as a tensor's data; returns its id and GPU buffer. */
function upload(b: WebGPUBackend, values: Float32Array | Int32Array): { id: object; buffer: FakeBuffer } {
  const id = internals(b).write(values, [values.length], values instanceof Float32Array ? 'float32' : 'int32');
  internals(b).uploadToGPU(id);
  return { id, buffer: internals(b).tensorMap.get(id).resource };
}

describe('sizeClass', () => {
  it('is never below the request, within 25% above it, a multiple of 256 up to 4 KiB', () => {
    for (const n of [0, 1, 255, 256, 257, 4095, 4096, 4097, 5000, 65535, 1e6, 123456789, 2 ** 30, 2 ** 30 + 1]) {
      const c = sizeClass(n);
      expect(c).toBeGreaterThanOrEqual(n);
      if (n > 4096) expect(c).toBeLessThanOrEqual(n * 1.25);
      else expect(c % 256).toBe(0);
    }
  });

  it('gives four classes per power of two, so a few dozen cover every size up to 1 GiB', () => {
    const classes = new Set<number>();
    for (let n = 4097; n <= 2 ** 30; n = Math.ceil(n * 1.01)) classes.add(sizeClass(n));
    expect(classes.size).toBeLessThanOrEqual(4 * 18 + 1);
    expect([...classes].sort((a, b) => a - b).slice(0, 5)).toEqual([5120, 6144, 7168, 8192, 10240]);
  });

  it('refuses what is not a byte count', () => {
    expect(() => sizeClass(-1)).toThrow(RangeError);
    expect(() => sizeClass(1.5)).toThrow(RangeError);
  });
});

describe('the size-class pool on the webgpu backend', () => {
  it('rounds buffers up to their class and reads back exactly the tensor', async () => {
    const { backend, device } = fakeBackend();
    useSizeClassPool(backend, 2 ** 20);
    const values = Float32Array.from({ length: 1500 }, (_, i) => i * 0.5 - 7);
    const { buffer } = upload(backend, values);
    expect(buffer.size).toBe(sizeClass(6000));
    expect(buffer.size).toBeGreaterThan(6000);
    // Written with one writeBuffer, not through a mapped staging buffer.
    expect(device.writes).toBe(1);
    expect(device.created.filter((b) => b.mapState === 'mapped')).toHaveLength(0);
    const back = new Float32Array(await internals(backend).getBufferData(buffer));
    expect(Array.from(back)).toEqual(Array.from(values));
  });

  it("binds a tensor's own bytes, not the rest of a larger buffer (what an earlier tensor left there)", () => {
    const { backend } = fakeBackend();
    useSizeClassPool(backend, 2 ** 30);
    const first = upload(backend, new Float32Array(105_000).fill(NaN));
    internals(backend).disposeData(first.id);
    const second = upload(backend, Float32Array.from({ length: 100_000 }, (_, i) => i));
    expect(second.buffer).toBe(first.buffer);
    expect(second.buffer.size).toBeGreaterThan(420_000);
    // The stale NaN past the values stays, outside the binding.
    expect(Number.isNaN(new Float32Array(second.buffer.bytes.buffer)[100_000])).toBe(true);
    expect(internals(backend).tensorToBinding({ dataId: second.id, shape: [100_000] })).toEqual({ buffer: second.buffer, offset: 0, size: 400_000 });
    expect(internals(backend).tensorToBinding({ dataId: second.id, shape: [250, 400] })).toEqual({ buffer: second.buffer, offset: 0, size: 400_000 });
    // An empty tensor's buffer is bound whole (a binding of no bytes is invalid).
    const empty = upload(backend, new Float32Array(0));
    expect(internals(backend).tensorToBinding({ dataId: empty.id, shape: [0, 5] })).toEqual({ buffer: empty.buffer });
  });

  it('hands out the free buffer made first, whatever order they were released in', () => {
    const { backend } = fakeBackend();
    useSizeClassPool(backend, 2 ** 30);
    const made = [0, 1, 2].map(() => upload(backend, new Float32Array(50_000)));
    for (const k of [2, 0, 1]) internals(backend).disposeData(made[k].id);
    // tfjs alone would pop the last released (made[1]).
    const again = [0, 1, 2].map(() => upload(backend, new Float32Array(52_000)).buffer).map((b) => made.findIndex((m) => m.buffer === b));
    expect(again).toEqual([0, 1, 2]);
  });

  it('uploads int32 data as it is', async () => {
    const { backend } = fakeBackend();
    useSizeClassPool(backend, 2 ** 20);
    const values = Int32Array.from({ length: 77 }, (_, i) => i * 3 - 100);
    const { buffer } = upload(backend, values);
    expect(Array.from(new Int32Array(await internals(backend).getBufferData(buffer)))).toEqual(Array.from(values));
  });

  it('lets one buffer serve different sizes of its class', () => {
    const { backend, device } = fakeBackend();
    useSizeClassPool(backend, 2 ** 30);
    const first = upload(backend, new Float32Array(100_000));
    internals(backend).disposeData(first.id);
    const created = device.created.length;
    const second = upload(backend, new Float32Array(105_000));
    expect(second.buffer).toBe(first.buffer);
    expect(device.created.length).toBe(created);
  });

  it('keeps at most the limit of free buffers, and trimPool frees the rest', () => {
    const { backend, device } = fakeBackend();
    const limit = 3 * 2 ** 20;
    useSizeClassPool(backend, limit);
    const manager = internals(backend).bufferManager;
    const held = Array.from({ length: 12 }, (_, i) => upload(backend, new Float32Array(2 ** 17 + i * 5000)));
    for (const { id } of held) {
      internals(backend).disposeData(id);
      expect(manager.numBytesAllocated - manager.numBytesUsed).toBeLessThanOrEqual(limit);
    }
    const destroyed = device.created.filter((b) => b.destroyed).length;
    expect(destroyed).toBeGreaterThan(0);
    expect(manager.numBytesUsed).toBe(0);
    const kept = upload(backend, new Float32Array(10));
    expect(trimPool(backend, true)).toBeGreaterThan(0);
    // Free buffers are gone; the one in use is not.
    expect(manager.numBytesAllocated).toBe(manager.numBytesUsed);
    expect(kept.buffer.destroyed).toBe(false);
  });

  it('allocates at most one buffer per size class and concurrent use, whatever the sizes', () => {
    const { backend, device } = fakeBackend();
    useSizeClassPool(backend, 2 ** 30);
    let seed = 7;
    const nextSize = (): number => {
      seed = (Math.imul(1664525, seed) + 1013904223) >>> 0;
      return 1000 + (seed % 300_000);
    };
    const classes = new Set<number>();
    for (let i = 0; i < 400; i++) {
      const sizes = [nextSize(), nextSize(), nextSize()];
      sizes.forEach((n) => classes.add(sizeClass(n * 4)));
      const ids = sizes.map((n) => upload(backend, new Float32Array(n)).id);
      for (const id of ids) internals(backend).disposeData(id);
    }
    // 1,200 tensors of as many sizes; three at a time, so at most three buffers per class.
    expect(device.created.length).toBeLessThanOrEqual(3 * classes.size);
    expect(classes.size).toBeLessThan(40);
  });

  it('leaves tfjs tensors alone', () => {
    expect(tf.memory().numTensors).toBe(0);
  });
});
