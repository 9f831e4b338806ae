// Golden end-to-end cases on the webgpu backend, with the CPU suite's tolerances:
// detections scoring >= 0.1 matched greedily by IoU >= 0.95, >= 98% matched both ways, matched
// scores within 1e-3, rotations within 1e-3 rad, translations within 1e-3 relative, boxes within
// 1 px, and equal counts of faces scoring >= 0.5. Runs every case with the stock kernels
// ('portable') and with ours ('webgpu'), then checks that batches equal one-by-one runs (a batch's
// host stages on 8 worker threads, as the detector runs them on a GPU backend).
// Bundled (`npm run gpu:bundle`, docs/webgpu.md), run from the repo root on the device:
//   node .gpu/app/check.mjs [--webgpu-only]
// (with F(4x4, 3x3) Winograd: IMG2POSE_WINOGRAD_TILE=4 node .gpu/app/check.mjs, see gpu_flags.ts)
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { applyBackendFlags, winogradSetting } from './gpu_flags';
import { Command } from 'commander';
import { GOLDEN, loadNpy, manifest as goldenManifest } from '../__tests__/utils/golden';
import { failures, matchDetections, pct, sci } from './match';
import { formulaWeights } from '../src/io/formula_weights';
import { decodeImage } from '../src/io/images';
import { Img2PoseModel, RawDetections } from '../src/model/model';
import { activeRuntime } from '../src/runtime/runtime';
import { initWebGPUBackend, KernelMode, useGpuPool } from '../src/kernels/webgpu';

function npy(file: string): Float64Array {
  return Float64Array.from(loadNpy(file).data as ArrayLike<number>);
}

function goldenFinal(files: Record<string, string>): RawDetections {
  return {
    boxes: Float32Array.from(npy(files.final_boxes)),
    scores: Float32Array.from(npy(files.final_scores)),
    dofs: npy(files.final_dofs),
  };
}

export interface Comparison {
  ok: boolean;
  detail: string;
}

/** The end-to-end tolerance of fixtures/README.md, ours vs reference (the project's one matcher). */
export function compareDetections(ours: RawDetections, ref: RawDetections): Comparison {
  const r = matchDetections(ours, ref);
  const bad = failures(r);
  const detail =
    `dets ours ${r.ours} ref ${r.ref}, matched (>=0.1) ours ${pct(r.matchedOurs)} ref ${pct(r.matchedRef)} ` +
    `faces>=0.5 ${r.oursAbove05}/${r.refAbove05} max|dscore| ${sci(r.maxScoreDiff)} max|drot| ${sci(r.maxRotDiff)} ` +
    `max rel dt ${sci(r.maxTransRel)} max|dbox| ${r.maxBoxDiff.toFixed(3)}` + (bad.length ? ` FAILS: ${bad.join(', ')}` : '');
  return { ok: bad.length === 0, detail };
}

async function main(opts: { webgpuOnly: boolean }): Promise<void> {
  const adapter = await initWebGPUBackend();
  applyBackendFlags();
  // As Img2Pose.load sets it up (IMG2POSE_GPU_POOL=exact keeps tfjs' own pooling).
  if (process.env.IMG2POSE_GPU_POOL !== 'exact') useGpuPool(Number(process.env.IMG2POSE_GPU_POOL_GIB ?? 8) * 2 ** 30);
  console.log('backend', JSON.stringify(adapter));
  console.log(winogradSetting());
  const manifest = goldenManifest();
  const singles = new Map(manifest.cases.filter((c) => c.mode === 'single').map((c) => [`${c.image}@${c.min_size}`, c]));
  const weights = formulaWeights();
  process.env.IMG2POSE_WORKER_SCRIPT ??= path.join(process.cwd(), '.gpu', 'app', 'worker.mjs');
  let model = new Img2PoseModel(weights, activeRuntime({ hostThreads: 8 }));
  console.log(`batches' host stages on worker threads: ${model.usesHostThreads}`);
  const images = new Map<string, tf.Tensor3D>();
  const image = async (name: string): Promise<tf.Tensor3D> => {
    let t = images.get(name);
    if (!t) {
      t = await decodeImage(fs.readFileSync(path.join(GOLDEN, name)));
      images.set(name, t);
    }
    return t;
  };
  let failures = 0;
  const report = (name: string, c: Comparison): void => {
    if (!c.ok) failures++;
    console.log(`${c.ok ? 'PASS' : 'FAIL'} ${name.padEnd(44)} ${c.detail}`);
  };
  const modes: KernelMode[] = opts.webgpuOnly ? ['webgpu'] : ['portable', 'webgpu'];
  for (const mode of modes) {
    await model.dispose();
    model = new Img2PoseModel(weights, activeRuntime({ hostThreads: 8, kernels: mode }));
    const oneByOne = new Map<string, RawDetections>();
    for (const c of manifest.cases) {
      const config = { minSize: c.min_size, maxSize: c.max_size };
      if (c.mode === 'single' && c.image && c.files) {
        const t0 = performance.now();
        const [ours] = await model.predict([await image(c.image)], config);
        const ms = performance.now() - t0;
        oneByOne.set(`${c.image}@${c.min_size}`, ours);
        report(`[${mode}] ${c.id} (${ms.toFixed(0)} ms)`, compareDetections(ours, goldenFinal(c.files)));
      }
    }
    for (const c of manifest.cases) {
      if (c.mode !== 'batch' || !c.images || !c.per_image) continue;
      const config = { minSize: c.min_size, maxSize: c.max_size };
      const batch = await model.predict(await Promise.all(c.images.map(image)), config);
      c.images.forEach((name, i) => {
        const key = `${name}@${c.min_size}`;
        const single = oneByOne.get(key);
        // Ours is built so that a batch equals one-by-one runs; upstream's padded batches differ
        // from its own singles whenever sizes differ, so the reference is its single case.
        const ref = singles.get(key);
        if (single) report(`[${mode}] ${c.id}[${i}] vs our one-by-one`, compareDetections(batch[i], single));
        if (ref?.files) report(`[${mode}] ${c.id}[${i}] vs golden single`, compareDetections(batch[i], goldenFinal(ref.files)));
        const upstreamBatch = compareDetections(batch[i], goldenFinal(c.per_image![i].files));
        console.log(`info [${mode}] ${c.id}[${i}] vs upstream's batch run: ${upstreamBatch.detail}`);
      });
    }
  }
  await model.dispose();
  tf.dispose([...images.values(), ...weights.tensors.values()]);
  console.log(`\n${failures === 0 ? 'ALL PASS' : `${failures} FAILED`}; tensors alive after disposing everything: ${tf.memory().numTensors}`);
  process.exit(failures === 0 ? 0 : 1);
}

// Also imported by bench/gpu.ts for compareDetections: run only as the entry point (check.mjs).
if (/check\.(mjs|js|ts)$/.test(process.argv[1] ?? '')) {
  const opts = new Command('check.mjs')
    .description("the golden end-to-end cases on the webgpu backend, with the stock kernels and with ours")
    .option('--webgpu-only', 'only with our kernels', false)
    .parse(process.argv)
    .opts<{ webgpuOnly: boolean }>();
  main(opts).catch((e: unknown) => {
    console.error(e);
    process.exit(2);
  });
}
