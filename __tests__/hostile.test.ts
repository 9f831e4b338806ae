// Hostile files and API misuse (bench/hostile_cases.ts, the catalogue docs/reliability.md is made
// from): each is refused with its message, within its time bound, without a big allocation and
// without leaving a tensor behind.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { Img2PoseError } from '../src/errors';
import { CheckpointError } from '../converter/errors';
import { hostileCases } from '../bench/hostile_cases';

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-hostile-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Peak resident memory of this process so far, in MiB (a high-water mark: it never goes down). */
const peakMiB = (): number => process.resourceUsage().maxRSS / 1024;

describe.each(hostileCases().map((c, i) => [`${c.row}: ${c.label}`, i, c] as const))('%s', (_label, i, c) => {
  it(`${c.how}: refused with its message, fast, without a big allocation`, async () => {
    const dir = path.join(tmp, String(i));
    fs.mkdirSync(dir);
    const action = await c.make(dir);
    const tensors = tf.memory().numTensors;
    const peak = peakMiB();
    // Nothing printed (a decoder's warning on stdout would break the CLI's JSON lines).
    const printed = (['log', 'warn', 'info', 'error'] as const).map((m) => jest.spyOn(console, m).mockImplementation(() => undefined));
    const written = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
    const started = Date.now();
    let output: unknown[][] = [];
    const error = await action()
      .then(
        () => undefined,
        (e: unknown) => e,
      )
      .finally(() => {
        output = [...printed, written].flatMap((spy) => spy.mock.calls as unknown[][]);
        jest.restoreAllMocks();
      });
    const seconds = (Date.now() - started) / 1000;
    expect(output).toEqual([]);
    expect(error).toBeInstanceOf(Error);
    expect(error instanceof Img2PoseError || error instanceof CheckpointError).toBe(true);
    expect((error as Error).message).toMatch(c.message);
    expect((error as Error).message).not.toMatch(/see the error cause|RangeError|unexpected error/);
    expect(seconds).toBeLessThan(c.seconds);
    // the process may already have peaked higher; what this case adds above that is bounded
    expect(peakMiB() - peak).toBeLessThan(600);
    expect(tf.memory().numTensors).toBe(tensors);
  });
});
