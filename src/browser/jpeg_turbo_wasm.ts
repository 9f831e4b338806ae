/**
 * The browser build's src/io/jpeg_turbo_wasm.ts: libjpeg-turbo's WebAssembly build bundled (esbuild's
 * binary loader), so that JPEG bytes decode in the page as in Node.
 */
import wasm from '@cwasm/jpeg-turbo/jpeg-turbo.wasm';

export function jpegTurboWasm(): Uint8Array<ArrayBuffer> | null {
  return wasm;
}
