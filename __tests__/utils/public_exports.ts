/**
 * The values the package exports, as the packaging tests check them: those both entry points share
 * (src/public_api.ts) written out here, so that a change to the public surface is a change to a
 * test, and each entry's own added by its test.
 */
const SHARED = [
  'ALIGN_SIZES',
  'AbortError',
  'BACKEND_CHOICES',
  'BackendError',
  'BatchError',
  'DEFAULT_OPTIONS',
  'DisposedError',
  'Img2PoseError',
  'InferenceError',
  'InputError',
  'OptionError',
  'WeightsError',
  'poseToEuler',
];

/** The sorted value exports of an entry point that adds `own` to the shared ones. */
export function publicExports(own: readonly string[]): string[] {
  return [...SHARED, ...own].sort();
}
