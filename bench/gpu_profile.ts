// Where a single image's time goes on the GPU: after warm-up forwards, times N single-image
// forwards of the photo, counts the WebGPU dispatches per forward by program, and (with
// --cpu-profile) samples the main thread over the timed forwards and sums the time of the host's
// pieces: tfjs' dispatch recording, proposal filtering, post-processing, readbacks.
// Bundled with `npm run gpu:bundle`; on the device, from the repo root:
//   node .gpu/app/profile.mjs [options]   (--help lists them)
import * as fs from 'fs';
import * as tf from '@tensorflow/tfjs';
import { Command, InvalidArgumentError } from 'commander';
import { applyBackendFlags } from './gpu_flags';
import { formulaWeights } from '../src/io/formula_weights';
import { decodeImage } from '../src/io/images';
import { Img2PoseModel } from '../src/model/model';
import { activeRuntime } from '../src/runtime/runtime';
import { initWebGPUBackend, useGpuPool } from '../src/kernels/webgpu';
import { hostPieces, startCpuProfile } from './cpu_profile';
import { countDispatches } from './dispatch_count';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!(Number.isInteger(n) && n > 0)) throw new InvalidArgumentError(`expected an integer > 0, got ${v}`);
  return n;
}

const opts = new Command('profile.mjs')
  .description('single-image forwards of the photo: time, dispatches per program, host time by piece')
  .option('--forwards <n>', 'timed forwards', positiveInt, 40)
  .option('--warmup <n>', 'forwards before timing', positiveInt, 8)
  .option('--photo <file>', 'image to run', '.gpu/teaser.jpeg')
  .option('--cpu-profile <file>', 'sample the timed forwards and write the .cpuprofile here')
  .option('--min-size <n>', 'input transform min size', positiveInt, 640)
  .option('--max-size <n>', 'input transform max size', positiveInt, 1400)
  .parse()
  .opts<{ forwards: number; warmup: number; photo: string; cpuProfile?: string; minSize: number; maxSize: number }>();

async function main(): Promise<void> {
  const adapter = await initWebGPUBackend();
  applyBackendFlags();
  useGpuPool();
  console.log('backend', JSON.stringify(adapter));
  const model = new Img2PoseModel(formulaWeights(), activeRuntime({ hostThreads: 0, kernels: 'webgpu' }));
  const photo = (await decodeImage(fs.readFileSync(opts.photo))) as tf.Tensor3D;
  const config = { minSize: opts.minSize, maxSize: opts.maxSize };
  for (let i = 0; i < opts.warmup; i++) await model.predict([photo], config);

  const dispatches = countDispatches();
  const profiler = opts.cpuProfile ? await startCpuProfile(opts.cpuProfile) : null;
  const times: number[] = [];
  for (let i = 0; i < opts.forwards; i++) {
    const t0 = performance.now();
    await model.predict([photo], config);
    times.push(performance.now() - t0);
  }
  let host: Record<string, number> | null = null;
  if (profiler) host = hostPieces(await profiler.stop(), opts.forwards);
  dispatches.restore();
  times.sort((a, b) => a - b);
  console.log(`single image ${photo.shape[1]}x${photo.shape[0]}: median ${times[times.length >> 1].toFixed(1)} ms, min ${times[0].toFixed(1)} ms over ${opts.forwards} forwards`);
  console.log(`dispatches per forward: ${dispatches.total() / opts.forwards} (${[...dispatches.byProgram].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v / opts.forwards}`).join(', ')})`);
  if (host) console.log(`host ms per forward (under the sampling profiler): ${Object.entries(host).map(([k, v]) => `${k} ${v.toFixed(1)}`).join('; ')}`);
  photo.dispose();
  await model.dispose();
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
