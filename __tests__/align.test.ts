/**
 * Face alignment (src/align.ts) against upstream's `align_faces` and OpenCV 4.6 `cv2.warpAffine`:
 * - fixtures/alignment/*: upstream's own alignment on the teaser photo (shared fixtures);
 * - fixtures/alignment/extra/*: tools/alignment_refs.py (upstream's `_alignment.py` on random
 *   poses in another photo; cv2.warpAffine under random and extreme transforms).
 * Landmarks must agree to float64 rounding, templates and float32 transforms exactly, crops byte
 * for byte. Then the public call's inputs, errors and tensor hygiene.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import png from '@jimp/js-png';
import { parseNpy, NpyArray } from '../converter/npy';
import {
  ALIGNMENT_TEMPLATES_112,
  AlignSize,
  REFERENCE_POINTS_5,
  alignFaces,
  alignmentTemplate,
  cropToPng,
  AffineWarper,
  WarpKernel,
  cvRound,
  defaultWarpKernel,
  fitSimilarity,
  fitTemplate,
  projectLandmarks,
  warpAffine,
} from '../src/align';
import { InputError, OptionError } from '../src/errors';
import { decodeBitmap, RawImage } from '../src/io/images';
import { FIXTURES } from './utils/formula';
import { rgbOfPng } from './utils/png';

const ALIGNMENT = path.join(FIXTURES, 'alignment');
const EXTRA = path.join(ALIGNMENT, 'extra');

function npy(dir: string, file: string): NpyArray {
  return parseNpy(fs.readFileSync(path.join(dir, file)), file);
}

const TEASER = path.join(FIXTURES, 'golden', 'teaser.png');
const teaser = rgbOfPng(TEASER);

/** Indices where two byte arrays differ, and the largest difference. */
function byteDiff(a: ArrayLike<number>, b: ArrayLike<number>): { count: number; max: number; first: number } {
  expect(a.length).toBe(b.length);
  let count = 0, max = 0, first = -1;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > 0) {
      if (first < 0) first = i;
      count++;
      max = Math.max(max, d);
    }
  }
  return { count, max, first };
}

/** Crops as hex digests: cheap to compare, and a failure still shows which crop differs. */
function digests(crops: ArrayLike<number>[]): string[] {
  return crops.map((c) => createHash('sha256').update(Uint8Array.from(c)).digest('hex').slice(0, 16));
}

interface Reference {
  id: string;
  size: AlignSize;
  n: number;
  poses: NpyArray;
  landmarks: NpyArray;
  templates: NpyArray;
  transforms: NpyArray;
  crops: NpyArray;
}

function reference(dir: string, id: string, size: AlignSize, n: number, files?: Record<string, string>): Reference {
  const f = (k: string) => npy(dir, files?.[k] ?? `${id}.${k}.npy`);
  return { id, size, n, poses: f('poses'), landmarks: f('landmarks'), templates: f('templates'), transforms: f('transforms'), crops: f('crops') };
}

/** Runs the public `alignFaces` on a reference case and checks every output against it. */
async function expectMatches(image: Parameters<typeof alignFaces>[0], ref: Reference): Promise<void> {
  const { size, n } = ref;
  const faces = Array.from({ length: n }, (_, k) => ({ pose: Array.from(ref.poses.data.subarray(k * 6, k * 6 + 6)) }));
  const aligned = await alignFaces(image, faces, { size });
  expect(aligned).toHaveLength(n);
  const pixels = size * size * 3;
  aligned.forEach((face, k) => {
    const where = `${ref.id} face ${k}`;
    // Landmarks: float64 rounding (values up to a few thousand pixels).
    const lms = face.landmarks.flat();
    const expectedLms = Array.from(ref.landmarks.data.subarray(k * 10, k * 10 + 10));
    lms.forEach((v, i) => expect([where, Math.abs(v - expectedLms[i]) <= 1e-9 * Math.max(1, Math.abs(expectedLms[i]))]).toEqual([where, true]));
    expect([where, face.template]).toEqual([where, ref.templates.data[k]]);
    expect([where, face.transform.flat()]).toEqual([where, Array.from(ref.transforms.data.subarray(k * 6, k * 6 + 6))]);
    expect(face.image.width).toBe(size);
    expect(face.image.height).toBe(size);
    expect(face.image.channels).toBe(3);
    expect(face.image.data).toBeInstanceOf(Uint8Array);
    const diff = byteDiff(face.image.data, ref.crops.data.subarray(k * pixels, (k + 1) * pixels));
    expect([where, diff.count]).toEqual([where, 0]);
  });
}

