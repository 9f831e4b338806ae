// Size-class pooling for tfjs' webgpu buffer manager.
//
// tfjs pools released GPU buffers by exact byte size and never frees them. A service that sees
// images of many sizes needs buffers of new sizes at every call, so each call creates buffers
// (slow: device allocation and Dawn's lazy zero-fill) and the pool grows without end. Here a
// request is rounded up to a size class (four classes per power of two, so at most 25% slack),
// which lets a buffer serve every size in its class, and the free part of the pool is held under
// a limit: a buffer released while the free buffers already hold that much is destroyed instead
// of kept. The pool is then at most what is in use at the busiest moment plus the limit.
//
// A buffer may now be larger than its tensor. Shaders index by shape uniforms, so what tfjs does
// with it is unaffected except where it depends on the buffer's size: readback copies
// `buffer.size` bytes, so `getBufferData` is replaced by one that copies the size that was asked
// for; and a read past a tensor's end (tfjs' matmul reads past its second operand's) would find
// what an earlier tensor left in the buffer rather than what WebGPU gives for a read past the
// binding, so tfjs' programs bind each tensor's own bytes (`tensorBinding`, record.ts), not the
// whole buffer. Uploads go through `queue.writeBuffer` into a pooled buffer,
// where tfjs would create (and zero-fill) a new mapped staging buffer for every upload: an input
// photo is tens of MB. Of the free buffers of a class, the one made first is handed out (see
// `acquireBuffer` below). The change applies to the whole webgpu backend of the process and
// stays once made: tensors created under it must keep reading back their own size.
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { isGPUBuffer, tensorBinding, useFastRecording } from './record';

/**
 * Default limit on the free buffers kept for reuse. A stream of single images of every size keeps
 * ~4 GiB at the default input size and then stops allocating; batches of 8 and 16 and mixed-size
 * batches in one process need more to be reused rather than re-made (measured on an H200).
 */
export const DEFAULT_POOL_LIMIT = 8 * 2 ** 30;

/** Below this, sizes round up to a multiple of 256 bytes (uniforms and small tensors). */
const SMALL = 4096;
const SMALL_STEP = 256;
/** Size classes per power of two above SMALL. */
const STEPS = 4;

/**
 * The size class of a request of `bytes`: a multiple of 256 up to 4 KiB, then the next of
 * 2^k * (4 + j) / 4 (j = 0..3). Never below the request, at most 25% above it.
 */
export function sizeClass(bytes: number): number {
  if (!(Number.isInteger(bytes) && bytes >= 0)) throw new RangeError(`sizeClass: bytes must be an integer >= 0, got ${bytes}`);
  if (bytes <= SMALL) return Math.max(SMALL_STEP, Math.ceil(bytes / SMALL_STEP) * SMALL_STEP);
  const octave = 2 ** Math.floor(Math.log2(bytes));
  const step = octave / STEPS;
  return Math.ceil(bytes / step) * step;
}

/** The parts of tfjs' BufferManager used here (its fields are public at run time). */
interface BufferManagerLike {
  acquireBuffer(size: number, usage: number, mappedAtCreation?: boolean, reuse?: boolean): GPUBuffer;
  releaseBuffer(buffer: GPUBuffer, reuse?: boolean): void;
  freeBuffers: Map<string, GPUBuffer[]>;
  numBytesAllocated: number;
  numBytesUsed: number;
  numFreeBuffers: number;
}

/** A tensor's entry in the backend's tensor map (the fields used here). */
interface TensorDataLike {
  dtype: string;
  values: ArrayLike<number> | null;
  resource: unknown;
}

interface BackendInternals {
  bufferManager: BufferManagerLike;
  tensorToBinding(tensor?: { dataId: object; shape: number[] }): unknown;
  tensorMap: { get(dataId: object): TensorDataLike };
  uploadToGPU(dataId: object): void;
  device: GPUDevice;
  getBufferData(buffer: GPUBuffer): Promise<ArrayBuffer | null>;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  commandEncoder: GPUCommandEncoder;
}

interface PoolState {
  limit: number;
  /** The byte size each live buffer was last acquired for. */
  requested: WeakMap<GPUBuffer, number>;
}

const installed = new WeakMap<object, PoolState>();

