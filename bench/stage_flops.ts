// The arithmetic of one forward, by stage, counted from the network's structure (torchvision's
// ResNet + FPN as img2pose builds it, its RPN head and the two TwoMLPHead + predictor heads): a
// multiply-add is 2 FLOPs, the counts the benches divide by their stage times to give TFLOP/s.
// Pooling, RoIAlign's interpolation and element-wise ops are left out (a fraction of a percent).
import type { ResNetDepth } from '../src/model/weights';
import { ANCHORS_PER_LOCATION } from '../src/ops/anchors';

export interface StageFlops {
  /** ResNet body (conv1 to layer4). */
  backbone: number;
  /** FPN: the 1x1 lateral and 3x3 output convolutions. */
  fpn: number;
  /** RPN head: the shared 3x3 convolution and the two 1x1 predictors, on every level. */
  rpnHead: number;
  /** Both RoI heads (fc6, fc7) and their predictors, on every row. */
  heads: number;
  total: number;
}

/** Output side of a torchvision convolution or pooling. */
function outSide(side: number, kernel: number, stride: number, padding: number): number {
  return Math.floor((side + 2 * padding - kernel) / stride) + 1;
}

/** FLOPs of a convolution over an output of `pixels` positions. */
function convFlops(pixels: number, kernel: number, cin: number, cout: number): number {
  return 2 * pixels * kernel * kernel * cin * cout;
}

/** Residual blocks per layer; bottleneck blocks (expansion 4) from ResNet-50 on. */
const LAYOUT: Record<ResNetDepth, { blocks: number[]; bottleneck: boolean }> = {
  18: { blocks: [2, 2, 2, 2], bottleneck: false },
  50: { blocks: [3, 4, 6, 3], bottleneck: true },
  101: { blocks: [3, 4, 23, 3], bottleneck: true },
};

const FPN_CHANNELS = 256;
/** RoI heads: 7x7 pooled FPN features into two 1024-wide MLPs (class and pose). */
const POOLED = 7 * 7 * FPN_CHANNELS;
const REPRESENTATION = 1024;
const CLASS_OUTPUTS = 2;
const POSE_OUTPUTS = 6;

/**
 * FLOPs of one image whose padded network input is `height` x `width`, with `rows` proposals
 * through the RoI heads (both heads on every row: with the pose branch gated by the score filter,
 * the pose head runs on fewer).
 */
export function forwardFlops(depth: ResNetDepth, height: number, width: number, rows: number): StageFlops {
  const { blocks, bottleneck } = LAYOUT[depth];
  let h = outSide(height, 7, 2, 3);
  let w = outSide(width, 7, 2, 3);
  let backbone = convFlops(h * w, 7, 3, 64);
  h = outSide(h, 3, 2, 1);
  w = outSide(w, 3, 2, 1);
  let cin = 64;
  const levels: { pixels: number; channels: number }[] = [];
  blocks.forEach((count, layer) => {
    const width0 = 64 << layer;
    const cout = bottleneck ? 4 * width0 : width0;
    for (let b = 0; b < count; b++) {
      const stride = b === 0 && layer > 0 ? 2 : 1;
      const ho = outSide(h, 3, stride, 1);
      const wo = outSide(w, 3, stride, 1);
      if (bottleneck) {
        // torchvision's V1.5: the stride sits on the 3x3 convolution.
        backbone += convFlops(h * w, 1, cin, width0) + convFlops(ho * wo, 3, width0, width0) + convFlops(ho * wo, 1, width0, cout);
      } else {
        backbone += convFlops(ho * wo, 3, cin, cout) + convFlops(ho * wo, 3, cout, cout);
      }
      if (b === 0 && (stride !== 1 || cin !== cout)) backbone += convFlops(ho * wo, 1, cin, cout);
      h = ho;
      w = wo;
      cin = cout;
    }
    levels.push({ pixels: h * w, channels: cout });
  });
  let fpn = 0;
  for (const { pixels, channels } of levels) fpn += convFlops(pixels, 1, channels, FPN_CHANNELS) + convFlops(pixels, 3, FPN_CHANNELS, FPN_CHANNELS);
  // The extra "pool" level: max-pool (kernel 1, stride 2) of the last one.
  const pooled = outSide(h, 1, 2, 0) * outSide(w, 1, 2, 0);
  let rpnHead = 0;
  for (const pixels of [...levels.map((l) => l.pixels), pooled]) {
    rpnHead += convFlops(pixels, 3, FPN_CHANNELS, FPN_CHANNELS) + convFlops(pixels, 1, FPN_CHANNELS, 5 * ANCHORS_PER_LOCATION);
  }
  const mlp = 2 * rows * (POOLED * REPRESENTATION + REPRESENTATION * REPRESENTATION);
  const heads = 2 * mlp + 2 * rows * REPRESENTATION * (CLASS_OUTPUTS + POSE_OUTPUTS);
  return { backbone, fpn, rpnHead, heads, total: backbone + fpn + rpnHead + heads };
}

/**
 * Yardsticks for a GPU forward: the rate a WGSL fp32 GEMM reaches on an H100/H200 (SIMT, no f16,
 * no subgroup matrices on Dawn's Vulkan adapter there) and the card's fp32 peak. A forward's
 * "floor" is its FLOPs at the first rate.
 */
export const WGSL_GEMM_TFLOPS = 30;
export const FP32_PEAK_TFLOPS = 67;

/** `gflop` over `ms`, in TFLOP/s. */
export function tflops(flop: number, ms: number): number {
  return ms > 0 ? flop / ms / 1e9 : 0;
}
