// Dispatch recording for tfjs' webgpu backend with fewer native calls per dispatch.
//
// tfjs records every program with a fresh uniform buffer (taken from the pool and filled by its own
// queue.writeBuffer) and a fresh bind group. Through Dawn's Node bindings each native call costs
// microseconds, a forward has ~90 dispatches, and on a fast GPU the host's recording is what a
// single image waits for. Here, instead:
// - the uniforms of the dispatches between two submits go to slots of one persistent uniform
//   buffer, written by one writeBuffer just before the submit. Queue order makes the reuse safe: a
//   write is executed after every command submitted before it and before every command submitted
//   after it, so each submit reads the slots as they were written for it;
// - bind groups are kept per pipeline, by the buffers bound (for tfjs' programs, the bytes bound:
//   see tensorBinding) and the uniform slot. The buffer pool hands out the same buffers in the
//   same order when a forward repeats, so a repeated size (a video, a service's common photo
//   size) records no new bind group;
// - the pipeline is set only when it changes within a pass.
// The uniform values and their layout are tfjs' own (the generated shaders read that layout).
// Profiled dispatches (tf.profile / tf.time) and pixel programs keep tfjs' own recording.
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';

/** tfjs env flag: record dispatches as above (false: tfjs' own recording, for comparisons). */
export const GPU_RECORD_FLAG = 'IMG2POSE_GPU_RECORD';
// Registered once per tfjs instance, also when this module is bundled twice.
if (!(GPU_RECORD_FLAG in (tf.env() as unknown as { flagRegistry: object }).flagRegistry)) {
  tf.env().registerFlag(GPU_RECORD_FLAG, () => true);
}

/** One uniform value as tfjs passes it: a scalar or a short vector (up to 6 numbers). */
interface UniformValue {
  type: 'int32' | 'uint32' | 'float32';
  data: number[];
}

/** The fields of a tfjs WebGPU program used here. */
interface ProgramLike {
  shaderKey?: string;
  pipeline: GPUComputePipeline | Promise<GPUComputePipeline>;
  pixelsOpType?: unknown;
  size?: boolean;
  outputShape: number[];
  outputComponent?: number;
  dispatch: [number, number, number];
}

interface TensorInfoLike {
  dataId: object;
  shape: number[];
}

/** The parts of tfjs' WebGPUBackend used here (public at run time). */
interface RecorderInternals {
  device: GPUDevice;
  queue: GPUQueue;
  tensorMap: { get(dataId: object): { resource: unknown } };
  commandQueueOwnedIds: WeakSet<object>;
  activeTimers: unknown[] | null;
  commandEncoder: GPUCommandEncoder | null;
  computePassEncoder: GPUComputePassEncoder | null;
  dispatchCountInPass: number;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  recordAndSubmit(program: ProgramLike, output: TensorInfoLike, inputs: TensorInfoLike[], programDefinedUniform?: UniformValue[]): void;
}

/** Bytes of the persistent uniform buffer: far more than the dispatches of one submit need. */
const ARENA_BYTES = 64 * 1024;
/** Bind groups kept per pipeline before its map is cleared (a bound on memory, not a tuning). */
const BIND_GROUPS_PER_PIPELINE = 512;

const installed = new WeakSet<object>();

/** WebGPU's buffer usage bits used here (the global GPUBufferUsage exists only where WebGPU does). */
const COPY_DST = 0x0008;
const UNIFORM = 0x0040;

/** A GPUBuffer (textures and external textures are bound otherwise and keep tfjs' recording). */
export function isGPUBuffer(resource: unknown): resource is GPUBuffer {
  return typeof GPUBuffer !== 'undefined' && resource instanceof GPUBuffer;
}

/** Shader keys of our own programs start with this (every program in src/kernels/webgpu). */
const OWN_SHADER_PREFIX = 'i2p';

/** Whether `program` is one of ours (src/kernels/webgpu), not one of tfjs' own. */
function isOwnProgram(program: { shaderKey?: string }): boolean {
  return program.shaderKey?.startsWith(OWN_SHADER_PREFIX) === true;
}

