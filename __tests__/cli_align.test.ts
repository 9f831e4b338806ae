/**
 * `img2pose detect --align <dir> [--align-size 112|224]`: crop files, their names (unique across
 * folders), the JSON's `crop` field, usage errors. The network is a fake `DetectionModel` behind
 * the real `Img2Pose` (injected by mocking `Img2Pose.load`); the crops are the library's
 * `alignFaces`, checked against upstream in align.test.ts.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { parseNpy } from '../converter/npy';
import { alignFaces } from '../src/align';
import { runCli } from './utils/cli';
import { rgbOfPng } from './utils/png';
import { DetectionModel, Img2Pose, LoadOptions } from '../src/detector';
import { RawDetections } from '../src/model/model';
import { FIXTURES } from './utils/formula';

const PORTRAIT = path.join(FIXTURES, 'golden', 'portrait_1.png');
const POSES = parseNpy(fs.readFileSync(path.join(FIXTURES, 'alignment', 'extra', 'faces_112.poses.npy')));

/** Two faces per image (poses in view of the portrait photo), confidence 0.9 and 0.7. */
class FakeModel implements DetectionModel {
  async predict(images: tf.Tensor3D[]): Promise<RawDetections[]> {
    return images.map(() => ({
      boxes: Float32Array.from([10, 10, 100, 100, 50, 50, 150, 150]),
      scores: Float32Array.from([0.9, 0.7]),
      dofs: Float32Array.from([...POSES.data.subarray(0, 6), ...POSES.data.subarray(12, 18)]),
    }));
  }

  dispose(): void {}
}

let tmp: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-cli-align-'));
  for (const dir of ['a', 'b']) {
    fs.mkdirSync(path.join(tmp, dir));
    fs.copyFileSync(PORTRAIT, path.join(tmp, dir, 'face.png'));
  }
  fs.copyFileSync(PORTRAIT, path.join(tmp, 'b', 'face_2.png'));
  fs.writeFileSync(path.join(tmp, 'b', 'broken.png'), 'not a png');
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

beforeEach(() => {
  jest.spyOn(Img2Pose, 'load').mockImplementation(async (options: LoadOptions = {}) => new Img2Pose(new FakeModel(), options, 'fake'));
});

afterEach(() => jest.restoreAllMocks());

test('detect --align writes every face crop, names them in the JSON, keeps same-named images apart', async () => {
  const out = path.join(tmp, 'aligned');
  const json = path.join(tmp, 'faces.json');
  const r = await runCli(['detect', path.join(tmp, 'a'), path.join(tmp, 'b'), '--weights', 'w', '--align', out, '--align-size', '112', '--json', json]);
  expect(r.code).toBe(1); // b/broken.png
  const results = JSON.parse(fs.readFileSync(json, 'utf8')) as { image: string; faces?: { pose: number[]; crop: string }[]; error?: string }[];
  expect(results.map((x) => path.relative(tmp, x.image))).toEqual(['a/face.png', 'b/broken.png', 'b/face.png', 'b/face_2.png']);
  expect(results[1].error).toMatch(/broken\.png/);
  const crops = results.flatMap((x) => (x.faces ?? []).map((f) => path.relative(out, f.crop)));
  expect(crops).toEqual(['face.0.png', 'face.1.png', 'face_2.0.png', 'face_2.1.png', 'face_2_2.0.png', 'face_2_2.1.png']);
  expect(fs.readdirSync(out).sort()).toEqual([...crops].sort());

  // Each file is the library's crop of its face, 112 x 112.
  const first = results[0].faces!;
  const expected = await alignFaces(PORTRAIT, first, { size: 112 });
  first.forEach((face, k) => {
    const written = rgbOfPng(face.crop);
    expect([written.width, written.height]).toEqual([112, 112]);
    expect(Buffer.from(written.data).equals(Buffer.from(expected[k].image.data))).toBe(true);
  });
});

test('detect --align never writes over a file: crops already in the folder keep their names', async () => {
  const out = path.join(tmp, 'rerun');
  const args = ['detect', path.join(tmp, 'a', 'face.png'), '--weights', 'w', '--align', out, '--align-size', '112'];
  const first = await runCli(args);
  const second = await runCli(args);
  expect([first.code, second.code]).toEqual([0, 0]);
  const names = (r: { stdout: string }) => (JSON.parse(r.stdout.trim()) as { faces: { crop: string }[] }).faces.map((f) => path.basename(f.crop));
  expect(names(first)).toEqual(['face.0.png', 'face.1.png']);
  expect(names(second)).toEqual(['face_2.0.png', 'face_2.1.png']);
  expect(fs.readdirSync(out).sort()).toEqual(['face.0.png', 'face.1.png', 'face_2.0.png', 'face_2.1.png']);
});

test('detect --align refuses a folder that holds input images', async () => {
  const r = await runCli(['detect', path.join(tmp, 'a'), '--weights', 'w', '--align', path.join(tmp, 'a')]);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/--align folder .* holds input images/);
  expect(fs.readdirSync(path.join(tmp, 'a'))).toEqual(['face.png']);
});

test('detect --align defaults to 224 crops; JSON lines on stdout carry the crop names', async () => {
  const out = path.join(tmp, 'aligned224');
  const r = await runCli(['detect', path.join(tmp, 'a', 'face.png'), '--weights', 'w', '--align', out]);
  expect(r.code).toBe(0);
  const line = JSON.parse(r.stdout.trim()) as { faces: { crop: string }[] };
  expect(line.faces.map((f) => path.basename(f.crop))).toEqual(['face.0.png', 'face.1.png']);
  const { width, height } = rgbOfPng(line.faces[0].crop);
  expect([width, height]).toEqual([224, 224]);
});

test.each([
  [['--align', 'x', '--align-size', '100'], /--align-size.*112 or 224/],
  [['--align-size', '112'], /--align-size needs --align/],
])('usage error %j: exit 2, one line', async (extra, message) => {
  const r = await runCli(['detect', path.join(tmp, 'a'), '--weights', 'w', ...extra]);
  expect(r.code).toBe(2);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(message);
});
