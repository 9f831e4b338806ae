/**
 * PNG files as RGB pixels, decoded by jimp's PNG codec (Jimp.read sniffs the type with a dynamic
 * import() that jest's CommonJS runtime rejects). The bitmap is RGBA; alpha is dropped, as
 * upstream's convert('RGB') does.
 */
import * as fs from 'fs';
import png from '@jimp/js-png';
import type { RawImage } from '../../src/io/images';

export function rgbOfPng(file: string): RawImage & { data: Uint8Array } {
  const { data, width, height } = png().decode(fs.readFileSync(file));
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; j < rgb.length; i += 4, j += 3) {
    rgb[j] = data[i];
    rgb[j + 1] = data[i + 1];
    rgb[j + 2] = data[i + 2];
  }
  return { data: rgb, width, height, channels: 3 };
}
