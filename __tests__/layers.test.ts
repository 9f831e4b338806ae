/**
 * The source tree's layers, drawn from the code's own imports: every relative import of `src/` and
 * `converter/` (static, type-only, re-exports, `import()` and `require()`) goes to the importer's
 * own folder or to a layer below it, `converter/` imports nothing of `src/`, and no file reaches
 * itself through its imports. The order is the README's "Development" table.
 */
import * as fs from 'fs';
import * as path from 'path';

const ROOT = path.join(__dirname, '..');

/** Top to bottom; a file belongs to the first layer whose test matches its path (from the repo root). */
const LAYERS: { name: string; holds: (file: string) => boolean }[] = [
  { name: 'entry points (CLI, browser build)', holds: (f) => /^src\/(cli|cli_weights)\.ts$/.test(f) || f.startsWith('src/browser/') },
  { name: 'src/queue', holds: (f) => f.startsWith('src/queue/') },
  { name: 'API (src top level)', holds: (f) => /^src\/[^/]+\.ts$/.test(f) },
  { name: 'src/runtime', holds: (f) => f.startsWith('src/runtime/') },
  { name: 'src/io', holds: (f) => f.startsWith('src/io/') },
  { name: 'src/model', holds: (f) => f.startsWith('src/model/') },
  { name: 'src/kernels', holds: (f) => f.startsWith('src/kernels/') && !f.startsWith('src/kernels/wasm/') },
  // The wasm kernels sit below the kernel switch (src/kernels/webgpu/index.ts) that dispatches to them.
  { name: 'src/kernels/wasm', holds: (f) => f.startsWith('src/kernels/wasm/') },
  { name: 'src/ops', holds: (f) => f.startsWith('src/ops/') },
  { name: 'src/errors', holds: (f) => f.startsWith('src/errors/') },
  { name: 'converter', holds: (f) => f.startsWith('converter/') },
];

function layerOf(file: string): number {
  const i = LAYERS.findIndex((l) => l.holds(file));
  if (i < 0) throw new Error(`${file} belongs to no layer: add its folder to LAYERS and to the README's table`);
  return i;
}

function sources(dir: string): string[] {
  return fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) return sources(rel);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [rel] : [];
  });
}

/** Relative module specifiers a TypeScript file imports. */
export function specifiersOf(text: string): string[] {
  const found: string[] = [];
  const patterns = [
    /^\s*(?:import|export)\b[^;'"]*?\bfrom\s*['"]([^'"]+)['"]/gm,
    /^\s*import\s*['"]([^'"]+)['"]/gm,
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
    /\brequire\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  for (const re of patterns) for (const m of text.matchAll(re)) found.push(m[1]);
  return found.filter((s) => s.startsWith('.'));
}

/** The repo-relative file a relative specifier of `from` resolves to, or null outside the sources (JSON, assets). */
function resolve(from: string, specifier: string): string | null {
  const base = path.posix.normalize(path.posix.join(path.posix.dirname(from), specifier)).replace(/\.js$/, '');
  for (const candidate of [`${base}.ts`, `${base}/index.ts`]) if (fs.existsSync(path.join(ROOT, candidate))) return candidate;
  if (fs.existsSync(path.join(ROOT, base))) return null; // a data file (JSON), not a module of ours
  throw new Error(`${from}: cannot resolve ${specifier}`);
}

const FILES = [...sources('src'), ...sources('converter')];
const GRAPH = new Map(
  FILES.map((f) => [f, [...new Set(specifiersOf(fs.readFileSync(path.join(ROOT, f), 'utf8')).map((s) => resolve(f, s)))].filter((t): t is string => t !== null)]),
);

describe('source layers', () => {
  it('finds the imports it checks (the parser is not blind)', () => {
    expect(specifiersOf("import { a } from './a';\nimport type { B } from \"../b\";\nexport * from './c';\nconst d = require('./d') as D;\nimport * as tf from '@tensorflow/tfjs';")).toEqual(['./a', '../b', './c', './d']);
    expect(GRAPH.get('src/detector.ts')).toContain('src/model/model.ts');
    expect(FILES.length).toBeGreaterThan(60);
  });

  it('every import goes to its own folder or a layer below', () => {
    const wrong: string[] = [];
    for (const [from, targets] of GRAPH) {
      for (const to of targets) {
        const same = path.posix.dirname(from) === path.posix.dirname(to);
        if (!same && layerOf(to) <= layerOf(from) && !(layerOf(to) === layerOf(from) && LAYERS[layerOf(from)].name.startsWith('entry'))) {
          wrong.push(`${from} (${LAYERS[layerOf(from)].name}) imports ${to} (${LAYERS[layerOf(to)].name})`);
        }
      }
    }
    expect(wrong).toEqual([]);
  });

  it('converter/ imports nothing of src/', () => {
    const wrong = [...GRAPH].flatMap(([from, targets]) => (from.startsWith('converter/') ? targets.filter((t) => t.startsWith('src/')).map((t) => `${from} -> ${t}`) : []));
    expect(wrong).toEqual([]);
  });

  it('has no import cycles', () => {
    const state = new Map<string, 'open' | 'done'>();
    const cycles: string[] = [];
    const visit = (file: string, trail: string[]): void => {
      if (state.get(file) === 'done') return;
      if (state.get(file) === 'open') {
        cycles.push([...trail.slice(trail.indexOf(file)), file].join(' -> '));
        return;
      }
      state.set(file, 'open');
      for (const next of GRAPH.get(file) ?? []) visit(next, [...trail, file]);
      state.set(file, 'done');
    };
    for (const file of FILES) visit(file, []);
    expect(cycles).toEqual([]);
  });
});
