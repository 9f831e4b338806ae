#!/usr/bin/env node
/**
 * `npm run demo:web`: builds the demo page (demo/ + the browser bundle) into dist/demo and serves
 * it on http://127.0.0.1:8080 (loopback only).
 *
 *   npm run demo:web -- [--weights <converted folder>] [--port N]
 *
 * Without --weights the page runs the untrained test weights (written once to dist/demo-weights)
 * and says so. Needs the compiled library (dist/, made by `npm ci` / `npm run build`).
 */
const fs = require('fs');
const http = require('http');
const path = require('path');
const { buildBrowser } = require('./build_browser');

const ROOT = path.join(__dirname, '..');
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.bin': 'application/octet-stream',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
};

/** Writes the untrained formula weights as a converted folder, once. */
async function formulaWeightsFolder(dir = path.join(ROOT, 'dist', 'demo-weights')) {
  if (fs.existsSync(path.join(dir, 'model.json'))) return dir;
  const dist = path.join(ROOT, 'dist');
  if (!fs.existsSync(path.join(dist, 'src', 'io', 'formula_weights.js'))) {
    throw new Error('the compiled library is missing: run `npm run build` first');
  }
  const { formulaWeights } = require(path.join(dist, 'src', 'io', 'formula_weights.js'));
  const { writeWeightsFolder } = require(path.join(dist, 'bench', 'reliability_cases.js'));
  const { disposeWeights } = require(path.join(dist, 'src', 'model', 'weights.js'));
  const weights = formulaWeights();
  try {
    await writeWeightsFolder(weights, `${dir}.tmp`);
  } finally {
    disposeWeights(weights);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  fs.renameSync(`${dir}.tmp`, dir);
  return dir;
}

/** The page, the bundle and its .wasm files in `outDir`; `untrained` is what the page tells the user. */
async function buildDemo(outDir, untrained) {
  await buildBrowser(outDir);
  for (const f of ['index.html', 'app.js']) fs.copyFileSync(path.join(ROOT, 'demo', f), path.join(outDir, f));
  fs.copyFileSync(path.join(ROOT, 'assets', 'teaser.jpg'), path.join(outDir, 'example.jpg'));
  fs.writeFileSync(path.join(outDir, 'demo.json'), JSON.stringify({ untrained }));
}

/**
 * Serves `outDir` and, under /weights/, `weightsDir`, on 127.0.0.1 (port 0: any free one).
 * Resolves with the base URL and a close function.
 */
function serve(outDir, weightsDir, port = 8080) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    let rel = decodeURIComponent(url.pathname);
    let base = outDir;
    if (rel.startsWith('/weights/')) {
      base = weightsDir;
      rel = rel.slice('/weights'.length);
    }
    if (rel.endsWith('/')) rel += 'index.html';
    const file = path.join(base, path.normalize(rel));
    if (!file.startsWith(base + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      const { port: actual } = server.address();
      resolve({ url: `http://127.0.0.1:${actual}/`, close: () => new Promise((r) => server.close(() => r())) });
    });
  });
}

/** Builds and serves the demo; the tests call this with port 0 and a temporary outDir. */
async function startDemo({ weights, port = 8080, outDir = path.join(ROOT, 'dist', 'demo') } = {}) {
  const weightsDir = weights ? path.resolve(weights) : await formulaWeightsFolder();
  if (!fs.existsSync(path.join(weightsDir, 'model.json'))) throw new Error(`${weightsDir}: no model.json (expected a folder written by \`img2pose convert\`)`);
  await buildDemo(outDir, !weights);
  return serve(outDir, weightsDir, port);
}

module.exports = { startDemo, formulaWeightsFolder };

if (require.main === module) {
  const { Command, InvalidArgumentError } = require('commander');
  const opts = new Command('demo_web')
    .description('serves the browser demo page on a local port')
    .option('--weights <dir>', 'converted weights folder (default: the formula test weights)')
    .option('--port <n>', 'port to listen on', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError(`expected a port number, got ${v}`);
      return n;
    }, 8080)
    .parse(process.argv)
    .opts();
  startDemo({ weights: opts.weights, port: opts.port })
    .then(({ url }) => console.log(`img2pose demo: open ${url} (Ctrl-C stops the server)`))
    .catch((e) => {
      console.error(`img2pose demo: ${e.message ?? e}`);
      process.exit(1);
    });
}
