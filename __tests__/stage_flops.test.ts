import { forwardFlops } from '../bench/stage_flops';

describe('forwardFlops', () => {
  // torchvision's model documentation gives the multiply-adds of its classifiers at 224x224
  // ("GFLOPS" there counts a multiply-add once): ResNet-18 1.81 G, ResNet-50 4.09 G. Ours leaves
  // out the final fully-connected layer (0.5 M and 2 M multiply-adds) and pooling.
  it.each([
    [18, 1.81e9],
    [50, 4.09e9],
  ] as const)('ResNet-%i body at 224x224 matches torchvision (%d multiply-adds)', (depth, macs) => {
    const f = forwardFlops(depth, 224, 224, 0);
    expect(Math.abs(f.backbone / 2 - macs) / macs).toBeLessThan(0.01);
    expect(f.heads).toBe(0);
  });

  it('counts the img2pose forward layer by layer (ResNet-18, 640x1152, 1000 rows)', () => {
    // Every convolution written out: [output pixels, kernel, in, out].
    const p = [320 * 576, 160 * 288, 80 * 144, 40 * 72, 20 * 36];
    const backbone = [
      [p[0], 7, 3, 64],
      ...Array.from({ length: 4 }, () => [p[1], 3, 64, 64]),
      [p[2], 3, 64, 128], [p[2], 3, 128, 128], [p[2], 1, 64, 128], [p[2], 3, 128, 128], [p[2], 3, 128, 128],
      [p[3], 3, 128, 256], [p[3], 3, 256, 256], [p[3], 1, 128, 256], [p[3], 3, 256, 256], [p[3], 3, 256, 256],
      [p[4], 3, 256, 512], [p[4], 3, 512, 512], [p[4], 1, 256, 512], [p[4], 3, 512, 512], [p[4], 3, 512, 512],
    ];
    const fpn = [
      [p[1], 1, 64, 256], [p[2], 1, 128, 256], [p[3], 1, 256, 256], [p[4], 1, 512, 256],
      [p[1], 3, 256, 256], [p[2], 3, 256, 256], [p[3], 3, 256, 256], [p[4], 3, 256, 256],
    ];
    const rpnLevels = [p[1], p[2], p[3], p[4], 10 * 18];
    const rpn = rpnLevels.flatMap((px) => [[px, 3, 256, 256], [px, 1, 256, 15]]);
    const sum = (convs: number[][]) => convs.reduce((s, [px, k, i, o]) => s + 2 * px * k * k * i * o, 0);
    const heads = 2 * (2 * 1000 * (12544 * 1024 + 1024 * 1024)) + 2 * 1000 * 1024 * (2 + 6);
    const f = forwardFlops(18, 640, 1152, 1000);
    expect(f.backbone).toBe(sum(backbone));
    expect(f.fpn).toBe(sum(fpn));
    expect(f.rpnHead).toBe(sum(rpn));
    expect(f.heads).toBe(heads);
    expect(f.total).toBe(sum(backbone) + sum(fpn) + sum(rpn) + heads);
    // ~257 GFLOP per image, the figure the GPU yardsticks are based on.
    expect(f.total / 1e9).toBeCloseTo(256.8, 0);
  });
});
