// Golden end-to-end cases on the webgpu backend (issue 6), with the CPU suite's tolerances:
// detections scoring >= 0.1 matched greedily by IoU >= 0.95, >= 98% matched both ways, matched
// scores within 1e-3, rotations within 1e-3 rad, translations within 1e-3 relative, boxes within
// 1 px, and equal counts of faces scoring >= 0.5. Runs every case with the stock kernels
// ('portable') and with ours ('webgpu'), then checks that batches equal one-by-one runs.
// Bundled (see GPU_NOTES.md), run from the repo root on the device: node .gpu/app/check.mjs
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { parseNpy } from '../converter/npy';
import { formulaWeights } from '../src/formula_weights';
import { decodeImage } from '../src/io';
import { Img2PoseModel, RawDetections } from '../src/model';
import { initWebGPUBackend, KernelMode, setKernelMode } from '../src/webgpu';

const GOLDEN = path.join(process.cwd(), '__tests__', 'fixtures', 'golden');

interface Case {
  id: string;
  mode: 'single' | 'batch';
  image?: string;
  images?: string[];
  min_size: number;
  max_size: number;
  files?: Record<string, string>;
  'num_faces_t0.5'?: number;
  per_image?: { files: Record<string, string>; 'faces_t0.5': unknown[] }[];
}

function npy(file: string): Float64Array {
  const a = parseNpy(fs.readFileSync(path.join(GOLDEN, file)), file);
  return Float64Array.from(a.data as ArrayLike<number>);
}

function goldenFinal(files: Record<string, string>): RawDetections {
  return {
    boxes: Float32Array.from(npy(files.final_boxes)),
    scores: Float32Array.from(npy(files.final_scores)),
    dofs: npy(files.final_dofs),
  };
}

function iou(a: ArrayLike<number>, ai: number, b: ArrayLike<number>, bi: number): number {
  const [ax1, ay1, ax2, ay2] = [a[ai * 4], a[ai * 4 + 1], a[ai * 4 + 2], a[ai * 4 + 3]];
  const [bx1, by1, bx2, by2] = [b[bi * 4], b[bi * 4 + 1], b[bi * 4 + 2], b[bi * 4 + 3]];
  const iw = Math.max(0, Math.min(ax2, bx2) - Math.max(ax1, bx1));
  const ih = Math.max(0, Math.min(ay2, by2) - Math.max(ay1, by1));
  const inter = iw * ih;
  const union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter;
  return union > 0 ? inter / union : 0;
}

export interface Comparison {
  ok: boolean;
  detail: string;
}

/** The end-to-end tolerance of fixtures/README.md, ours vs reference. */
export function compareDetections(ours: RawDetections, ref: RawDetections): Comparison {
  const keep = (d: RawDetections): number[] =>
    Array.from(d.scores.keys()).filter((i) => d.scores[i] >= 0.1).sort((i, j) => d.scores[j] - d.scores[i]);
  const o = keep(ours);
  const r = keep(ref);
  const used = new Set<number>();
  const pairs: [number, number][] = [];
  for (const ri of r) {
    let best = -1;
    let bestIou = 0.95;
    for (const oi of o) {
      if (used.has(oi)) continue;
      const v = iou(ours.boxes, oi, ref.boxes, ri);
      if (v >= bestIou) {
        bestIou = v;
        best = oi;
      }
    }
    if (best >= 0) {
      used.add(best);
      pairs.push([best, ri]);
    }
  }
  let dScore = 0;
  let dRot = 0;
  let dTrans = 0;
  let dBox = 0;
  for (const [oi, ri] of pairs) {
    dScore = Math.max(dScore, Math.abs(ours.scores[oi] - ref.scores[ri]));
    for (let k = 0; k < 3; k++) dRot = Math.max(dRot, Math.abs(ours.dofs[oi * 6 + k] - ref.dofs[ri * 6 + k]));
    let num = 0;
    let den = 0;
    for (let k = 3; k < 6; k++) {
      num += (ours.dofs[oi * 6 + k] - ref.dofs[ri * 6 + k]) ** 2;
      den += ref.dofs[ri * 6 + k] ** 2;
    }
    dTrans = Math.max(dTrans, Math.sqrt(num / Math.max(den, 1e-12)));
    for (let k = 0; k < 4; k++) dBox = Math.max(dBox, Math.abs(ours.boxes[oi * 4 + k] - ref.boxes[ri * 4 + k]));
  }
  const faces = (d: RawDetections): number => d.scores.filter((s) => s >= 0.5).length;
  const fracRef = r.length ? pairs.length / r.length : 1;
  const fracOurs = o.length ? pairs.length / o.length : 1;
  const ok = fracRef >= 0.98 && fracOurs >= 0.98 && dScore <= 1e-3 && dRot <= 1e-3 && dTrans <= 1e-3 && dBox <= 1 &&
    faces(ours) === faces(ref);
  const detail = `n>=0.1 ours ${o.length} ref ${r.length} matched ${pairs.length} (${(100 * Math.min(fracRef, fracOurs)).toFixed(1)}%) ` +
    `faces>=0.5 ${faces(ours)}/${faces(ref)} max|dscore| ${dScore.toExponential(1)} max|drot| ${dRot.toExponential(1)} ` +
    `max rel dt ${dTrans.toExponential(1)} max|dbox| ${dBox.toFixed(3)}`;
  return { ok, detail };
}

async function main(): Promise<void> {
  const adapter = await initWebGPUBackend();
  console.log('backend', JSON.stringify(adapter));
  const manifest = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'manifest.json'), 'utf8')) as { cases: Case[] };
  const singles = new Map(manifest.cases.filter((c) => c.mode === 'single').map((c) => [`${c.image}@${c.min_size}`, c]));
  const weights = formulaWeights();
  const model = new Img2PoseModel(weights);
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
  const modes: KernelMode[] = process.argv.includes('--webgpu-only') ? ['webgpu'] : ['portable', 'webgpu'];
  for (const mode of modes) {
    setKernelMode(mode);
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
  model.dispose();
  tf.dispose([...images.values(), ...weights.tensors.values()]);
  console.log(`\n${failures === 0 ? 'ALL PASS' : `${failures} FAILED`}; tensors alive after disposing everything: ${tf.memory().numTensors}`);
  process.exit(failures === 0 ? 0 : 1);
}

// Also imported by bench/gpu.ts for compareDetections: run only as the entry point (check.mjs).
if (/check\.(mjs|js|ts)$/.test(process.argv[1] ?? '')) {
  main().catch((e: unknown) => {
    console.error(e);
    process.exit(2);
  });
}
