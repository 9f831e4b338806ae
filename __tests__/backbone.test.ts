/**
 * ResNet-FPN backbone against the upstream reference (formula weights), and batch == single:
 * an image's features must not depend on the other images of its batch.
 */
import * as tf from '@tensorflow/tfjs';
import { toTfjsLayout } from '../converter/layout';
import { Backbone, FEATURE_NAMES } from '../src/model/backbone';
import { convOutputSize, foldFrozenBatchNorm, readsBeyondRegion } from '../src/model/layers';
import { prepareBatch } from '../src/model/transform';
import { disposeWeights, Img2PoseWeights, ResNetDepth } from '../src/model/weights';
import { formulaTensor, formulaWeights, keySpecs } from './utils/formula';
import { golden, goldenCase, loadGoldenRgb, relError } from './utils/golden';

/** A golden (C, H, W) tensor as a (1, H, W, C) batch. */
function nhwcFromGolden(caseId: string, key: string): tf.Tensor4D {
  const g = golden(caseId, key);
  const [c, h, w] = g.shape;
  return tf.tidy(() => tf.transpose(tf.tensor3d(Float32Array.from(g.data), [c, h, w]), [1, 2, 0]).expandDims(0) as tf.Tensor4D);
}

/** Batch entry n of an NHWC map, cropped to [h, w], in torch's (C, H, W) order. */
function chw(x: tf.Tensor4D, n: number, h = x.shape[1], w = x.shape[2]): Float32Array {
  return tf.tidy(() => tf.transpose(tf.slice(x, [n, 0, 0, 0], [1, h, w, -1]), [0, 3, 1, 2]).dataSync() as Float32Array);
}

/**
 * backbone.forward with its region-mask multiplications counted: the only Multiply kernels of a
 * forward (convs, adds, ReLU and pooling are other kernels).
 */
async function forwardCountingMasks(backbone: Backbone, images: tf.Tensor4D, paddedSizes: [number, number][]): Promise<{ levels: tf.Tensor4D[]; masks: number }> {
  let levels: tf.Tensor4D[] = [];
  const info = await tf.profile(() => {
    levels = backbone.forward(images, paddedSizes);
    return levels;
  });
  return { levels, masks: info.kernels.filter((k) => k.name === 'Multiply').length };
}

/** Backbone weights of another depth from the formula, tfjs layout; `used` records every key read. */
function formulaBackboneWeights(depth: ResNetDepth, zeros = false): { weights: Img2PoseWeights; used: Set<string>; names: string[] } {
  const used = new Set<string>();
  const tensors = new (class extends Map<string, tf.Tensor> {
    override get(k: string): tf.Tensor | undefined {
      used.add(k);
      return super.get(k);
    }
  })();
  const names: string[] = [];
  for (const k of keySpecs(depth)) {
    if (!k.name.startsWith('backbone.') || k.name.endsWith('num_batches_tracked')) continue;
    names.push(k.name);
    const numel = k.shape.reduce((a, b) => a * b, 1);
    const host = toTfjsLayout({ shape: k.shape, data: zeros ? new Float32Array(numel) : formulaTensor(k.name, k.shape) });
    tensors.set(k.name, tf.tensor(host.data, host.shape, 'float32'));
  }
  return { weights: { depth, tensors, poseMean: new Float64Array(6), poseStddev: new Float64Array(6) }, used, names };
}

