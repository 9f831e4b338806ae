/**
 * The public types as an app sees them: a TypeScript app made with `tsc --init`'s defaults
 * (nodenext, verbatimModuleSyntax, exactOptionalPropertyTypes...) compiles the README's quick
 * start and a call with `ImageInput | ImageInput[]` against the built .d.ts; a typo in a detect
 * option is reported as an unknown property.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const REPO = path.join(__dirname, '..');
const TSC = path.join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
let app: string;

beforeAll(() => {
  app = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-types-'));
  const modules = path.join(app, 'node_modules');
  fs.mkdirSync(modules);
  fs.symlinkSync(REPO, path.join(modules, 'img2pose-tfjs'));
  fs.symlinkSync(path.join(REPO, 'node_modules', '@tensorflow'), path.join(modules, '@tensorflow'));
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  const init = spawnSync(process.execPath, [TSC, '--init'], { cwd: app, encoding: 'utf8' });
  expect(init.status).toBe(0);
});

afterAll(() => {
  if (app) fs.rmSync(app, { recursive: true, force: true });
});

function compile(source: string): string {
  fs.writeFileSync(path.join(app, 'index.ts'), source);
  const r = spawnSync(process.execPath, [TSC, '--noEmit', '-p', '.'], { cwd: app, encoding: 'utf8', timeout: 120_000 });
  return r.stdout + r.stderr;
}

const QUICK_START = `import { Img2Pose } from 'img2pose-tfjs';
import type { Face, ImageInput } from 'img2pose-tfjs';

const detector = await Img2Pose.load();
const faces: Face[] = await detector.detectFaces('photo.jpg');
console.log(faces.map((f) => ({ box: f.box, confidence: f.confidence, pose: f.pose })));
declare const some: ImageInput | ImageInput[];
const either: Face[] | Face[][] = await detector.detectFaces(some, { scoreThreshold: 0.3 });
console.log(either.length);
detector.dispose();
`;

describe('the public types in an app', () => {
  it('compile the quick start and a union argument under tsc --init defaults', () => {
    expect(compile(QUICK_START)).toBe('');
  });

  it('report a misspelt detect option as an unknown property', () => {
    const out = compile(QUICK_START.replace('scoreThreshold: 0.3', 'scoreTreshold: 0.3'));
    expect(out).toMatch(/scoreTreshold/);
    expect(out).toMatch(/does not exist in type 'DetectOptions'|Did you mean to write 'scoreThreshold'/);
  });
});
