// Multi-scale RoIAlign and the ROI heads against torchvision and the upstream run's own values.
import * as tf from '@tensorflow/tfjs';
import { featureSizes } from '../src/ops/anchors';
import { wasmBoxPooler } from '../src/kernels/wasm/roi_align';
import { RoIAlignMethod, inferScales, levelRange, mapRoiLevels, multiScaleRoIAlign, multiScaleRoIAlignInto } from '../src/model/roi_align';
import { HeadsOffload, PooledRowSource, RoIHeadOutputs, RoIHeads } from '../src/model/roi_heads';
import { BOX_SCORE_THRESH, faceScores, postprocessDetections } from '../src/model/postprocess';
import { Img2PoseWeights } from '../src/model/weights';
import { activeRuntime } from '../src/runtime/runtime';
import { golden, relError } from './utils/golden';
import { LEVEL_KEYS, formulaSubset, goldenFeature, maxAbsDiff, paddedSize, resizedSize } from './utils/stage_inputs';
import { Size } from '../src/ops/size';

const TINY = ['tiny_teaser', 'tiny_portrait'];

/** NHWC [R, 7, 7, C] values in torch's (R, C, 7, 7) order. */
async function toTorchLayout(pooled: tf.Tensor4D): Promise<Float32Array> {
  const t = tf.transpose(pooled, [0, 3, 1, 2]);
  const values = (await t.data()) as Float32Array;
  t.dispose();
  return values;
}

describe('level mapping', () => {
  it('infers scales 1/4..1/32 and levels 2..5 from the image and its own maps', () => {
    const scales = inferScales(featureSizes(160, 288).slice(0, 4), [159, 285]);
    expect(scales).toEqual([1 / 4, 1 / 8, 1 / 16, 1 / 32]);
    expect(levelRange(scales)).toEqual([2, 5]);
  });

  it('maps boxes by floor(4 + log2(sqrt(area) / 224) + 1e-6), clamped to the levels', () => {
    // sqrt(area): 10 -> level 2 (clamped), 112 -> exactly 3, 111.9 -> 2, 224 -> 4, 448 -> 5, 2000 -> 5 (clamped)
    const boxes = Float32Array.from([0, 0, 10, 10, 0, 0, 112, 112, 0, 0, 111.9, 111.9, 5, 5, 229, 229, 0, 0, 448, 448, 0, 0, 2000, 2000]);
    expect(Array.from(mapRoiLevels(boxes, 2, 5))).toEqual([0, 1, 0, 2, 3, 3]);
  });
});

// 'host' (JS kernel, the wasm/cpu default) and 'ops' (cropAndResize, for GPU backends) must agree
// with torchvision alike. The slow 'ops' path on wasm gets fewer boxes.
/**
 * Another thread's copy of the heads, here in this thread, on the rows as they would travel
 * (shared memory, stale values in it first); `seen` is told each share's rows, `change` may alter
 * what comes back.
 */
function fakeOffload(other: RoIHeads, seen: (rows: number) => void, change?: (out: RoIHeadOutputs) => void): HeadsOffload {
  return {
    sharedBuffer: (length) => new Float32Array(new SharedArrayBuffer(length * 4)).fill(7),
    async forward(share, scoreThresh) {
      expect(share.data.buffer).toBeInstanceOf(SharedArrayBuffer);
      seen(share.shape[0]);
      const t = tf.tensor4d(share.data, share.shape);
      try {
        const out = await other.forward(t, scoreThresh);
        change?.(out);
        return out;
      } finally {
        t.dispose();
      }
    },
  };
}

/** The same bits. */
function same(a: RoIHeadOutputs, b: RoIHeadOutputs): boolean {
  return Buffer.from(a.classLogits.buffer).equals(Buffer.from(b.classLogits.buffer)) && Buffer.from(a.dofRegression.buffer).equals(Buffer.from(b.dofRegression.buffer));
}