describe('reference data', () => {
  test('REFERENCE_POINTS_5 is the upstream .npy, bit for bit', () => {
    const ref = npy(ALIGNMENT, 'reference_3d_5_points_trans.npy');
    expect(ref.shape).toEqual([5, 3]);
    expect(Array.from(REFERENCE_POINTS_5)).toEqual(Array.from(ref.data));
  });

  test('templates: float32, five orientations, doubled exactly for 224', () => {
    expect(ALIGNMENT_TEMPLATES_112).toHaveLength(50);
    // The frontal template is symmetric about x = 56 in upstream's table.
    const frontal = alignmentTemplate(2, 112);
    expect(frontal[0] + frontal[2]).toBeCloseTo(112, 4);
    for (let t = 0; t < 5; t++) {
      const a = alignmentTemplate(t, 112);
      const b = alignmentTemplate(t, 224);
      a.forEach((v, i) => expect(b[i]).toBe(v * 2));
    }
  });
});

describe('upstream align_faces on the teaser photo (shared fixtures)', () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(ALIGNMENT, 'manifest.json'), 'utf8')) as {
    cases: { id: string; size: AlignSize; n: number; files: Record<string, string> }[];
  };

  test.each(manifest.cases.map((c) => [c.id, c] as const))('%s: landmarks, templates, transforms, crops', async (_id, c) => {
    const ref = reference(ALIGNMENT, c.id, c.size, c.n, c.files);
    await expectMatches(teaser, ref);
  });

  test('the cases reach every template, and faces off the image give black', () => {
    const templates = new Set(manifest.cases.flatMap((c) => Array.from(npy(ALIGNMENT, c.files.templates).data)));
    expect([...templates].sort()).toEqual([0, 1, 2, 3, 4]);
    const edges = npy(ALIGNMENT, 'al_edges_112.crops.npy');
    const pixels = 112 * 112 * 3;
    const blackFaces = [0, 1, 2, 3].filter((k) => edges.data.subarray(k * pixels, (k + 1) * pixels).every((v) => v === 0));
    expect(blackFaces.length).toBeGreaterThan(0);
  });
});

describe('upstream _alignment.py on random poses (tools/alignment_refs.py)', () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(EXTRA, 'manifest.json'), 'utf8')) as {
    faces: { image: string; cases: { id: string; size: AlignSize; n: number }[] };
    warp: { size: number; labels: string[] };
  };
  const file = path.join(FIXTURES, 'golden', manifest.faces.image);

  test.each(manifest.faces.cases.map((c) => [c.id, c] as const))('%s (image read from its file)', async (_id, c) => {
    await expectMatches(file, reference(EXTRA, c.id, c.size, c.n));
  });
});

