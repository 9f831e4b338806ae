/**
 * The published package as a user gets it: `npm pack` of the built tree, unpacked into an empty
 * project's node_modules (its dependencies linked from ours: no network), then required from
 * CommonJS, imported from ESM, and its command run.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { publicExports } from './utils/public_exports';

const REPO = path.join(__dirname, '..');
const NAME = 'img2pose-tfjs';
let app: string;
let files: string[];
let packedBytes: number;

beforeAll(() => {
  app = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-pack-'));
  // dist/ is fresh (the jest global setup builds it); scripts off so packing does not rebuild.
  const out = execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', app], { cwd: REPO, encoding: 'utf8' });
  const [info] = JSON.parse(out) as { filename: string; size: number; files: { path: string }[] }[];
  files = info.files.map((f) => f.path);
  packedBytes = info.size;
  const modules = path.join(app, 'node_modules');
  fs.mkdirSync(modules);
  for (const entry of fs.readdirSync(path.join(REPO, 'node_modules'))) {
    if (entry !== NAME && !entry.startsWith('.')) fs.symlinkSync(path.join(REPO, 'node_modules', entry), path.join(modules, entry));
  }
  execFileSync('tar', ['-xzf', path.join(app, info.filename), '-C', app]);
  fs.renameSync(path.join(app, 'package'), path.join(modules, NAME));
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }));
}, 120_000);

afterAll(() => {
  if (app) fs.rmSync(app, { recursive: true, force: true });
});

function node(args: string[]): string {
  return execFileSync(process.execPath, args, { cwd: app, encoding: 'utf8', timeout: 60_000 });
}

describe('npm pack', () => {
  it('ships the library, the command, types, browser builds and licences, and nothing of the repo besides', () => {
    expect(packedBytes).toBeLessThan(2 * 1024 * 1024);
    for (const f of [
      'package.json',
      'LICENSE',
      'README.md',
      'bin/img2pose.js',
      'dist/src/index.js',
      'dist/src/index.d.ts',
      'dist/src/cli.js',
      'dist/browser/img2pose.mjs',
      'assets/teaser.jpg',
    ]) {
      expect(files).toContain(f);
    }
    const stray = files.filter((f) =>
      /^(__tests__|bench|tools|tmp|weights|demo|converter|src)\/|^dist\/(bench|__tests__)\/|\.map$|GPU_NOTES/.test(f),
    );
    expect(stray).toEqual([]);
  });

  it('loads from CommonJS and ESM, and runs img2pose --version', () => {
    const version = (JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
    const cjs = node(['-e', `const m = require('${NAME}'); console.log(typeof m.Img2Pose.load, typeof m.visualize)`]);
    expect(cjs.trim()).toBe('function function');
    const esm = node([
      '--input-type=module',
      '-e',
      `import { Img2Pose, visualize } from '${NAME}'; console.log(typeof Img2Pose.load, typeof visualize)`,
    ]);
    expect(esm.trim()).toBe('function function');
    expect(node([path.join('node_modules', NAME, 'bin', 'img2pose.js'), '--version']).trim()).toBe(version);
  });

  it('exports the public surface only: the detector, errors, alignment, angles, drawing, weights helpers', () => {
    const names = JSON.parse(node(['-e', `console.log(JSON.stringify(Object.keys(require('${NAME}')).sort()))`])) as string[];
    // The network, its stages and runtime (Img2PoseModel, createRuntime, ...) are internal.
    expect(names).toEqual(
      publicExports([
        'Img2Pose',
        'WorkerTaskError',
        'alignFaces',
        'cacheRoot',
        'clearReleaseCache',
        'cropToPng',
        'ensureReleaseWeights',
        'installReleaseZip',
        'loadWeights',
        'releaseFolder',
        'verifyReleaseFolder',
        'visualize',
        'writeFormulaWeights',
      ]),
    );
  });
});
