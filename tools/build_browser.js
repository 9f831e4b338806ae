#!/usr/bin/env node
/**
 * The browser build (package export "browser"): esbuild bundles src/browser/index.ts as ESM for
 * browsers. The detector's Node-only modules are swapped for their browser versions
 * (src/runtime/threads.ts, src/io/images.ts, src/io/weights_io.ts, src/io/weights_cache.ts -> src/browser/*), and the Node built-ins that
 * shared modules import for their Node-only paths resolve to a stub that throws when used;
 * anything else Node-specific fails the build (platform 'browser').
 *
 *   dist/browser/img2pose.mjs         for bundlers: @tensorflow/* stay imports (one tfjs per app)
 *   dist/browser/img2pose.bundle.mjs  self-contained (tfjs, webgpu and wasm backends) for a
 *                                     <script type="module">, with the .wasm files beside it
 *
 * Usage: node tools/build_browser.js [outdir]   (default dist/browser)
 */
const fs = require('fs');
const path = require('path');
const esbuild = require('esbuild');

const ROOT = path.join(__dirname, '..');
const SRC = path.join(ROOT, 'src');
// Node module (path under src/, no extension) -> its browser version, and the importers whose
// import is swapped (null: all of them; visualize.ts keeps the core io: the browser build uses
// only its drawing geometry). The browser versions themselves import the originals.
const SWAPPED = {
  'io/images': { to: 'io.ts', importers: ['detector.ts'] },
  'runtime/threads': { to: 'threads.ts', importers: null },
  'io/weights_io': { to: 'weights_io.ts', importers: null },
  'io/weights_cache': { to: 'weights_cache.ts', importers: null },
  'io/codecs': { to: 'shims/codecs.ts', importers: null },
  'io/jpeg_turbo_wasm': { to: 'jpeg_turbo_wasm.ts', importers: null },
};
const BUILTINS = /^(node:)?(fs|path|os|worker_threads|crypto|zlib|stream|stream\/promises|util|url|child_process|events|readline|http|https|net)$/;

const browserSwaps = {
  name: 'img2pose-browser-swaps',
  setup(build) {
    build.onResolve({ filter: /^\.\.?\// }, (args) => {
      if (args.importer.startsWith(path.join(SRC, 'browser') + path.sep)) return undefined;
      const target = path.relative(SRC, path.resolve(path.dirname(args.importer), args.path)).split(path.sep).join('/');
      const swap = SWAPPED[target];
      if (swap === undefined) return undefined;
      if (swap.importers !== null && !swap.importers.includes(path.relative(SRC, args.importer))) return undefined;
      return { path: path.join(SRC, 'browser', swap.to) };
    });
    build.onResolve({ filter: BUILTINS }, () => ({ path: path.join(SRC, 'browser', 'shims', 'node_builtin.ts') }));
    build.onResolve({ filter: /^jimp$/ }, () => ({ path: path.join(SRC, 'browser', 'shims', 'jimp.ts') }));
  },
};

const common = {
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  plugins: [browserSwaps],
  // threadCount's default argument reads process.env: browsers have no environment.
  define: { 'process.env': '{}' },
  logLevel: 'warning',
  metafile: true,
  sourcemap: true,
  legalComments: 'none',
  // libjpeg-turbo's WebAssembly build, bundled as bytes (src/browser/jpeg_turbo_wasm.ts).
  loader: { '.wasm': 'binary' },
};

async function buildBrowser(outdir = path.join(ROOT, 'dist', 'browser')) {
  fs.mkdirSync(outdir, { recursive: true });
  const lib = await esbuild.build({
    ...common,
    entryPoints: [path.join(SRC, 'browser', 'index.ts')],
    outfile: path.join(outdir, 'img2pose.mjs'),
    external: ['@tensorflow/*'],
  });
  const bundle = await esbuild.build({
    ...common,
    stdin: {
      // The .wasm files are served from beside the bundle unless the page calls setWasmPaths.
      contents: "import { setWasmPaths } from './src/browser/index.ts';\n" +
        "setWasmPaths(new URL('./', import.meta.url).href);\n" +
        "export * from './src/browser/index.ts';\n",
      resolveDir: ROOT,
      sourcefile: 'img2pose.bundle.ts',
      loader: 'ts',
    },
    outfile: path.join(outdir, 'img2pose.bundle.mjs'),
    minify: true,
  });
  const wasmDir = path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist');
  for (const f of fs.readdirSync(wasmDir).filter((n) => n.endsWith('.wasm'))) fs.copyFileSync(path.join(wasmDir, f), path.join(outdir, f));
  return { outdir, inputs: [...Object.keys(lib.metafile.inputs), ...Object.keys(bundle.metafile.inputs)] };
}

module.exports = { buildBrowser };

if (require.main === module) {
  const { Command } = require('commander');
  const program = new Command('build_browser')
    .description('bundles the browser build (ESM) and copies the wasm binaries')
    .argument('[outdir]', 'output folder (default: dist/browser)')
    .parse(process.argv);
  buildBrowser(program.args[0]).catch((e) => {
    console.error(e.message ?? e);
    process.exit(1);
  });
}
