/**
 * RPN anchors (upstream `_rpn.py` AnchorGenerator, as img2pose configures it).
 *
 * One anchor size per FPN level (16..256; upstream lists a sixth size, 512, which zip() drops
 * because there are only five feature maps) and three aspect ratios. Everything is float32, as
 * upstream computes it, and plain JS: anchors depend only on the image's padded size.
 */

/** Anchor size of each FPN level '0', '1', '2', '3', 'pool'. */
export const ANCHOR_SIZES: readonly number[] = [16, 32, 64, 128, 256];
/** Height/width ratios; the 3 anchors of a location come in this order. */
export const ASPECT_RATIOS: readonly number[] = [0.5, 1, 2];
export const ANCHORS_PER_LOCATION = ASPECT_RATIOS.length;
/** ANCHORS_PER_LOCATION for hot loops (a compiled module reads its exported constants as properties). */
const PER_LOCATION = 3;

const f32 = Math.fround;

/** Round half to even, like torch.round. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  // Math.round sends .5 up; step back when that lands on an odd number.
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The 3 cell anchors (x1, y1, x2, y2) of one level, centred on 0, rounded to integers.
 * Mirrors upstream's float32 arithmetic: h = sqrt(r), w = 1/h, then (w*size)/2 and (h*size)/2.
 */
export function baseAnchors(size: number, ratios: readonly number[] = ASPECT_RATIOS): Float32Array {
  const out = new Float32Array(ratios.length * 4);
  const s = f32(size);
  ratios.forEach((r, a) => {
    const hRatio = f32(Math.sqrt(f32(r)));
    const wRatio = f32(1 / hRatio);
    const halfW = f32(f32(wRatio * s) / 2);
    const halfH = f32(f32(hRatio * s) / 2);
    // -x rounds to -round(x) under half-to-even, so the anchor stays symmetric.
    out.set([roundHalfEven(-halfW), roundHalfEven(-halfH), roundHalfEven(halfW), roundHalfEven(halfH)], a * 4);
  });
  return out;
}

/**
 * Spatial size of the five FPN outputs for a padded input of paddedH x paddedW: what the
 * backbone's strided convolutions give (each stride-2 stage maps n -> ceil(n / 2): conv1, maxpool,
 * layer2..4, then 'pool' = max_pool(kernel 1, stride 2) of level '3').
 */
export function featureSizes(paddedH: number, paddedW: number): Array<[number, number]> {
  const half = (n: number): number => Math.ceil(n / 2);
  let h = half(half(paddedH));
  let w = half(half(paddedW));
  const sizes: Array<[number, number]> = [[h, w]];
  for (let level = 1; level < 5; level++) {
    h = half(h);
    w = half(w);
    sizes.push([h, w]);
  }
  return sizes;
}

/**
 * Anchors of one level, row-major over (y, x) then the cell anchors. Upstream derives the stride
 * as padded size // feature size (integer division: 'pool' of a 160-high input is 160 // 3 = 53,
 * not 64).
 */
export function levelAnchors(
  featH: number,
  featW: number,
  paddedH: number,
  paddedW: number,
  size: number,
): Float32Array {
  const strideY = Math.floor(paddedH / featH);
  const strideX = Math.floor(paddedW / featW);
  const cell = baseAnchors(size);
  const a = cell.length / 4;
  const out = new Float32Array(featH * featW * a * 4);
  let o = 0;
  for (let y = 0; y < featH; y++) {
    const sy = f32(y * strideY);
    for (let x = 0; x < featW; x++) {
      const sx = f32(x * strideX);
      for (let k = 0; k < a; k++) {
        out[o++] = f32(sx + cell[k * 4]);
        out[o++] = f32(sy + cell[k * 4 + 1]);
        out[o++] = f32(sx + cell[k * 4 + 2]);
        out[o++] = f32(sy + cell[k * 4 + 3]);
      }
    }
  }
  return out;
}

/**
 * The anchors of an image whose own padded size is paddedH x paddedW at the level-local indices
 * `local` (perLevel[l] of them for level l, levels in order): the same numbers as indexing
 * `imageAnchors`, for a few thousand anchors instead of all of them.
 */
export function anchorsAt(paddedH: number, paddedW: number, perLevel: readonly number[], local: Int32Array): Float32Array {
  const grids = anchorGrids(paddedH, paddedW);
  const out = new Float32Array(local.length * 4);
  let i = 0;
  perLevel.forEach((count, level) => {
    const grid = grids[level];
    for (const end = i + count; i < end; i++) anchorInto(grid, local[i], out, i * 4);
  });
  return out;
}