describe('warpAffine: OpenCV 4.6 fixed-point bilinear, byte for byte', () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(EXTRA, 'manifest.json'), 'utf8')) as { warp: { size: number; labels: string[] } };
  const source = npy(EXTRA, 'warp.source.npy');
  const transforms = npy(EXTRA, 'warp.transforms.npy');
  const crops = npy(EXTRA, 'warp.crops.npy');
  const [height, width] = source.shape;
  const src = { data: Uint8Array.from(source.data), width, height };
  const { size, labels } = manifest.warp;

  const kernels: WarpKernel[] = ['simd', 'js'];
  const cases = kernels.flatMap((kernel) => labels.map((label, k) => [kernel, k, label] as const));

  test('Node runs the WebAssembly SIMD kernel (so the cases below test both kernels)', () => {
    expect(defaultWarpKernel()).toBe('simd');
    expect(new AffineWarper(src).kernel).toBe('simd');
    expect(new AffineWarper(src, 'js').kernel).toBe('js');
  });

  test.each(cases)('%s kernel, transform %i (%s)', (kernel, k, _label) => {
    const m = transforms.data.subarray(k * 6, k * 6 + 6);
    const warper = new AffineWarper(src, kernel);
    const out = warper.warp(m, size);
    expect(warper.simdWarps).toBe(kernel === 'simd' ? 1 : 0);
    const pixels = size * size * 3;
    expect(byteDiff(out, crops.data.subarray(k * pixels, (k + 1) * pixels))).toEqual({ count: 0, max: 0, first: -1 });
  });

  test('a float bilinear would not do: plain rounding of the exact sample differs somewhere', () => {
    // Guards the point of the fixed-point port: the references discriminate between the two.
    let differs = 0;
    const pixels = size * size * 3;
    for (let k = 0; k < labels.length && differs === 0; k++) {
      const m = Array.from(transforms.data.subarray(k * 6, k * 6 + 6));
      const det = m[0] * m[4] - m[1] * m[3];
      if (det === 0) continue;
      const inv = [m[4] / det, -m[1] / det, -m[3] / det, m[0] / det];
      const ref = crops.data.subarray(k * pixels, (k + 1) * pixels);
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          const u = x - m[2], v = y - m[5];
          const sx = inv[0] * u + inv[1] * v, sy = inv[2] * u + inv[3] * v;
          const x0 = Math.floor(sx), y0 = Math.floor(sy), fx = sx - x0, fy = sy - y0;
          if (x0 < 0 || y0 < 0 || x0 + 1 >= width || y0 + 1 >= height) continue;
          const at = (xx: number, yy: number) => source.data[(yy * width + xx) * 3];
          const value = Math.round(at(x0, y0) * (1 - fx) * (1 - fy) + at(x0 + 1, y0) * fx * (1 - fy) + at(x0, y0 + 1) * (1 - fx) * fy + at(x0 + 1, y0 + 1) * fx * fy);
          if (value !== ref[(y * size + x) * 3]) differs++;
        }
      }
    }
    expect(differs).toBeGreaterThan(0);
  });

  test('both kernels agree on random similarities, tiny images and a warper reused across images', () => {
    // A seeded LCG: random scale, rotation and offset, many pixels on or past the border.
    let seed = 12345;
    const rand = (): number => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return seed / 4294967296;
    };
    const image = (w: number, h: number) => ({ data: Uint8Array.from({ length: w * h * 3 }, () => Math.floor(rand() * 256)), width: w, height: h });
    const images = [image(1, 1), image(2, 3), image(5, 40), image(97, 61)];
    const warpers = images.map((im) => new AffineWarper(im));
    let nonzero = 0, total = 0;
    for (let k = 0; k < 120; k++) {
      const i = k % images.length;
      const { width, height } = images[i];
      const side = [1, 7, 112][k % 3];
      const scale = 0.1 + rand() * 8, angle = rand() * 2 * Math.PI;
      const c = scale * Math.cos(angle), s = scale * Math.sin(angle);
      // The image centre lands within a crop's side of the crop centre: interior, border and outside pixels.
      const cx = width / 2, cy = height / 2;
      const m = Float32Array.from([
        c, -s, side / 2 - (c * cx - s * cy) + (rand() - 0.5) * side,
        s, c, side / 2 - (s * cx + c * cy) + (rand() - 0.5) * side,
      ]);
      const js = warpAffine(images[i], m, side, undefined, 'js');
      // The warpers take turns on the shared instance: each must find its own rows again.
      expect(byteDiff(warpers[i].warp(m, side), js)).toEqual({ count: 0, max: 0, first: -1 });
      nonzero += js.filter((v) => v !== 0).length;
      total += js.length;
    }
    // A good share of the bytes show the image (~25%): the comparisons are not of black alone.
    expect(nonzero).toBeGreaterThan(0.15 * total);
    // Most warps ran in the SIMD kernel (tiny crops of a larger image may copy too much for it).
    expect(warpers.reduce((n, w) => n + w.simdWarps, 0)).toBeGreaterThan(80);
  });

  test('cvRound: half to even, out of int range gives INT_MIN (cvtsd2si)', () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, -7.5].map(cvRound)).toEqual([0, 2, 2, 0, -2, -2, 2, -8]);
    expect(cvRound(2147483647.4)).toBe(2147483647);
    expect(cvRound(2147483647.5)).toBe(-2147483648);
    expect(cvRound(-2147483648.5)).toBe(-2147483648);
    expect(cvRound(-3e10)).toBe(-2147483648);
    expect(cvRound(NaN)).toBe(-2147483648);
  });
});