describe.each<[RoIAlignMethod, number]>([
  ['host', 1000],
  ['ops', 48],
])('multiScaleRoIAlign (%s)', (method, maxBoxes) => {
  const proposalsOf = (id: string): Float32Array => Float32Array.from(golden(id, 'proposals').data.subarray(0, maxBoxes * 4));

  it('matches torchvision MultiScaleRoIAlign at the map edges and for tiny boxes', async () => {
    // A 512x512 image with one-channel maps v = sin(0.7x + 0.3l) cos(0.45y) + 0.05x - 0.03y + l;
    // expected values from torchvision 0.14 MultiScaleRoIAlign(['0'..'3'], 7, 2) via /usr/bin/python3.
    const features = [0, 1, 2, 3].map((l) => {
      const n = 512 / (4 * 2 ** l);
      const v = new Float32Array(n * n);
      for (let y = 0; y < n; y++) {
        for (let x = 0; x < n; x++) v[y * n + x] = Math.sin(0.7 * x + 0.3 * l) * Math.cos(0.45 * y) + 0.05 * x - 0.03 * y + l;
      }
      return tf.tensor4d(v, [1, n, n, 1]);
    });
    const boxes = Float32Array.from([
      511.0, 511.1, 511.2, 511.3, // tiny, bottom-right corner: samples in (H-1, H] read row H-1, beyond H read 0
      505.0, 2.0, 512.0, 3.5, // thin strip on the right edge
      10.3, 20.7, 10.5, 20.8, // tiny interior box (roi size forced to 1)
      100.0, 60.0, 512.0, 512.0, // level '2', touching bottom/right
      40.0, 40.0, 512.0, 512.0, // level '3', touching bottom/right
      0.0, 300.0, 230.0, 512.0, // level '1', bottom edge
    ]);
    const expected = [
      [3.203657, 3.203657, 0, 0, 0, 0, 0, 1.601829, 1.601829, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
      [6.723733, 6.871005, 7.018276, 7.091912, 7.091912, 7.091912, 7.091912, 6.713082, 6.858321, 7.00356, 7.07618, 7.07618, 7.07618, 7.07618, 6.702431, 6.845638, 6.988844, 7.060448, 7.060448, 7.060448, 7.060448, 6.690347, 6.831064, 6.971781, 7.042139, 7.042139, 7.042139, 7.042139, 6.669665, 6.805147, 6.940629, 7.00837, 7.00837, 7.00837, 7.00837, 6.64755, 6.77734, 6.90713, 6.972024, 6.972024, 6.972024, 6.972024, 6.625435, 6.749533, 6.873631, 6.935679, 6.935679, 6.935679, 6.935679],
      [-0.6560944, -0.6367946, -0.6174946, -0.5769975, -0.5173222, -0.4576467, -0.3979712, -0.6961062, -0.6761181, -0.6561298, -0.6137444, -0.5510948, -0.4884452, -0.4257955, -0.736118, -0.7154416, -0.6947652, -0.6504912, -0.5848674, -0.5192437, -0.4536198, -0.77613, -0.7547653, -0.7334005, -0.6872382, -0.6186402, -0.5500422, -0.4814441, -0.8161417, -0.7940887, -0.7720357, -0.7239851, -0.6524129, -0.5808407, -0.5092684, -0.8561535, -0.8334123, -0.8106709, -0.7607319, -0.6861855, -0.6116391, -0.5370927, -0.8792663, -0.8561623, -0.8330582, -0.782124, -0.7060103, -0.6298966, -0.5537828],
      [2.238235, 2.092918, 3.120101, 2.200835, 3.404328, 2.989352, 3.158867, 2.112706, 2.183009, 2.657953, 2.461158, 2.996948, 2.974189, 3.151828, 1.981305, 2.551273, 1.746487, 3.22391, 2.212401, 3.098544, 3.295008, 1.869738, 1.97995, 2.35268, 2.289608, 2.701813, 2.751649, 2.930791, 1.754425, 1.586068, 2.672263, 1.675794, 2.950637, 2.49375, 2.662396, 1.620994, 2.050528, 1.60542, 2.61229, 2.035662, 2.666351, 2.857524, 1.500141, 1.91913, 1.501027, 2.472568, 1.928591, 2.5401, 2.730876],
      [3.300043, 2.81706, 2.926519, 3.628426, 3.836802, 3.3836, 3.214721, 2.779263, 3.35626, 3.458328, 3.085464, 3.108237, 3.66136, 3.965243, 2.42356, 3.678125, 3.775469, 2.715582, 2.619712, 3.816106, 4.422191, 2.484363, 3.451633, 3.550981, 2.782398, 2.736834, 3.660474, 4.138423, 2.850644, 2.822962, 2.929246, 3.169499, 3.298152, 3.277204, 3.311394, 3.164474, 2.263344, 2.375719, 3.501609, 3.783202, 2.933019, 2.577642, 3.157168, 2.142967, 2.25613, 3.496669, 3.798061, 2.84053, 2.434722],
      [0.2038803, -0.1526411, 0.5885338, 0.3174952, 0.9113639, 0.8394399, 1.192825, 0.3587272, -0.5307452, 0.7186617, -0.004246276, 0.9581323, 0.6232023, 1.116994, -0.7415385, 0.3280944, -0.2907378, 0.6474065, 0.2551589, 0.8870272, 0.8646897, -0.8551425, 0.2145551, -0.4043388, 0.5338603, 0.141568, 0.7734683, 0.7511137, 0.00853765, -0.8621215, 0.3693447, -0.3376121, 0.6117579, 0.2861122, 0.7749472, -0.3567137, -0.7276564, 0.02727093, -0.255995, 0.3478454, 0.2688046, 0.6259886, -1.390605, 0.06736585, -0.9217929, 0.3456088, -0.3151557, 0.5083535, 0.3837077],
    ];
    const before = tf.memory().numTensors;
    const pooled = await multiScaleRoIAlign(features, [boxes], [[512, 512]], [[512, 512]], method);
    expect(pooled.shape).toEqual([6, 7, 7, 1]);
    const values = await pooled.data();
    pooled.dispose();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(features);
    expect(maxAbsDiff(values, expected.flat())).toBeLessThan(2e-5);
  });

  it.each(TINY)('matches roi_pooled_*_first16 on the reference proposals (%s)', async (id) => {
    const features = LEVEL_KEYS.map((k) => goldenFeature(id, k));
    const proposals = proposalsOf(id);
    const before = tf.memory().numTensors;
    const pooled = await multiScaleRoIAlign(features, [proposals], [resizedSize(id)], [paddedSize(id)], method);
    expect(pooled.shape).toEqual([proposals.length / 4, 7, 7, 256]);
    const first16 = tf.slice(pooled, [0, 0, 0, 0], [16, 7, 7, 256]);
    const ours = await toTorchLayout(first16);
    tf.dispose([first16, pooled]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(features);
    // box_roi_pool and class_roi_pool are configured identically; upstream stores both.
    expect(relError(ours, golden(id, 'roi_pooled_box_first16').data)).toBeLessThan(1e-4);
    expect(relError(ours, golden(id, 'roi_pooled_class_first16').data)).toBeLessThan(1e-4);
  });

  it('pools each image of a mixed batch from its own maps only', async () => {
    const single: Float32Array[] = [];
    for (const id of TINY) {
      const features = LEVEL_KEYS.map((k) => goldenFeature(id, k));
      const pooled = await multiScaleRoIAlign(features, [proposalsOf(id)], [resizedSize(id)], [paddedSize(id)], method);
      single.push((await pooled.data()) as Float32Array);
      tf.dispose([pooled, ...features]);
    }
    // Batch 256x288; each image's surplus area holds junk, which edge samples must never read.
    const batch = featureSizes(256, 288);
    const features = LEVEL_KEYS.slice(0, 4).map((k, level) =>
      tf.tidy(() => {
        const [bh, bw] = batch[level];
        return tf.concat(
          TINY.map((id) => {
            const f = goldenFeature(id, k);
            const [, h, w] = f.shape;
            return tf.pad(f, [[0, 0], [0, bh - h], [0, bw - w], [0, 0]], 1000);
          }),
          0,
        ) as tf.Tensor4D;
      }),
    );
    const pooled = await multiScaleRoIAlign(features, TINY.map(proposalsOf), TINY.map(resizedSize), TINY.map(paddedSize), method);
    const values = await pooled.data();
    tf.dispose([pooled, ...features]);
    const expected = new Float32Array(single[0].length + single[1].length);
    expected.set(single[0]);
    expected.set(single[1], single[0].length);
    expect(maxAbsDiff(values, expected)).toBe(0);
  });
});

describe('host RoIAlign in place on the wasm heap (rules.tensorMemory)', () => {
  it('gives the bits of the copying path, reading no map back and making only the pooled tensor', async () => {
    expect(tf.getBackend()).toBe('wasm');
    const memory = activeRuntime().rules.tensorMemory;
    expect(memory).toBeDefined();
    // A mixed batch whose surplus area holds junk (as above), so that each image's own region counts.
    const batch = featureSizes(256, 288);
    const features = LEVEL_KEYS.slice(0, 4).map((k, level) =>
      tf.tidy(() => {
        const [bh, bw] = batch[level];
        return tf.concat(
          TINY.map((id) => {
            const f = goldenFeature(id, k);
            const [, h, w] = f.shape;
            return tf.pad(f, [[0, 0], [0, bh - h], [0, bw - w], [0, 0]], 1000);
          }),
          0,
        ) as tf.Tensor4D;
      }),
    );
    const boxes = TINY.map((id) => Float32Array.from(golden(id, 'proposals').data.subarray(0, 300 * 4)));
    const copied = await multiScaleRoIAlign(features, boxes, TINY.map(resizedSize), TINY.map(paddedSize), 'host');
    const before = tf.memory().numTensors;
    const read = jest.spyOn(tf.Tensor.prototype, 'data');
    const readSync = jest.spyOn(tf.Tensor.prototype, 'dataSync');
    let inPlace: tf.Tensor4D;
    try {
      inPlace = await multiScaleRoIAlign(features, boxes, TINY.map(resizedSize), TINY.map(paddedSize), 'host', memory);
      expect(read).not.toHaveBeenCalled();
      expect(readSync).not.toHaveBeenCalled();
    } finally {
      read.mockRestore();
      readSync.mockRestore();
    }
    expect(tf.memory().numTensors).toBe(before + 1);
    expect(inPlace.shape).toEqual(copied.shape);
    const a = await copied.data();
    const b = await inPlace.data();
    expect(maxAbsDiff(b, a)).toBe(0);
    expect(Array.from(b).some((v) => v !== 0)).toBe(true);
    // Bit for bit, signed zeros included.
    expect(Buffer.from(b.buffer, b.byteOffset, b.byteLength).equals(Buffer.from(a.buffer, a.byteOffset, a.byteLength))).toBe(true);
    tf.dispose([copied, inPlace, ...features]);
  });

  it('refuses a tensor that is not float32 on the wasm heap', () => {
    const memory = activeRuntime().rules.tensorMemory!;
    const ints = tf.zeros([2, 2], 'int32');
    expect(() => memory.view(ints)).toThrow(/float32 tensor of the wasm backend/);
    ints.dispose();
  });
});

describe("host RoIAlign: torchvision's float32 operations in its order", () => {
  // The first 16 rows upstream stored, from torchvision's CPU kernel: equal bit for bit, in
  // JavaScript (maps read back) and in the WebAssembly kernel (maps on the wasm heap), whether the
  // rows are written into the heap or into memory outside it (another thread's share).
  it.each(TINY)('gives the bits of roi_pooled_box_first16 on every path (%s)', async (id) => {
    const memory = activeRuntime().rules.tensorMemory!;
    expect(wasmBoxPooler()).not.toBeNull();
    const features = LEVEL_KEYS.map((k) => goldenFeature(id, k));
    const proposals = Float32Array.from(golden(id, 'proposals').data);
    const args: [tf.Tensor4D[], Float32Array[], Size[], Size[]] = [features, [proposals], [resizedSize(id)], [paddedSize(id)]];
    const rows = proposals.length / 4;
    const copied = await multiScaleRoIAlign(...args, 'host');
    const inPlace = await multiScaleRoIAlign(...args, 'host', memory);
    const outside = new Float32Array(rows * 49 * 256);
    await multiScaleRoIAlignInto(...args, outside, memory);
    const torchRows = async (t: tf.Tensor4D) => toTorchLayout(tf.slice(t, [0, 0, 0, 0], [16, 7, 7, 256]) as tf.Tensor4D);
    const expected = Float32Array.from(golden(id, 'roi_pooled_box_first16').data);
    const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    expect(bits(await torchRows(copied)).equals(bits(expected))).toBe(true);
    expect(bits(await torchRows(inPlace)).equals(bits(expected))).toBe(true);
    const all = (await copied.data()) as Float32Array;
    expect(bits((await inPlace.data()) as Float32Array).equals(bits(all))).toBe(true);
    expect(bits(outside).equals(bits(all))).toBe(true);
    tf.dispose([copied, inPlace, ...features]);
  });
});

describe('RoIHeads on the reference proposals', () => {
  let weights: Img2PoseWeights;
  let heads: RoIHeads;
  beforeAll(() => {
    weights = formulaSubset('roi_heads.');
    heads = new RoIHeads(weights, activeRuntime());
  });
  afterAll(() => {
    heads.dispose();
    for (const t of weights.tensors.values()) t.dispose();
  });

  it('releases every tensor it made on dispose', () => {
    const before = tf.memory().numTensors;
    new RoIHeads(weights, activeRuntime()).dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it.each(TINY)('matches class_logits and dof_regression for all proposals (%s)', async (id) => {
    const features = LEVEL_KEYS.map((k) => goldenFeature(id, k));
    const before = tf.memory().numTensors;
    const pooled = await multiScaleRoIAlign(features, [Float32Array.from(golden(id, 'proposals').data)], [resizedSize(id)], [paddedSize(id)], 'host');
    const out = await heads.forward(pooled);
    pooled.dispose();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(features);
    expect(out.classLogits.length).toBe(golden(id, 'class_logits').data.length);
    expect(relError(out.classLogits, golden(id, 'class_logits').data)).toBeLessThan(1e-4);
    expect(relError(out.dofRegression, golden(id, 'dof_regression').data)).toBeLessThan(1e-4);
  });

  it.each(TINY)('regresses the dofs of the rows above the score filter only, with the same numbers (%s)', async (id) => {
    const features = LEVEL_KEYS.map((k) => goldenFeature(id, k));
    const pooled = await multiScaleRoIAlign(features, [Float32Array.from(golden(id, 'proposals').data)], [resizedSize(id)], [paddedSize(id)], 'host');
    const before = tf.memory().numTensors;
    const all = await heads.forward(pooled);
    const gated = await heads.forward(pooled, BOX_SCORE_THRESH);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([pooled, ...features]);
    const scores = faceScores(all.classLogits);
    const above = Array.from(scores, (s, i) => (s > Math.fround(BOX_SCORE_THRESH) ? i : -1)).filter((i) => i >= 0);
    // Rows of both kinds exist in tiny_teaser, so the comparison below tests the gating; in
    // tiny_portrait none passes, and every dof must stay zero.
    expect(above.length).toBeLessThan(scores.length);
    if (id === 'tiny_teaser') expect(above.length).toBeGreaterThan(0);
    expect(Array.from(gated.classLogits)).toEqual(Array.from(all.classLogits));
    const expected = new Float32Array(all.dofRegression.length);
    for (const i of above) expected.set(all.dofRegression.subarray(i * 12, i * 12 + 12), i * 12);
    expect(Array.from(gated.dofRegression)).toEqual(Array.from(expected));
    // Post-processing gives the same detections either way.
    const input = { proposals: Float32Array.from(golden(id, 'proposals').data), imageSize: resizedSize(id), originalSize: resizedSize(id), poseMean: weights.poseMean, poseStddev: weights.poseStddev };
    expect(postprocessDetections({ ...input, ...gated })).toEqual(postprocessDetections({ ...input, ...all }));
  });

  it('gives every row the same bits whether the rows go through in pieces or all at once', async () => {
    // tiny_teaser has rows above and below the score filter: both heads are compared.
    const id = 'tiny_teaser';
    const features = LEVEL_KEYS.map((k) => goldenFeature(id, k));
    const pooled = await multiScaleRoIAlign(features, [Float32Array.from(golden(id, 'proposals').data)], [resizedSize(id)], [paddedSize(id)], 'host');
    tf.dispose(features);
    const rows = pooled.shape[0];
    const runtime = activeRuntime();
    // Pieces of 300 leave a shorter last one; the other takes every row in one piece.
    const inPieces = new RoIHeads(weights, { ...runtime, rules: { ...runtime.rules, headRows: 300 } });
    const whole = new RoIHeads(weights, { ...runtime, rules: { ...runtime.rules, headRows: rows } });
    try {
      expect(rows).toBeGreaterThan(600);
      const before = tf.memory().numTensors;
      const a = await inPieces.forward(pooled, BOX_SCORE_THRESH);
      const b = await whole.forward(pooled, BOX_SCORE_THRESH);
      expect(Buffer.from(a.classLogits.buffer).equals(Buffer.from(b.classLogits.buffer))).toBe(true);
      expect(Buffer.from(a.dofRegression.buffer).equals(Buffer.from(b.dofRegression.buffer))).toBe(true);
      expect(a.dofRegression.some((v) => v !== 0)).toBe(true);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      pooled.dispose();
      inPieces.dispose();
      whole.dispose();
    }
  });

  it('with an offload, another thread runs the second half of the rows: stitched in row order, the same bits', async () => {
    const id = 'tiny_teaser';
    const features = LEVEL_KEYS.map((k) => goldenFeature(id, k));
    const all = await multiScaleRoIAlign(features, [Float32Array.from(golden(id, 'proposals').data)], [resizedSize(id)], [paddedSize(id)], 'host');
    tf.dispose(features);
    // An odd number of rows, some above the score filter (checked below), in pieces of 250 here.
    const rows = 401;
    const pooled = tf.slice(all, 0, rows);
    all.dispose();
    // The other thread's copy of the heads (here in this thread, on the rows as they would travel).
    const other = new RoIHeads(weights, activeRuntime());
    const sent: number[] = [];
    const swapFirstTwo = (out: RoIHeadOutputs) => out.classLogits.set([...out.classLogits.subarray(2, 4), ...out.classLogits.subarray(0, 2)], 0);
    const offload = (swap: boolean): HeadsOffload => fakeOffload(other, (n) => sent.push(n), swap ? swapFirstTwo : undefined);
    try {
      const before = tf.memory().numTensors;
      const alone = await heads.forward(pooled, BOX_SCORE_THRESH);
      expect(alone.dofRegression.some((v) => v !== 0)).toBe(true);
      const shared = await heads.forward(pooled, BOX_SCORE_THRESH, offload(false));
      expect(sent).toEqual([rows - Math.ceil(rows / 2)]);
      expect(same(shared, alone)).toBe(true);
      // Declined (no thread free, or it stopped): this thread runs every row.
      expect(same(await heads.forward(pooled, BOX_SCORE_THRESH, { sharedBuffer: (n) => new Float32Array(n), forward: async () => null }), alone)).toBe(true);
      // The comparison sees two rows out of place.
      expect(same(await heads.forward(pooled, BOX_SCORE_THRESH, offload(true)), alone)).toBe(false);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      pooled.dispose();
      other.dispose();
    }
  });

  it("pooled on demand, the offload's rows are pooled first, into its memory, and the outputs are the bits of the rows pooled at once", async () => {
    const id = 'tiny_teaser';
    const features = LEVEL_KEYS.map((k) => goldenFeature(id, k));
    const rows = 401;
    const boxes = Float32Array.from(golden(id, 'proposals').data).subarray(0, rows * 4);
    const sizes: [Size[], Size[]] = [[resizedSize(id)], [paddedSize(id)]];
    const pooled = await multiScaleRoIAlign(features, [boxes], ...sizes, 'host');
    const calls: string[] = [];
    const source: PooledRowSource = {
      rows,
      rowShape: [7, 7, 256],
      async into(start, count, out) {
        calls.push(`into ${start} ${count}`);
        await multiScaleRoIAlignInto(features, [boxes.subarray(start * 4, (start + count) * 4)], ...sizes, out);
      },
      tensor(start, count) {
        calls.push(`tensor ${start} ${count}`);
        return multiScaleRoIAlign(features, [boxes.subarray(start * 4, (start + count) * 4)], ...sizes, 'host');
      },
      release: () => calls.push('release'),
    };
    const other = new RoIHeads(weights, activeRuntime());
    // Stale values in the memory the rows go to: the pooling must not add to them.
    const offload = fakeOffload(other, (n) => calls.push(`away ${n}`));
    try {
      const before = tf.memory().numTensors;
      const alone = await heads.forward(pooled, BOX_SCORE_THRESH);
      expect(alone.dofRegression.some((v) => v !== 0)).toBe(true);
      expect(same(await heads.forwardPooling(source, BOX_SCORE_THRESH, offload), alone)).toBe(true);
      expect(calls).toEqual(['into 185 216', 'away 216', 'tensor 0 185', 'release']);
      // Declined: this thread runs the offload's rows from the memory they were pooled into.
      calls.length = 0;
      const declined: HeadsOffload = { sharedBuffer: (n) => new Float32Array(n).fill(7), forward: async () => null };
      expect(same(await heads.forwardPooling(source, BOX_SCORE_THRESH, declined), alone)).toBe(true);
      expect(calls).toEqual(['into 185 216', 'tensor 0 185', 'release']);
      // No offload: every row pooled here at once.
      calls.length = 0;
      expect(same(await heads.forwardPooling(source, BOX_SCORE_THRESH), alone)).toBe(true);
      expect(calls).toEqual(['tensor 0 401', 'release']);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      tf.dispose([...features, pooled]);
      other.dispose();
    }
  });

  it('returns empty outputs for no boxes', async () => {
    const out = await heads.forward(tf.zeros([0, 7, 7, 256]) as tf.Tensor4D);
    expect([out.classLogits.length, out.dofRegression.length]).toEqual([0, 0]);
  });
});
