/** The browser build's stand-in for src/io/codecs.ts: no codecs (../io.ts decodes bytes before src/io/images). */
import type { ImageCodec } from '../../io/codecs';

export const IMAGE_CODECS: readonly (() => ImageCodec)[] = [];
