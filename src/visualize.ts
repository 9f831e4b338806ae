/**
 * Drawing detections: boxes, confidence labels, the five keypoints and the head-pose axes.
 *
 * Lines, rectangles, discs and the score digits are drawn by hand on the RGBA bitmap: jimp 1.x
 * has no line or shape primitive, and its font loader (like `Jimp.read`) goes through a dynamic
 * `import()` that CommonJS test runners cannot execute. jimp only decodes and encodes here.
 */
import * as fs from 'fs';
import { DecodeLimits, ImageInput, decodeBitmap, decodeImage as decodeToTensor } from './io/images';
import { projectPoints, transformPoints } from './model/pose';

/**
 * Anything `detectFaces` takes: a file path, encoded bytes, a jimp image, raw pixels or a HWC
 * tensor. It is copied, never drawn on.
 */
export type VisualizeImage = ImageInput;

export type RGB = [number, number, number];

/** What is drawn of a detection; the detector's `Face` is one. */
export interface DrawableFace {
  box: readonly number[];
  confidence: number;
  pose: readonly number[];
  keypoints: Readonly<Record<string, readonly number[]>>;
}

/** What the overlays show and how: `visualize` here, `drawFaces` in the browser build. */
export interface OverlayOptions {
  /** Line width in image pixels (default 2, as upstream's `draw_detections`). */
  thickness?: number;
  /** Default green. */
  boxColor?: RGB;
  /** Default red. */
  keypointColor?: RGB;
  showConfidence?: boolean;
  showKeypoints?: boolean;
  showPose?: boolean;
  /** Length of the drawn pose axes in the 3D reference face's units (default 0.8; the face is ~1.5 wide). */
  axisLength?: number;
}

export interface VisualizeOptions extends OverlayOptions {
  /** Also write the PNG here. */
  out?: string;
  /** Largest width x height of an encoded image accepted, read from its header before decoding (default `DEFAULT_MAX_PIXELS`). */
  maxPixels?: number;
}

/** The overlay options with their defaults, as both drawers apply them. */
export function overlayStyle(opts: OverlayOptions): { thickness: number; boxColor: RGB; keypointColor: RGB; axisLength: number } {
  return {
    thickness: Math.max(1, Math.round(opts.thickness ?? 2)),
    boxColor: opts.boxColor ?? [0, 255, 0],
    keypointColor: opts.keypointColor ?? [255, 0, 0],
    axisLength: opts.axisLength ?? 0.8,
  };
}

/** A decoded RGBA image, row-major, 4 bytes a pixel. */
export interface RgbaBitmap {
  width: number;
  height: number;
  data: Uint8Array;
}

/** The pose axes' colours, as upstream draws them. */
export const AXIS_COLORS: [RGB, RGB, RGB] = [
  [255, 0, 0], // x: the face's left-to-right
  [0, 255, 0], // y: downwards (image convention)
  [0, 0, 255], // facing direction
];

/**
 * Draws `faces` on a copy of `image` and returns it as PNG bytes (same size as the input).
 * Coordinates are those `detectFaces` returns: original-image pixels.
 */
export async function visualize(image: VisualizeImage, faces: readonly DrawableFace[], opts: VisualizeOptions = {}): Promise<Uint8Array> {
  const bm = await toBitmap(image, { maxPixels: opts.maxPixels });
  const { thickness, boxColor, keypointColor, axisLength } = overlayStyle(opts);

  for (const face of faces) {
    if (opts.showPose !== false) {
      const axes = poseAxes2d(face.pose, bm.width, bm.height, axisLength);
      if (axes) {
        for (let a = 0; a < 3; a++) {
          drawLine(bm, axes.origin[0], axes.origin[1], axes.ends[a][0], axes.ends[a][1], AXIS_COLORS[a], thickness);
        }
      }
    }
    drawRect(bm, face.box, boxColor, thickness);
    if (opts.showKeypoints !== false) {
      const radius = Math.max(2, thickness);
      for (const [kx, ky] of Object.values(face.keypoints)) fillDisc(bm, kx, ky, radius, keypointColor);
    }
  }
  // Labels last, so that no box or axis of a neighbouring face hides a score.
  if (opts.showConfidence !== false) for (const face of faces) drawLabel(bm, face, boxColor);

  const png = await encodePng(bm);
  if (opts.out) await fs.promises.writeFile(opts.out, png);
  return png;
}

/** PNG bytes of an RGBA bitmap (a Node `Buffer`, typed as the web-standard `Uint8Array` it is). */
export async function encodePng(bm: RgbaBitmap): Promise<Uint8Array> {
  const { width, height, data } = bm;
  // Loaded on first use: jimp (with all its plugins) costs ~0.2 s of every start otherwise.
  const { Jimp } = await import('jimp');
  return Jimp.fromBitmap({ width, height, data: Buffer.from(data.buffer, data.byteOffset, data.byteLength) }).getBuffer(
    'image/png',
  );
}

