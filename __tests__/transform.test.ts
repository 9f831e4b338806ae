/**
 * Input transform (torchvision GeneralizedRCNNTransform as upstream uses it) against the
 * reference: output sizes, torch's bilinear taps, and the normalised, padded input tensors.
 */
import * as fs from 'fs';
import * as tf from '@tensorflow/tfjs';
import { bilinearTaps, normalizePixel, paddedSize, prepareBatch, prepareBatchAsync, resizedSize } from '../src/model/transform';
import { golden, goldenCase, imagePath, loadGoldenRgb, manifest, relError } from './utils/golden';

/** [height, width] from a PNG's IHDR chunk. */
function pngSize(name: string): [number, number] {
  const b = fs.readFileSync(imagePath(name));
  return [b.readUInt32BE(20), b.readUInt32BE(16)];
}

/** Batch entry n cropped to [h, w], in the golden CHW layout. */
function chw(batch: tf.Tensor4D, n: number, [h, w]: [number, number]): Float32Array {
  return tf.tidy(() => tf.transpose(tf.slice(batch, [n, 0, 0, 0], [1, h, w, 3]), [0, 3, 1, 2]).dataSync() as Float32Array);
}

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

// [h, w, minSize, maxSize, torch height, torch width]: torchvision 0.14 / torch 1.13 on CPU. The first 30
// are sizes where the correctly rounded float32 quotient (not what torch computes) gives another size.
const TORCH_RESIZED: [number, number, number, number, number, number][] = [
  [4829, 1060, 720, 3124, 3123, 685], [3307, 3361, 160, 1400, 160, 162], [4401, 2677, 640, 1400, 1052, 640], [4423, 4007, 480, 1333, 529, 479],
  [3578, 4129, 600, 2000, 599, 692], [446, 735, 160, 1333, 160, 263], [785, 3556, 640, 1400, 309, 1400], [995, 3099, 512, 288, 92, 287],
  [2471, 468, 480, 288, 288, 54], [2782, 16, 982, 2000, 2000, 11], [58, 2903, 160, 619, 12, 619], [1443, 4314, 320, 2000, 319, 956],
  [917, 583, 160, 1206, 251, 160], [1811, 1558, 1453, 1400, 1399, 1204], [2767, 1430, 160, 2000, 309, 160], [615, 2207, 600, 1044, 290, 1044],
  [144, 3010, 320, 3393, 162, 3392], [1293, 3026, 640, 2822, 639, 1497], [1492, 4965, 800, 288, 86, 288], [3983, 4050, 600, 1400, 600, 610],
  [1909, 4173, 720, 1400, 640, 1400], [671, 4951, 512, 1768, 239, 1768], [4012, 1648, 320, 2000, 779, 320], [905, 4522, 160, 3755, 159, 799],
  [4090, 3103, 640, 1000, 843, 640], [1937, 2877, 800, 1400, 799, 1188], [383, 2140, 320, 288, 51, 288], [4954, 4572, 1024, 1000, 999, 922],
  [275, 3575, 720, 1400, 107, 1400], [1504, 3354, 320, 1333, 319, 713], [4460, 4812, 720, 1400, 720, 776], [3081, 1349, 512, 1000, 999, 437],
  [3777, 4940, 320, 1333, 319, 418], [2386, 3081, 1024, 1400, 1024, 1322], [117, 244, 512, 1333, 512, 1067], [2155, 3118, 512, 1400, 511, 740],
  [1443, 3456, 800, 1000, 417, 999], [2852, 3232, 720, 1400, 720, 815], [1865, 615, 480, 2396, 1455, 479], [1500, 2735, 800, 288, 157, 288],
  [718, 1280, 640, 1400, 639, 1140], [1280, 718, 640, 1400, 1140, 639], [1, 1, 640, 1400, 640, 640],
  // torch computes 0 x 1400 here (its interpolate then raises); resizedSize keeps one row.
  [3, 5000, 640, 1400, 1, 1400],
  [640, 640, 640, 1400, 640, 640], [333, 500, 160, 288, 160, 240],
];

