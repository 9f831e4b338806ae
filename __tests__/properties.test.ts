/** Property tests (fast-check) of the NMS, box and rotation helpers, and the resize-size rule. */
import fc from 'fast-check';
import { boxArea, boxIou, clipBoxesToImage, gatherRows, removeSmallBoxes } from '../src/ops/boxes';
import { batchedNms, nms, nmsExhaustive, nmsGrid, torchSortDescending } from '../src/ops/nms';
import { fmaf } from '../src/model/postprocess';
import {
  expandBboxRectangle,
  matrixToQuat,
  matrixToRotvec,
  quatToMatrix,
  rotvecToMatrix,
} from '../src/model/pose';
import { resizedSize } from '../src/model/transform';

const coord = fc.integer({ min: -20, max: 120 }).map((v) => v / 2);
/** Any box, inverted and degenerate ones included. */
const anyBox = fc.tuple(coord, coord, coord, coord);
/** x1 <= x2, y1 <= y2. */
const wellFormedBox = fc
  .tuple(coord, coord, fc.integer({ min: 0, max: 60 }), fc.integer({ min: 0, max: 60 }))
  .map(([x, y, w, h]) => [x, y, x + w / 2, y + h / 2] as [number, number, number, number]);
/** Few distinct values, so ties are common. */
const score = fc.integer({ min: 0, max: 12 }).map((v) => Math.fround(v / 12));

const detections = (box: fc.Arbitrary<[number, number, number, number]>) =>
  fc.array(fc.tuple(box, score), { minLength: 0, maxLength: 60 }).map((rows) => ({
    boxes: Float32Array.from(rows.flatMap(([b]) => b)),
    scores: Float32Array.from(rows.map(([, s]) => s)),
  }));
const threshold = fc.integer({ min: 0, max: 20 }).map((v) => v / 20);

function pairIou(boxes: Float32Array, i: number, j: number): number {
  return boxIou(boxes.subarray(i * 4, i * 4 + 4), boxes.subarray(j * 4, j * 4 + 4))[0];
}

describe('nms', () => {
  test('kept boxes are sorted by score (ties by index) and no kept pair overlaps above the threshold', () => {
    fc.assert(
      fc.property(detections(anyBox), threshold, ({ boxes, scores }, thr) => {
        const keep = nms(boxes, scores, thr);
        expect(new Set(keep).size).toBe(keep.length);
        for (let k = 1; k < keep.length; k++) {
          const a = scores[keep[k - 1]];
          const b = scores[keep[k]];
          expect(a > b || (a === b && keep[k - 1] < keep[k])).toBe(true);
        }
        for (let a = 0; a < keep.length; a++) {
          for (let b = a + 1; b < keep.length; b++) expect(pairIou(boxes, keep[a], keep[b]) > thr).toBe(false);
        }
      }),
      { numRuns: 200 },
    );
  });

  test('every suppressed box overlaps a kept box ranked before it above the threshold', () => {
    fc.assert(
      fc.property(detections(anyBox), threshold, ({ boxes, scores }, thr) => {
        const keep = Array.from(nms(boxes, scores, thr));
        const rank = (i: number): [number, number] => [-scores[i], i];
        const before = (i: number, j: number): boolean => {
          const [a, b] = [rank(i), rank(j)];
          return a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
        };
        for (let j = 0; j < scores.length; j++) {
          if (keep.includes(j)) continue;
          expect(keep.some((i) => before(i, j) && pairIou(boxes, i, j) > thr)).toBe(true);
        }
      }),
      { numRuns: 200 },
    );
  });

  test('idempotent: NMS of the survivors keeps them all, in order', () => {
    fc.assert(
      fc.property(detections(anyBox), threshold, ({ boxes, scores }, thr) => {
        const keep = nms(boxes, scores, thr);
        const again = nms(gatherRows(boxes, keep, 4), gatherRows(scores, keep, 1), thr);
        expect(Array.from(again)).toEqual(Array.from(keep, (_, k) => k));
      }),
      { numRuns: 200 },
    );
  });

  test('the grid-accelerated kernel keeps exactly what the exhaustive kernel loop keeps', () => {
    // Many boxes of mixed sizes (the grid only runs from 64 boxes), inverted and degenerate ones too.
    const sized = fc
      .tuple(fc.integer({ min: -50, max: 1200 }), fc.integer({ min: -50, max: 700 }), fc.integer({ min: -40, max: 300 }), fc.integer({ min: -40, max: 300 }))
      .map(([x, y, w, h]) => [x / 4, y / 4, (x + w) / 4, (y + h) / 4] as [number, number, number, number]);
    fc.assert(
      fc.property(
        fc.array(fc.tuple(sized, score), { minLength: 64, maxLength: 400 }),
        threshold,
        (rows, thr) => {
          const boxes = Float32Array.from(rows.flatMap(([b]) => b));
          const scores = Float32Array.from(rows.map(([, s]) => s));
          const want = Array.from(nmsExhaustive(boxes, scores, thr));
          const grid = nmsGrid(boxes, scores, thr);
          if (grid) expect(Array.from(grid)).toEqual(want);
          expect(Array.from(nms(boxes, scores, thr))).toEqual(want);
        },
      ),
      { numRuns: 100 },
    );
  });

  test('non-finite coordinates and negative thresholds fall back to the exhaustive loop', () => {
    const n = 80;
    const boxes = new Float32Array(n * 4);
    for (let i = 0; i < n; i++) boxes.set([i % 9, i % 7, (i % 9) + 5, (i % 7) + 5], i * 4);
    const scores = Float32Array.from({ length: n }, (_, i) => (i * 37) % 11);
    expect(nmsGrid(boxes, scores, 0.3)).not.toBeNull();
    expect(nmsGrid(boxes, scores, -0.5)).toBeNull();
    expect(Array.from(nms(boxes, scores, -0.5))).toEqual(Array.from(nmsExhaustive(boxes, scores, -0.5)));
    boxes[10] = NaN;
    boxes[21] = Infinity;
    expect(nmsGrid(boxes, scores, 0.3)).toBeNull();
    expect(Array.from(nms(boxes, scores, 0.3))).toEqual(Array.from(nmsExhaustive(boxes, scores, 0.3)));
  });

  test('batchedNms keeps, per category, exactly what NMS of that category keeps', () => {
    fc.assert(
      fc.property(
        detections(anyBox).chain((d) =>
          fc.tuple(fc.constant(d), fc.array(fc.integer({ min: 0, max: 3 }), { minLength: d.scores.length, maxLength: d.scores.length })),
        ),
        threshold,
        ([{ boxes, scores }, cats], thr) => {
          const got = new Set(batchedNms(boxes, scores, cats, thr));
          const want = new Set<number>();
          for (const c of new Set(cats)) {
            const members = cats.flatMap((v, i) => (v === c ? [i] : []));
            for (const k of nms(gatherRows(boxes, members, 4), gatherRows(scores, members, 1), thr)) want.add(members[k]);
          }
          expect([...got].sort((a, b) => a - b)).toEqual([...want].sort((a, b) => a - b));
        },
      ),
      { numRuns: 200 },
    );
  });
});

