// Fuzzing the decoders with fast-check: mutated real checkpoints (zip and legacy), manifests,
// .npy files and image headers. Whatever the bytes, each reader either succeeds or throws its
// own typed error, within a time bound and without a large allocation. Every property runs for
// a few seconds at most (interruptAfterTimeLimit), so the suite stays bounded.
import fc from 'fast-check';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { readCheckpoint } from '../converter/checkpoint';
import { CheckpointError } from '../converter/errors';
import { NpyError, parseNpy } from '../converter/npy';
import { MODEL_JSON } from '../converter/weights_format';
import { WeightsError, InputError } from '../src/errors';
import { decodeImage } from '../src/io/images';
import { loadWeights } from '../src/io/weights_io';
import { disposeWeights } from '../src/model/weights';
import { bmpClaiming, gifClaiming, tiffClaiming } from '../bench/hostile_cases';
import { jpegBytes, patternImage, pngBytes, writeZeroFolder } from '../bench/reliability_cases';
import { FIXTURES } from './utils/formula';

const BUDGET_MS = 5000;
/** Per input: far above what a well-behaved reader needs for these small files. */
const INPUT_MS = 2000;
const RUNS = { numRuns: 400, interruptAfterTimeLimit: BUDGET_MS, markInterruptAsFailure: false };

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-fuzz-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const peakMiB = (): number => process.resourceUsage().maxRSS / 1024;

/** Up to 16 byte changes, an optional cut, applied to a copy of `base`. */
function mutations(base: Uint8Array): fc.Arbitrary<Uint8Array> {
  const edit = fc.record({ at: fc.nat({ max: base.length - 1 }), value: fc.integer({ min: 0, max: 255 }) });
  return fc.tuple(fc.array(edit, { minLength: 1, maxLength: 16 }), fc.option(fc.nat({ max: base.length }), { freq: 4 })).map(([edits, cut]) => {
    const out = Uint8Array.from(base);
    for (const { at, value } of edits) out[at] = value;
    return cut === null ? out : out.subarray(0, cut);
  });
}

/** Runs `fn`, which must resolve or throw one of `allowed`, within INPUT_MS. */
async function bounded(fn: () => Promise<unknown>, allowed: (e: unknown) => boolean, limitMs = INPUT_MS): Promise<void> {
  const started = Date.now();
  try {
    await fn();
  } catch (e) {
    if (!allowed(e)) throw e;
  }
  const ms = Date.now() - started;
  if (ms > limitMs) throw new Error(`took ${ms} ms`);
}

describe('fuzz: readers never crash, hang or allocate past a bound', () => {
  let peak: number;
  beforeEach(() => {
    peak = peakMiB();
  });
  afterEach(() => {
    expect(peakMiB() - peak).toBeLessThan(600);
  });

  it.each(['tiny_zip.pth', 'tiny_legacy.pth'])('mutated %s: tensors or a CheckpointError', async (name) => {
    const base = fs.readFileSync(path.join(FIXTURES, 'checkpoints', name));
    const file = path.join(tmp, name);
    await fc.assert(
      fc.asyncProperty(mutations(base), async (bytes) => {
        fs.writeFileSync(file, bytes);
        await bounded(() => readCheckpoint(file), (e) => e instanceof CheckpointError);
      }),
      RUNS,
    );
  });

  it('mutated .npy: values or an NpyError', async () => {
    const base = fs.readFileSync(path.join(FIXTURES, 'checkpoints', 'pose_mean.npy'));
    await fc.assert(
      fc.asyncProperty(mutations(base), async (bytes) => {
        await bounded(async () => parseNpy(bytes), (e) => e instanceof NpyError);
      }),
      RUNS,
    );
  });

  it('mutated model.json: weights or a WeightsError', async () => {
    const folder = path.join(tmp, 'weights');
    writeZeroFolder(folder, 18);
    const base = fs.readFileSync(path.join(folder, MODEL_JSON));
    // the JSON text mutated as bytes, and as values: any field replaced by any JSON value
    const json = JSON.parse(base.toString('utf8')) as Record<string, unknown>;
    const paths: string[][] = [];
    const walk = (v: unknown, at: string[]): void => {
      paths.push(at);
      if (v && typeof v === 'object' && at.length < 4) for (const [k, x] of Object.entries(v).slice(0, 12)) walk(x, [...at, k]);
    };
    walk(json, []);
    const replaced = fc.tuple(fc.constantFrom(...paths.filter((p) => p.length > 0)), fc.jsonValue({ maxDepth: 2 })).map(([at, value]) => {
      const copy = JSON.parse(base.toString('utf8')) as Record<string, unknown>;
      let o = copy as Record<string, unknown>;
      for (const k of at.slice(0, -1)) o = o[k] as Record<string, unknown>;
      o[at[at.length - 1]] = value;
      return Buffer.from(JSON.stringify(copy));
    });
    await fc.assert(
      fc.asyncProperty(fc.oneof(mutations(base), replaced), async (bytes) => {
        fs.writeFileSync(path.join(folder, MODEL_JSON), bytes);
        // a mutation that keeps the manifest valid loads all 170 MB of weights: allowed more time
        await bounded(
          async () => disposeWeights(await loadWeights(folder)),
          (e) => e instanceof WeightsError,
          30_000,
        );
      }),
      { ...RUNS, numRuns: 150, interruptAfterTimeLimit: 2 * BUDGET_MS },
    );
  });

  it('mutated image headers (PNG, JPEG, GIF, BMP, TIFF): an image or an InputError', async () => {
    const png = await pngBytes(patternImage(24, 16, 1));
    const jpeg = await jpegBytes(patternImage(24, 16, 2));
    // the header-only crafted files, at sizes under the pixel limit, and real small images
    const bases = [png, jpeg, gifClaiming(64, 48), bmpClaiming(64, 48), tiffClaiming(64, 48)];
    const tensors = tf.memory().numTensors;
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: bases.length - 1 }).chain((i) => mutations(bases[i])), async (bytes) => {
        await bounded(
          async () => (await decodeImage(bytes)).dispose(),
          (e) => e instanceof InputError,
        );
      }),
      RUNS,
    );
    expect(tf.memory().numTensors).toBe(tensors);
  });
});