// Non-zero weights [output index, input index, weight] of torch bilinear (align_corners=False) along one axis,
// read from interpolating one-hot rows.
const TORCH_TAPS: Record<string, [number, number, number][]> = {
  '29->60': [
    [0, 0, 1.0], [1, 0, 0.7750000357627869], [1, 1, 0.22499997913837433], [2, 0, 0.2916666865348816],
    [2, 1, 0.7083333134651184], [3, 1, 0.8083333969116211], [3, 2, 0.1916666179895401], [4, 1, 0.3250000476837158],
    [4, 2, 0.6749999523162842], [5, 2, 0.8416667580604553], [5, 3, 0.15833325684070587], [6, 2, 0.35833340883255005],
    [6, 3, 0.64166659116745], [7, 3, 0.8750001192092896], [7, 4, 0.12499989569187164], [8, 3, 0.3916667699813843],
    [8, 4, 0.6083332300186157], [9, 4, 0.9083334803581238], [9, 5, 0.09166653454303741], [10, 4, 0.4250001311302185],
    [10, 5, 0.5749998688697815], [11, 5, 0.941666841506958], [11, 6, 0.058333173394203186], [12, 5, 0.45833349227905273],
    [12, 6, 0.5416665077209473], [13, 6, 0.9750002026557922], [13, 7, 0.024999812245368958], [14, 6, 0.49166685342788696],
    [14, 7, 0.508333146572113], [15, 6, 0.008333563804626465], [15, 7, 0.9916664361953735], [16, 7, 0.5250002145767212],
    [16, 8, 0.4749997854232788], [17, 7, 0.04166692495346069], [17, 8, 0.9583330750465393], [18, 8, 0.5583335757255554],
    [18, 9, 0.4416664242744446], [19, 8, 0.07500028610229492], [19, 9, 0.9249997138977051], [20, 9, 0.5916669368743896],
    [20, 10, 0.40833306312561035], [21, 9, 0.10833364725112915], [21, 10, 0.8916663527488708], [22, 10, 0.6250002980232239],
    [22, 11, 0.3749997019767761], [23, 10, 0.14166700839996338], [23, 11, 0.8583329916000366], [24, 11, 0.6583336591720581],
    [24, 12, 0.3416663408279419], [25, 11, 0.1750003695487976], [25, 12, 0.8249996304512024], [26, 12, 0.6916670203208923],
    [26, 13, 0.30833297967910767], [27, 12, 0.20833373069763184], [27, 13, 0.7916662693023682], [28, 13, 0.7250003814697266],
    [28, 14, 0.27499961853027344], [29, 13, 0.24166709184646606], [29, 14, 0.7583329081535339], [30, 14, 0.7583337426185608],
    [30, 15, 0.24166624248027802], [31, 14, 0.2750004529953003], [31, 15, 0.7249995470046997], [32, 15, 0.791667103767395],
    [32, 16, 0.2083328813314438], [33, 15, 0.3083338141441345], [33, 16, 0.6916661858558655], [34, 16, 0.8250004649162292],
    [34, 17, 0.17499952018260956], [35, 16, 0.34166717529296875], [35, 17, 0.6583328247070312], [36, 17, 0.8583338260650635],
    [36, 18, 0.14166615903377533], [37, 17, 0.375000536441803], [37, 18, 0.624999463558197], [38, 18, 0.8916671872138977],
    [38, 19, 0.1083327978849411], [39, 18, 0.4083338975906372], [39, 19, 0.5916661024093628], [40, 19, 0.9250005483627319],
    [40, 20, 0.07499943673610687], [41, 19, 0.44166725873947144], [41, 20, 0.5583327412605286], [42, 20, 0.9583339095115662],
    [42, 21, 0.041666075587272644], [43, 20, 0.47500061988830566], [43, 21, 0.5249993801116943], [44, 21, 0.9916672706604004],
    [44, 22, 0.008332714438438416], [45, 21, 0.5083339810371399], [45, 22, 0.4916660189628601], [46, 21, 0.02500063180923462],
    [46, 22, 0.9749993681907654], [47, 22, 0.5416673421859741], [47, 23, 0.4583326578140259], [48, 22, 0.05833399295806885],
    [48, 23, 0.9416660070419312], [49, 23, 0.5750007033348083], [49, 24, 0.42499929666519165], [50, 23, 0.09166735410690308],
    [50, 24, 0.9083326458930969], [51, 24, 0.6083340644836426], [51, 25, 0.3916659355163574], [52, 24, 0.1250007152557373],
    [52, 25, 0.8749992847442627], [53, 25, 0.6416674256324768], [53, 26, 0.3583325743675232], [54, 25, 0.15833407640457153],
    [54, 26, 0.8416659235954285], [55, 26, 0.675000786781311], [55, 27, 0.32499921321868896], [56, 26, 0.19166743755340576],
    [56, 27, 0.8083325624465942], [57, 27, 0.7083341479301453], [57, 28, 0.29166585206985474], [58, 27, 0.22500079870224],
    [58, 28, 0.77499920129776], [59, 28, 1.0],
  ],
  '7->3': [
    [0, 0, 0.3333333730697632], [0, 1, 0.6666666269302368], [1, 2, 1.1920928955078125e-07], [1, 3, 0.9999998807907104],
    [2, 5, 0.6666668653488159], [2, 6, 0.3333331346511841],
  ],
  '5->12': [
    [0, 0, 1.0], [1, 0, 0.875], [1, 1, 0.1249999850988388], [2, 0, 0.4583333730697632],
    [2, 1, 0.5416666269302368], [3, 0, 0.04166668653488159], [3, 1, 0.9583333134651184], [4, 1, 0.6250000596046448],
    [4, 2, 0.3749999403953552], [5, 1, 0.20833337306976318], [5, 2, 0.7916666269302368], [6, 2, 0.7916667461395264],
    [6, 3, 0.20833326876163483], [7, 2, 0.3750000596046448], [7, 3, 0.6249999403953552], [8, 3, 0.958333432674408],
    [8, 4, 0.041666582226753235], [9, 3, 0.5416667461395264], [9, 4, 0.45833325386047363], [10, 3, 0.12500011920928955],
    [10, 4, 0.8749998807907104], [11, 4, 1.0],
  ],
  '12->5': [
    [0, 0, 0.2999999523162842], [0, 1, 0.7000000476837158], [1, 3, 0.8999998569488525], [1, 4, 0.10000014305114746],
    [2, 5, 0.4999997615814209], [2, 6, 0.5000002384185791], [3, 7, 0.09999966621398926], [3, 8, 0.9000003337860107],
    [4, 10, 0.6999995708465576], [4, 11, 0.3000004291534424],
  ],
  '1->4': [
    [0, 0, 1.0], [1, 0, 1.0], [2, 0, 1.0], [3, 0, 1.0],
  ],
};

