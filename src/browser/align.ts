/**
 * `alignFaces` for pages: the page's inputs (./io.ts) read as 8-bit pixels, then the same
 * alignment as in Node (src/align.ts). The crops come back as pixels (`AlignedFace.image`); draw
 * them on a canvas with `new ImageData(...)` after adding alpha.
 */
import { AlignedFace, AlignOptions, alignFaces as alignCore, PosedFace } from '../align';
import { ImageInput as CoreInput } from '../io/images';
import { decodePixels, ImageInput } from './io';

export async function alignFaces(image: ImageInput, faces: readonly PosedFace[], options?: AlignOptions): Promise<AlignedFace[]> {
  // No faces: the image is not read, as in Node.
  if (Array.isArray(faces) && faces.length === 0) return alignCore(image as CoreInput, faces, options);
  return alignCore((await decodePixels(image)) as CoreInput, faces, options);
}