test('torchSortDescending is a permutation in non-increasing score order', () => {
  fc.assert(
    fc.property(fc.array(score, { maxLength: 300 }), (scores) => {
      const order = torchSortDescending(scores);
      expect(Array.from(order).sort((a, b) => a - b)).toEqual(scores.map((_, i) => i));
      for (let k = 1; k < order.length; k++) expect(scores[order[k - 1]] >= scores[order[k]]).toBe(true);
    }),
  );
});

describe('box ops', () => {
  test('clipping stays in the image and is idempotent', () => {
    fc.assert(
      fc.property(detections(anyBox), fc.integer({ min: 1, max: 50 }), fc.integer({ min: 1, max: 50 }), ({ boxes }, h, w) => {
        const clipped = clipBoxesToImage(boxes, h, w);
        for (let i = 0; i < clipped.length; i++) {
          const limit = i % 2 === 0 ? w : h;
          expect(clipped[i] >= 0 && clipped[i] <= limit).toBe(true);
        }
        expect(clipBoxesToImage(clipped, h, w)).toEqual(clipped);
      }),
    );
  });

  test('removeSmallBoxes keeps exactly the boxes with both sides >= min size, in order', () => {
    fc.assert(
      fc.property(detections(anyBox), fc.integer({ min: 0, max: 10 }), ({ boxes }, min) => {
        const keep = Array.from(removeSmallBoxes(boxes, min));
        const want: number[] = [];
        for (let i = 0; i < boxes.length / 4; i++) {
          if (boxes[i * 4 + 2] - boxes[i * 4] >= min && boxes[i * 4 + 3] - boxes[i * 4 + 1] >= min) want.push(i);
        }
        expect(keep).toEqual(want);
      }),
    );
  });

  test('IoU of well-formed boxes: symmetric, in [0, 1], 1 with itself when the area is positive', () => {
    fc.assert(
      fc.property(detections(wellFormedBox), ({ boxes }) => {
        const n = boxes.length / 4;
        const iou = boxIou(boxes, boxes);
        const area = boxArea(boxes);
        for (let i = 0; i < n; i++) {
          expect(area[i] >= 0).toBe(true);
          if (area[i] > 0) expect(iou[i * n + i]).toBe(1);
          for (let j = 0; j < n; j++) {
            const v = iou[i * n + j];
            expect(Object.is(v, iou[j * n + i])).toBe(true);
            if (!Number.isNaN(v)) expect(v >= 0 && v <= 1).toBe(true);
            else expect(area[i] === 0 && area[j] === 0).toBe(true);
          }
        }
      }),
    );
  });

  test('pose boxes: integer corners clamped on their own side only', () => {
    const pt = fc.tuple(fc.double({ min: -500, max: 1500, noNaN: true }), fc.double({ min: -500, max: 1500, noNaN: true }));
    fc.assert(
      fc.property(fc.array(pt, { minLength: 1, maxLength: 10 }), fc.double({ min: -4, max: 4, noNaN: true }), (pts, roll) => {
        const [x1, y1, x2, y2] = expandBboxRectangle(640, 480, pts.flat(), roll);
        for (const v of [x1, y1, x2, y2]) expect(Number.isInteger(v)).toBe(true);
        expect(x1 >= 0 && y1 >= 0 && x2 <= 640 && y2 <= 480).toBe(true);
      }),
    );
  });
});

