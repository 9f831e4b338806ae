// A service's stream on the GPU: single images of random sizes (sides drawn from 100..2000 px,
// the upstream photo resampled to each size), one predict each, as a server sees them. Prints
// ms per image (mean, median, by quarter of the stream), the tfjs buffer pool after every
// `--every` images, and what the first sight of a size costs: buffers created (count, bytes,
// host time) and pipelines compiled. `bench/upstream_gpu_stream.py` runs upstream on the same sizes.
// Bundled with `npm run gpu:bundle`; on the device, from the repo root:
//   node .gpu/app/stream.mjs [options]   (--help lists them)
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { applyBackendFlags } from './gpu_flags';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { formulaWeights } from '../src/io/formula_weights';
import { Face, Img2Pose } from '../src/detector';
import type { RawImage } from '../src/io/images';
import { decodeImage } from '../src/io/images';
import { Img2PoseModel } from '../src/model/model';
import { activeRuntime } from '../src/runtime/runtime';
import { gpuMemory, initWebGPUBackend, useSizeClassPool, trimPool, DEFAULT_POOL_LIMIT } from '../src/kernels/webgpu';
import { streamSizes } from './stream_sizes';
import { hostPieces, startCpuProfile } from './cpu_profile';
import { countDispatches } from './dispatch_count';
import { NetworkImage, resizedSize } from '../src/model/transform';

const GiB = 2 ** 30;

function positive(v: string): number {
  const n = Number(v);
  if (!(n > 0)) throw new InvalidArgumentError(`expected a number > 0, got ${v}`);
  return n;
}

function positiveInt(v: string): number {
  const n = positive(v);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`expected an integer > 0, got ${v}`);
  return n;
}

const opts = new Command('stream.mjs')
  .description('a stream of single images of random sizes through one model, as a service sees them')
  .option('--images <n>', 'images in the stream', positiveInt, 120)
  .option('--seed <n>', 'seed of the random sizes', positiveInt, 1)
  .addOption(new Option('--pool <kind>', "buffer pooling: size classes (the library's) or tfjs' exact sizes").choices(['classes', 'exact']).default('classes'))
  .option('--limit-gib <n>', 'free buffers the size-class pool keeps', positive, DEFAULT_POOL_LIMIT / GiB)
  .option('--passes <n>', 'passes over the same sizes', positiveInt, 1)
  .option('--every <n>', 'print the pool every n images', positiveInt, 20)
  .option('--batch <n>', 'images per predict', positiveInt, 1)
  .option('--min-size <n>', 'input transform min size', positiveInt, 640)
  .option('--max-size <n>', 'input transform max size', positiveInt, 1400)
  .addOption(new Option('--input <kind>', "images as decoded 8-bit samples (what the detector hands over for files and bytes) or int32 tensors").choices(['bytes', 'int32']).default('bytes'))
  .option('--in-flight <n>', 'after the passes, the same images with up to n predicts in flight at once (a service answering concurrent requests): ms per image of wall time', positiveInt, 1)
  .option('--detector-in-flight <n>', "as --in-flight, through a detector's detectFaces (which runs up to two forwards at once on webgpu) with n callers: ms per image of wall time", positiveInt, 1)
  .option('--json <file>', 'also write the report as JSON')
  .option('--cpu-profile <file>', "sample the main thread over the last pass, write the .cpuprofile here and print the host's pieces")
  .parse(process.argv)
  .opts<{ images: number; seed: number; pool: 'classes' | 'exact'; limitGib: number; passes: number; every: number; batch: number; minSize: number; maxSize: number; inFlight: number; detectorInFlight: number; json?: string; cpuProfile?: string; input: 'bytes' | 'int32' }>();
const CONFIG = { minSize: opts.minSize, maxSize: opts.maxSize };

/** `src` (HWC RGB bytes) resampled to h x w, nearest neighbour (the content only needs to be photo-like). */
function resample(src: ArrayLike<number>, sh: number, sw: number, h: number, w: number): Uint8Array {
  const out = new Uint8Array(h * w * 3);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(sh - 1, Math.floor(((y + 0.5) * sh) / h));
    for (let x = 0; x < w; x++) {
      const sx = Math.min(sw - 1, Math.floor(((x + 0.5) * sw) / w));
      const s = (sy * sw + sx) * 3;
      const o = (y * w + x) * 3;
      out[o] = src[s];
      out[o + 1] = src[s + 1];
      out[o + 2] = src[s + 2];
    }
  }
  return out;
}

/** An image as the stream hands it to the model (--input). */
function networkImage(rgb: Uint8Array, height: number, width: number): NetworkImage {
  return opts.input === 'bytes' ? { data: rgb, height, width, channels: 3 } : tf.tensor3d(Int32Array.from(rgb), [height, width, 3], 'int32');
}

interface Counters {
  buffers: number;
  bytes: number;
  ms: number;
  bindGroups: number;
  bindGroupMs: number;
}

/** `f` wrapped so that each call's host time goes to `took(ms, args)`. */
function timed<A extends unknown[], R>(f: (...args: A) => R, took: (ms: number, ...args: A) => void): (...args: A) => R {
  return (...args: A): R => {
    const t = performance.now();
    const r = f(...args);
    took(performance.now() - t, ...args);
    return r;
  };
}

