/// <reference lib="dom" />
/**
 * `visualize` for pages: the same overlays (box, confidence, five keypoints, head-pose axes with
 * the detector's camera) drawn with the canvas 2D API on a canvas the page owns, in image pixels.
 */
import type { DrawableFace, OverlayOptions, RGB } from '../visualize';
import { AXIS_COLORS, overlayStyle, poseAxes2d } from '../visualize';

export interface DrawOptions extends OverlayOptions {
  /** The detected image's size [width, height] when the canvas is not that size (default: the canvas's). */
  imageSize?: [number, number];
}

const css = ([r, g, b]: RGB): string => `rgb(${r}, ${g}, ${b})`;

type Context2D = CanvasRenderingContext2D | OffscreenCanvasRenderingContext2D;

/**
 * Draws `faces` over what the canvas shows (draw the image on it first). Coordinates are those
 * `detectFaces` returned, in the detected image's pixels; a canvas of another size is scaled.
 */
export function drawFaces(target: HTMLCanvasElement | OffscreenCanvas | Context2D, faces: readonly DrawableFace[], opts: DrawOptions = {}): void {
  const ctx: Context2D | null = 'canvas' in target && 'fillRect' in target ? target : (target as HTMLCanvasElement).getContext('2d') as Context2D | null;
  if (!ctx) throw new Error('drawFaces: the canvas has no 2D context (is it a WebGL canvas?)');
  const { width: cw, height: ch } = ctx.canvas;
  const [iw, ih] = opts.imageSize ?? [cw, ch];
  const { thickness, boxColor, keypointColor, axisLength } = overlayStyle(opts);
  ctx.save();
  try {
    ctx.scale(cw / iw, ch / ih);
    ctx.lineWidth = thickness;
    for (const face of faces) {
      if (opts.showPose !== false) {
        const axes = poseAxes2d(face.pose, iw, ih, axisLength);
        if (axes) {
          axes.ends.forEach(([x, y], a) => {
            ctx.strokeStyle = css(AXIS_COLORS[a]);
            ctx.beginPath();
            ctx.moveTo(axes.origin[0], axes.origin[1]);
            ctx.lineTo(x, y);
            ctx.stroke();
          });
        }
      }
      const [x1, y1, x2, y2] = face.box;
      ctx.strokeStyle = css(boxColor);
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      if (opts.showKeypoints !== false) {
        ctx.fillStyle = css(keypointColor);
        for (const [kx, ky] of Object.values(face.keypoints)) {
          ctx.beginPath();
          ctx.arc(kx, ky, Math.max(2, thickness), 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    }
    if (opts.showConfidence !== false) {
      ctx.font = `${Math.max(10, 6 * thickness)}px sans-serif`;
      ctx.textBaseline = 'bottom';
      for (const face of faces) {
        const label = face.confidence.toFixed(2);
        const [x1, y1] = face.box;
        const w = ctx.measureText(label).width + 4;
        const h = Math.max(10, 6 * thickness) + 2;
        const top = y1 - h >= 0 ? y1 - h : y1;
        ctx.fillStyle = css(boxColor);
        ctx.fillRect(x1, top, w, h);
        ctx.fillStyle = 'rgb(0, 0, 0)';
        ctx.fillText(label, x1 + 2, top + h - 1);
      }
    }
  } finally {
    ctx.restore();
  }
}