describe('rotations', () => {
  const rotvec = fc
    .tuple(fc.double({ min: -1, max: 1, noNaN: true }), fc.double({ min: -1, max: 1, noNaN: true }), fc.double({ min: -1, max: 1, noNaN: true }), fc.double({ min: 0, max: 3.1, noNaN: true }))
    .map(([x, y, z, angle]) => {
      const n = Math.hypot(x, y, z);
      return n < 1e-6 ? [angle, 0, 0] : [(x / n) * angle, (y / n) * angle, (z / n) * angle];
    });

  test('rotvec -> matrix -> rotvec round trip; the matrix is a rotation', () => {
    fc.assert(
      fc.property(rotvec, (v) => {
        const m = rotvecToMatrix(v);
        for (let r = 0; r < 3; r++) {
          for (let c = 0; c < 3; c++) {
            const dot = m[r * 3] * m[c * 3] + m[r * 3 + 1] * m[c * 3 + 1] + m[r * 3 + 2] * m[c * 3 + 2];
            expect(Math.abs(dot - (r === c ? 1 : 0))).toBeLessThan(1e-12);
          }
        }
        const back = matrixToRotvec(m);
        for (let k = 0; k < 3; k++) expect(Math.abs(back[k] - v[k])).toBeLessThan(1e-9);
      }),
    );
  });

  test('from_matrix on a sheared rotation gives a unit quaternion close to the unsheared one for small shear', () => {
    fc.assert(
      fc.property(rotvec, fc.double({ min: -1e-4, max: 1e-4, noNaN: true }), (v, shear) => {
        const m = rotvecToMatrix(v);
        for (let c = 0; c < 3; c++) m[c] += shear * m[6 + c];
        const q = matrixToQuat(m);
        expect(Math.abs(Math.hypot(q[0], q[1], q[2], q[3]) - 1)).toBeLessThan(1e-12);
        const r = quatToMatrix(q);
        for (let k = 0; k < 9; k++) expect(Math.abs(r[k] - m[k])).toBeLessThan(1e-3);
      }),
    );
  });
});

test('fmaf is a * b + c rounded once to float32 (checked with exact BigInt arithmetic)', () => {
  const SCALE = 2 ** 149; // every float32 is an integer multiple of 2^-149
  const big = (v: number, scale: number): bigint => BigInt(v * scale);
  const f32 = fc.float({ min: Math.fround(-1e4), max: Math.fround(1e4), noNaN: true });
  const F32 = new Float32Array(1);
  const U32 = new Uint32Array(F32.buffer);
  fc.assert(
    fc.property(f32, f32, f32, (a, b, c) => {
      const r = fmaf(a, b, c);
      expect(Math.fround(r)).toBe(r);
      // Exact a*b + c and r, both scaled by 2^298.
      const exact = big(a, SCALE) * big(b, SCALE) + big(c, SCALE) * BigInt(SCALE);
      const dist = (v: number): bigint => {
        const d = big(v, SCALE) * BigInt(SCALE) - exact;
        return d < 0n ? -d : d;
      };
      F32[0] = r;
      const bits = U32[0];
      for (const step of [1, -1]) {
        U32[0] = bits + step;
        const neighbour = F32[0];
        if (!Number.isFinite(neighbour)) continue;
        const dn = dist(neighbour);
        const dr = dist(r);
        // r is at least as close as either neighbour; on a tie its mantissa is even.
        expect(dr <= dn).toBe(true);
        if (dr === dn) expect(bits % 2).toBe(0);
      }
    }),
    { numRuns: 2000 },
  );
});

