#!/usr/bin/env node
/**
 * Assembles tools/warp_affine.wat (the warp's WebAssembly SIMD kernel) and writes its bytes into
 * src/align.ts, between the `BEGIN warp_affine.wasm` and `END warp_affine.wasm` lines. Run after
 * editing the .wat; needs the `wabt` package, which the project does not depend on:
 *
 *   npm install --no-save wabt@1.0.39 && node tools/build_warp_wasm.js
 *   node tools/build_warp_wasm.js --check    (exit 1 when src/align.ts holds other bytes)
 */
const fs = require('fs');
const path = require('path');
const { assembleWat, spliceBytes } = require('./wasm_embed');

const ROOT = path.join(__dirname, '..');
const WAT = path.join(__dirname, 'warp_affine.wat');
const TARGET = path.join(ROOT, 'src', 'align.ts');
const BEGIN = '// BEGIN warp_affine.wasm';
const END = '// END warp_affine.wasm';

async function main() {
  const bytes = await assembleWat('warp_affine.wat', fs.readFileSync(WAT, 'utf8'));
  const src = fs.readFileSync(TARGET, 'utf8');
  const next = spliceBytes(src, TARGET, BEGIN, END, 'const WARP_WASM', bytes);
  if (process.argv.includes('--check')) {
    if (next !== src) {
      console.error('src/align.ts does not hold the assembled tools/warp_affine.wat');
      process.exit(1);
    }
    console.log(`src/align.ts holds tools/warp_affine.wat (${bytes.length} bytes)`);
    return;
  }
  fs.writeFileSync(TARGET, next);
  console.log(`wrote ${bytes.length} bytes of WebAssembly into src/align.ts`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