async function toBitmap(image: VisualizeImage, limits: DecodeLimits): Promise<RgbaBitmap> {
  if (typeof image === 'string' || image instanceof Uint8Array || image instanceof ArrayBuffer) return decodeBitmap(image, undefined, limits);
  if ('bitmap' in image) {
    const { width, height, data } = image.bitmap;
    if (data.length !== width * height * 4) {
      throw new Error(`a ${width}x${height} RGBA bitmap needs ${width * height * 4} bytes, this one has ${data.length}`);
    }
    return { width, height, data: Uint8Array.from(data) };
  }
  // Raw pixels and tensors: the detector's own conversion (validation, gray -> RGB, alpha dropped).
  const rgb = await decodeToTensor(image, undefined, limits);
  try {
    const [height, width] = rgb.shape;
    const values = await rgb.data();
    const data = new Uint8Array(width * height * 4);
    for (let p = 0; p < width * height; p++) {
      data[p * 4] = values[p * 3];
      data[p * 4 + 1] = values[p * 3 + 1];
      data[p * 4 + 2] = values[p * 3 + 2];
      data[p * 4 + 3] = 255;
    }
    return { width, height, data };
  } finally {
    rgb.dispose();
  }
}

/** Confidence as dark digits on a box-coloured tab above the box (inside it when at the top edge). */
function drawLabel(bm: RgbaBitmap, face: DrawableFace, color: RGB): void {
  if (!face.box.every(Number.isFinite)) return;
  const text = face.confidence.toFixed(2);
  const w = textWidth(text) + 2 * LABEL_PAD;
  const h = GLYPH_H * GLYPH_SCALE + 2 * LABEL_PAD;
  const x = clampInt(Math.round(face.box[0]), 0, Math.max(0, bm.width - w));
  const above = Math.round(face.box[1]) - h;
  const y = above >= 0 ? above : clampInt(Math.round(face.box[1]), 0, Math.max(0, bm.height - h));
  fillRect(bm, x, y, x + w, y + h, color);
  drawText(bm, x + LABEL_PAD, y + LABEL_PAD, text, [0, 0, 0]);
}

// A 3x5 pixel font for the label's characters, one row per string, '#' = ink; drawn scaled up.
const GLYPHS: Record<string, string[]> = {
  '0': ['###', '#.#', '#.#', '#.#', '###'],
  '1': ['.#.', '##.', '.#.', '.#.', '###'],
  '2': ['###', '..#', '###', '#..', '###'],
  '3': ['###', '..#', '.##', '..#', '###'],
  '4': ['#.#', '#.#', '###', '..#', '..#'],
  '5': ['###', '#..', '###', '..#', '###'],
  '6': ['###', '#..', '###', '#.#', '###'],
  '7': ['###', '..#', '.#.', '.#.', '.#.'],
  '8': ['###', '#.#', '###', '#.#', '###'],
  '9': ['###', '#.#', '###', '..#', '###'],
  '.': ['...', '...', '...', '...', '.#.'],
  '-': ['...', '...', '###', '...', '...'],
};
const GLYPH_W = 3;
const GLYPH_H = 5;
const GLYPH_SCALE = 3;
const LABEL_PAD = 2;

function textWidth(text: string): number {
  return text.length * (GLYPH_W + 1) * GLYPH_SCALE - GLYPH_SCALE;
}

/** Draws `text` with its top-left corner at (x, y); characters without a glyph are left blank. */
export function drawText(bm: RgbaBitmap, x: number, y: number, text: string, c: RGB): void {
  let cx = x;
  for (const ch of text) {
    const glyph = GLYPHS[ch];
    if (glyph) {
      for (let gy = 0; gy < GLYPH_H; gy++) {
        for (let gx = 0; gx < GLYPH_W; gx++) {
          if (glyph[gy][gx] !== '#') continue;
          const px = cx + gx * GLYPH_SCALE;
          const py = y + gy * GLYPH_SCALE;
          fillRect(bm, px, py, px + GLYPH_SCALE, py + GLYPH_SCALE, c);
        }
      }
    }
    cx += (GLYPH_W + 1) * GLYPH_SCALE;
  }
}

/**
 * The head-pose axes in image pixels: the pose's origin and the end points of its x, y and
 * facing (-z) axes, projected with the same camera as the keypoints (focal w+h, centre
 * (w/2, h/2)). Null when the origin or an end point is not in front of the camera.
 */
export function poseAxes2d(
  pose: ArrayLike<number>,
  width: number,
  height: number,
  length: number,
): { origin: [number, number]; ends: [[number, number], [number, number], [number, number]] } | null {
  // The reference face looks towards -z (its nose tip has the smallest z), so the facing axis is -z.
  const pts = Float64Array.from([0, 0, 0, length, 0, 0, 0, length, 0, 0, 0, -length]);
  const cam = transformPoints(pose, pts);
  for (let i = 0; i < 4; i++) if (!(cam[i * 3 + 2] > 0)) return null;
  // Same camera as the detector's keypoints: focal w + h, centre (w / 2, h / 2) of the image drawn on.
  const p = projectPoints(pose, pts, width + height, width / 2, height / 2);
  for (let i = 0; i < 8; i++) if (!Number.isFinite(p[i])) return null;
  return {
    origin: [p[0], p[1]],
    ends: [
      [p[2], p[3]],
      [p[4], p[5]],
      [p[6], p[7]],
    ],
  };
}

