/**
 * The browser build's stand-in for `jimp` (whose browser entry is empty): src/io/images.ts's codec list
 * is empty there because ../io.ts (browser) decodes bytes before they reach it, and `visualize`
 * (PNG files) is replaced by `drawFaces` on a canvas.
 */
export const defaultFormats: (() => { mime: string })[] = [];
export const Jimp = undefined;