/** WebGPU's buffer usage bits used here (the global GPUBufferUsage exists only where WebGPU does). */
const MAP_READ = 0x0001;
const COPY_SRC = 0x0004;
const COPY_DST = 0x0008;
const STORAGE = 0x0080;

/**
 * Rounds the backend's buffer requests to size classes and keeps at most `limit` bytes of free
 * buffers for reuse. Calling it again only changes the limit. Returns the limit in force.
 */
export function useSizeClassPool(backend: WebGPUBackend, limit: number): number {
  if (!(limit > 0)) throw new RangeError(`useSizeClassPool: limit must be > 0 bytes, got ${limit}`);
  const internals = backend as unknown as BackendInternals;
  const existing = installed.get(internals);
  if (existing) {
    existing.limit = limit;
    trimPool(backend);
    return limit;
  }
  const state: PoolState = { limit, requested: new WeakMap() };
  installed.set(internals, state);
  // The other per-dispatch cost of the backend: uniform buffers and bind groups (record.ts).
  useFastRecording(backend);
  const manager = internals.bufferManager;
  const maxBinding = internals.device.limits.maxStorageBufferBindingSize;
  const acquire = manager.acquireBuffer.bind(manager);
  // Buffers numbered as they are made.
  const serials = new WeakMap<GPUBuffer, number>();
  let made = 0;
  const serial = (buffer: GPUBuffer): number => serials.get(buffer) ?? Infinity;
  const release = manager.releaseBuffer.bind(manager);

  manager.acquireBuffer = (size, usage, mappedAtCreation = false, reuse = true) => {
    const rounded = sizeClass(size);
    // A class above the binding limit could not be bound whole: keep such a request exact.
    const bytes = rounded <= maxBinding || size > maxBinding ? rounded : size;
    // The free buffer made first, not the last one released (tfjs pops the newest): the choice
    // then depends only on which buffers are free, not on the order they were released in, so
    // work that repeats gets the same buffers as the time before and reuses its bind groups (record.ts).
    const free = reuse ? manager.freeBuffers.get(`${bytes}_${usage}`) : undefined;
    if (free && free.length > 1) {
      let first = free.length - 1;
      for (let i = 0; i < free.length - 1; i++) if (serial(free[i]) < serial(free[first])) first = i;
      [free[first], free[free.length - 1]] = [free[free.length - 1], free[first]];
    }
    const buffer = acquire(bytes, usage, mappedAtCreation, reuse);
    if (!serials.has(buffer)) serials.set(buffer, made++);
    state.requested.set(buffer, size);
    return buffer;
  };
  manager.releaseBuffer = (buffer, reuse = true) => {
    release(buffer, reuse && freeBytes(manager) + buffer.size <= state.limit);
  };
  internals.getBufferData = async (buffer) => readBuffer(internals, buffer, state.requested.get(buffer) ?? buffer.size);
  const upload = internals.uploadToGPU.bind(internals);
  internals.uploadToGPU = (dataId) => {
    const data = internals.tensorMap.get(dataId);
    const values = data.resource == null && data.values ? wordsOf(data.dtype, data.values) : null;
    if (!values) {
      upload(dataId);
      return;
    }
    // Safe without a submit: tfjs returns a buffer to the pool only once the commands that use
    // it have been submitted, and writeBuffer is ordered after everything submitted before it.
    const buffer = manager.acquireBuffer(values.byteLength, STORAGE | COPY_SRC | COPY_DST);
    const chunk = tf.env().getNumber(UPLOAD_CHUNK_FLAG);
    writeInChunks(internals.device.queue, buffer, values, chunk);
    data.values = null;
    data.resource = buffer;
  };
  // tfjs' own recording (profiled dispatches, pixel programs, GPU_RECORD_FLAG off) binds what this
  // returns; record.ts binds tfjs' programs the same way.
  const binding = internals.tensorToBinding.bind(internals);
  internals.tensorToBinding = (tensor) => {
    const resource = tensor ? internals.tensorMap.get(tensor.dataId).resource : null;
    return tensor && isGPUBuffer(resource) ? tensorBinding(resource, tensor.shape) : binding(tensor);
  };
  return limit;
}

/** The size-class pool's limit on `backend`, or null where it is not in use. */
export function sizeClassPoolLimit(backend: WebGPUBackend): number | null {
  return installed.get(backend as unknown as object)?.limit ?? null;
}

