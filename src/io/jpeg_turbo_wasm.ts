/**
 * The bytes of libjpeg-turbo's WebAssembly build (`@cwasm/jpeg-turbo`), read from the installed
 * package; null where it cannot be read. The browser build swaps this module for one that bundles
 * the same file (src/browser/jpeg_turbo_wasm.ts).
 */
import * as fs from 'fs';
import * as path from 'path';

export function jpegTurboWasm(): Uint8Array<ArrayBuffer> | null {
  try {
    return fs.readFileSync(path.join(path.dirname(require.resolve('@cwasm/jpeg-turbo/package.json')), 'jpeg-turbo.wasm'));
  } catch {
    return null;
  }
}
