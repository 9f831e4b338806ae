/**
 * The browser build's stand-in for `jimp` (whose browser entry is empty): `visualize` (PNG files)
 * is replaced by `drawFaces` on a canvas there, and decoding needs no jimp (see ./codecs.ts).
 */
export const Jimp = undefined;
