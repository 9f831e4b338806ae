/**
 * Alignment speed: `alignFaces` on N faces in one W x H image (8-bit RGB pixels in memory, so
 * no file decoding is timed), median of repeated calls after a warm-up, for each crop size. The
 * CPU time of the call is printed next to the wall time: on a shared machine it is the steadier
 * measure of the work. A second table times the warps alone (the same crops) with each kernel:
 * WebAssembly SIMD (what runs where available) and the JS fallback. Prints markdown tables for
 * docs/benchmarks.md.
 *
 *   npm run build && node dist/bench/align.js [--faces 100] [--width 1280 --height 720] [--repeats 20]
 */
import * as os from 'os';
import { Command } from 'commander';
import * as tf from '@tensorflow/tfjs';
import { ALIGN_SIZES, AffineWarper, WarpKernel, alignFaces, fitTemplate, projectLandmarks } from '../src/align';
import { machineInfo, median, timeMs } from './common';

interface AlignBenchOptions {
  faces: number;
  width: number;
  height: number;
  repeats: number;
}

/** A textured test image (smooth gradients plus a deterministic pattern), packed RGB. */
function testImage(width: number, height: number): { data: Uint8Array; width: number; height: number; channels: 3 } {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0, o = 0; y < height; y++) {
    for (let x = 0; x < width; x++, o += 3) {
      data[o] = (x * 255) / width;
      data[o + 1] = (y * 255) / height;
      data[o + 2] = (x * 7 + y * 13) & 255;
    }
  }
  return { data, width, height, channels: 3 };
}

/** `n` heads on a grid over the image, turned and tilted a little, at a depth that fills a cell. */
function gridPoses(n: number, width: number, height: number): { pose: number[] }[] {
  const cols = Math.ceil(Math.sqrt((n * width) / height));
  const rows = Math.ceil(n / cols);
  const focal = width + height;
  const tz = (focal / (width / cols)) * 1.2;
  return Array.from({ length: n }, (_, k) => {
    const u = ((k % cols) + 0.5) * (width / cols);
    const v = (Math.floor(k / cols) + 0.5) * (height / rows);
    const turn = ((k * 37) % 100) / 100 - 0.5;
    return { pose: [0.2 * turn, 1.2 * turn, -0.3 * turn, ((u - width / 2) * tz) / focal, ((v - height / 2) * tz) / focal, tz] };
  });
}

async function main(): Promise<void> {
  const opts = new Command('align-bench')
    .option('--faces <n>', 'faces per image', (v) => Number(v), 100)
    .option('--width <w>', 'image width', (v) => Number(v), 1280)
    .option('--height <h>', 'image height', (v) => Number(v), 720)
    .option('--repeats <n>', 'timed calls per size', (v) => Number(v), 20)
    .parse()
    .opts<AlignBenchOptions>();
  const image = testImage(opts.width, opts.height);
  const faces = gridPoses(opts.faces, opts.width, opts.height);
  const tensorsBefore = tf.memory().numTensors;
  const rows: string[] = [];
  for (const size of ALIGN_SIZES) {
    for (let i = 0; i < 3; i++) await alignFaces(image, faces, { size });
    const times: number[] = [];
    const cpu: number[] = [];
    for (let i = 0; i < opts.repeats; i++) {
      const c0 = process.cpuUsage();
      times.push(await timeMs(() => alignFaces(image, faces, { size })));
      const c = process.cpuUsage(c0);
      cpu.push((c.user + c.system) / 1000);
    }
    const ms = median(times);
    const cpuMs = median(cpu);
    rows.push(
      `| ${opts.faces} | ${opts.width}x${opts.height} | ${size}x${size} | ${ms.toFixed(1)} ms (${Math.min(...times).toFixed(1)}–${Math.max(...times).toFixed(1)}) | ${cpuMs.toFixed(1)} ms | ${(cpuMs / opts.faces).toFixed(3)} ms |`,
    );
  }
  if (tf.memory().numTensors !== tensorsBefore) throw new Error('alignFaces left tensors behind');
  const kernelRows: string[] = [];
  for (const size of ALIGN_SIZES) {
    const transforms = faces.map((f) => fitTemplate(projectLandmarks(f.pose, opts.width, opts.height), size).transform);
    const cells = (['simd', 'js'] as WarpKernel[]).map((kernel) => {
      const warpAll = (): void => {
        const warper = new AffineWarper(image, kernel);
        for (const m of transforms) warper.warp(m, size);
      };
      for (let i = 0; i < 3; i++) warpAll();
      const cpu: number[] = [];
      for (let i = 0; i < opts.repeats; i++) {
        const c0 = process.cpuUsage();
        warpAll();
        const c = process.cpuUsage(c0);
        cpu.push((c.user + c.system) / 1000);
      }
      return `${median(cpu).toFixed(1)} ms (min ${Math.min(...cpu).toFixed(1)})`;
    });
    kernelRows.push(`| ${opts.faces} | ${size}x${size} | ${cells.join(' | ')} |`);
  }
  const m = machineInfo();
  const load = os.loadavg().map((l) => l.toFixed(1)).join(' ');
  console.log(`${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}, Node ${m.node}; load average ${load}; ${m.date}; \`${m.command}\`\n`);
  console.log('| faces | image | crop | wall per call, median (range) | CPU per call, median | CPU per face |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) console.log(r);
  console.log('\nThe warps alone (same crops), CPU per call:\n');
  console.log('| crops | crop | WebAssembly SIMD, median (min) | JS kernel, median (min) |');
  console.log('|---|---|---|---|');
  for (const r of kernelRows) console.log(r);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