describe('layers', () => {
  it('folds a frozen BatchNorm into the conv before it', () => {
    const [kh, kw, cin, cout] = [3, 3, 2, 3];
    const filter = Float32Array.from({ length: kh * kw * cin * cout }, (_, i) => Math.sin(i * 1.7));
    const bn = { weight: [0.9, 1.1, 1.05], bias: [0.05, -0.02, 0.1], runningMean: [0.1, -0.3, 0.02], runningVar: [0.5, 1.4, 0.9] };
    const x = tf.tensor4d(Float32Array.from({ length: 5 * 6 * cin }, (_, i) => Math.cos(i * 0.37)), [1, 5, 6, cin]);
    const folded = foldFrozenBatchNorm(filter, bn);
    const [ours, ref] = tf.tidy(() => {
      const y = tf.conv2d(x, tf.tensor4d(filter, [kh, kw, cin, cout]), 1, 1);
      // torchvision FrozenBatchNorm2d: x * (w * rsqrt(var + eps)) + (b - mean * scale)
      const scale = tf.mul(tf.tensor1d(bn.weight), tf.rsqrt(tf.add(tf.tensor1d(bn.runningVar), 1e-5)));
      const shift = tf.sub(tf.tensor1d(bn.bias), tf.mul(tf.tensor1d(bn.runningMean), scale));
      const expected = tf.add(tf.mul(y, scale), shift);
      const got = tf.add(tf.conv2d(x, tf.tensor4d(folded.filter, [kh, kw, cin, cout]), 1, 1), tf.tensor1d(folded.bias));
      return [got.dataSync(), expected.dataSync()];
    });
    x.dispose();
    expect(relError(ours, ref)).toBeLessThan(1e-6);
  });

  it('knows which ops read past an even region and which do not', () => {
    expect(convOutputSize(160, 7, 2, 3)).toBe(80);
    expect(convOutputSize(80, 3, 2, 1)).toBe(40);
    expect(convOutputSize(5, 1, 2, 0)).toBe(3);
    expect(readsBeyondRegion(40, 3, 1, 1)).toBe(true); // 3x3 stride 1: the last output reads index 40
    expect(readsBeyondRegion(40, 3, 2, 1)).toBe(false); // 3x3 stride 2: window ends at 39
    expect(readsBeyondRegion(5, 3, 2, 1)).toBe(true); // ... but not on an odd region
    expect(readsBeyondRegion(160, 7, 2, 3)).toBe(true); // conv1 reads 2 past the image (its input is zero there)
    expect(readsBeyondRegion(40, 1, 2, 0)).toBe(false);
    expect(readsBeyondRegion(5, 1, 2, 0)).toBe(false); // 'pool' of an odd level
  });
});

