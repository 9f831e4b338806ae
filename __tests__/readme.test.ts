/**
 * The README's TypeScript examples must compile against the real API as written (only the
 * package import is pointed at the source tree).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ts from 'typescript';

const ROOT = path.join(__dirname, '..');

function readmeBlocks(): string[] {
  const text = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  return [...text.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
}

describe('README examples', () => {
  it('has TypeScript examples', () => {
    expect(readmeBlocks().length).toBeGreaterThanOrEqual(2);
  });

  it('type-check against src/index.ts', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'readme-'));
    const index = path.join(ROOT, 'src', 'index').replace(/\\/g, '/');
    const files = readmeBlocks().map((code, i) => {
      const file = path.join(dir, `example${i}.ts`);
      // Blocks without imports are declarations shown for reference: make each its own module.
      const body = code.replace(/from 'img2pose-tfjs'/g, `from '${index}'`);
      fs.writeFileSync(file, /\bimport\b/.test(body) ? body : `${body}\nexport {};\n`);
      return file;
    });
    const program = ts.createProgram(files, {
      strict: true,
      noEmit: true,
      target: ts.ScriptTarget.ES2022,
      // ES modules, as the README's examples are written (top-level await included).
      module: ts.ModuleKind.ES2022,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
      esModuleInterop: true,
      skipLibCheck: true,
      resolveJsonModule: true,
      types: ['node'],
      typeRoots: [path.join(ROOT, 'node_modules', '@types')],
    });
    const diagnostics = ts
      .getPreEmitDiagnostics(program)
      .filter((d) => d.file === undefined || files.includes(path.normalize(d.file.fileName)))
      .map((d) => `${d.file ? path.basename(d.file.fileName) : ''}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`);
    expect(diagnostics).toEqual([]);
  });
});
