/**
 * The stride-1 3x3 convolutions of the network at the default size (one 640x1152 input), direct
 * (tfjs-wasm's XNNPACK convolution) against our Winograd F(4x4, 3x3) on wasm, alternated round by
 * round; with the two outputs' relative difference.
 *
 *   npm run build && node dist/bench/wasm_conv.js [--repeats 5] [--shapes 160x288x256,...]
 */
import * as os from 'os';
import { Command } from 'commander';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { conv2dWinogradWasm, releaseWasmWinograd } from '../src/kernels/wasm/winograd';
import { machineInfo, markdownTable, median, timeMs } from './common';

/** H x W x channels of each layer kind at the default size, and how many such convs a forward runs. */
const LAYERS: [string, string][] = [
  ['160x288x64', 'layer1 (4 convs)'],
  ['80x144x128', 'layer2 (3)'],
  ['40x72x256', 'layer3 (3); FPN P4; RPN P4'],
  ['20x36x512', 'layer4 (3): kept direct'],
  ['160x288x256', 'FPN P2; RPN P2'],
  ['80x144x256', 'FPN P3; RPN P3'],
  ['20x36x256', 'FPN P5; RPN P5'],
  ['10x18x256', 'RPN pool level'],
];

function lcg(n: number, seed: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 31 - 1) * scale;
  }
  return out;
}

async function main(): Promise<void> {
  const cmd = new Command('wasm_conv')
    .option('--repeats <n>', 'timed rounds (median reported)', (v) => Number(v), 5)
    .option('--shapes <list>', 'HxWxC list (default: the network\'s layers)');
  cmd.parse(process.argv, { from: 'node' });
  const o = cmd.opts<{ repeats: number; shapes?: string }>();
  await tf.setBackend('wasm');
  await tf.ready();
  const layers = o.shapes ? o.shapes.split(',').map((s) => [s, ''] as [string, string]) : LAYERS;
  const rows: string[][] = [];
  const loads: number[] = [];
  for (const [shape, name] of layers) {
    const [h, w, c] = shape.split('x').map(Number);
    const x = tf.tensor4d(lcg(h * w * c, 1, 1), [1, h, w, c]);
    const filter = tf.tensor4d(lcg(9 * c * c, 2, Math.sqrt(3 / (9 * c))), [3, 3, c, c]);
    const bias = tf.tensor1d(lcg(c, 3, 0.1));
    const direct = () => tf.fused.conv2d({ x, filter, strides: 1, pad: 1, bias, activation: 'relu' });
    const winograd = () => conv2dWinogradWasm(x, filter, bias, true);
    const time = async (fn: () => tf.Tensor): Promise<number> =>
      timeMs(async () => {
        const y = fn();
        await y.data();
        y.dispose();
      });
    // Warm-up: XNNPACK packs each filter on first use, and U is made then.
    const a = direct();
    const b = winograd();
    const diff = tf.tidy(() => tf.div(tf.norm(tf.sub(a, b)), tf.norm(a)).dataSync()[0]);
    tf.dispose([a, b]);
    const td: number[] = [];
    const tw: number[] = [];
    for (let r = 0; r < o.repeats; r++) {
      loads.push(os.loadavg()[0]);
      td.push(await time(direct));
      tw.push(await time(winograd));
    }
    const flops = 2 * h * w * 9 * c * c;
    rows.push([
      shape, name, median(td).toFixed(1), (flops / median(td) / 1e6).toFixed(1), median(tw).toFixed(1),
      (median(tw) / median(td)).toFixed(2), diff.toExponential(1),
    ]);
    releaseWasmWinograd(filter);
    tf.dispose([x, filter, bias]);
  }
  const m = machineInfo();
  process.stdout.write(
    [
      `### Stride-1 3x3 convolutions on wasm: direct vs Winograd F(4x4, 3x3)`,
      '',
      `- machine: ${m.cpu}, ${m.cores} cores; Node ${m.node}; tfjs ${m.tfjs}; date ${m.date}; command: \`${m.command}\``,
      `- 1-min load during the rounds: ${Math.min(...loads).toFixed(2)}-${Math.max(...loads).toFixed(2)}`,
      '',
      markdownTable(
        ['H x W x C', 'layers', 'direct ms', 'direct GFLOP/s', 'Winograd ms', 'Winograd / direct', '||W - D|| / ||D||'],
        rows,
      ),
      '',
    ].join('\n'),
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