describe('Backbone (ResNet-18 formula weights)', () => {
  let backbone: Backbone;
  let baseline: number;
  beforeAll(() => {
    const weights = formulaWeights();
    baseline = tf.memory().numTensors - weights.tensors.size;
    backbone = new Backbone(weights);
    disposeWeights(weights);
  });
  afterAll(() => {
    backbone.dispose();
    // Everything the backbone made is released.
    expect(tf.memory().numTensors).toBe(baseline);
  });

  for (const id of ['tiny_teaser', 'tiny_portrait']) {
    it(`reproduces ${id}'s feature_0..3 and feature_pool from the reference input`, () => {
      const x = nhwcFromGolden(id, 'input_normalized_padded');
      const before = tf.memory().numTensors;
      const levels = backbone.forward(x, [[x.shape[1], x.shape[2]]]);
      expect(tf.memory().numTensors).toBe(before + 5);
      const errors: string[] = [];
      FEATURE_NAMES.forEach((name, i) => {
        const ref = golden(id, `feature_${name}`);
        expect([name, ...levels[i].shape]).toEqual([name, 1, ref.shape[1], ref.shape[2], ref.shape[0]]);
        const rel = relError(chw(levels[i], 0), ref.data);
        errors.push(`${name} ${rel.toExponential(2)}`);
        expect(rel).toBeLessThanOrEqual(1e-4);
      });
      console.log(`${id} backbone rel errors: ${errors.join(', ')}`);
      tf.dispose(levels);
      expect(tf.memory().numTensors).toBe(before);
      x.dispose();
    });
  }

  describe('batch == single', () => {
    let teaser: tf.Tensor3D;
    let portrait: tf.Tensor3D;
    const { min_size: minSize, max_size: maxSize } = goldenCase('tiny_batch');
    beforeAll(() => {
      teaser = loadGoldenRgb('teaser.png');
      portrait = loadGoldenRgb('portrait_1.png');
    });
    afterAll(() => tf.dispose([teaser, portrait]));

    function single(image: tf.Tensor3D): tf.Tensor4D[] {
      const b = prepareBatch([image], minSize, maxSize);
      const levels = backbone.forward(b.images, b.paddedSizes);
      b.images.dispose();
      return levels;
    }

    it('gives each image of a mixed batch (160x288 with 256x160) its single-image features', async () => {
      const batch = prepareBatch([teaser, portrait], minSize, maxSize);
      expect(batch.images.shape).toEqual([2, 256, 288, 3]);
      const before = tf.memory().numTensors;
      const { levels, masks } = await forwardCountingMasks(backbone, batch.images, batch.paddedSizes);
      expect(tf.memory().numTensors).toBe(before + 5);
      expect(masks).toBeGreaterThan(0);

      // Upstream's behaviour, for contrast: the same batch without per-image regions.
      const { levels: unmasked, masks: none } = await forwardCountingMasks(backbone, batch.images, [[256, 288], [256, 288]]);
      expect(none).toBe(0);

      const worstUnmasked = [0, 0];
      [teaser, portrait].forEach((image, n) => {
        const alone = single(image);
        alone.forEach((ref, i) => {
          const [, h, w] = ref.shape;
          const expected = chw(ref, 0);
          const rel = relError(chw(levels[i], n, h, w), expected);
          expect(rel).toBeLessThanOrEqual(1e-5);
          // Zero outside the image's own region: the RPN's 3x3 conv reads these maps.
          const total = tf.tidy(() => tf.sum(tf.abs(tf.slice(levels[i], [n, 0, 0, 0], [1, -1, -1, -1]))).dataSync()[0]);
          const inside = tf.tidy(() => tf.sum(tf.abs(tf.slice(levels[i], [n, 0, 0, 0], [1, h, w, -1]))).dataSync()[0]);
          expect(total).toBe(inside);
          worstUnmasked[n] = Math.max(worstUnmasked[n], relError(chw(unmasked[i], n, h, w), expected));
        });
        tf.dispose(alone);
      });
      console.log(
        `mixed batch: ${masks} mask multiplies; without them the features differ from the single runs by ` +
          `rel ${worstUnmasked.map((e) => e.toExponential(2)).join(' / ')} (teaser / portrait)`,
      );
      // The test can fail: without masks the shorter image (the teaser) sees its neighbour's padding.
      expect(worstUnmasked[0]).toBeGreaterThan(1e-3);
      tf.dispose([...levels, ...unmasked, batch.images]);
      expect(tf.memory().numTensors).toBe(before - 1);
    });

    it('skips masking for a same-size batch and still equals the single run', async () => {
      const batch = prepareBatch([teaser, teaser], minSize, maxSize);
      const { levels, masks } = await forwardCountingMasks(backbone, batch.images, batch.paddedSizes);
      expect(masks).toBe(0);
      const alone = single(teaser);
      alone.forEach((ref, i) => {
        const expected = chw(ref, 0);
        expect(relError(chw(levels[i], 0), expected)).toBeLessThanOrEqual(1e-6);
        expect(relError(chw(levels[i], 1), expected)).toBeLessThanOrEqual(1e-6);
      });
      tf.dispose([...levels, ...alone, batch.images]);
    });

    it('rejects padded sizes that do not fit the batch', () => {
      const x = tf.zeros([2, 64, 64, 3]) as tf.Tensor4D;
      expect(() => backbone.forward(x, [[64, 64]])).toThrow(/2 padded sizes|1 padded sizes/);
      expect(() => backbone.forward(x, [[64, 64], [96, 32]])).toThrow(/exceeds/);
      expect(() => backbone.forward(x, [[64, 64], [48, 64]])).toThrow(/multiples of 32/);
      x.dispose();
    });
  });

  // Default-size cases through our own transform (~5 s each on wasm): one downscaled photo,
  // one 7x upscaled small image.
  for (const id of ['teaser', 'small']) {
    it(`reproduces ${id}'s per-level channel means and middle rows (image through our transform)`, () => {
      const c = goldenCase(id);
      const image = loadGoldenRgb(c.image!);
      const batch = prepareBatch([image], c.min_size, c.max_size);
      expect([batch.images.shape[1], batch.images.shape[2]]).toEqual(c.padded_shape!.slice(2));
      const levels = backbone.forward(batch.images, batch.paddedSizes);
      const errors: string[] = [];
      FEATURE_NAMES.forEach((name, i) => {
        const [, h, w, ch] = levels[i].shape;
        const mean = tf.tidy(() => tf.mean(levels[i], [0, 1, 2]).dataSync());
        const row = tf.tidy(() => tf.transpose(tf.slice(levels[i], [0, h >> 1, 0, 0], [1, 1, w, ch]).reshape([w, ch])).dataSync());
        const refMean = golden(id, `feature_${name}_channel_mean`);
        const refRow = golden(id, `feature_${name}_row_mid`);
        expect(refRow.shape).toEqual([ch, w]);
        const eMean = relError(mean, refMean.data);
        const eRow = relError(row, refRow.data);
        errors.push(`${name} mean ${eMean.toExponential(2)} row ${eRow.toExponential(2)}`);
        expect(eMean).toBeLessThanOrEqual(1e-4);
        expect(eRow).toBeLessThanOrEqual(1e-4);
      });
      console.log(`${id} (${batch.images.shape[1]}x${batch.images.shape[2]}) rel errors: ${errors.join('; ')}`);
      tf.dispose([...levels, batch.images, image]);
    });
  }
});

