/**
 * The library's errors. Every failure a caller can act on is an `Img2PoseError` with a stable
 * `code`, and its message names the problem in the caller's terms (which input, which file,
 * what was expected and what was found). Lower-level causes (decoder, tfjs, file system) travel
 * in `cause` so they stay available for debugging without leaking into the message.
 */

export type Img2PoseErrorCode =
  | 'INVALID_INPUT'
  | 'INVALID_WEIGHTS'
  | 'INVALID_OPTION'
  | 'BACKEND_UNAVAILABLE'
  | 'BATCH_FAILED'
  | 'INFERENCE_FAILED'
  | 'DISPOSED'
  | 'ABORTED';

export class Img2PoseError extends Error {
  readonly code: Img2PoseErrorCode;

  constructor(code: Img2PoseErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    // Keep `instanceof` and the class name right for subclasses, also after down-levelling.
    Object.setPrototypeOf(this, new.target.prototype);
    this.name = new.target.name;
  }
}

export interface InputErrorDetails {
  /** Position of the input in the caller's array, undefined for a single-image call. */
  index?: number;
  /** What the input was: `file "/a/b.jpg"`, `Buffer (1234 bytes)`, `tf.Tensor3D [480,640,3] float32`... */
  input: string;
  expected: string;
  found: string;
  cause?: unknown;
}

/** An image input that cannot be turned into an RGB image. */
export class InputError extends Img2PoseError {
  readonly index: number | undefined;
  readonly input: string;
  readonly expected: string;
  readonly found: string;

  constructor(details: InputErrorDetails) {
    super('INVALID_INPUT', InputError.format(details), { cause: details.cause });
    this.index = details.index;
    this.input = details.input;
    this.expected = details.expected;
    this.found = details.found;
  }

  /** The same error, located at position `index` of a batch. */
  atIndex(index: number): InputError {
    return new InputError({
      index,
      input: this.input,
      expected: this.expected,
      found: this.found,
      cause: this.cause,
    });
  }

  private static format(d: InputErrorDetails): string {
    const where = d.index === undefined ? `Input ${d.input}` : `Input #${d.index} (${d.input})`;
    return `${where}: expected ${d.expected}, found ${d.found}`;
  }
}

/** A weights source (converted folder, .pth checkpoint, in-memory weights) that cannot be used. */
export class WeightsError extends Img2PoseError {
  /** The file or folder at fault, when there is one. */
  readonly path: string | undefined;

  constructor(message: string, options?: { path?: string; cause?: unknown }) {
    super('INVALID_WEIGHTS', message, { cause: options?.cause });
    this.path = options?.path;
  }
}

/** An option value outside its domain (e.g. `scoreThreshold: 1.5`, `batchSize: 0`). */
export class OptionError extends Img2PoseError {
  readonly option: string;

  constructor(option: string, expected: string, found: unknown) {
    super('INVALID_OPTION', `Option ${option}: expected ${expected}, found ${describeValue(found)}`);
    this.option = option;
  }
}

/** A requested compute backend that is not installed or cannot start on this machine. */
export class BackendError extends Img2PoseError {
  readonly backend: string;

  constructor(backend: string, message: string, options?: { cause?: unknown }) {
    super('BACKEND_UNAVAILABLE', message, options);
    this.backend = backend;
  }
}

/** The network failed on inputs that were valid (e.g. out of memory); the cause says why. */
export class InferenceError extends Img2PoseError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INFERENCE_FAILED', message, options);
  }
}

/** A call on a detector after `dispose()`. */
export class DisposedError extends Img2PoseError {
  constructor(what = 'Img2Pose detector') {
    super('DISPOSED', `This ${what} has been disposed; load a new one to keep detecting`);
  }
}

/**
 * A call stopped by the `signal` passed in its options. Named `AbortError` like the DOM's (so
 * `e.name === 'AbortError'` checks written for `fetch` work) and an `Img2PoseError` like every
 * other failure; `cause` is the signal's `reason`.
 */
export class AbortError extends Img2PoseError {
  constructor(reason?: unknown) {
    super('ABORTED', 'The call was aborted by its signal; the images not yet run were not run', { cause: reason });
  }
}

export interface IndexedError {
  index: number;
  error: Img2PoseError;
}

/**
 * Some inputs of a batch failed. The others were still processed: `results[i]` holds their
 * detections (undefined where input i failed) and `errors` says what went wrong, per index.
 */
export class BatchError<T> extends Img2PoseError {
  readonly results: ReadonlyArray<T | undefined>;
  readonly errors: ReadonlyArray<IndexedError>;

  constructor(results: ReadonlyArray<T | undefined>, errors: ReadonlyArray<IndexedError>) {
    super('BATCH_FAILED', BatchError.format(results.length, errors));
    this.results = results;
    this.errors = errors;
  }

  private static format(total: number, errors: ReadonlyArray<IndexedError>): string {
    const shown = errors.slice(0, 3).map((e) => `  - #${e.index}: ${e.error.message}`);
    const more = errors.length > 3 ? [`  ... and ${errors.length - 3} more`] : [];
    return [`${errors.length} of ${total} inputs failed:`, ...shown, ...more].join('\n');
  }
}

/** A short, safe description of an arbitrary value for messages. */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? `${v.slice(0, 77)}...` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  if (typeof v === 'function') return 'a function';
  const ctor = (v as { constructor?: { name?: string } }).constructor?.name;
  return ctor && ctor !== 'Object' ? `a ${ctor}` : 'an object';
}
