/**
 * Runs one case of bench/hostile_cases.ts in this (fresh) process and prints, as one JSON line,
 * how long its action took, the peak memory it added and its error message. The peak comes from
 * the kernel's high-water mark (VmHWM), reset after the input is made, so making the input does
 * not count.
 *
 *   node --expose-gc dist/bench/hostile_probe.js <case index>
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { Command, InvalidArgumentError } from 'commander';
import { hostileCases } from './hostile_cases';

export interface ProbeResult {
  seconds: number;
  /** peak resident memory during the action, minus the resident memory before it (MiB) */
  addedMiB: number;
  /** peak resident memory of the process during the action (MiB) */
  peakMiB: number;
  error: string | undefined;
  errorClass: string | undefined;
}

function statusMiB(field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function main(index: number): Promise<ProbeResult> {
  await tf.setBackend('cpu');
  const c = hostileCases()[index];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-probe-'));
  try {
    const action = await c.make(dir);
    (globalThis as { gc?: () => void }).gc?.();
    fs.writeFileSync('/proc/self/clear_refs', '5'); // resets VmHWM to the current RSS
    const before = statusMiB('VmRSS');
    const started = process.hrtime.bigint();
    const error = await action().then(
      () => undefined,
      (e: unknown) => e,
    );
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const peak = statusMiB('VmHWM');
    return {
      seconds,
      addedMiB: Math.max(0, peak - before),
      peakMiB: peak,
      error: error instanceof Error ? error.message.split(dir).join('<tmp>') : error === undefined ? undefined : String(error),
      errorClass: error instanceof Error ? error.constructor.name : undefined,
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  const program = new Command('hostile_probe')
    .description('runs one case of bench/hostile_cases.ts and prints its ProbeResult as JSON')
    .argument('<case>', 'index of the case', (v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected a case index, got ${v}`);
      return n;
    })
    .parse(process.argv);
  main(program.processedArgs[0] as number).then(
    (r) => process.stdout.write(`${JSON.stringify(r)}\n`),
    (e: unknown) => {
      process.stderr.write(`${String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
