/**
 * The browser build (tools/build_browser.js): it bundles for the browser platform, so any Node
 * module left in its path fails the build; the detector's Node-only modules are swapped out; the
 * bundler build imports nothing but tfjs; the package's exports point at what it writes.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { publicExports } from './utils/public_exports';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { buildBrowser } = require('../tools/build_browser.js') as {
  buildBrowser(outdir: string): Promise<{ outdir: string; inputs: string[] }>;
};

const ROOT = path.join(__dirname, '..');

describe('browser build', () => {
  let out: string;
  let inputs: string[];

  beforeAll(async () => {
    out = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-browser-build-'));
    ({ inputs } = await buildBrowser(out));
  });
  afterAll(() => fs.rmSync(out, { recursive: true, force: true }));

  it('swaps the Node-only modules for their browser versions and leaves out jimp and the worker script', () => {
    const rel = inputs.map((p) => p.replace(/\\/g, '/'));
    for (const nodeOnly of ['src/runtime/threads.ts', 'src/io/weights_io.ts', 'src/runtime/worker.ts', 'converter/in_memory.ts']) {
      expect(rel.filter((p) => p.endsWith(nodeOnly) && !p.includes('src/browser/'))).toEqual([]);
    }
    expect(rel.some((p) => p.endsWith('src/browser/threads.ts'))).toBe(true);
    expect(rel.some((p) => p.endsWith('src/browser/weights_io.ts'))).toBe(true);
    expect(rel.filter((p) => /node_modules\/(jimp|@jimp)\//.test(p))).toEqual([]);
  });

  it('the bundler build imports only @tensorflow packages; the standalone bundle imports nothing', () => {
    const specifiers = (file: string): string[] =>
      [...fs.readFileSync(path.join(out, file), 'utf8').matchAll(/\bfrom\s*["']([^"']+)["']|\bimport\s*["']([^"']+)["']/g)].map(
        (m) => m[1] ?? m[2],
      );
    const lib = specifiers('img2pose.mjs');
    expect(lib.length).toBeGreaterThan(0);
    expect(lib.filter((s) => !s.startsWith('@tensorflow/'))).toEqual([]);
    expect(specifiers('img2pose.bundle.mjs')).toEqual([]);
    for (const f of ['tfjs-backend-wasm.wasm', 'tfjs-backend-wasm-simd.wasm']) expect(fs.existsSync(path.join(out, f))).toBe(true);
  });

  it('exports a lean surface: detector, errors, alignment, angles, page drawing and weights; no network internals', () => {
    const block = /export \{([^}]*)\};\s*(\/\/# sourceMappingURL=.*)?\s*$/.exec(fs.readFileSync(path.join(out, 'img2pose.mjs'), 'utf8'));
    const names = (block?.[1] ?? '')
      .split(',')
      .map((e) =>
        e
          .trim()
          .split(/\s+as\s+/)
          .pop()!,
      )
      .filter((n) => n !== '')
      .sort();
    expect(names).toEqual(
      publicExports(['Img2Pose', 'alignFaces', 'drawFaces', 'loadWeights', 'loadWeightsFromFiles', 'setWasmPaths', 'tf']),
    );
  });

  it("package.json's browser exports name the files the build writes", () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const targets = [pkg.exports['.'].browser.default, pkg.exports['./browser'].default, pkg.exports['./browser/bundle']];
    for (const t of targets) {
      expect(t).toMatch(/^\.\/dist\/browser\//);
      expect(fs.existsSync(path.join(out, path.basename(t)))).toBe(true);
    }
    expect(pkg.exports['.'].default).toBe('./dist/src/index.js');
  });
});