/** Counts and times the device's buffer and bind group creations. */
function countCreations(device: GPUDevice): Counters {
  const c: Counters = { buffers: 0, bytes: 0, ms: 0, bindGroups: 0, bindGroupMs: 0 };
  device.createBuffer = timed(device.createBuffer.bind(device), (ms, desc: GPUBufferDescriptor) => {
    c.ms += ms;
    c.buffers++;
    c.bytes += desc.size;
  });
  device.createBindGroup = timed(device.createBindGroup.bind(device), (ms) => {
    c.bindGroupMs += ms;
    c.bindGroups++;
  });
  return c;
}

/** `work(i)` for i = 0 .. count - 1, taken in order by `callers` loops running at once. */
async function concurrently(count: number, callers: number, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const caller = async (): Promise<void> => {
    while (next < count) await work(next++);
  };
  await Promise.all(Array.from({ length: callers }, caller));
}

/** FNV-1a over the bytes of `a`, continuing from `h`: equal results give equal digests. */
function fnv(h: number, a: ArrayLike<number> & { buffer: ArrayBufferLike; byteOffset: number; byteLength: number }): number {
  const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193) >>> 0;
  return h;
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length ? s[s.length >> 1] : NaN;
}

/** The stream through `Img2Pose.detectFaces`, with 1 and then --detector-in-flight callers at once. */
async function detectorInFlight(sizes: [number, number][], photo: Uint8Array, ph: number, pw: number): Promise<void> {
  const weights = formulaWeights();
  // The network as load builds it for webgpu with one thread, on the backend this script set up.
  const network = new Img2PoseModel(weights, activeRuntime({ hostThreads: 0, kernels: 'webgpu' }));
  tf.dispose([...weights.tensors.values()]);
  const detector = new Img2Pose(network, { minSize: opts.minSize, maxSize: opts.maxSize, scoreThreshold: 0.05 }, 'webgpu');
  const images: RawImage[] = sizes.map(([h, w]) => ({ data: resample(photo, ph, pw, h, w), height: h, width: w, channels: 3 }));
  await detector.detectFaces(images[0]);
  for (const callers of [1, opts.detectorInFlight]) {
    const results: Face[][] = new Array(images.length);
    const t0 = performance.now();
    await concurrently(images.length, callers, async (i) => {
      results[i] = await detector.detectFaces(images[i]);
    });
    const wall = performance.now() - t0;
    let digest = 0x811c9dc5;
    for (const faces of results) for (const f of faces) digest = fnv(digest, Float64Array.from([...f.box, f.confidence, ...f.pose]));
    console.log(`detector, ${callers} caller(s): ${(wall / images.length).toFixed(2)} ms per image of wall time over ${images.length} images, pool ${(gpuMemory().allocated / GiB).toFixed(2)} GiB, digest ${digest.toString(16)}`);
  }
  await detector.dispose();
}