/**
 * tfjs env flag: the most bytes one queue.writeBuffer of an upload carries (0: the whole upload in
 * one). Dawn stages a write in its 4 MiB ring buffers, which it keeps and reuses, but gives a
 * larger write a staging buffer of its own, made for that write and freed after it: an input
 * photo is several MiB.
 */
export const UPLOAD_CHUNK_FLAG = 'IMG2POSE_GPU_UPLOAD_CHUNK';
// Registered once per tfjs instance, also when this module is bundled twice.
if (!(UPLOAD_CHUNK_FLAG in (tf.env() as unknown as { flagRegistry: object }).flagRegistry)) {
  tf.env().registerFlag(UPLOAD_CHUNK_FLAG, () => 1 << 20);
}

/** `values` into `buffer` at 0, in writes of at most `chunk` bytes (a multiple of 4; 0: one write). */
function writeInChunks(queue: GPUQueue, buffer: GPUBuffer, values: Float32Array | Int32Array, chunk: number): void {
  const total = values.byteLength;
  const step = chunk > 0 ? Math.max(4, chunk - (chunk % 4)) : total;
  for (let at = 0; at < total; at += step) queue.writeBuffer(buffer, at, values.buffer, values.byteOffset + at, Math.min(step, total - at));
}

/** A tensor's values as the 32-bit words the backend stores, or null for dtypes left to tfjs. */
function wordsOf(dtype: string, values: ArrayLike<number>): Float32Array | Int32Array | null {
  if (dtype === 'float32') return values instanceof Float32Array ? values : Float32Array.from(values);
  if (dtype === 'int32') return values instanceof Int32Array ? values : Int32Array.from(values);
  return null;
}

/** `size` bytes of `buffer`, read back through a staging buffer from the pool. */
async function readBuffer(backend: BackendInternals, buffer: GPUBuffer, size: number): Promise<ArrayBuffer> {
  const manager = backend.bufferManager;
  const staging = manager.acquireBuffer(size, COPY_DST | MAP_READ);
  backend.ensureCommandEncoderReady();
  backend.endComputePassEncoder();
  backend.commandEncoder.copyBufferToBuffer(buffer, 0, staging, 0, size);
  backend.submitQueue();
  await staging.mapAsync(1 /* GPUMapMode.READ */, 0, size);
  const values = staging.getMappedRange(0, size).slice(0);
  staging.unmap();
  manager.releaseBuffer(staging);
  return values;
}

function freeBytes(manager: BufferManagerLike): number {
  return manager.numBytesAllocated - manager.numBytesUsed;
}

/**
 * Destroys free buffers, largest first, until they are within the pool's limit (all of them
 * with `all`). Buffers in use stay. Returns the bytes freed.
 */
export function trimPool(backend: WebGPUBackend, all = false): number {
  const manager = (backend as unknown as BackendInternals).bufferManager;
  const limit = all ? 0 : (sizeClassPoolLimit(backend) ?? Infinity);
  if (freeBytes(manager) <= limit) return 0;
  const free = [...manager.freeBuffers.values()].flat().sort((a, b) => b.size - a.size);
  let freed = 0;
  for (const buffer of free) {
    if (freeBytes(manager) <= limit) break;
    const list = manager.freeBuffers.get(`${buffer.size}_${buffer.usage}`);
    const at = list ? list.indexOf(buffer) : -1;
    if (!list || at < 0) continue;
    list.splice(at, 1);
    manager.numFreeBuffers--;
    manager.numBytesAllocated -= buffer.size;
    freed += buffer.size;
    buffer.destroy();
  }
  return freed;
}

/** The registered webgpu backend, if any (without making it active). */
function registeredWebGPU(): WebGPUBackend | null {
  return (tf.findBackend('webgpu') as unknown as WebGPUBackend | null) ?? null;
}

/** `useSizeClassPool` on the registered webgpu backend; false where there is none. */
export function useGpuPool(limit: number = DEFAULT_POOL_LIMIT): boolean {
  const backend = registeredWebGPU();
  if (backend) useSizeClassPool(backend, limit);
  return backend !== null;
}

/** Destroys every free buffer of the webgpu backend's pool (buffers in use stay). Bytes freed. */
export function releaseGpuPool(): number {
  const backend = registeredWebGPU();
  return backend ? trimPool(backend, true) : 0;
}
