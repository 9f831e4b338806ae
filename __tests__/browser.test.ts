/**
 * The library in a real browser: Debian's Chromium, headless, driven over the DevTools protocol
 * (puppeteer-core with the system executable; no browser download), loads the demo page served on
 * 127.0.0.1 (the browser bundle, the untrained test weights as a converted folder over HTTP) and
 * detects the tiny golden teaser through the page's own file input, on webgpu (SwiftShader) and on
 * wasm. The faces match the upstream run and this Node process's within the golden tolerances,
 * and a screenshot of the page shows the drawn overlays where the faces are.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import png from '@jimp/js-png';
import puppeteer, { Browser, Page } from 'puppeteer-core';
import { decodeImage } from '../src/io/images';
import { Face, processPrediction } from '../src/detector';
import { Img2PoseModel } from '../src/model/model';
import { activeRuntime } from '../src/runtime/runtime';
import { disposeWeights } from '../src/model/weights';
import { facesToDets } from '../bench/match';
import { parseNpy } from '../converter/npy';
import { AlignSize, alignFaces } from '../src/align';
import { FIXTURES } from './utils/formula';
import { formulaWeights } from './utils/formula';
import { golden, goldenCase, imagePath } from './utils/golden';
import { expectWithinTolerance, matchDetections } from './utils/match';
import { inCI } from './utils/webgpu';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { startDemo } = require('../tools/demo_web.js') as {
  startDemo(o: { weights?: string; port?: number; outDir?: string }): Promise<{ url: string; close(): Promise<void> }>;
};

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CASE = goldenCase('tiny_teaser');
const TEASER = imagePath(CASE.image as string);
const SIZES = `minSize=${CASE.min_size}&maxSize=${CASE.max_size}`;

function describeBrowser(name: string, body: () => void): void {
  if (fs.existsSync(CHROMIUM)) {
    describe(name, body);
    return;
  }
  const why = `no Chromium at ${CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)`;
  if (inCI()) {
    describe(name, () => it('has Chromium (required when CI is set)', () => { throw new Error(why); }));
    return;
  }
  console.warn(`Skipping "${name}": ${why}`);
  describe.skip(name, body);
}

interface PageResult {
  backend: string;
  faces: Face[];
  ms: number;
}

describeBrowser('in headless Chromium: the demo page', () => {
  let browser: Browser;
  let server: { url: string; close(): Promise<void> };
  let tmp: string;
  let nodeFaces: Face[];

  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-browser-'));
    fs.mkdirSync(path.join(tmp, 'xdg'), { mode: 0o700 });
    server = await startDemo({ port: 0, outDir: path.join(tmp, 'site') });
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader', '--enable-unsafe-swiftshader'],
      env: { ...process.env, XDG_RUNTIME_DIR: path.join(tmp, 'xdg') },
      protocolTimeout: 600_000,
    });
    // The same case in this process (wasm), for the page's numbers to be compared with.
    const w = formulaWeights();
    const model = new Img2PoseModel(w, activeRuntime());
    disposeWeights(w);
    const image = await decodeImage(TEASER);
    const [det] = await model.predict([image], { minSize: CASE.min_size, maxSize: CASE.max_size });
    nodeFaces = processPrediction(det, image.shape[1], image.shape[0], 0, -1);
    image.dispose();
    await model.dispose();
  });

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** Opens the page with `query`, picks the teaser in its file input, returns what the page found. */
  async function detectInPage(query: string): Promise<{ page: Page; result: PageResult }> {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${server.url}?${query}`);
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state ?? ''), { timeout: 300_000 });
    const input = await page.$('#file');
    await (input as unknown as { uploadFile(p: string): Promise<void> }).uploadFile(TEASER);
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state ?? ''), { timeout: 500_000 });
    const state = await page.evaluate(() => ({ state: document.body.dataset.state, status: document.getElementById('status')?.textContent }));
    if (state.state !== 'done') throw new Error(`the page failed: ${state.status}; page errors: ${errors.join('; ')}`);
    const result = await page.evaluate(() => {
      const r = (window as unknown as { demoResult: { faces: unknown[] }[] }).demoResult;
      return {
        backend: document.getElementById('active-backend')?.textContent ?? '',
        faces: r[0].faces,
        ms: Number.parseFloat(document.getElementById('ms')?.textContent ?? 'NaN'),
      };
    });
    return { page, result: result as PageResult };
  }

  function expectLikeGoldenAndNode(faces: Face[], label: string): void {
    const ours = facesToDets(faces);
    const ref = {
      boxes: golden(CASE.id, 'final_boxes').data,
      scores: golden(CASE.id, 'final_scores').data,
      dofs: golden(CASE.id, 'final_dofs').data,
    };
    const vsGolden = matchDetections(ours, ref);
    const vsNode = matchDetections(ours, facesToDets(nodeFaces));
    console.log(`${label}: vs upstream ${JSON.stringify(vsGolden)}; vs Node ${JSON.stringify(vsNode)}`);
    expectWithinTolerance(vsGolden);
    expectWithinTolerance(vsNode);
    expect(faces.length).toBeGreaterThan(100);
  }

  it.each(['webgpu', 'wasm'])('%s in the page: the tiny teaser matches upstream and Node within the golden tolerances', async (backend) => {
    const { page, result } = await detectInPage(`backend=${backend}&threshold=0&${SIZES}`);
    try {
      expect(result.backend).toBe(backend);
      expectLikeGoldenAndNode(result.faces, `${backend} in Chromium (${result.ms} ms)`);
      await expectPageAlignsLikeUpstream(page);
      if (backend === 'wasm') {
        await expectPageDetectAndAlignLikeNode(page, backend);
        await expectPageJpegLikeNode(page);
      }
    } finally {
      await page.close();
    }
  });

  /**
   * JPEG bytes in the page decode to Node's pixels (libjpeg-turbo in both, PIL's pixels): the
   * crops of upstream's teaser poses from the JPEG photo equal Node's byte for byte. (jpeg-js's
   * pixels, which the page would take where libjpeg-turbo declined, give other crops.)
   */
  async function expectPageJpegLikeNode(page: Page): Promise<void> {
    const photo = path.join(__dirname, '..', 'assets', 'teaser.jpg');
    const { poses, size } = alignmentCase('al_teaser_top_112');
    const found = await page.evaluate(async (jpegB64: string, all: number[][], side: number) => {
      // A dynamic import written out here would be rewritten by the test's CommonJS transpilation.
      const pageImport = new Function('url', 'return import(url)') as (url: string) => Promise<unknown>;
      const lib = (await pageImport(new URL('img2pose.bundle.mjs', location.href).href)) as {
        alignFaces(image: unknown, faces: { pose: number[] }[], o: { size: number }): Promise<{ image: { data: Uint8Array } }[]>;
      };
      const bytes = Uint8Array.from(atob(jpegB64), (c) => c.charCodeAt(0));
      const aligned = await lib.alignFaces(bytes, all.map((pose) => ({ pose })), { size: side });
      return aligned.map((f) => btoa(String.fromCharCode(...f.image.data)));
    }, fs.readFileSync(photo).toString('base64'), poses, size);
    const node = await alignFaces(photo, poses.map((pose) => ({ pose })), { size: size as AlignSize });
    const differing = found.filter((crop, k) => !Buffer.from(crop, 'base64').equals(Buffer.from(node[k].image.data))).length;
    console.log(`alignFaces of JPEG bytes in Chromium: ${found.length} crops, ${differing} differ from Node's`);
    expect(found.length).toBe(poses.length);
    expect(differing).toBe(0);
  }

  /** Upstream's alignment fixtures on the teaser: poses and crops for both sizes. */
  function alignmentCase(id: string): { poses: number[][]; crops: Uint8Array; size: number } {
    const dir = path.join(FIXTURES, 'alignment');
    const poses = parseNpy(fs.readFileSync(path.join(dir, `${id}.poses.npy`)), id);
    const crops = parseNpy(fs.readFileSync(path.join(dir, `${id}.crops.npy`)), id);
    const n = poses.shape[0];
    return {
      poses: Array.from({ length: n }, (_, k) => Array.from(poses.data.slice(k * 6, k * 6 + 6) as ArrayLike<number>)),
      crops: Uint8Array.from(crops.data as ArrayLike<number>),
      size: crops.shape[1],
    };
  }

  /**
   * `alignFaces` in the page on every kind of page input (encoded bytes, Blob, ImageBitmap, canvas,
   * ImageData, HTMLImageElement): the crops equal upstream's (OpenCV's) byte for byte.
   */
  async function expectPageAlignsLikeUpstream(page: Page): Promise<void> {
    const cases = ['al_teaser_top_112', 'al_teaser_top_224'].map(alignmentCase);
    const teaserB64 = fs.readFileSync(path.join(FIXTURES, 'golden', 'teaser.png')).toString('base64');
    const fixtures = cases.map((c) => ({ poses: c.poses, size: c.size, crops: Buffer.from(c.crops).toString('base64') }));
    const report = await page.evaluate(async (pngB64: string, all: { poses: number[][]; size: number; crops: string }[]) => {
      // A dynamic import written out here would be rewritten by the test's CommonJS transpilation.
      const pageImport = new Function('url', 'return import(url)') as (url: string) => Promise<unknown>;
      const lib = (await pageImport(new URL('img2pose.bundle.mjs', location.href).href)) as {
        alignFaces(image: unknown, faces: { pose: number[] }[], o: { size: number }): Promise<{ image: { data: Uint8Array; width: number; height: number } }[]>;
      };
      const decode = (b64: string): Uint8Array => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const bytes = decode(pngB64);
      const blob = new Blob([bytes as BlobPart], { type: 'image/png' });
      const bitmap = await createImageBitmap(blob);
      const canvas = Object.assign(document.createElement('canvas'), { width: bitmap.width, height: bitmap.height });
      const ctx = canvas.getContext('2d', { willReadFrequently: true }) as CanvasRenderingContext2D;
      ctx.drawImage(bitmap, 0, 0);
      const imageData = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
      const img = new Image();
      img.src = URL.createObjectURL(blob);
      await img.decode();
      const inputs: Record<string, unknown> = { bytes, blob, bitmap, canvas, imageData, img };
      const out: string[] = [];
      for (const [name, input] of Object.entries(inputs)) {
        for (const { poses, size, crops } of all) {
          const want = decode(crops);
          const aligned = await lib.alignFaces(input, poses.map((pose) => ({ pose })), { size });
          let differing = 0;
          let max = 0;
          aligned.forEach((f, k) => {
            const d = f.image.data;
            if (f.image.width !== size || f.image.height !== size || d.length !== size * size * 3) differing = -1;
            for (let i = 0; i < d.length; i++) {
              const diff = Math.abs(d[i] - want[k * size * size * 3 + i]);
              if (diff > 0) differing++;
              max = Math.max(max, diff);
            }
          });
          out.push(`${name} ${size}: ${aligned.length} crops, ${differing} bytes differ (max ${max})`);
        }
      }
      bitmap.close();
      return out;
    }, teaserB64, fixtures);
    console.log(`alignFaces in Chromium:\n${report.join('\n')}`);
    expect(report).toEqual(
      ['bytes', 'blob', 'bitmap', 'canvas', 'imageData', 'img'].flatMap((name) =>
        cases.map((c) => `${name} ${c.size}: ${c.poses.length} crops, 0 bytes differ (max 0)`),
      ),
    );
  }

  /**
   * `detectAndAlign` in the page (a detector of its own on `backend`, the teaser as an
   * HTMLImageElement): every face's crop equals, byte for byte, Node's `alignFaces` with that face's pose.
   */
  async function expectPageDetectAndAlignLikeNode(page: Page, backend: string): Promise<void> {
    const teaserB64 = fs.readFileSync(TEASER).toString('base64');
    const found = await page.evaluate(async (pngB64: string, be: string, minSize: number, maxSize: number) => {
      // A dynamic import written out here would be rewritten by the test's CommonJS transpilation.
      const pageImport = new Function('url', 'return import(url)') as (url: string) => Promise<unknown>;
      const lib = (await pageImport(new URL('img2pose.bundle.mjs', location.href).href)) as {
        Img2Pose: {
          load(o: object): Promise<{
            detectAndAlign(image: unknown, o: object): Promise<{ pose: number[]; crop: { image: { data: Uint8Array } } }[]>;
            dispose(): Promise<void> | void;
          }>;
        };
      };
      const bytes = Uint8Array.from(atob(pngB64), (c) => c.charCodeAt(0));
      const img = new Image();
      img.src = URL.createObjectURL(new Blob([bytes as BlobPart], { type: 'image/png' }));
      await img.decode();
      const detector = await lib.Img2Pose.load({ weights: 'weights/', backend: be, minSize, maxSize });
      try {
        const faces = await detector.detectAndAlign(img, { scoreThreshold: 0.5, size: 112 });
        const b64 = (d: Uint8Array): string => {
          let s = '';
          for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode(...d.subarray(i, i + 0x8000));
          return btoa(s);
        };
        return faces.map((f) => ({ pose: Array.from(f.pose), crop: b64(f.crop.image.data) }));
      } finally {
        await detector.dispose();
      }
    }, teaserB64, backend, CASE.min_size as number, CASE.max_size as number);
    expect(found.length).toBe(CASE['faces_t0.5']?.length);
    const node = await alignFaces(fs.readFileSync(TEASER), found.map((f) => ({ pose: f.pose })), { size: 112 });
    const differing = found.filter((f, k) => !Buffer.from(f.crop, 'base64').equals(Buffer.from(node[k].image.data))).length;
    console.log(`detectAndAlign in Chromium (${backend}): ${found.length} faces, ${differing} crops differ from Node's`);
    expect(differing).toBe(0);
  }

  it('a screenshot after one detection shows the boxes and keypoints drawn where the faces are', async () => {
    const { page, result } = await detectInPage(`backend=wasm&threshold=0.5&${SIZES}`);
    try {
      const faces = result.faces;
      expect(faces.length).toBe(CASE['faces_t0.5']?.length);
      const view = await page.$('#view');
      const shot = png().decode(Buffer.from(await view!.screenshot({ type: 'png' })));
      const size = await page.evaluate(() => {
        const c = document.getElementById('view') as HTMLCanvasElement;
        return { width: c.width, height: c.height };
      });
      const scale = shot.width / size.width;
      const pixel = (x: number, y: number): [number, number, number] => {
        const i = (Math.round(y) * shot.width + Math.round(x)) * 4;
        return [shot.data[i], shot.data[i + 1], shot.data[i + 2]];
      };
      /** Whether a pixel of colour `want` (within 90 per channel) is within 3 px of (x, y) image pixels. */
      const near = (x: number, y: number, want: [number, number, number]): boolean => {
        for (let dy = -3; dy <= 3; dy++) for (let dx = -3; dx <= 3; dx++) {
          const px = x * scale + dx;
          const py = y * scale + dy;
          if (px < 0 || py < 0 || px >= shot.width || py >= shot.height) continue;
          if (pixel(px, py).every((v, c) => Math.abs(v - want[c]) <= 90)) return true;
        }
        return false;
      };
      const green: [number, number, number] = [0, 255, 0];
      const red: [number, number, number] = [255, 0, 0];
      // The top edge's centre of every box (labels sit above it), and each face's nose keypoint.
      const boxesDrawn = faces.filter((f) => near((f.box[0] + f.box[2]) / 2, f.box[1], green)).length;
      const nosesDrawn = faces.filter((f) => near(f.keypoints.nose[0], f.keypoints.nose[1], red)).length;
      console.log(`screenshot ${shot.width}x${shot.height}: ${boxesDrawn}/${faces.length} box edges green, ${nosesDrawn} noses red`);
      expect(boxesDrawn).toBeGreaterThanOrEqual(Math.ceil(0.9 * faces.length));
      expect(nosesDrawn).toBeGreaterThanOrEqual(Math.ceil(0.9 * faces.length));
      // And the photo itself is there: away from every face, the page shows no overlay colour.
      const far = { x: 40, y: 300 };
      expect(faces.every((f) => far.x < f.box[0] - 10 || far.x > f.box[2] + 10 || far.y < f.box[1] - 30 || far.y > f.box[3] + 10)).toBe(true);
      expect(near(far.x, far.y, green)).toBe(false);
    } finally {
      await page.close();
    }
  });
});
