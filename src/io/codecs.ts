/**
 * jimp's image codecs (its `defaultFormats`), imported one by one: the `jimp` package also loads
 * every image plugin it has, ~0.2 s of each CLI run's start, and decoding needs none of them.
 * The browser build swaps this module for an empty list (its decoding happens before src/io/images).
 * JPEGs go to libjpeg-turbo first (./jpeg_turbo: PIL's pixels), jimp's codec where it declines.
 */
import bmp, { msBmp } from '@jimp/js-bmp';
import gif from '@jimp/js-gif';
import jpeg from '@jimp/js-jpeg';
import png from '@jimp/js-png';
import tiff from '@jimp/js-tiff';
import { decodeJpegTurbo, JpegBitmap } from './jpeg_turbo';

/** A codec as jimp describes one: its MIME type and decoder. */
export interface ImageCodec {
  mime: string;
  decode(data: Buffer): { data: Buffer | Uint8Array; width: number; height: number };
}

export const IMAGE_CODECS: readonly (() => ImageCodec)[] = [bmp, msBmp, gif, jpeg, png, tiff];

/** Decodes a JPEG as PIL does, or gives null (then the jimp codec decodes it). */
export const EXACT_JPEG: ((bytes: Uint8Array) => JpegBitmap | null) | null = decodeJpegTurbo;