describe('resizedSize (the short side goes to minSize unless the long side would pass maxSize)', () => {
  const side = fc.integer({ min: 1, max: 20000 });
  /** [minSize, maxSize] with minSize <= maxSize. */
  const sizes = fc
    .tuple(fc.integer({ min: 1, max: 2000 }), fc.integer({ min: 0, max: 3000 }))
    .map(([minSize, extra]) => [minSize, minSize + extra] as const);
  const RUNS = { numRuns: 3000 };

  test('each side is at least 1 pixel, the long side at most maxSize, the short side at most minSize', () => {
    fc.assert(
      fc.property(side, side, sizes, (h, w, [minSize, maxSize]) => {
        const [rh, rw] = resizedSize(h, w, minSize, maxSize);
        expect(Number.isInteger(rh) && Number.isInteger(rw)).toBe(true);
        expect(Math.min(rh, rw)).toBeGreaterThanOrEqual(1);
        expect(Math.max(rh, rw)).toBeLessThanOrEqual(maxSize);
        expect(Math.min(rh, rw)).toBeLessThanOrEqual(minSize);
      }),
      RUNS,
    );
  });

  test('the binding limit is reached to within the one pixel float32 rounding can lose', () => {
    fc.assert(
      fc.property(side, side, sizes, (h, w, [minSize, maxSize]) => {
        const [rh, rw] = resizedSize(h, w, minSize, maxSize);
        const short = Math.min(h, w);
        const long = Math.max(h, w);
        const longAtMinSize = (long * minSize) / short;
        // Clear of the boundary between the two regimes, where either limit may bind.
        if (longAtMinSize < maxSize * (1 - 1e-5)) {
          expect([minSize - 1, minSize]).toContain(Math.min(rh, rw));
        } else if (longAtMinSize > maxSize * (1 + 1e-5) && (short * maxSize) / long >= 1) {
          expect([maxSize - 1, maxSize]).toContain(Math.max(rh, rw));
        }
      }),
      RUNS,
    );
  });

  test('one scale for both sides: each side is floor(side * scale) up to float32 rounding (or 1)', () => {
    fc.assert(
      fc.property(side, side, sizes, (h, w, [minSize, maxSize]) => {
        const scale = Math.min(minSize / Math.min(h, w), maxSize / Math.max(h, w));
        const [rh, rw] = resizedSize(h, w, minSize, maxSize);
        for (const [input, out] of [[h, rh], [w, rw]]) {
          const ideal = input * scale;
          if (ideal < 1) {
            expect(out).toBe(1);
          } else {
            expect(out).toBeGreaterThan(ideal * (1 - 1e-6) - 1);
            expect(out).toBeLessThanOrEqual(ideal * (1 + 1e-6));
          }
        }
        // Orientation is kept.
        if (h <= w) expect(rh).toBeLessThanOrEqual(rw);
      }),
      RUNS,
    );
  });

  test('symmetric in height and width', () => {
    fc.assert(
      fc.property(side, side, sizes, (h, w, [minSize, maxSize]) => {
        expect(resizedSize(w, h, minSize, maxSize)).toEqual([...resizedSize(h, w, minSize, maxSize)].reverse());
      }),
      RUNS,
    );
  });

  test('monotonic: a larger minSize or maxSize never gives a smaller side', () => {
    fc.assert(
      fc.property(side, side, sizes, fc.integer({ min: 0, max: 500 }), (h, w, [minSize, maxSize], more) => {
        const base = resizedSize(h, w, minSize, maxSize);
        const largerMin = resizedSize(h, w, Math.min(minSize + more, maxSize), maxSize);
        const largerMax = resizedSize(h, w, minSize, maxSize + more);
        for (const r of [largerMin, largerMax]) {
          expect(r[0]).toBeGreaterThanOrEqual(base[0]);
          expect(r[1]).toBeGreaterThanOrEqual(base[1]);
        }
      }),
      RUNS,
    );
  });

  test('an image already at the target size keeps it to within one pixel', () => {
    fc.assert(
      fc.property(sizes, fc.integer({ min: 0, max: 3000 }), ([minSize, maxSize], extra) => {
        const long = Math.min(minSize + extra, maxSize);
        const [rh, rw] = resizedSize(minSize, long, minSize, maxSize);
        expect(Math.abs(rh - minSize)).toBeLessThanOrEqual(1);
        expect(Math.abs(rw - long)).toBeLessThanOrEqual(1);
      }),
      RUNS,
    );
  });

  test('thin images keep one row instead of resizing to nothing (upstream would raise)', () => {
    expect(resizedSize(3, 4000, 160, 288)).toEqual([1, 288]);
    expect(resizedSize(4000, 3, 160, 288)).toEqual([288, 1]);
    expect(resizedSize(1, 1, 160, 288)).toEqual([160, 160]);
  });
});
