/**
 * Test-only references for the NMS stages, written plainly and independently of src/ops/nms.ts's
 * incremental engine: the kernel's loop as torchvision's CPU kernel runs it (each kept box
 * suppressing the later ones).
 */

/**
 * The kernel's greedy loop as written: stable descending order (NaN first), each kept box
 * suppressing every later unsuppressed box whose float32 IoU with it exceeds the threshold.
 * Returns the kept local indices, best first.
 */
export function referenceKernel(boxes: Float32Array, scores: ArrayLike<number>, thr: number): number[] {
  const f = Math.fround;
  const n = scores.length;
  const rank = (v: number): number => (Number.isNaN(v) ? Infinity : v);
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => {
    const a = rank(scores[i]);
    const b = rank(scores[j]);
    return a === b ? i - j : b > a ? 1 : -1;
  });
  const area = (i: number): number => f(f(boxes[i * 4 + 2] - boxes[i * 4]) * f(boxes[i * 4 + 3] - boxes[i * 4 + 1]));
  const suppressed = new Uint8Array(n);
  const keep: number[] = [];
  for (let a = 0; a < n; a++) {
    const i = order[a];
    if (suppressed[i]) continue;
    keep.push(i);
    for (let b = a + 1; b < n; b++) {
      const j = order[b];
      if (suppressed[j]) continue;
      // C++ std::max(a, b) = a < b ? b : a; std::min(a, b) = b < a ? b : a.
      const xx1 = boxes[i * 4] < boxes[j * 4] ? boxes[j * 4] : boxes[i * 4];
      const yy1 = boxes[i * 4 + 1] < boxes[j * 4 + 1] ? boxes[j * 4 + 1] : boxes[i * 4 + 1];
      const xx2 = boxes[j * 4 + 2] < boxes[i * 4 + 2] ? boxes[j * 4 + 2] : boxes[i * 4 + 2];
      const yy2 = boxes[j * 4 + 3] < boxes[i * 4 + 3] ? boxes[j * 4 + 3] : boxes[i * 4 + 3];
      const w = f(xx2 - xx1);
      const h = f(yy2 - yy1);
      const inter = f((0 < w ? w : 0) * (0 < h ? h : 0));
      if (f(inter / f(f(area(i) + area(j)) - inter)) > thr) suppressed[j] = 1;
    }
  }
  return keep;
}