/**
 * A tensor's binding: its own bytes of `buffer` (4 per element), not the whole buffer, which the
 * size-class pool may have made larger. tfjs' matmul reads past the end of its second operand and
 * multiplies what it finds by zero; WebGPU keeps a read past a binding within the binding, so
 * bound this way it finds the tensor's own values, as in a buffer of exactly the tensor's size
 * (tfjs' own pool), never what an earlier tensor left there (NaN times zero is NaN).
 */
export function tensorBinding(buffer: GPUBuffer, shape: readonly number[]): GPUBufferBinding {
  const bytes = 4 * tf.util.sizeFromShape(shape as number[]);
  // An empty tensor has no bytes to read, and a binding of none is invalid: bound whole.
  return bytes > 0 ? { buffer, offset: 0, size: Math.min(buffer.size, bytes) } : { buffer };
}

/**
 * Offsets of tfjs' uniform values in its uniform struct (WGSL alignment: 4 bytes for a scalar, 8
 * for a pair, 16 for 3 to 6 values and for anything after a 5- or 6-vector) and the struct's
 * size. Empty values are given one element, as tfjs does.
 */
export function uniformLayout(values: readonly UniformValue[]): { offsets: number[]; size: number } {
  let offset = 0;
  let previous = 0;
  let maxAlign = 1;
  const offsets: number[] = [];
  for (const v of values) {
    const n = v.data.length === 0 ? 1 : v.data.length;
    if (n > 6) throw new Error(`uniformLayout: a ${n}-value uniform is not supported`);
    let align = n === 1 ? 4 : n === 2 ? 8 : 16;
    if (previous === 5 || previous === 6) align = 16;
    if (align > maxAlign) maxAlign = align;
    offset = Math.ceil(offset / align) * align;
    offsets.push(offset);
    offset += n * 4;
    previous = n;
  }
  return { offsets, size: Math.ceil(offset / maxAlign) * maxAlign };
}

/** The uniform values tfjs gives a (non-pixel) program: NaN, Infinity, every shape and its strides, the size, its own. */
function programUniforms(program: ProgramLike, output: TensorInfoLike, inputs: TensorInfoLike[], own: UniformValue[] | undefined): UniformValue[] {
  const values: UniformValue[] = [
    { type: 'float32', data: [NaN] },
    { type: 'float32', data: [Infinity] },
  ];
  for (const t of [...inputs, output]) {
    values.push({ type: 'int32', data: t.shape }, { type: 'int32', data: tf.util.computeStrides(t.shape) });
  }
  if (program.size) {
    const size = tf.util.sizeFromShape(program.outputShape);
    values.push({ type: 'int32', data: [program.outputComponent ? size / program.outputComponent : size] });
  }
  return own ? values.concat(own) : values;
}

/**
 * Replaces the backend's per-dispatch recording as described above. Idempotent. The tfjs flag
 * GPU_RECORD_FLAG, read at each dispatch, switches back to tfjs' own recording.
 */
