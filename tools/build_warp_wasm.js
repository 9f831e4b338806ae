#!/usr/bin/env node
/**
 * Assembles tools/warp_affine.wat (the warp's WebAssembly SIMD kernel) and writes its bytes into
 * src/align.ts, between the `BEGIN warp_affine.wasm` and `END warp_affine.wasm` lines. Run after
 * editing the .wat; needs the `wabt` package, which the project does not depend on:
 *
 *   npm install --no-save wabt@1.0.39 && node tools/build_warp_wasm.js
 *   node tools/build_warp_wasm.js --check    (exit 1 when src/align.ts holds other bytes)
 */
const path = require('path');
const { embedMain } = require('./wasm_embed');

embedMain('warp_affine', path.join(__dirname, 'warp_affine.wat'), path.join(__dirname, '..', 'src', 'align.ts'), 'const WARP_WASM');
