import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { Jimp } from 'jimp';
import { DrawableFace, clipSegment, poseAxes2d, visualize } from '../src/visualize';
import { decodeBitmap } from '../src/io/images';
import { imagePath } from './utils/golden';

const W = 120;
const H = 90;
const GRAY = 0x808080ff;

async function grayPng(): Promise<Buffer> {
  return new Jimp({ width: W, height: H, color: GRAY }).getBuffer('image/png');
}

async function decode(png: Uint8Array): Promise<{ width: number; height: number; rgb: (x: number, y: number) => number[] }> {
  const { width, height, data } = await decodeBitmap(png);
  return { width, height, rgb: (x, y) => Array.from(data.subarray((y * width + x) * 4, (y * width + x) * 4 + 3)) };
}

// Frontal face 8 units in front of the camera, centred: its axes start at the image centre.
const face: DrawableFace = {
  box: [20, 30, 80, 80],
  confidence: 0.87,
  pose: [0, 0, 0, 0, 0, 8],
  keypoints: { left_eye: [40, 50], right_eye: [60, 50], nose: [50, 60], mouth_left: [42, 70], mouth_right: [58, 70] },
};

describe('visualize', () => {
  it('returns a PNG of the input size with the box edges in the box colour', async () => {
    const png = await visualize(await grayPng(), [face]);
    expect(Array.from(png.subarray(0, 8))).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    const out = await decode(png);
    expect([out.width, out.height]).toEqual([W, H]);
    // Along all four edges (away from the label tab above the top-left corner and the keypoints).
    for (const [x, y] of [[50, 30], [50, 31], [50, 80], [20, 55], [80, 55], [79, 55]]) {
      expect(out.rgb(x, y)).toEqual([0, 255, 0]);
    }
    // Just outside the box and inside it (off the drawn features): untouched.
    expect(out.rgb(100, 55)).toEqual([128, 128, 128]);
    expect(out.rgb(30, 75)).toEqual([128, 128, 128]);
    // Keypoints are red discs.
    expect(out.rgb(40, 50)).toEqual([255, 0, 0]);
    expect(out.rgb(58, 70)).toEqual([255, 0, 0]);
  });

  it('draws the confidence on a tab above the box', async () => {
    const out = await decode(await visualize(await grayPng(), [face]));
    // "0.87": a 19-pixel high tab (rows 11..29) from x = 20, green with black glyphs.
    const tab: number[][] = [];
    for (let y = 11; y < 30; y++) for (let x = 20; x < 69; x++) tab.push(out.rgb(x, y));
    const green = tab.filter((p) => p[0] === 0 && p[1] === 255 && p[2] === 0).length;
    const black = tab.filter((p) => p[0] === 0 && p[1] === 0 && p[2] === 0).length;
    expect(green + black).toBe(tab.length);
    // Glyph cells are 3x3 pixels: 0 has 12 cells, '.' 1, 8 has 13, 7 has 7.
    expect(black).toBe((12 + 1 + 13 + 7) * 9);
    expect(out.rgb(20, 10)).toEqual([128, 128, 128]);
    expect(out.rgb(69, 20)).toEqual([128, 128, 128]);
  });

  it('changes nothing when there are no faces', async () => {
    const input = await decodeBitmap(fs.readFileSync(imagePath('small_1.png')));
    const out = await decodeBitmap(await visualize(imagePath('small_1.png'), []));
    expect([out.width, out.height]).toEqual([120, 90]);
    expect([out.width, out.height]).toEqual([input.width, input.height]);
    expect(Buffer.compare(out.data, input.data)).toBe(0);
  });

  it('writes `out` and leaves a jimp input untouched', async () => {
    const img = new Jimp({ width: W, height: H, color: GRAY });
    const before = Buffer.from(img.bitmap.data);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-vis-'));
    const file = path.join(dir, 'drawn.png');
    const png = await visualize(img, [face], { out: file });
    expect(Buffer.compare(fs.readFileSync(file), png)).toBe(0);
    expect(Buffer.compare(img.bitmap.data, before)).toBe(0);
    fs.rmSync(dir, { recursive: true });
  });

  it('draws on a tensor or raw pixels as on the encoded image, leaking no tensor', async () => {
    const fromPng = await visualize(await grayPng(), [face]);
    const before = tf.memory().numTensors;
    const t = tf.fill([H, W, 3], 128, 'int32') as tf.Tensor3D;
    const fromTensor = await visualize(t, [face]);
    t.dispose();
    const raw = { data: new Uint8Array(W * H).fill(128), width: W, height: H, channels: 1 as const };
    const fromRaw = await visualize(raw, [face]);
    expect(tf.memory().numTensors).toBe(before);
    expect(Buffer.compare((await decodeBitmap(fromTensor)).data, (await decodeBitmap(fromPng)).data)).toBe(0);
    expect(Buffer.compare((await decodeBitmap(fromRaw)).data, (await decodeBitmap(fromPng)).data)).toBe(0);
  });

  it('draws the pose axes from the projected head origin', async () => {
    const out = await decode(await visualize(await grayPng(), [{ ...face, keypoints: {} }], { showConfidence: false }));
    // Focal w+h = 210, centre (60, 45), head at z = 8: the x axis (red) runs right from (60, 45) to
    // (60 + 210/8, 45); the y axis (green) down to (60, 45 + 210/8); the facing axis projects onto the origin.
    expect(out.rgb(70, 45)).toEqual([255, 0, 0]);
    expect(out.rgb(60, 55)).toEqual([0, 255, 0]);
  });
});

describe('poseAxes2d', () => {
  it('projects the axis end points with focal w+h and centre (w/2, h/2)', () => {
    // Rotation of +90 degrees about z maps x -> y, y -> -x; head at (1, -0.5, 10).
    const axes = poseAxes2d([0, 0, Math.PI / 2, 1, -0.5, 10], 200, 100, 2);
    const f = 300;
    const [cx, cy] = [100, 50];
    expect(axes).not.toBeNull();
    const close = (a: number[], b: number[]) => a.forEach((v, i) => expect(v).toBeCloseTo(b[i], 9));
    close(axes!.origin, [cx + (f * 1) / 10, cy + (f * -0.5) / 10]);
    close(axes!.ends[0], [cx + (f * 1) / 10, cy + (f * 1.5) / 10]);
    close(axes!.ends[1], [cx + (f * -1) / 10, cy + (f * -0.5) / 10]);
    close(axes!.ends[2], [cx + (f * 1) / 8, cy + (f * -0.5) / 8]);
  });

  it('gives nothing for a head behind the camera', () => {
    expect(poseAxes2d([0, 0, 0, 0, 0, -3], 100, 100, 1)).toBeNull();
    expect(poseAxes2d([0, 0, 0, 0, 0, 0.5], 100, 100, 1)).toBeNull();
  });
});

describe('clipSegment', () => {
  it('clips to the rectangle and rejects segments outside it', () => {
    expect(clipSegment(-10, 5, 20, 5, 0, 0, 10, 10)).toEqual([0, 5, 10, 5]);
    clipSegment(5, -1e9, 5, 1e9, 0, 0, 10, 10)!.forEach((v, i) => expect(v).toBeCloseTo([5, 0, 5, 10][i], 5));
    expect(clipSegment(-5, -5, -1, 20, 0, 0, 10, 10)).toBeNull();
    expect(clipSegment(2, 3, 4, 5, 0, 0, 10, 10)).toEqual([2, 3, 4, 5]);
  });
});