async function main(): Promise<void> {
  const adapter = await initWebGPUBackend();
  applyBackendFlags();
  console.log('backend', JSON.stringify(adapter), new Date().toISOString());
  const backend = tf.backend() as unknown as WebGPUBackend;
  const pipelines = (): number => Object.keys((backend as unknown as { pipelineCache: object }).pipelineCache).length;
  const pool = opts.pool;
  const limit = opts.limitGib * GiB;
  if (pool === 'classes') useSizeClassPool(backend, limit);
  const counters = countCreations(backend.device);
  const n = opts.images;
  const batch = opts.batch;
  const sizes = streamSizes(n, opts.seed);
  const photoT = decodeImage(fs.readFileSync(path.join(process.cwd(), '__tests__', 'fixtures', 'golden', 'teaser.png')));
  const photo = Uint8Array.from((await photoT).dataSync());
  const [ph, pw] = (await photoT).shape;
  const weights = formulaWeights();
  const model = new Img2PoseModel(weights, activeRuntime({ hostThreads: 0, kernels: 'webgpu' }));
  tf.dispose([...weights.tensors.values()]);
  const every = opts.every;
  const passes = opts.passes;
  const report: Record<string, unknown>[] = [];
  // Warm-up on the photo itself: compiles the common pipelines, as a service's first call would.
  const warm = networkImage(photo, ph, pw);
  await model.predict([warm], CONFIG);
  if (warm instanceof tf.Tensor) warm.dispose();
  const base: number[] = [];
  const groupsBefore = counters.bindGroups;
  for (let r = 0; r < 10; r++) {
    const img = networkImage(photo, ph, pw);
    const t0 = performance.now();
    await model.predict([img], CONFIG);
    base.push(performance.now() - t0);
    if (img instanceof tf.Tensor) img.dispose();
  }
  console.log(`photo ${ph}x${pw} repeated: median ${median(base).toFixed(1)} ms, ${(counters.bindGroups - groupsBefore) / 10} bind groups made per forward`);
  for (let pass = 0; pass < passes; pass++) {
    const times: number[] = [];
    let digest = 0x811c9dc5;
    const poolCurve: string[] = [];
    const firstSight = { ...counters, pipelines: pipelines() };
    const profiler = opts.cpuProfile && pass === passes - 1 ? await startCpuProfile(opts.cpuProfile) : null;
    const perImage: { size: number[]; input: number[]; ms: number; detections: number; dispatches: number }[] = [];
    const dispatches = countDispatches();
    for (let i = 0; i < n; i += batch) {
      const imgs = sizes.slice(i, i + batch).map(([h, w]) => networkImage(resample(photo, ph, pw, h, w), h, w));
      const t0 = performance.now();
      const before = dispatches.total();
      const out = await model.predict(imgs, CONFIG);
      const ms = performance.now() - t0;
      const dispatched = (dispatches.total() - before) / imgs.length;
      times.push(ms / imgs.length);
      out.forEach((d, k) => {
        for (const a of [d.boxes, d.scores, d.dofs]) digest = fnv(digest, a);
        const [h, w] = sizes[i + k];
        perImage.push({ size: [h, w], input: resizedSize(h, w, CONFIG.minSize, CONFIG.maxSize), ms: +(ms / imgs.length).toFixed(2), detections: d.scores.length, dispatches: dispatched });
      });
      imgs.forEach((img) => img instanceof tf.Tensor && img.dispose());
      if ((i + batch) % every < batch) {
        const m = gpuMemory();
        poolCurve.push(`${i + batch}:${(m.allocated / GiB).toFixed(2)}`);
      }
    }
    const q = Math.ceil(times.length / 4);
    const quarters = [0, 1, 2, 3].map((k) => times.slice(k * q, (k + 1) * q)).map((v) => (v.reduce((a, b) => a + b, 0) / v.length).toFixed(1));
    const mean = times.reduce((a, b) => a + b, 0) / times.length;
    const line = {
      pool, input: opts.input, limitGiB: limit / GiB, pass, images: n, batch,
      meanMs: +mean.toFixed(2), medianMs: +median(times).toFixed(2), quarterMeansMs: quarters.join('/'),
      buffersCreated: counters.buffers - firstSight.buffers, bytesCreatedGiB: +((counters.bytes - firstSight.bytes) / GiB).toFixed(2),
      createMs: +(counters.ms - firstSight.ms).toFixed(1),
      bindGroupsPerImage: +((counters.bindGroups - firstSight.bindGroups) / n).toFixed(1), bindGroupMsPerImage: +((counters.bindGroupMs - firstSight.bindGroupMs) / n).toFixed(2),
      pipelinesCompiled: pipelines() - firstSight.pipelines,
      digest: digest.toString(16),
      poolGiB: poolCurve.join(' '), inUseGiB: +(gpuMemory().inUse / GiB).toFixed(2), tensors: tf.memory().numTensors,
    };
    dispatches.restore();
    console.log(`dispatches per image: ${dispatches.total() / n} (${[...dispatches.byProgram].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${(v / n).toFixed(1)}`).join(', ')})`);
    if (profiler) {
      const host = hostPieces(await profiler.stop(), n);
      console.log(`host ms per image (under the sampling profiler): ${Object.entries(host).map(([k, v]) => `${k} ${v.toFixed(1)}`).join('; ')}`);
    }
    report.push({ ...line, perImage });
    console.log(`stream ${JSON.stringify(line)}`);
  }
  for (const inFlight of opts.inFlight > 1 ? Array.from({ length: opts.inFlight }, (_, i) => i + 1) : []) {
    // The images made up front (resampling is the bench's own work); the digest combines the
    // results in stream order, so it equals the sequential pass's when every result is the same.
    const images = sizes.map(([h, w]) => ({ rgb: resample(photo, ph, pw, h, w), h, w }));
    const results: Array<Array<Float32Array | Float64Array>> = new Array(n);
    const t0 = performance.now();
    await concurrently(n, inFlight, async (i) => {
      const img = networkImage(images[i].rgb, images[i].h, images[i].w);
      const [d] = await model.predict([img], CONFIG);
      results[i] = [d.boxes, d.scores, d.dofs];
      if (img instanceof tf.Tensor) img.dispose();
    });
    const wall = performance.now() - t0;
    let digest = 0x811c9dc5;
    for (const r of results) for (const a of r) digest = fnv(digest, a);
    console.log(`in flight ${inFlight}: ${(wall / n).toFixed(2)} ms per image of wall time over ${n} images, pool ${(gpuMemory().allocated / GiB).toFixed(2)} GiB, digest ${digest.toString(16)}`);
  }
  await model.dispose();
  if (opts.detectorInFlight > 1) await detectorInFlight(sizes, photo, ph, pw);
  const freed = trimPool(backend, true);
  console.log(`after dispose: pool ${(gpuMemory().allocated / GiB).toFixed(2)} GiB (${(freed / GiB).toFixed(2)} GiB freed), in use ${(gpuMemory().inUse / GiB).toFixed(3)} GiB, tensors ${tf.memory().numTensors}`);
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ adapter, report }, null, 1));
  process.exit(0);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(2);
});
