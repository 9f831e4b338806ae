/**
 * The pixel limit (`maxPixels`, `--max-pixels`) holds for every decode, not only detection's:
 * `visualize`, `alignFaces` (the function and the detector's, which defaults to the detector's
 * limit), `alignFacesBatch`, `detectAndAlign`, and the CLI's `--draw` and `--align` outputs, which
 * decode each file again after detection (a file replaced in between is checked again).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { parseNpy } from '../converter/npy';
import { alignFaces } from '../src/align';
import { runCli } from './utils/cli';
import { DetectionModel, Face, Img2Pose, LoadOptions } from '../src/detector';
import { BatchError, InputError, OptionError } from '../src/errors';
import { RawDetections } from '../src/model/model';
import { visualize } from '../src/visualize';
import { patternImage, pngBytes, pngClaiming } from '../bench/reliability_cases';
import { FIXTURES } from './utils/formula';

const POSES = parseNpy(fs.readFileSync(path.join(FIXTURES, 'alignment', 'extra', 'faces_112.poses.npy')));
const POSE = Array.from(POSES.data.subarray(0, 6)) as Face['pose'];
const FACE: Face = {
  box: [2, 2, 20, 20],
  confidence: 0.9,
  pose: POSE,
  keypoints: { left_eye: [5, 5], right_eye: [10, 5], nose: [8, 9], mouth_left: [6, 13], mouth_right: [10, 13] },
};

/** One face per image; `onPredict` runs first (the CLI test swaps a file there). */
class FakeModel implements DetectionModel {
  onPredict: () => void = () => undefined;

  async predict(images: tf.Tensor3D[]): Promise<RawDetections[]> {
    this.onPredict();
    return images.map(() => ({
      boxes: Float32Array.from(FACE.box),
      scores: Float32Array.from([0.9]),
      dofs: Float32Array.from(POSE),
    }));
  }

  dispose(): void {}
}

let tmp: string;
let small: string; // 40 x 30 = 1200 pixels
let big: Buffer; // 60 x 50 = 3000 pixels

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-max-pixels-'));
  small = path.join(tmp, 'small.png');
  fs.writeFileSync(small, await pngBytes(patternImage(40, 30, 1)));
  big = await pngBytes(patternImage(60, 50, 2));
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

afterEach(() => jest.restoreAllMocks());

function expectTooLarge(e: unknown, pixels: string, limit: number): void {
  expect(e).toBeInstanceOf(InputError);
  expect((e as InputError).expected).toBe(`an image of at most ${limit} pixels (the maxPixels option)`);
  expect((e as InputError).found).toContain(pixels);
}

describe('the library calls', () => {
  it('visualize refuses an image above maxPixels from its header; the default bound refuses a 20000x20000 header at once', async () => {
    expectTooLarge(await visualize(small, [FACE], { maxPixels: 1199 }).catch((e: unknown) => e), '40x30 PNG image (1200 pixels)', 1199);
    const png = await visualize(small, [FACE], { maxPixels: 1200 });
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    const bomb = await pngClaiming(20000, 20000);
    const t0 = Date.now();
    expectTooLarge(await visualize(bomb, [FACE]).catch((e: unknown) => e), '20000x20000 PNG image', 178956970);
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('alignFaces takes maxPixels and checks it as an option', async () => {
    expectTooLarge(await alignFaces(small, [FACE], { maxPixels: 1000 }).catch((e: unknown) => e), '40x30 PNG image (1200 pixels)', 1000);
    expect(await alignFaces(small, [FACE], { maxPixels: 1200, size: 112 })).toHaveLength(1);
    await expect(alignFaces(small, [FACE], { maxPixels: 0 })).rejects.toThrow(OptionError);
    expectTooLarge(await alignFaces(await pngClaiming(20000, 20000), [FACE]).catch((e: unknown) => e), '20000x20000 PNG image', 178956970);
  });

  it("the detector's alignFaces, alignFacesBatch and detectAndAlign use the detector's maxPixels", async () => {
    const det = new Img2Pose(new FakeModel(), { maxPixels: 1000 }, 'fake');
    expectTooLarge(await det.alignFaces(small, [FACE]).catch((e: unknown) => e), '1200 pixels', 1000);
    // A call's own option wins.
    expect(await det.alignFaces(small, [FACE], { maxPixels: 5000 })).toHaveLength(1);
    const batch = await det.alignFacesBatch([small], [[FACE]]).catch((e: unknown) => e);
    expectTooLarge(batch, '1200 pixels', 1000);
    expect((batch as InputError).index).toBe(0);
    expectTooLarge(await det.detectAndAlign(small).catch((e: unknown) => e), '1200 pixels', 1000);
    const list = await det.detectAndAlign([small, small]).catch((e: unknown) => e);
    expect(list).toBeInstanceOf(BatchError);
    for (const { error } of (list as BatchError<unknown>).errors) expectTooLarge(error, '1200 pixels', 1000);
    // Within the limit all of them work.
    const roomy = new Img2Pose(new FakeModel(), { maxPixels: 1200 }, 'fake');
    expect((await roomy.detectAndAlign(small)).map((f) => f.crop.image.width)).toEqual([224]);
  });
});

describe('the CLI outputs', () => {
  let model: FakeModel;
  beforeEach(() => {
    model = new FakeModel();
    jest.spyOn(Img2Pose, 'load').mockImplementation(async (options: LoadOptions = {}) => new Img2Pose(model, options, 'fake'));
  });

  /** An input that is small when detected on and replaced by a larger image before it is drawn. */
  function growingInput(name: string): string {
    const file = path.join(tmp, name);
    fs.copyFileSync(small, file);
    model.onPredict = () => fs.writeFileSync(file, big);
    return file;
  }

  it.each([
    ['--draw', 'cannot draw'],
    ['--align', 'cannot align'],
  ])('%s decodes under --max-pixels too: a file grown past it since detection is refused, not drawn', async (flag, words) => {
    const out = path.join(tmp, `out${flag}`);
    const input = growingInput(`grows${flag}.png`);
    const r = await runCli(['detect', input, '--weights', 'w', flag, out, '--max-pixels', '2000']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`img2pose: ${words} ${input}: `);
    expect(r.stderr).toMatch(/expected an image of at most 2000 pixels \(the maxPixels option\), found a 60x50 PNG image \(3000 pixels\)/);
    expect(fs.readdirSync(out)).toEqual([]);
  });

  it.each(['--draw', '--align'])('%s under a --max-pixels the image fits: written, exit 0', async (flag) => {
    const out = path.join(tmp, `fits${flag}`);
    const input = growingInput(`fits${flag}.png`);
    const r = await runCli(['detect', input, '--weights', 'w', flag, out, '--max-pixels', '3000']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(fs.readdirSync(out).length).toBeGreaterThan(0);
  });
});