function clampInt(v: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, v));
}

function setPixel(bm: RgbaBitmap, x: number, y: number, c: RGB): void {
  if (x < 0 || y < 0 || x >= bm.width || y >= bm.height) return;
  const i = (y * bm.width + x) * 4;
  bm.data[i] = c[0];
  bm.data[i + 1] = c[1];
  bm.data[i + 2] = c[2];
  bm.data[i + 3] = 255;
}

/** Fills the half-open pixel rectangle [x0, x1) x [y0, y1), clipped to the image. */
export function fillRect(bm: RgbaBitmap, x0: number, y0: number, x1: number, y1: number, c: RGB): void {
  const xa = Math.max(0, Math.floor(x0));
  const ya = Math.max(0, Math.floor(y0));
  const xb = Math.min(bm.width, Math.floor(x1));
  const yb = Math.min(bm.height, Math.floor(y1));
  for (let y = ya; y < yb; y++) for (let x = xa; x < xb; x++) setPixel(bm, x, y, c);
}

/** Box outline of the given width, grown inwards from the box edges (as PIL's rectangle). */
export function drawRect(bm: RgbaBitmap, box: readonly number[], c: RGB, thickness: number): void {
  const [x1, y1, x2, y2] = box.map((v) => Math.round(v));
  if (![x1, y1, x2, y2].every(Number.isFinite)) return;
  const t = thickness;
  fillRect(bm, x1, y1, x2 + 1, y1 + t, c);
  fillRect(bm, x1, y2 - t + 1, x2 + 1, y2 + 1, c);
  fillRect(bm, x1, y1, x1 + t, y2 + 1, c);
  fillRect(bm, x2 - t + 1, y1, x2 + 1, y2 + 1, c);
}

export function fillDisc(bm: RgbaBitmap, cx: number, cy: number, r: number, c: RGB): void {
  if (!Number.isFinite(cx) || !Number.isFinite(cy)) return;
  const x0 = Math.round(cx);
  const y0 = Math.round(cy);
  for (let dy = -r; dy <= r; dy++) {
    for (let dx = -r; dx <= r; dx++) if (dx * dx + dy * dy <= r * r) setPixel(bm, x0 + dx, y0 + dy, c);
  }
}

/**
 * Clips the segment to [lo, hi] in both axes (Liang-Barsky); null when nothing is left.
 * Projected pose axes can land far off-image, and walking such a line pixel by pixel would be slow.
 */
export function clipSegment(
  x0: number, y0: number, x1: number, y1: number,
  xmin: number, ymin: number, xmax: number, ymax: number,
): [number, number, number, number] | null {
  const dx = x1 - x0;
  const dy = y1 - y0;
  let t0 = 0;
  let t1 = 1;
  const edges: [number, number][] = [
    [-dx, x0 - xmin],
    [dx, xmax - x0],
    [-dy, y0 - ymin],
    [dy, ymax - y0],
  ];
  for (const [p, q] of edges) {
    if (p === 0) {
      if (q < 0) return null;
      continue;
    }
    const r = q / p;
    if (p < 0) {
      if (r > t1) return null;
      if (r > t0) t0 = r;
    } else {
      if (r < t0) return null;
      if (r < t1) t1 = r;
    }
  }
  return [x0 + t0 * dx, y0 + t0 * dy, x0 + t1 * dx, y0 + t1 * dy];
}

/** A line of the given width: Bresenham's walk stamping a square brush at each step. */
export function drawLine(bm: RgbaBitmap, xa: number, ya: number, xb: number, yb: number, c: RGB, thickness: number): void {
  if (![xa, ya, xb, yb].every(Number.isFinite)) return;
  const clipped = clipSegment(xa, ya, xb, yb, -thickness, -thickness, bm.width + thickness, bm.height + thickness);
  if (!clipped) return;
  let x = Math.round(clipped[0]);
  let y = Math.round(clipped[1]);
  const x1 = Math.round(clipped[2]);
  const y1 = Math.round(clipped[3]);
  const dx = Math.abs(x1 - x);
  const dy = -Math.abs(y1 - y);
  const sx = x < x1 ? 1 : -1;
  const sy = y < y1 ? 1 : -1;
  const lo = -Math.floor((thickness - 1) / 2);
  const hi = lo + thickness;
  let err = dx + dy;
  for (;;) {
    fillRect(bm, x + lo, y + lo, x + hi, y + hi, c);
    if (x === x1 && y === y1) break;
    const e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      x += sx;
    }
    if (e2 <= dx) {
      err += dx;
      y += sy;
    }
  }
}
