/**
 * JPEGs decode to the pixels PIL gives (src/io/jpeg_turbo.ts), which upstream's network sees:
 * fixtures from tools/make_jpeg_fixtures.py, each JPEG beside PIL's `Image.open(f).convert('RGB')`
 * bytes, in the variants photos come in (4:2:0, 4:2:2, 4:4:4, progressive, optimized Huffman
 * tables, grayscale; odd sizes for the edges of the chroma upsampling).
 */
import * as fs from 'fs';
import * as path from 'path';
import jpeg from '@jimp/js-jpeg';
import { decodeJpegTurbo } from '../src/io/jpeg_turbo';
import { decodeNetworkImage } from '../src/io/images';
import type { ImageBytes } from '../src/model/transform';

const DIR = path.join(__dirname, 'fixtures', 'jpeg');
const INDEX = JSON.parse(fs.readFileSync(path.join(DIR, 'index.json'), 'utf8')) as {
  images: Record<string, { width: number; height: number }>;
};
const NAMES = Object.keys(INDEX.images);

function pilPixels(name: string): Uint8Array {
  return new Uint8Array(fs.readFileSync(path.join(DIR, `${name}.rgb`)));
}

function jpegBytes(name: string): Uint8Array {
  return new Uint8Array(fs.readFileSync(path.join(DIR, `${name}.jpg`)));
}

/** The RGB samples of an RGBA bitmap. */
function rgbOf(rgba: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array((rgba.length / 4) * 3);
  for (let p = 0, o = 0; p < rgba.length; p += 4, o += 3) {
    out[o] = rgba[p];
    out[o + 1] = rgba[p + 1];
    out[o + 2] = rgba[p + 2];
  }
  return out;
}

/** Samples where two byte arrays differ (their lengths must agree). */
function differing(a: Uint8Array, b: Uint8Array): number {
  expect(a.length).toBe(b.length);
  let n = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) n++;
  return n;
}

describe('JPEG decoding with libjpeg-turbo', () => {
  it('has every variant', () => {
    expect(NAMES.sort()).toEqual(['baseline_420', 'baseline_422', 'baseline_444', 'gray', 'optimized_420', 'progressive_420']);
  });

  it.each(NAMES)('%s: the pixels PIL decodes, bit for bit', (name) => {
    const { width, height } = INDEX.images[name];
    const decoded = decodeJpegTurbo(jpegBytes(name));
    expect(decoded).not.toBeNull();
    expect([decoded?.width, decoded?.height]).toEqual([width, height]);
    expect(differing(rgbOf(decoded?.data ?? []), pilPixels(name))).toBe(0);
  });

  it.each(NAMES)('%s: the library hands the network the same pixels (file path)', async (name) => {
    const image = (await decodeNetworkImage(path.join(DIR, `${name}.jpg`))) as ImageBytes;
    expect(image.channels).toBe(4);
    expect([image.width, image.height]).toEqual([INDEX.images[name].width, INDEX.images[name].height]);
    expect(differing(rgbOf(image.data), pilPixels(name))).toBe(0);
  });

  it('the fixtures tell decoders apart: jpeg-js (jimp) misses PIL on most of them', () => {
    const codec = jpeg();
    const off = NAMES.filter((name) => differing(rgbOf(codec.decode(Buffer.from(jpegBytes(name))).data), pilPixels(name)) > 0);
    expect(off.length).toBeGreaterThanOrEqual(4);
  });

  it('declines CMYK, and the library decodes it with jimp instead', async () => {
    const bytes = jpegBytes('cmyk');
    expect(decodeJpegTurbo(bytes)).toBeNull();
    const image = (await decodeNetworkImage(bytes)) as ImageBytes;
    expect([image.width, image.height, image.channels]).toEqual([40, 30, 4]);
  });

  it('declines truncated and corrupt data, and decodes the next image as before', () => {
    const good = jpegBytes('baseline_420');
    expect(decodeJpegTurbo(good.subarray(0, good.length - 200))).toBeNull();
    const corrupt = good.slice();
    corrupt.fill(0x07, 20, 400);
    expect(decodeJpegTurbo(corrupt)).toBeNull();
    expect(decodeJpegTurbo(new Uint8Array([0xff, 0xd8, 0xff]))).toBeNull();
    // Each decode has its own instance: a failed one leaves nothing behind for the next.
    expect(differing(rgbOf(decodeJpegTurbo(good)?.data ?? []), pilPixels('baseline_420'))).toBe(0);
  });

  it('decodes a long burst of images, each the same (one instance serves the small ones)', () => {
    // An instance per image would reserve gigabytes of address space each until collected, and a
    // burst this long ran out of it: libjpeg-turbo then declined every image.
    const bytes = jpegBytes('baseline_444');
    const want = pilPixels('baseline_444');
    let wrong = 0;
    for (let i = 0; i < 2000; i++) {
      const image = decodeJpegTurbo(bytes);
      if (!image || differing(rgbOf(image.data), want) !== 0) wrong++;
    }
    expect(wrong).toBe(0);
  });

  it("hands back pixels of their own: another decode does not touch an image's pixels", () => {
    const first = decodeJpegTurbo(jpegBytes('gray'));
    const copy = first ? first.data.slice() : new Uint8Array(0);
    decodeJpegTurbo(jpegBytes('baseline_444'));
    expect(first && differing(first.data, copy)).toBe(0);
  });
});