export function useFastRecording(backend: WebGPUBackend): void {
  const internals = backend as unknown as RecorderInternals;
  if (installed.has(internals)) return;
  installed.add(internals);
  const { device } = internals;
  // Made at the first dispatch recorded here (the backend may never run a program).
  let arenaBuffer: GPUBuffer | null = null;
  const arena = (): GPUBuffer => (arenaBuffer ??= device.createBuffer({ size: ARENA_BYTES, usage: UNIFORM | COPY_DST }));
  const cpu = new ArrayBuffer(ARENA_BYTES);
  const i32 = new Int32Array(cpu);
  const u32 = new Uint32Array(cpu);
  const f32 = new Float32Array(cpu);
  let used = 0;
  const ids = new WeakMap<GPUBuffer, number>();
  let nextId = 0;
  const idOf = (b: GPUBuffer): number => {
    let id = ids.get(b);
    if (id === undefined) ids.set(b, (id = nextId++));
    return id;
  };
  const bindGroups = new WeakMap<GPUComputePipeline, Map<string, GPUBindGroup>>();
  let pass: GPUComputePassEncoder | null = null;
  let passPipeline: GPUComputePipeline | null = null;

  const submit = internals.submitQueue.bind(internals);
  internals.submitQueue = () => {
    // The slots written since the last submit, for the commands about to be submitted.
    if (used > 0) internals.queue.writeBuffer(arena(), 0, cpu, 0, used);
    used = 0;
    submit();
  };

  const tfjsRecord = internals.recordAndSubmit.bind(internals);
  const record = (program: ProgramLike, output: TensorInfoLike, inputs: TensorInfoLike[], own?: UniformValue[]): void => {
    // tfjs sets its own pipeline on the pass.
    passPipeline = null;
    tfjsRecord(program, output, inputs, own);
  };
  internals.recordAndSubmit = (program, output, inputs, own) => {
    if (program.pipeline instanceof Promise || program.pixelsOpType != null || internals.activeTimers != null || !tf.env().getBool(GPU_RECORD_FLAG)) {
      record(program, output, inputs, own);
      return;
    }
    // Our programs index only within their tensors (the kernel tests fill the rest of each buffer
    // with NaN) and bind the whole buffer, so that a buffer keeps its bind groups whatever size of
    // its class it serves; tfjs' programs are bound to their tensors' own bytes (tensorBinding).
    const whole = isOwnProgram(program);
    const bindings: GPUBufferBinding[] = [];
    for (const t of [output, ...inputs]) {
      const resource = internals.tensorMap.get(t.dataId).resource;
      if (!isGPUBuffer(resource)) {
        record(program, output, inputs, own);
        return;
      }
      bindings.push(whole ? { buffer: resource } : tensorBinding(resource, t.shape));
    }
    const values = programUniforms(program, output, inputs, own);
    const { offsets, size } = uniformLayout(values);
    const align = device.limits.minUniformBufferOffsetAlignment;
    let slot = Math.ceil(used / align) * align;
    if (slot + size > ARENA_BYTES) {
      // Full: submit what is recorded (its slots are written first), then start again at 0.
      internals.endComputePassEncoder();
      internals.submitQueue();
      slot = 0;
    }
    values.forEach((v, k) => {
      const at = (slot + offsets[k]) / 4;
      const view = v.type === 'int32' ? i32 : v.type === 'uint32' ? u32 : f32;
      if (v.data.length === 0) view[at] = 1;
      else for (let j = 0; j < v.data.length; j++) view[at + j] = v.data[j];
    });
    used = slot + size;

    const pipeline = program.pipeline;
    let groups = bindGroups.get(pipeline);
    if (!groups) bindGroups.set(pipeline, (groups = new Map()));
    let key = `${slot}:${size}`;
    for (const b of bindings) key += b.size === undefined ? `,${idOf(b.buffer)}` : `,${idOf(b.buffer)}/${b.size}`;
    let bindGroup = groups.get(key);
    if (!bindGroup) {
      if (groups.size >= BIND_GROUPS_PER_PIPELINE) groups.clear();
      const entries: GPUBindGroupEntry[] = bindings.map((resource, binding) => ({ binding, resource }));
      entries.push({ binding: bindings.length, resource: { buffer: arena(), offset: slot, size } });
      bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
      groups.set(key, bindGroup);
    }
    for (const t of inputs) internals.commandQueueOwnedIds.add(t.dataId);
    internals.commandQueueOwnedIds.add(output.dataId);

    internals.ensureCommandEncoderReady();
    if (!internals.computePassEncoder) internals.computePassEncoder = (internals.commandEncoder as GPUCommandEncoder).beginComputePass({});
    const encoder = internals.computePassEncoder;
    if (encoder !== pass) {
      pass = encoder;
      passPipeline = null;
    }
    if (passPipeline !== pipeline) {
      encoder.setPipeline(pipeline);
      passPipeline = pipeline;
    }
    encoder.setBindGroup(0, bindGroup);
    encoder.dispatchWorkgroups(program.dispatch[0], program.dispatch[1], program.dispatch[2]);
    internals.dispatchCountInPass++;
    if ((tf.env().get('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE') as number) <= internals.dispatchCountInPass) {
      internals.endComputePassEncoder();
      internals.submitQueue();
    }
  };
}
