/**
 * The published types: code written for a page (HTMLImageElement, canvas, ImageBitmap, ImageData,
 * VideoFrame, HTMLVideoElement into detectFaces, alignFaces, detectAndAlign, alignFacesBatch)
 * compiles against the built declarations as a bundler resolves the package (`browser` condition,
 * lib dom); Node code compiles without lib dom. The page code against the Node types must fail:
 * that is what the browser types add.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const ROOT = path.join(__dirname, '..');
const SNIPPETS = path.join(__dirname, 'fixtures', 'types');
const TSC = require.resolve('typescript/bin/tsc');

/** Compiles `file` (a snippet) with `options`; returns tsc's diagnostics ('' when it compiles). */
function compile(file: string, options: Record<string, unknown>): string {
  // Inside the package, so `img2pose-tfjs` resolves to this package's exports and its dist/.
  const dir = fs.mkdtempSync(path.join(ROOT, 'tmp', 'types-'));
  try {
    // Kept as .ts.txt so that the project's own type check leaves them alone.
    fs.copyFileSync(path.join(SNIPPETS, `${file}.txt`), path.join(dir, file));
    const config = {
      compilerOptions: { strict: true, noEmit: true, target: 'es2022', skipLibCheck: true, types: [], ...options },
      files: [file],
    };
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify(config));
    execFileSync(process.execPath, [TSC, '-p', dir], { cwd: dir, encoding: 'utf8', stdio: 'pipe' });
    return '';
  } catch (e) {
    return String((e as { stdout?: string }).stdout ?? e);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const BROWSER = { module: 'esnext', moduleResolution: 'bundler', customConditions: ['browser'], lib: ['es2022', 'dom'] };
const NODE = { module: 'node16', moduleResolution: 'node16', lib: ['es2022'], types: ['node'] };

beforeAll(() => fs.mkdirSync(path.join(ROOT, 'tmp'), { recursive: true }));

it('page code with element inputs compiles against the browser types (bundler resolution, lib dom)', () => {
  expect(compile('browser_inputs.ts', BROWSER)).toBe('');
}, 120_000);

it('Node code compiles against the Node types without lib dom', () => {
  expect(compile('node_inputs.ts', NODE)).toBe('');
}, 120_000);

it('the same page code against the Node types fails on the element inputs', () => {
  const errors = compile('browser_inputs.ts', { ...BROWSER, customConditions: [] });
  expect(errors).toMatch(/HTMLImageElement|HTMLVideoElement|VideoFrame/);
}, 120_000);