/** What places a level's anchors: its feature width, strides (padded size // feature size) and cell anchors. */
export interface AnchorGrid {
  featW: number;
  strideX: number;
  strideY: number;
  cell: Float32Array;
}

/** The AnchorGrid of each level of an image whose own padded size is paddedH x paddedW. */
export function anchorGrids(paddedH: number, paddedW: number): AnchorGrid[] {
  return featureSizes(paddedH, paddedW).map(([featH, featW], level) => ({
    featW,
    strideX: Math.floor(paddedW / featW),
    strideY: Math.floor(paddedH / featH),
    cell: cellAnchors(level),
  }));
}

/** baseAnchors of each level's size, made once. */
const CELL_ANCHORS: Float32Array[] = [];
function cellAnchors(level: number): Float32Array {
  return (CELL_ANCHORS[level] ??= baseAnchors(ANCHOR_SIZES[level]));
}

/** The level's anchor at level-local index `local` into out[o .. o + 4): levelAnchors' numbers. */
export function anchorInto(grid: AnchorGrid, local: number, out: Float32Array, o: number): void {
  // Integer arithmetic on the (y, x, anchor) of an index: exact below 2^31 anchors.
  const location = (local / PER_LOCATION) | 0;
  const c = (local - location * PER_LOCATION) * 4;
  const y = (location / grid.featW) | 0;
  const sx = f32((location - y * grid.featW) * grid.strideX);
  const sy = f32(y * grid.strideY);
  const { cell } = grid;
  out[o] = f32(sx + cell[c]);
  out[o + 1] = f32(sy + cell[c + 1]);
  out[o + 2] = f32(sx + cell[c + 2]);
  out[o + 3] = f32(sy + cell[c + 3]);
}

export interface ImageAnchors {
  /** All levels concatenated, (x1, y1, x2, y2) per anchor. */
  anchors: Float32Array;
  /** Number of anchors of each level, in order. */
  perLevel: number[];
  /** Feature size of each level the anchors were laid on. */
  featureSizes: Array<[number, number]>;
}

/** Anchors of an image whose own padded size is paddedH x paddedW, levels concatenated. */
export function imageAnchors(paddedH: number, paddedW: number): ImageAnchors {
  const shared = sharedImageAnchors(paddedH, paddedW);
  return {
    anchors: shared.anchors.slice(),
    perLevel: shared.perLevel.slice(),
    featureSizes: shared.featureSizes.map(([h, w]) => [h, w]),
  };
}

/** Padded sizes whose anchors are kept: a batch of differently shaped images needs one each. */
export const ANCHOR_CACHE_SIZE = 8;
const anchorCache = new Map<string, ImageAnchors>();

/**
 * Like `imageAnchors`, but the result is shared by every caller asking for the same padded size
 * (least recently used sizes are dropped beyond ANCHOR_CACHE_SIZE): it must not be modified.
 */
export function sharedImageAnchors(paddedH: number, paddedW: number): ImageAnchors {
  const key = `${paddedH}x${paddedW}`;
  const hit = anchorCache.get(key);
  if (hit) {
    // Re-insert: Map iteration order is insertion order, so the first key is the least recent.
    anchorCache.delete(key);
    anchorCache.set(key, hit);
    return hit;
  }
  const made = computeImageAnchors(paddedH, paddedW);
  anchorCache.set(key, made);
  if (anchorCache.size > ANCHOR_CACHE_SIZE) anchorCache.delete(anchorCache.keys().next().value as string);
  return made;
}

function computeImageAnchors(paddedH: number, paddedW: number): ImageAnchors {
  const sizes = featureSizes(paddedH, paddedW);
  const levels = sizes.map(([h, w], l) => levelAnchors(h, w, paddedH, paddedW, ANCHOR_SIZES[l]));
  const total = levels.reduce((n, a) => n + a.length, 0);
  const anchors = new Float32Array(total);
  let o = 0;
  for (const a of levels) {
    anchors.set(a, o);
    o += a.length;
  }
  return Object.freeze({
    anchors,
    perLevel: Object.freeze(levels.map((a) => a.length / 4)) as number[],
    featureSizes: Object.freeze(sizes.map((s) => Object.freeze(s) as [number, number])) as Array<[number, number]>,
  });
}
