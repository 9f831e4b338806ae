/**
 * JPEG decoding with libjpeg-turbo, the library PIL decodes with, so that a JPEG gives the network
 * the pixels upstream's `Image.open(...).convert('RGB')` gives it: the same integer IDCT (islow)
 * and the same "fancy" chroma upsampling, bit for bit (checked against PIL in
 * __tests__/jpeg_turbo.test.ts). jpeg-js, the decoder jimp uses, differs from it by a few levels
 * and is 6-8x slower.
 *
 * The library is the WebAssembly build of `@cwasm/jpeg-turbo` (its TurboJPEG calls). Its own
 * JavaScript wrapper is not used: its one instance for the process keeps the largest image ever
 * decoded in its memory, and whatever a failed decode left allocated. Here one instance serves
 * the small images, each copied out and freed; a large image (KEEP_INSTANCE_BYTES and up) keeps
 * the instance it was decoded in, handed back as a view of its memory (no copy; the memory goes
 * with the image), and so does a decode libjpeg leaves mid-way. Not an instance per image: each
 * reserves gigabytes of address space until it is collected, and a burst of decodes would run
 * out of it.
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

/** Pixel bytes from which an image keeps its instance instead of being copied out. */
const KEEP_INSTANCE_BYTES = 16 << 20;

/** The instance the next decode uses, free of allocations (null: make one). */
let spare: TurboExports | null = null;

/**
 * The JPEG's pixels as RGBA, or null where libjpeg-turbo reports any problem with the data (the
 * caller then decodes another way, with that decoder's checks and errors). The caller has checked
 * the size the header declares.
 */
export function decodeJpegTurbo(bytes: Uint8Array): JpegBitmap | null {
  const module = turboModule();
  if (module === null) return null;
  let x: TurboExports;
  try {
    x = spare ?? (new WebAssembly.Instance(module, IMPORTS).exports as unknown as TurboExports);
  } catch (e) {
    if (e instanceof RangeError) return null;
    throw e;
  }
  spare = null;
  let input = 0;
  let meta = 0;
  let handle = 0;
  let out = 0;
  try {
    input = x.malloc(bytes.length);
    meta = x.malloc(16);
    handle = x.tjInitDecompress();
    let image: JpegBitmap | null = null;
    if (input !== 0 && meta !== 0 && handle !== 0) {
      new Uint8Array(x.memory.buffer, input, bytes.length).set(bytes);
      image = decodeInto(x, bytes.length, input, meta, handle, (pointer) => (out = pointer));
    }
    if (image && image.data.length >= KEEP_INSTANCE_BYTES) return image;
    // Copied out before anything is freed (free may write into the block; the next decode reuses
    // the memory); the instance then serves the next decode.
    const result = image && { data: image.data.slice(), width: image.width, height: image.height };
    if (handle !== 0) x.tjDestroy(handle);
    for (const pointer of [input, meta, out]) if (pointer !== 0) x.free(pointer);
    spare = x;
    return result;
  } catch (e) {
    // libjpeg left mid-way (its error exit): the instance is dropped with whatever it holds.
    if (e instanceof LibjpegExit || e instanceof WebAssembly.RuntimeError || e instanceof RangeError) return null;
    throw e;
  }
}

/** The decode proper, in `x`, of the `size` bytes at `input`; `keep(out)` is told the output's pointer once allocated. */
function decodeInto(
  x: TurboExports,
  size: number,
  input: number,
  meta: number,
  handle: number,
  keep: (out: number) => void,
): JpegBitmap | null {
  if (x.tjDecompressHeader3(handle, input, size, meta, meta + 4, meta + 8, meta + 12) !== 0) return null;
  const [width, height] = new Int32Array(x.memory.buffer, meta, 2);
  if (!(width > 0 && height > 0)) return null;
  const bytes = width * height * 4;
  const out = x.malloc(bytes);
  if (out === 0) return null;
  keep(out);
  // Non-zero for an error and also for a warning (data that ends early, stray bytes): such
  // files go to the other decoder, whose rules for them the library keeps.
  if (x.tjDecompress2(handle, input, size, out, width, width * 4, height, TJPF_RGBA, 0) !== 0) return null;
  // Taken after the decode: the memory may have grown (and its old buffer gone) meanwhile.
  return { data: new Uint8Array(x.memory.buffer, out, bytes), width, height };
}
