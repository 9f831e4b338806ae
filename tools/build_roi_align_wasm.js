#!/usr/bin/env node
/**
 * Assembles tools/roi_align.wat (the host RoIAlign's WebAssembly SIMD kernel) and writes its bytes
 * into src/kernels/wasm/roi_align_wasm.ts, between the `BEGIN roi_align.wasm` and
 * `END roi_align.wasm` lines. Run after editing the .wat; needs the `wabt` package, which the
 * project does not depend on:
 *
 *   npm install --no-save wabt@1.0.39 && node tools/build_roi_align_wasm.js
 *   node tools/build_roi_align_wasm.js --check    (exit 1 when the file holds other bytes)
 */
const path = require('path');
const { embedMain } = require('./wasm_embed');

embedMain('roi_align', path.join(__dirname, 'roi_align.wat'), path.join(__dirname, '..', 'src', 'kernels', 'wasm', 'roi_align_wasm.ts'), 'export const ROI_ALIGN_WASM');
