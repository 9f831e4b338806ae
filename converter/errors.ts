/** The converter's one error type: what is wrong, with which file, in words a user can act on. */
export class CheckpointError extends Error {
  /** The file (checkpoint, .npy or output folder) the problem is about. */
  readonly file: string;
  /** The problem without the file name. */
  readonly problem: string;
  constructor(file: string, problem: string) {
    super(`${file}: ${problem}`);
    this.name = 'CheckpointError';
    this.file = file;
    this.problem = problem;
  }
}
