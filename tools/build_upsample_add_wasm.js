#!/usr/bin/env node
/**
 * Assembles tools/upsample_add.wat (the FPN top-down add's WebAssembly SIMD kernel) and writes its
 * bytes into src/kernels/wasm/upsample_add_wasm.ts, between the `BEGIN upsample_add.wasm` and
 * `END upsample_add.wasm` lines. Run after editing the .wat; needs the `wabt` package, which the
 * project does not depend on:
 *
 *   npm install --no-save wabt@1.0.39 && node tools/build_upsample_add_wasm.js
 *   node tools/build_upsample_add_wasm.js --check    (exit 1 when the file holds other bytes)
 */
const path = require('path');
const { embedMain } = require('./wasm_embed');

embedMain('upsample_add', path.join(__dirname, 'upsample_add.wat'), path.join(__dirname, '..', 'src', 'kernels', 'wasm', 'upsample_add_wasm.ts'), 'export const UPSAMPLE_ADD_WASM');
