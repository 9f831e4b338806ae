/** The browser build's stand-in for src/io/codecs.ts: no codecs (../io.ts decodes bytes before src/io/images). */
import type { ImageCodec } from '../../io/codecs';
import type { JpegBitmap } from '../../io/jpeg_turbo';

export const IMAGE_CODECS: readonly (() => ImageCodec)[] = [];
export const EXACT_JPEG: ((bytes: Uint8Array) => JpegBitmap | null) | null = null;
