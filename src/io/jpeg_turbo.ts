/**
 * JPEG decoding with libjpeg-turbo, the library PIL decodes with, so that a JPEG gives the network
 * the pixels upstream's `Image.open(...).convert('RGB')` gives it: the same integer IDCT (islow)
 * and the same "fancy" chroma upsampling, bit for bit (checked against PIL in
 * __tests__/jpeg_turbo.test.ts). jpeg-js, the decoder jimp uses, differs from it by a few levels
 * and is 6-8x slower.
 *
 * The library is the WebAssembly build of `@cwasm/jpeg-turbo` (its TurboJPEG calls). Its own
 * JavaScript wrapper is not used: it keeps one instance for the process, whose memory keeps the
 * largest image ever decoded and whatever a failed decode left allocated, and it copies every
 * image out. Here each decode gets a fresh instance (about 0.1 ms), and the pixels handed back
 * are a view of that instance's memory: no copy, and the memory goes with the image.
 *
 * What it does not decode cleanly (a libjpeg error or warning: corrupt or truncated data, CMYK,
 * 12-bit samples) comes back as null, and the caller decodes with jimp's codec as before.
 */
import { jpegTurboWasm } from './jpeg_turbo_wasm';

/** RGBA, 4 bytes a pixel, row-major (alpha 255). */
export interface JpegBitmap {
  data: Uint8Array;
  width: number;
  height: number;
}

/** TurboJPEG's pixel format TJPF_RGBA: the layout jimp's decoders give. */
const TJPF_RGBA = 7;

interface TurboExports {
  memory: WebAssembly.Memory;
  malloc(size: number): number;
  free(pointer: number): void;
  tjInitDecompress(): number;
  tjDestroy(handle: number): number;
  tjDecompressHeader3(
    handle: number,
    jpeg: number,
    size: number,
    width: number,
    height: number,
    subsampling: number,
    colorspace: number,
  ): number;
  tjDecompress2(
    handle: number,
    jpeg: number,
    size: number,
    out: number,
    width: number,
    pitch: number,
    height: number,
    format: number,
    flags: number,
  ): number;
}

/** libjpeg's error exit (a longjmp) surfaces as this exception; the instance is then dropped. */
class LibjpegExit extends Error {}

const IMPORTS: WebAssembly.Imports = {
  // setjmp/longjmp without unwinding support: the jump out becomes a JS exception.
  env: {
    setjmp: () => 0,
    longjmp: () => {
      throw new LibjpegExit('libjpeg error');
    },
  },
  // TurboJPEG keeps its messages; nothing is written, read or exited through these.
  wasi_snapshot_preview1: {
    environ_sizes_get: () => 0,
    environ_get: () => 0,
    proc_exit: () => {
      throw new LibjpegExit('libjpeg exit');
    },
    fd_close: () => 0,
    fd_seek: () => 0,
    fd_write: () => 0,
  },
};

let compiled: WebAssembly.Module | null | undefined;

/** The compiled module, once per process; null where it cannot be had (then jpeg-js decodes). */
function turboModule(): WebAssembly.Module | null {
  if (compiled === undefined) {
    const bytes = jpegTurboWasm();
    try {
      compiled = bytes ? new WebAssembly.Module(bytes) : null;
    } catch {
      compiled = null;
    }
  }
  return compiled;
}

/**
 * The JPEG's pixels as RGBA, or null where libjpeg-turbo reports any problem with the data (the
 * caller then decodes another way, with that decoder's checks and errors). The caller has checked
 * the size the header declares.
 */
export function decodeJpegTurbo(bytes: Uint8Array): JpegBitmap | null {
  const module = turboModule();
  if (module === null) return null;
  try {
    const x = new WebAssembly.Instance(module, IMPORTS).exports as unknown as TurboExports;
    const input = x.malloc(bytes.length);
    const meta = x.malloc(16);
    const handle = x.tjInitDecompress();
    if (input === 0 || meta === 0 || handle === 0) return null;
    new Uint8Array(x.memory.buffer, input, bytes.length).set(bytes);
    if (x.tjDecompressHeader3(handle, input, bytes.length, meta, meta + 4, meta + 8, meta + 12) !== 0) return null;
    const [width, height] = new Int32Array(x.memory.buffer, meta, 2);
    if (!(width > 0 && height > 0)) return null;
    const size = width * height * 4;
    const out = x.malloc(size);
    if (out === 0) return null;
    // Non-zero for an error and also for a warning (data that ends early, stray bytes): such
    // files go to the other decoder, whose rules for them the library keeps.
    if (x.tjDecompress2(handle, input, bytes.length, out, width, width * 4, height, TJPF_RGBA, 0) !== 0) return null;
    // Taken after the decode: the memory may have grown (and its old buffer gone) meanwhile.
    return { data: new Uint8Array(x.memory.buffer, out, size), width, height };
  } catch (e) {
    if (e instanceof LibjpegExit || e instanceof WebAssembly.RuntimeError || e instanceof RangeError) return null;
    throw e;
  }
}
