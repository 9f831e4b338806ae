// The browser build's stand-in for src/io/weights_cache.ts: the official weights are downloaded,
// converted and cached by Node (a zip from Google Drive, a disk cache). In a browser, host a
// converted folder and pass the URL of its model.json as `weights`.
import { WeightsError } from '../errors';
import { RELEASE } from '../io/release';
import type { ReleaseOptions } from '../io/weights_cache';

export { RELEASE };
export type { CacheRecord, ReleaseEvent, ReleaseOptions } from '../io/weights_cache';

export async function ensureReleaseWeights(_options: ReleaseOptions = {}): Promise<string> {
  throw new WeightsError(
    `The official weights (${RELEASE.name}) are downloaded and converted by Node (npx img2pose weights download). ` +
      'In a browser, host the converted folder and pass the URL of its model.json as `weights`.',
  );
}
