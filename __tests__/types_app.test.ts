/**
 * The public types as an app sees them: a TypeScript app made with `tsc --init`'s defaults
 * (nodenext, verbatimModuleSyntax, exactOptionalPropertyTypes, `types: []`...) compiles the README's
 * quick start and a call with `ImageInput | ImageInput[]` against the built .d.ts; a typo in a
 * detect option is reported as an unknown property. The app has no `@types/node`, and the package's
 * declarations are checked too (`skipLibCheck: false`): a `Buffer` or `NodeJS.*` in them fails.
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
  // tsc --init's defaults, with the two that matter here pinned (should a later tsc change them)
  // and the declarations of the packages checked, not skipped.
  const strict = { types: [], verbatimModuleSyntax: true, skipLibCheck: false };
  fs.writeFileSync(
    path.join(app, 'tsconfig.app.json'),
    JSON.stringify({ extends: './tsconfig.json', compilerOptions: strict, files: ['index.ts'] }),
  );
  // A package whose declarations name Node's Buffer: the check must see it (the harness can fail).
  const leaky = path.join(modules, 'leaky');
  fs.mkdirSync(leaky);
  fs.writeFileSync(path.join(leaky, 'package.json'), JSON.stringify({ name: 'leaky', version: '1.0.0', types: 'index.d.ts' }));
  fs.writeFileSync(path.join(leaky, 'index.d.ts'), 'export declare function png(): Promise<Buffer>;\n');
});

afterAll(() => {
  if (app) fs.rmSync(app, { recursive: true, force: true });
});

/**
 * tsc's diagnostics for the app `source`, '' when it compiles. tfjs' own declarations have errors
 * of their own under `skipLibCheck: false` (`Long` in hash_util.d.ts, ...): not ours, left out.
 */
function compile(source: string): string {
  fs.writeFileSync(path.join(app, 'index.ts'), source);
  const r = spawnSync(process.execPath, [TSC, '--noEmit', '--pretty', 'false', '-p', 'tsconfig.app.json'], {
    cwd: app,
    encoding: 'utf8',
    timeout: 120_000,
  });
  const lines = (r.stdout + r.stderr).split('\n').filter((l) => l.trim() !== '');
  // a diagnostic's first line names its file; the lines after it (indented) belong to it
  const kept: string[] = [];
  let skip = false;
  for (const line of lines) {
    if (!line.startsWith(' ')) skip = /[\\/]node_modules[\\/]@tensorflow[\\/]/.test(line);
    if (!skip) kept.push(line);
  }
  return kept.join('\n');
}

const QUICK_START = `import { Img2Pose, cropToPng, visualize } from 'img2pose-tfjs';
import type { Face, ImageInput } from 'img2pose-tfjs';

const detector = await Img2Pose.load();
const faces: Face[] = await detector.detectFaces('photo.jpg');
console.log(faces.map((f) => ({ box: f.box, confidence: f.confidence, pose: f.pose })));
declare const some: ImageInput | ImageInput[];
const either: Face[] | Face[][] = await detector.detectFaces(some, { scoreThreshold: 0.3 });
console.log(either.length);
const drawn: Uint8Array = await visualize('photo.jpg', faces);
const [first] = await detector.detectAndAlign('photo.jpg', { size: 112 });
if (first) console.log(drawn.byteLength, (await cropToPng(first.crop.image)).byteLength);
const controller = new AbortController();
const listed = await detector.detectFaces(['a.jpg', 'b.jpg'], { signal: controller.signal, onProgress: (done, total) => console.log(done, total) });
console.log(listed.length);
await detector.warmup();
detector.dispose();
`;

describe('the public types in an app', () => {
  it('compile the quick start and a union argument under tsc --init defaults', () => {
    expect(compile(QUICK_START)).toBe('');
  });

  it('see a Node type that leaks into declarations, and have none of their own (no @types/node here)', () => {
    const out = compile(`import { png } from 'leaky';\nconsole.log(await png());\nconst b = Buffer.from('x');\nconsole.log(b);\n`);
    expect(out).toMatch(/leaky[\\/]index\.d\.ts.*Cannot find name 'Buffer'/);
    expect(out).toMatch(/index\.ts\(3,\d+\).*Cannot find name 'Buffer'/);
  });

  it('report a misspelt detect option as an unknown property', () => {
    const out = compile(QUICK_START.replace('scoreThreshold: 0.3', 'scoreTreshold: 0.3'));
    expect(out).toMatch(/scoreTreshold/);
    expect(out).toMatch(/does not exist in type 'DetectOptions'|Did you mean to write 'scoreThreshold'/);
  });
});
