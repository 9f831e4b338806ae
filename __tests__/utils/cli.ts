/** The `img2pose` command run in this process (so jest's mocks apply), its output captured. */
import { CliIO, main } from '../../src/cli';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `img2pose ...args`; `io` overrides the captured streams' settings (a TTY, a stream). */
export async function runCli(args: readonly string[], io: Partial<CliIO> = {}): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const code = await main(['node', 'img2pose', ...args], { stdout: (t) => void (stdout += t), stderr: (t) => void (stderr += t), ...io });
  return { code, stdout, stderr };
}