describe('fitting', () => {
  test('a similarity maps its own image back exactly (rotation, scale, translation recovered)', () => {
    const tpl = alignmentTemplate(2, 112);
    const angle = 0.4, scale = 2.5, tx = 300, ty = -40;
    // landmarks = inverse similarity of the template, so the fit must give (scale, angle, t) back.
    const c = Math.cos(angle), s = Math.sin(angle);
    const src = new Float64Array(10);
    for (let i = 0; i < 5; i++) {
      const x = tpl[2 * i] - tx, y = tpl[2 * i + 1] - ty;
      src[2 * i] = (c * x + s * y) / scale;
      src[2 * i + 1] = (-s * x + c * y) / scale;
    }
    const m = fitSimilarity(src, tpl);
    expect(m[0]).toBeCloseTo(Math.fround(scale * c), 5);
    expect(m[1]).toBeCloseTo(Math.fround(-scale * s), 5);
    expect(m[3]).toBeCloseTo(Math.fround(scale * s), 5);
    expect(m[2]).toBeCloseTo(tx, 3);
    expect(m[5]).toBeCloseTo(ty, 3);
    expect(fitTemplate(src, 112).template).toBe(2);
  });

  test('a mirrored face gets the best proper rotation, never a reflection', () => {
    const tpl = alignmentTemplate(1, 112);
    const mirrored = tpl.map((v, i) => (i % 2 === 0 ? 200 - v : v));
    const m = fitSimilarity(mirrored, tpl);
    // det of the 2x2 part > 0: a rotation with scale, as upstream's reflection check ensures.
    expect(m[0] * m[4] - m[1] * m[3]).toBeGreaterThan(0);
  });

  test('degenerate landmarks (all in one point): identity-like transform onto the centroid, no throw', () => {
    const tpl = alignmentTemplate(2, 112);
    const m = fitSimilarity(new Float64Array(10).fill(7), tpl);
    const cx = (tpl[0] + tpl[2] + tpl[4] + tpl[6] + tpl[8]) / 5;
    const cy = (tpl[1] + tpl[3] + tpl[5] + tpl[7] + tpl[9]) / 5;
    expect(Array.from(m)).toEqual([1, 0, Math.fround(cx), 0, 1, Math.fround(cy)].map(Math.fround));
  });

  test('a face so far away that its landmarks collapse aligns without error (as upstream)', async () => {
    const [face] = await alignFaces(teaser, [{ pose: [0, 0, 0, 0, 0, 1e16] }], { size: 112 });
    expect(face.transform[0][0]).toBe(1);
    expect(face.transform[1][1]).toBe(1);
    expect(face.transform[0][1]).toBe(0);
    expect(face.image.data).toHaveLength(112 * 112 * 3);
  });

  test('landmarks are the pose projected with focal w + h, centre (w/2, h/2), float32 pose', () => {
    const pose = [0.1, -0.2, 0.05, 0.3, -0.1, 10];
    const lms = projectLandmarks(pose, 640, 480);
    // Frontal-ish face near the centre: eyes above the mouth, left eye left of the right eye.
    expect(lms[0]).toBeLessThan(lms[2]);
    expect(lms[1]).toBeLessThan(lms[7]);
    const nudged = projectLandmarks(pose.map((v, i) => (i === 5 ? v + 1e-12 : v)), 640, 480);
    expect(Array.from(nudged)).toEqual(Array.from(lms)); // below float32 resolution: same pose
  });
});