describe('resizedSize', () => {
  it("matches every golden case's resized_hw", () => {
    const singles = manifest().cases.filter((c) => c.mode === 'single');
    expect(singles.length).toBe(9);
    for (const c of singles) {
      const [h, w] = pngSize(c.image!);
      expect([c.id, ...resizedSize(h, w, c.min_size, c.max_size)]).toEqual([c.id, ...c.resized_hw!]);
    }
  });

  it('turns a 718-pixel short side at minSize 640 into 639 (float32 scale)', () => {
    expect(resizedSize(718, 1280, 640, 1400)).toEqual([639, 1140]);
  });

  it('shrinks a side that already equals minSize when torch does (41 -> 40)', () => {
    // torchvision's _resize_image_and_masks gives a 41x60 image at min_size 41 the size 40x59:
    // f32(1/41) * 41 rounds to 0.99999994.
    expect(resizedSize(41, 60, 41, 1400)).toEqual([40, 59]);
    expect(resizedSize(640, 853, 640, 1400)).toEqual([640, 853]);
  });

  it("matches torch's reciprocal-times-size scale on sizes where a plain quotient does not", () => {
    for (const [h, w, minSize, maxSize, eh, ew] of TORCH_RESIZED) {
      expect([h, w, minSize, maxSize, ...resizedSize(h, w, minSize, maxSize)]).toEqual([h, w, minSize, maxSize, eh, ew]);
    }
  });
});

describe('paddedSize', () => {
  it('rounds each side up to a multiple of 32', () => {
    expect(paddedSize([159, 285])).toEqual([160, 288]);
    expect(paddedSize([240, 160])).toEqual([256, 160]);
    expect(paddedSize([639, 1140])).toEqual([640, 1152]);
    expect(paddedSize([1, 33])).toEqual([32, 64]);
  });
});

describe('bilinearTaps', () => {
  it("reproduces torch's interpolation weights bit for bit (up, down, edges)", () => {
    for (const [key, expected] of Object.entries(TORCH_TAPS)) {
      const [inSize, outSize] = key.split('->').map(Number);
      const t = bilinearTaps(inSize, outSize);
      const weights = new Map<string, number>();
      for (let d = 0; d < outSize; d++) {
        // At the last pixel both taps read the same input; torch adds the two float32 weights.
        const k0 = `${d},${t.index0[d]}`;
        const k1 = `${d},${t.index1[d]}`;
        weights.set(k0, Math.fround((weights.get(k0) ?? 0) + t.weight0[d]));
        weights.set(k1, Math.fround((weights.get(k1) ?? 0) + t.weight1[d]));
      }
      const ours = [...weights].filter(([, v]) => v !== 0).map(([k, v]) => [...k.split(',').map(Number), v]);
      expect([key, ours]).toEqual([key, expected]);
    }
  });
});