describe('Backbone (deeper variants)', () => {
  // torchvision resnet_fpn_backbone('resnet50') with the formula weights on a 64x96 sine
  // pattern (CHW value sin(0.1 (y + 1)(c + 1) + 0.07 x)); [c, y, x, value] samples per level.
  const RESNET50_REF: { name: string; shape: number[]; rms: number; samples: number[][] }[] = [
    { name: '0', shape: [256, 16, 24], rms: 11.599598032185293, samples: [[7, 0, 0, -2.5327229499816895], [100, 15, 23, 17.917356491088867], [255, 8, 8, -11.320466995239258], [31, 15, 0, 9.709761619567871]] },
    { name: '1', shape: [256, 8, 12], rms: 13.598452726177577, samples: [[7, 0, 0, 0.07674169540405273], [100, 7, 11, 0.3102705478668213], [255, 4, 4, -1.7999773025512695], [31, 7, 0, 12.418595314025879]] },
    { name: '2', shape: [256, 4, 6], rms: 15.22759043983446, samples: [[7, 0, 0, 3.954669952392578], [100, 3, 5, -10.263959884643555], [255, 2, 2, -28.171606063842773], [31, 3, 0, -3.7420082092285156]] },
    { name: '3', shape: [256, 2, 3], rms: 12.247389270319538, samples: [[7, 0, 0, -10.918256759643555], [100, 1, 2, 8.123689651489258], [255, 1, 1, 5.293963432312012], [31, 1, 0, 8.70773696899414]] },
    { name: 'pool', shape: [256, 1, 2], rms: 11.246548858314005, samples: [[7, 0, 0, -10.918256759643555], [100, 0, 1, 11.337961196899414], [255, 0, 0, -1.2776565551757812], [31, 0, 0, 11.686372756958008]] },
  ];

  it('ResNet-50 (Bottleneck, stride on the 3x3) matches torchvision and uses every backbone key', () => {
    const { weights, used, names } = formulaBackboneWeights(50);
    const backbone = new Backbone(weights);
    disposeWeights(weights);
    expect(names.filter((k) => !used.has(k))).toEqual([]);
    const [H, W] = [64, 96];
    const data = new Float32Array(H * W * 3);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) for (let c = 0; c < 3; c++) data[(y * W + x) * 3 + c] = Math.sin(0.1 * (y + 1) * (c + 1) + 0.07 * x);
    const input = tf.tensor4d(data, [1, H, W, 3]);
    const levels = backbone.forward(input, [[H, W]]);
    RESNET50_REF.forEach((ref, i) => {
      const ours = chw(levels[i], 0);
      const [, h, w] = ref.shape;
      expect([ref.name, ...levels[i].shape]).toEqual([ref.name, 1, h, w, 256]);
      const rms = Math.sqrt(ours.reduce((s, v) => s + v * v, 0) / ours.length);
      expect(Math.abs(rms - ref.rms) / ref.rms).toBeLessThan(1e-5);
      for (const [c, y, x, v] of ref.samples) expect(Math.abs(ours[(c * h + y) * w + x] - v) / ref.rms).toBeLessThan(1e-5);
    });

    // Batch == single holds for Bottleneck blocks too (64x96 with 96x64 in a 96x96 batch).
    const other = tf.tidy(() => tf.transpose(input, [0, 2, 1, 3]) as tf.Tensor4D);
    const batch = tf.tidy(() => tf.concat([tf.pad(input, [[0, 0], [0, 32], [0, 0], [0, 0]]), tf.pad(other, [[0, 0], [0, 0], [0, 32], [0, 0]])]) as tf.Tensor4D);
    const mixed = backbone.forward(batch, [[64, 96], [96, 64]]);
    const otherLevels = backbone.forward(other, [[96, 64]]);
    [levels, otherLevels].forEach((alone, n) => {
      alone.forEach((ref, i) => {
        const [, h, w] = ref.shape;
        expect(relError(chw(mixed[i], n, h, w), chw(ref, 0))).toBeLessThanOrEqual(1e-5);
      });
    });
    tf.dispose([...levels, ...mixed, ...otherLevels, input, other, batch]);
    backbone.dispose();
  });

  it('ResNet-101 builds from its key list and gives the 5 levels', () => {
    const before = tf.memory().numTensors;
    const { weights, used, names } = formulaBackboneWeights(101, true);
    const backbone = new Backbone(weights);
    disposeWeights(weights);
    expect(names.filter((k) => !used.has(k))).toEqual([]);
    const input = tf.zeros([1, 64, 64, 3]) as tf.Tensor4D;
    const levels = backbone.forward(input, [[64, 64]]);
    expect(levels.map((l) => l.shape)).toEqual([[1, 16, 16, 256], [1, 8, 8, 256], [1, 4, 4, 256], [1, 2, 2, 256], [1, 1, 1, 256]]);
    tf.dispose([...levels, input]);
    backbone.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});