describe('alignFaces: inputs, options, errors', () => {
  // A smaller photo than the teaser keeps the decoding of every input kind quick.
  const PORTRAIT = path.join(FIXTURES, 'golden', 'portrait_1.png');
  const portrait = rgbOfPng(PORTRAIT);
  const randomPoses = npy(EXTRA, 'faces_112.poses.npy');
  const faces = [0, 2].map((k) => ({ pose: Array.from(randomPoses.data.subarray(k * 6, k * 6 + 6)) }));
  let expected: Uint8Array[];

  beforeAll(async () => {
    expected = (await alignFaces(portrait, faces, { size: 112 })).map((f) => f.image.data);
  });

  test('the faces used here are in view (their crops are not black)', () => {
    for (const crop of expected) expect(crop.filter((v) => v > 0).length).toBeGreaterThan(crop.length / 2);
  });

  test('default size is 224 (upstream align_faces)', async () => {
    const [face] = await alignFaces(portrait, faces.slice(0, 1));
    expect(face.image.width).toBe(224);
  });

  test('no faces: [] without reading the image', async () => {
    await expect(alignFaces('/no/such/file.png', [])).resolves.toEqual([]);
  });

  test('file path, encoded bytes, RGBA pixels, a Jimp-like bitmap and tensors give the same crops', async () => {
    const bitmap = await decodeBitmap(PORTRAIT);
    const rgba: RawImage = { data: bitmap.data, width: bitmap.width, height: bitmap.height, channels: 4 };
    const before = tf.memory().numTensors;
    const int = tf.tensor3d(Int32Array.from(portrait.data), [portrait.height, portrait.width, 3], 'int32');
    const float = tf.tensor3d(Float32Array.from(portrait.data), [portrait.height, portrait.width, 3], 'float32');
    const inputs = [PORTRAIT, fs.readFileSync(PORTRAIT), rgba, { bitmap }, int, float, { ...portrait, data: Float32Array.from(portrait.data) }];
    for (const input of inputs) {
      const out = await alignFaces(input, faces, { size: 112 });
      expect(digests(out.map((f) => f.image.data))).toEqual(digests(expected));
    }
    int.dispose();
    float.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  test('float pixels are rounded to 8 bits', async () => {
    const shifted = { ...portrait, data: Float32Array.from(portrait.data, (v) => Math.max(0, v - 0.3)) };
    const out = await alignFaces(shifted, faces, { size: 112 });
    expect(digests(out.map((f) => f.image.data))).toEqual(digests(expected));
  });

  test('results keep the faces order; a repeated face gives the same crop', async () => {
    const out = await alignFaces(portrait, [faces[1], faces[0], faces[1]], { size: 112 });
    expect(digests(out.map((f) => f.image.data))).toEqual(digests([expected[1], expected[0], expected[1]]));
  });

  test('typed-array poses and extra face fields are accepted', async () => {
    const out = await alignFaces(portrait, faces.map((f) => ({ pose: Float32Array.from(f.pose), confidence: 1 })), { size: 112 });
    expect(digests(out.map((f) => f.image.data))).toEqual(digests(expected));
  });

  const badPose = (pose: unknown) => [faces[0], { pose }] as unknown as { pose: number[] }[];

  test.each([
    ['NaN', [0, NaN, 0, 0, 0, 10], /faces\[1\]\.pose.*NaN at position 1/],
    ['Infinity', [0, 0, 0, 0, 0, Infinity], /faces\[1\]\.pose.*Infinity at position 5/],
    ['beyond float32', [0, 0, 0, 1e39, 0, 10], /faces\[1\]\.pose.*position 3/],
    ['5 values', [0, 0, 0, 0, 10], /faces\[1\]\.pose.*5 values/],
    ['7 values', [0, 0, 0, 0, 0, 10, 1], /faces\[1\]\.pose.*7 values/],
    ['strings', ['0', 0, 0, 0, 0, 10], /faces\[1\]\.pose/],
    ['missing', undefined, /faces\[1\]\.pose.*undefined/],
    ['BigInts', new BigInt64Array(6), /faces\[1\]\.pose.*BigInt64Array/],
  ])('a pose with %s: InputError naming the face, before the image is read', async (_what, pose, message) => {
    const err = await alignFaces('/no/such/file.png', badPose(pose)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as InputError).input).toBe('faces[1].pose');
    expect((err as Error).message).toMatch(message);
  });

  test('a face in the camera plane (a landmark at depth 0): InputError, not NaN crops', async () => {
    const tz = -REFERENCE_POINTS_5[2];
    const err = await alignFaces(portrait, badPose([0, 0, 0, 0, 0, tz])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(/faces\[1\]\.pose.*infinity/);
  });

  test.each([
    ['size 100', [faces[0]], { size: 100 }, /Option size: expected 112 or 224, found 100/],
    ['size "112"', [faces[0]], { size: '112' }, /Option size/],
    ['options not an object', [faces[0]], 3, /Option options/],
    ['faces not an array', { pose: faces[0].pose }, undefined, /Option faces: expected an array/],
  ])('%s: OptionError', async (_what, fs_, options, message) => {
    const err = await alignFaces(portrait, fs_ as never, options as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OptionError);
    expect((err as Error).message).toMatch(message);
  });

  test('a bad image: its InputError, and no tensor left behind', async () => {
    const before = tf.memory().numTensors;
    await expect(alignFaces('/no/such/file.png', faces)).rejects.toThrow(InputError);
    await expect(alignFaces({ data: new Float32Array(12).fill(300), width: 2, height: 2, channels: 3 }, faces)).rejects.toThrow(/within 0..255/);
    await expect(alignFaces({ data: new Uint8Array(5), width: 2, height: 2, channels: 3 }, faces)).rejects.toThrow(/12 samples/);
    const t = tf.zeros([2, 2, 2]) as tf.Tensor3D;
    await expect(alignFaces(t, faces)).rejects.toThrow(InputError);
    t.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  test('cropToPng writes a PNG that decodes to the crop', async () => {
    const [face] = await alignFaces(portrait, faces, { size: 112 });
    const bytes = await cropToPng(face.image);
    const back = png().decode(Buffer.from(bytes));
    expect([back.width, back.height]).toEqual([112, 112]);
    const rgb = new Uint8Array(112 * 112 * 3);
    for (let i = 0, j = 0; j < rgb.length; i += 4, j += 3) {
      rgb[j] = back.data[i];
      rgb[j + 1] = back.data[i + 1];
      rgb[j + 2] = back.data[i + 2];
    }
    expect(digests([rgb])).toEqual(digests([face.image.data]));
  });
});