describe('normalizePixel', () => {
  it("follows upstream's float32 steps: /255, -mean, /std", () => {
    // numpy: (np.float32(200) / np.float32(255) - np.float32(0.456)) / np.float32(0.224)
    expect(normalizePixel(200, 1)).toBe(1.465686321258545);
    expect(normalizePixel(0, 0)).toBe(-2.1179039478302);
  });
});

describe('prepareBatch', () => {
  let teaser: tf.Tensor3D;
  let portrait: tf.Tensor3D;
  beforeAll(() => {
    teaser = loadGoldenRgb(goldenCase('tiny_teaser').image!);
    portrait = loadGoldenRgb(goldenCase('tiny_portrait').image!);
  });
  afterAll(() => tf.dispose([teaser, portrait]));

  for (const id of ['tiny_teaser', 'tiny_portrait']) {
    it(`reproduces ${id}'s input_normalized_padded`, () => {
      const c = goldenCase(id);
      const image = id === 'tiny_teaser' ? teaser : portrait;
      const before = tf.memory().numTensors;
      const batch = prepareBatch([image], c.min_size, c.max_size);
      const ref = golden(id, 'input_normalized_padded');
      expect(batch.images.shape).toEqual([1, ref.shape[1], ref.shape[2], 3]);
      expect(batch.imageSizes).toEqual([c.resized_hw]);
      expect(batch.paddedSizes).toEqual([[ref.shape[1], ref.shape[2]]]);
      expect(batch.originalSizes).toEqual([image.shape.slice(0, 2)]);
      const ours = chw(batch.images, 0, [ref.shape[1], ref.shape[2]]);
      const rel = relError(ours, ref.data);
      const abs = maxAbs(ours, ref.data);
      console.log(`${id} input: rel ${rel.toExponential(2)}, max abs ${abs.toExponential(2)}`);
      expect(rel).toBeLessThanOrEqual(1e-4);
      // torch's exact sampling points: about one float32 ulp (tf.image.resizeBilinear: ~1e-4).
      expect(abs).toBeLessThanOrEqual(1e-5);
      batch.images.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  it("pads a mixed batch with zeros, each image equal to its own single transform", () => {
    const { min_size: minSize, max_size: maxSize } = goldenCase('tiny_batch');
    const batch = prepareBatch([teaser, portrait], minSize, maxSize);
    expect(batch.images.shape).toEqual([2, 256, 288, 3]);
    expect(batch.imageSizes).toEqual([[159, 285], [240, 160]]);
    expect(batch.paddedSizes).toEqual([[160, 288], [256, 160]]);
    [teaser, portrait].forEach((image, n) => {
      const single = prepareBatch([image], minSize, maxSize);
      const [h, w] = single.images.shape.slice(1, 3);
      expect(Array.from(chw(batch.images, n, [h, w]))).toEqual(Array.from(chw(single.images, 0, [h, w])));
      const [rh, rw] = batch.imageSizes[n];
      const all = tf.tidy(() => tf.sum(tf.abs(tf.slice(batch.images, [n, 0, 0, 0], [1, -1, -1, -1]))).dataSync()[0]);
      const inside = tf.tidy(() => tf.sum(tf.abs(tf.slice(batch.images, [n, 0, 0, 0], [1, rh, rw, 3]))).dataSync()[0]);
      expect(all).toBeCloseTo(inside, 0);
      expect(inside).toBeGreaterThan(0);
      single.images.dispose();
    });
    batch.images.dispose();
  });

  it('leaves an image at its own size untouched except for the normalisation', () => {
    const pixels = Int32Array.from({ length: 32 * 64 * 3 }, (_, i) => (i * 37) % 256);
    const image = tf.tensor3d(pixels, [32, 64, 3], 'int32');
    const batch = prepareBatch([image], 32, 1400);
    expect(batch.imageSizes).toEqual([[32, 64]]);
    expect(Array.from(batch.images.dataSync())).toEqual(Array.from(pixels, (v, i) => normalizePixel(v, i % 3)));
    tf.dispose([image, batch.images]);
  });

  it('gives the same tensor for int32 and float32 pixels', () => {
    const f = tf.cast(portrait, 'float32') as tf.Tensor3D;
    const a = prepareBatch([portrait], 160, 288);
    const b = prepareBatch([f], 160, 288);
    expect(Array.from(b.images.dataSync())).toEqual(Array.from(a.images.dataSync()));
    tf.dispose([f, a.images, b.images]);
  });

  it('rejects images that are not 3-channel HWC', () => {
    const rgba = tf.zeros([4, 4, 4]) as tf.Tensor3D;
    expect(() => prepareBatch([rgba], 160, 288)).toThrow(/3 \(RGB\) channels/);
    expect(() => prepareBatch([], 160, 288)).toThrow(/no images/);
    rgba.dispose();
  });
});

describe('prepareBatch from 8-bit samples', () => {
  /** Deterministic bytes with every value 0..255 present. */
  function bytes(n: number, seed: number): Uint8Array {
    return Uint8Array.from({ length: n }, (_, i) => (i * 131 + seed * 17 + ((i * i) % 7)) % 256);
  }

  /** The RGB float tensor PIL's convert('RGB') gives for these samples: gray replicated, alpha dropped. */
  function rgbTensor(data: Uint8Array, h: number, w: number, channels: 1 | 3 | 4): tf.Tensor3D {
    const rgb = new Float32Array(h * w * 3);
    for (let p = 0; p < h * w; p++) for (let c = 0; c < 3; c++) rgb[p * 3 + c] = data[p * channels + (channels === 1 ? 0 : c)];
    return tf.tensor3d(rgb, [h, w, 3]);
  }

  it('equals the transform of the float tensor of the same pixels bit for bit (gray, RGB, RGBA; odd sizes, up and down)', async () => {
    // [h, w, channels, minSize, maxSize]: downscales, an upscale, one-pixel sides, a mixed batch.
    const cases: [number, number, 1 | 3 | 4, number, number][] = [
      [37, 53, 4, 20, 40], [101, 67, 3, 160, 288], [1, 97, 1, 8, 64], [45, 1, 4, 16, 33], [253, 191, 4, 64, 96],
    ];
    for (const [h, w, channels, minSize, maxSize] of cases) {
      const data = bytes(h * w * channels, h + w);
      const asFloat = rgbTensor(data, h, w, channels);
      const fromBytes = prepareBatch([{ data, height: h, width: w, channels }], minSize, maxSize);
      const fromAsync = await prepareBatchAsync([{ data: new Uint8ClampedArray(data), height: h, width: w, channels }], minSize, maxSize);
      const fromFloat = prepareBatch([asFloat], minSize, maxSize);
      const expected = Array.from(fromFloat.images.dataSync());
      expect([h, w, channels, Array.from(fromBytes.images.dataSync())]).toEqual([h, w, channels, expected]);
      expect([h, w, channels, Array.from(fromAsync.images.dataSync())]).toEqual([h, w, channels, expected]);
      expect(fromBytes.originalSizes).toEqual([[h, w]]);
      tf.dispose([asFloat, fromBytes.images, fromAsync.images, fromFloat.images]);
    }
    // A batch mixing samples and tensors: each image as in its own batch of one kind.
    const a = bytes(61 * 43 * 4, 1);
    const b = rgbTensor(bytes(29 * 71 * 3, 2), 29, 71, 3);
    const mixed = await prepareBatchAsync([{ data: a, height: 61, width: 43, channels: 4 }, b], 32, 64);
    const floats = [rgbTensor(a, 61, 43, 4), b];
    const reference = prepareBatch(floats, 32, 64);
    expect(Array.from(mixed.images.dataSync())).toEqual(Array.from(reference.images.dataSync()));
    tf.dispose([mixed.images, reference.images, ...floats]);
  });

  it('makes no float tensor of the full-size image: the batch is the only tensor made', async () => {
    const [h, w] = [1500, 2001];
    const image = { data: bytes(h * w * 4, 3), height: h, width: w, channels: 4 as const };
    const made = jest.spyOn(tf.engine(), 'makeTensor');
    try {
      const start = tf.memory();
      const batch = await prepareBatchAsync([image], 64, 96);
      // A float32 copy of the image would be h * w * 3 values (36 MB); the batch is 64x96x3.
      expect(made.mock.calls.map(([, shape]) => shape)).toEqual([[1, 64, 96, 3]]);
      expect(tf.memory().numBytes - start.numBytes).toBe(64 * 96 * 3 * 4);
      batch.images.dispose();
    } finally {
      made.mockRestore();
    }
  });

  it('refuses samples that do not match their size or channels', () => {
    expect(() => prepareBatch([{ data: new Uint8Array(11), height: 2, width: 2, channels: 3 }], 8, 16)).toThrow(/holds 11 samples/);
    expect(() => prepareBatch([{ data: new Uint8Array(8), height: 2, width: 2, channels: 2 as never }], 8, 16)).toThrow(/1, 3 or 4 channels/);
    expect(() => prepareBatch([{ data: new Float32Array(12) as never, height: 2, width: 2, channels: 3 }], 8, 16)).toThrow(/Uint8Array/);
  });
});
