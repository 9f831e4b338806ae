/**
 * `img2pose convert <checkpoint.pth> [--pose-mean m.npy --pose-stddev s.npy] --out <dir>`
 *
 * Failures print one line on stderr and give exit code 1: what is wrong with which file, never
 * a stack trace.
 */
import { Command, CommanderError } from 'commander';
import { CheckpointError } from './errors';
import { ConversionReport, convertCheckpoint } from './convert';

export interface CliStreams {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
}

const PROG = 'img2pose convert';

function megabytes(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

export function formatSummary(r: ConversionReport): string {
  const pose =
    r.poseStatistics === 'defaults'
      ? "upstream's defaults for custom models (mean 0,0,0,0,0,1; stddev 1)"
      : `mean from ${r.poseStatistics.mean}, stddev from ${r.poseStatistics.stddev}`;
  const ignored = [
    ...(r.ignored.stateDict.length ? [`${r.ignored.stateDict.length} num_batches_tracked`] : []),
    ...r.ignored.topLevel.map((k) => `'${k}'`),
  ];
  return [
    `Converted ${r.checkpoint} (${r.format} format, ${megabytes(r.checkpointBytes)}, sha256 ${r.sha256.slice(0, 16)}...)`,
    `  model:      img2pose ResNet-${r.depth}, ${r.tensors} tensors, ${r.values.toLocaleString('en-US')} float32 values`,
    `  written:    ${r.modelJson} + ${r.shards.length} shard${r.shards.length === 1 ? '' : 's'} (${megabytes(r.bytes)})`,
    `  pose stats: ${pose}`,
    ...(ignored.length ? [`  ignored:    ${ignored.join(', ')}`] : []),
    `  time:       ${r.seconds.toFixed(2)} s`,
  ].join('\n');
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}

/**
 * Runs the convert command. `argv` holds the arguments after `convert`
 * (e.g. `['model.pth', '--out', 'weights/']`). Resolves to the exit code.
 */
export async function runConvert(argv: string[], io: CliStreams = process): Promise<number> {
  const cmd = new Command(PROG)
    .description('Convert an img2pose PyTorch checkpoint (.pth) into tfjs weights, without Python.')
    .argument('<checkpoint>', 'img2pose checkpoint (.pth), torch.save zip or legacy format')
    .option('--pose-mean <file>', 'pose mean .npy (6 values) shipped with the checkpoint')
    .option('--pose-stddev <file>', 'pose stddev .npy (6 values) shipped with the checkpoint')
    .requiredOption('--out <dir>', 'output folder for model.json and the weight shards')
    .helpOption('-h, --help', 'show this help')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      outputError: (s, write) => write(`${PROG}: ${oneLine(s.replace(/^error: /, ''))}\n`),
    });
  let code = 0;
  cmd.action(async (checkpoint: string, opts: { poseMean?: string; poseStddev?: string; out: string }) => {
    const report = await convertCheckpoint({
      checkpoint,
      poseMean: opts.poseMean,
      poseStddev: opts.poseStddev,
      out: opts.out,
      warn: (m) => io.stderr.write(`${PROG}: warning: ${oneLine(m)}\n`),
    });
    io.stdout.write(`${formatSummary(report)}\n`);
    code = 0;
  });
  try {
    await cmd.parseAsync(argv, { from: 'user' });
    return code;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode; // commander already printed its message (or help)
    // Anything else is a bug of ours, not of the file: say which file it happened on.
    const message =
      e instanceof CheckpointError
        ? e.message
        : `${argv.find((a) => !a.startsWith('-')) ?? 'the checkpoint'}: conversion failed (${e instanceof Error ? `${e.name}: ${e.message}` : String(e)})`;
    io.stderr.write(`${PROG}: ${oneLine(message)}\n`);
    return 1;
  }
}
