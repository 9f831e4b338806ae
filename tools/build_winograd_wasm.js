#!/usr/bin/env node
/**
 * Writes tools/winograd_f4.wat, the WebAssembly SIMD transforms of Winograd F(4x4, 3x3) for the
 * wasm backend (src/kernels/wasm/winograd.ts), and its assembled bytes into
 * src/kernels/wasm/winograd_wasm.ts, between the `BEGIN winograd_f4.wasm` and
 * `END winograd_f4.wasm` lines. The .wat is generated: its 6x6 transforms are fully unrolled, and
 * writing them by hand would only add typos. Needs the `wabt` package, which the project does
 * not depend on:
 *
 *   npm install --no-save wabt@1.0.39 && node tools/build_winograd_wasm.js
 *   node tools/build_winograd_wasm.js --check    (exit 1 when the .wat or the bytes differ)
 *
 * The module imports the tfjs wasm backend's memory ("env" "memory") and works on tensors where
 * they lie in it. Functions (all sizes in elements unless said, pointers in bytes):
 *
 *   input(x, H, W, C, TH, TW, rowStart, rowCount, vptrs)
 *     x: NHWC float32 map; TH = ceil(H / 4), TW = ceil(W / 4) tiles per image column / row.
 *     For the tile rows r in [rowStart, rowStart + rowCount) (r = image * TH + tile row) and every
 *     tile column tx, writes V[e][t][c] = (B^T d B)[e] of the 6x6 input patch d whose top-left
 *     is (4 ty - 1, 4 tx - 1), zero outside the map; t = (r - rowStart) * TW + tx; V[e] starts at
 *     the i32 vptrs[e], e = 6 i + j.
 *   output_<res><relu>(mptrs, bias, res, out, H, W, C, TH, TW, rowStart, rowCount)
 *     M[e] at mptrs[e] ([tiles, C] each): y = A^T M A + bias (+ res) (ReLU) of each tile, written
 *     into the NHWC map out (res: a map of out's shape) where inside [0, H) x [0, W).
 * C must be a multiple of 4 (4 channels per 128-bit lane group).
 *
 * And the weight transforms made when the network is built, on both sides of each lane in float64
 * with the operations in the order of their JavaScript references, so the bits are theirs:
 *
 *   filter_u<n>(u, size, t0 .. t(n-1), k0 .. k(n-1)), n = 1, 3, 9
 *     u[q] = float32(0 + k0 t0[q] + k1 t1[q] + ...) for q < size (a multiple of 4): one position of
 *     Winograd's filter transform G g G^T, as src/ops/winograd_f4's winogradF4Position sums it.
 *   scale_rows(x, n, out, scale)
 *     x[i] = float32(x[i] * scale[i % out]) in place for i < n (a multiple of out, itself a multiple
 *     of 4); scale: `out` float64 values: a frozen BatchNorm folded into the filter before it, as
 *     src/model/layers' foldFrozenBatchNorm does.
 */
const fs = require('fs');
const path = require('path');
const { assembleWat, spliceBytes } = require('./wasm_embed');

const ROOT = path.join(__dirname, '..');
const WAT = path.join(__dirname, 'winograd_f4.wat');
const TARGET = path.join(ROOT, 'src', 'kernels', 'wasm', 'winograd_wasm.ts');
const BEGIN = '// BEGIN winograd_f4.wasm';
const END = '// END winograd_f4.wasm';

const get = (n) => `(local.get $${n})`;
const splat = (c) => `(v128.const f32x4 ${c} ${c} ${c} ${c})`;
const add = (a, b) => `(f32x4.add ${a} ${b})`;
const sub = (a, b) => `(f32x4.sub ${a} ${b})`;
const mul = (a, c) => `(f32x4.mul ${a} ${splat(c)})`;

/**
 * B^T d along one axis (d: 6 local names, out: 6 local names), with the usual shared terms:
 * rows 1, 2 from d4 - 4 d2 and d3 - 4 d1; rows 3, 4 from d4 - d2 and 2 (d3 - d1).
 */
function inputAxis(d, out, tmp, L) {
  const [d0, d1, d2, d3, d4, d5] = d.map(get);
  L.push(`(local.set $${tmp}a ${sub(d4, mul(d2, 4))})`);
  L.push(`(local.set $${tmp}b ${sub(d3, mul(d1, 4))})`);
  L.push(`(local.set $${tmp}c ${sub(d4, d2)})`);
  L.push(`(local.set $${tmp}d ${mul(sub(d3, d1), 2)})`);
  L.push(`(local.set $${out[0]} ${add(mul(d0, 4), sub(d4, mul(d2, 5)))})`);
  L.push(`(local.set $${out[1]} ${add(get(tmp + 'a'), get(tmp + 'b'))})`);
  L.push(`(local.set $${out[2]} ${sub(get(tmp + 'a'), get(tmp + 'b'))})`);
  L.push(`(local.set $${out[3]} ${add(get(tmp + 'c'), get(tmp + 'd'))})`);
  L.push(`(local.set $${out[4]} ${sub(get(tmp + 'c'), get(tmp + 'd'))})`);
  L.push(`(local.set $${out[5]} ${add(mul(d1, 4), sub(d5, mul(d3, 5)))})`);
}

/** A^T m along one axis (m: 6 local names, out: 4 local names). */
function outputAxis(m, out, tmp, L) {
  const [m0, m1, m2, m3, m4, m5] = m.map(get);
  L.push(`(local.set $${tmp}p ${add(m1, m2)})`);
  L.push(`(local.set $${tmp}q ${sub(m1, m2)})`);
  L.push(`(local.set $${tmp}s ${add(m3, m4)})`);
  L.push(`(local.set $${tmp}t ${sub(m3, m4)})`);
  const [p, q, s, t] = ['p', 'q', 's', 't'].map((k) => get(tmp + k));
  L.push(`(local.set $${out[0]} ${add(add(m0, p), s)})`);
  L.push(`(local.set $${out[1]} ${add(q, mul(t, 2))})`);
  L.push(`(local.set $${out[2]} ${add(p, mul(s, 4))})`);
  L.push(`(local.set $${out[3]} ${add(add(q, mul(t, 8)), m5)})`);
}

const range = (n) => Array.from({ length: n }, (_, i) => i);

function inputFunction() {
  const L = [];
  L.push('(func (export "input")');
  L.push('  (param $x i32) (param $H i32) (param $W i32) (param $C i32) (param $TH i32) (param $TW i32)');
  L.push('  (param $rowStart i32) (param $rowCount i32) (param $vptrs i32)');
  L.push('  (local $r i32) (local $rEnd i32) (local $img i32) (local $ty i32) (local $tx i32) (local $y0 i32) (local $x0 i32)');
  L.push('  (local $CS i32) (local $RS i32) (local $rowBase i32) (local $p i32) (local $off i32) (local $c i32) (local $inside i32)');
  L.push('  ' + range(6).map((i) => `(local $ro${i} i32) (local $rk${i} i32) (local $co${i} i32) (local $ck${i} i32)`).join(' '));
  L.push('  ' + range(36).map((e) => `(local $vp${e} i32)`).join(' '));
  L.push('  ' + range(36).map((e) => `(local $d${e} v128) (local $t${e} v128)`).join(' '));
  L.push('  (local $ta v128) (local $tb v128) (local $tc v128) (local $td v128)');
  L.push('  (local.set $CS (i32.shl (local.get $C) (i32.const 2)))');
  L.push('  (local.set $RS (i32.mul (local.get $W) (local.get $CS)))');
  for (let i = 0; i < 6; i++) {
    L.push(`  (local.set $ro${i} (i32.mul (local.get $RS) (i32.const ${i})))`);
    L.push(`  (local.set $co${i} (i32.mul (local.get $CS) (i32.const ${i})))`);
  }
  for (let e = 0; e < 36; e++) L.push(`  (local.set $vp${e} (i32.load offset=${e * 4} (local.get $vptrs)))`);
  L.push('  (local.set $r (local.get $rowStart))');
  L.push('  (local.set $rEnd (i32.add (local.get $rowStart) (local.get $rowCount)))');
  L.push('  (local.set $off (i32.const 0))');
  L.push('  (block $rowsDone (loop $rows');
  L.push('    (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rEnd)))');
  L.push('    (local.set $img (i32.div_u (local.get $r) (local.get $TH)))');
  L.push('    (local.set $ty (i32.sub (local.get $r) (i32.mul (local.get $img) (local.get $TH))))');
  L.push('    (local.set $y0 (i32.sub (i32.shl (local.get $ty) (i32.const 2)) (i32.const 1)))');
  // Row i of the patch is inside when 0 <= y0 + i < H (unsigned compare: -1 is out).
  for (let i = 0; i < 6; i++) L.push(`    (local.set $rk${i} (i32.lt_u (i32.add (local.get $y0) (i32.const ${i})) (local.get $H)))`);
  L.push('    (local.set $rowBase (i32.add (local.get $x) (i32.mul (i32.add (i32.mul (local.get $img) (local.get $H)) (local.get $y0)) (local.get $RS))))');
  L.push('    (local.set $tx (i32.const 0))');
  L.push('    (block $colsDone (loop $cols');
  L.push('      (br_if $colsDone (i32.ge_u (local.get $tx) (local.get $TW)))');
  L.push('      (local.set $x0 (i32.sub (i32.shl (local.get $tx) (i32.const 2)) (i32.const 1)))');
  for (let j = 0; j < 6; j++) L.push(`      (local.set $ck${j} (i32.lt_u (i32.add (local.get $x0) (i32.const ${j})) (local.get $W)))`);
  L.push(`      (local.set $inside (i32.and (i32.and ${range(6).map((i) => `(local.get $rk${i})`).reduce((a, b) => `(i32.and ${a} ${b})`)} ${range(6).map((j) => `(local.get $ck${j})`).reduce((a, b) => `(i32.and ${a} ${b})`)}) (i32.const 1)))`);
  // p may point before the map (x0 or y0 = -1): it is only dereferenced where the tap is inside.
  L.push('      (local.set $p (i32.add (local.get $rowBase) (i32.mul (local.get $x0) (local.get $CS))))');
  L.push('      (local.set $c (i32.const 0))');
  L.push('      (block $chDone (loop $ch');
  L.push('        (br_if $chDone (i32.ge_u (local.get $c) (local.get $CS)))');
  const addr = (i, j) => `(i32.add (i32.add (local.get $p) (local.get $c)) (i32.add (local.get $ro${i}) (local.get $co${j})))`;
  L.push('        (if (local.get $inside) (then');
  for (let i = 0; i < 6; i++) for (let j = 0; j < 6; j++) L.push(`          (local.set $d${i * 6 + j} (v128.load ${addr(i, j)}))`);
  L.push('        ) (else');
  for (let i = 0; i < 6; i++) {
    for (let j = 0; j < 6; j++) {
      L.push(`          (local.set $d${i * 6 + j} (if (result v128) (i32.and (local.get $rk${i}) (local.get $ck${j})) (then (v128.load ${addr(i, j)})) (else ${splat(0)})))`);
    }
  }
  L.push('        ))');
  const T = [];
  // Columns: t[., j] = B^T d[., j]; then rows: V[i, .] = t[i, .] B.
  for (let j = 0; j < 6; j++) inputAxis(range(6).map((i) => `d${i * 6 + j}`), range(6).map((i) => `t${i * 6 + j}`), 't', T);
  for (let i = 0; i < 6; i++) inputAxis(range(6).map((j) => `t${i * 6 + j}`), range(6).map((j) => `d${i * 6 + j}`), 't', T);
  for (const s of T) L.push('        ' + s);
  for (let e = 0; e < 36; e++) L.push(`        (v128.store (i32.add (i32.add (local.get $vp${e}) (local.get $off)) (local.get $c)) (local.get $d${e}))`);
  L.push('        (local.set $c (i32.add (local.get $c) (i32.const 16)))');
  L.push('        (br $ch)))');
  L.push('      (local.set $off (i32.add (local.get $off) (local.get $CS)))');
  L.push('      (local.set $tx (i32.add (local.get $tx) (i32.const 1)))');
  L.push('      (br $cols)))');
  L.push('    (local.set $r (i32.add (local.get $r) (i32.const 1)))');
  L.push('    (br $rows)))');
  L.push(')');
  return L;
}

function outputFunction(res, relu) {
  const L = [];
  L.push(`(func (export "output_${res ? 1 : 0}${relu ? 1 : 0}")`);
  L.push('  (param $mptrs i32) (param $bias i32) (param $res i32) (param $out i32) (param $H i32) (param $W i32) (param $C i32)');
  L.push('  (param $TH i32) (param $TW i32) (param $rowStart i32) (param $rowCount i32)');
  L.push('  (local $r i32) (local $rEnd i32) (local $img i32) (local $ty i32) (local $tx i32) (local $oy i32) (local $ox i32)');
  L.push('  (local $CS i32) (local $RS i32) (local $rowBase i32) (local $q i32) (local $off i32) (local $c i32) (local $inside i32)');
  L.push('  ' + range(4).map((i) => `(local $ro${i} i32) (local $rk${i} i32) (local $co${i} i32) (local $ck${i} i32)`).join(' '));
  L.push('  ' + range(36).map((e) => `(local $mp${e} i32) (local $m${e} v128)`).join(' '));
  L.push('  ' + range(24).map((e) => `(local $s${e} v128)`).join(' '));
  L.push('  ' + range(16).map((e) => `(local $y${e} v128)`).join(' '));
  L.push('  (local $tp v128) (local $tq v128) (local $ts v128) (local $tt v128) (local $b v128) (local $v v128)');
  L.push('  (local.set $CS (i32.shl (local.get $C) (i32.const 2)))');
  L.push('  (local.set $RS (i32.mul (local.get $W) (local.get $CS)))');
  for (let i = 0; i < 4; i++) {
    L.push(`  (local.set $ro${i} (i32.mul (local.get $RS) (i32.const ${i})))`);
    L.push(`  (local.set $co${i} (i32.mul (local.get $CS) (i32.const ${i})))`);
  }
  for (let e = 0; e < 36; e++) L.push(`  (local.set $mp${e} (i32.load offset=${e * 4} (local.get $mptrs)))`);
  L.push('  (local.set $r (local.get $rowStart))');
  L.push('  (local.set $rEnd (i32.add (local.get $rowStart) (local.get $rowCount)))');
  L.push('  (local.set $off (i32.const 0))');
  L.push('  (block $rowsDone (loop $rows');
  L.push('    (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rEnd)))');
  L.push('    (local.set $img (i32.div_u (local.get $r) (local.get $TH)))');
  L.push('    (local.set $ty (i32.sub (local.get $r) (i32.mul (local.get $img) (local.get $TH))))');
  L.push('    (local.set $oy (i32.shl (local.get $ty) (i32.const 2)))');
  for (let i = 0; i < 4; i++) L.push(`    (local.set $rk${i} (i32.lt_u (i32.add (local.get $oy) (i32.const ${i})) (local.get $H)))`);
  L.push('    (local.set $rowBase (i32.mul (i32.add (i32.mul (local.get $img) (local.get $H)) (local.get $oy)) (local.get $RS)))');
  L.push('    (local.set $tx (i32.const 0))');
  L.push('    (block $colsDone (loop $cols');
  L.push('      (br_if $colsDone (i32.ge_u (local.get $tx) (local.get $TW)))');
  L.push('      (local.set $ox (i32.shl (local.get $tx) (i32.const 2)))');
  for (let j = 0; j < 4; j++) L.push(`      (local.set $ck${j} (i32.lt_u (i32.add (local.get $ox) (i32.const ${j})) (local.get $W)))`);
  L.push('      (local.set $inside (i32.and (local.get $rk3) (local.get $ck3)))');
  L.push('      (local.set $q (i32.add (local.get $rowBase) (i32.mul (local.get $ox) (local.get $CS))))');
  L.push('      (local.set $c (i32.const 0))');
  L.push('      (block $chDone (loop $ch');
  L.push('        (br_if $chDone (i32.ge_u (local.get $c) (local.get $CS)))');
  for (let e = 0; e < 36; e++) L.push(`        (local.set $m${e} (v128.load (i32.add (i32.add (local.get $mp${e}) (local.get $off)) (local.get $c))))`);
  const T = [];
  // Columns: s[., j] = A^T m[., j] (4 x 6); then rows: y[i, .] = s[i, .] A (4 x 4).
  for (let j = 0; j < 6; j++) outputAxis(range(6).map((i) => `m${i * 6 + j}`), range(4).map((i) => `s${i * 6 + j}`), 't', T);
  for (let i = 0; i < 4; i++) outputAxis(range(6).map((j) => `s${i * 6 + j}`), range(4).map((j) => `y${i * 4 + j}`), 't', T);
  for (const s of T) L.push('        ' + s);
  L.push('        (local.set $b (v128.load (i32.add (local.get $bias) (local.get $c))))');
  const store = (i, j) => {
    const at = `(i32.add (i32.add (local.get $q) (local.get $c)) (i32.add (local.get $ro${i}) (local.get $co${j})))`;
    const S = [`(local.set $v ${add(get(`y${i * 4 + j}`), get('b'))})`];
    if (res) S.push(`(local.set $v ${add(get('v'), `(v128.load (i32.add (local.get $res) ${at}))`)})`);
    if (relu) S.push(`(local.set $v (f32x4.max (local.get $v) ${splat(0)}))`);
    S.push(`(v128.store (i32.add (local.get $out) ${at}) (local.get $v))`);
    return S;
  };
  L.push('        (if (local.get $inside) (then');
  for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) for (const s of store(i, j)) L.push('          ' + s);
  L.push('        ) (else');
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 4; j++) {
      L.push(`          (if (i32.and (local.get $rk${i}) (local.get $ck${j})) (then`);
      for (const s of store(i, j)) L.push('            ' + s);
      L.push('          ))');
    }
  }
  L.push('        ))');
  L.push('        (local.set $c (i32.add (local.get $c) (i32.const 16)))');
  L.push('        (br $ch)))');
  L.push('      (local.set $off (i32.add (local.get $off) (local.get $CS)))');
  L.push('      (local.set $tx (i32.add (local.get $tx) (i32.const 1)))');
  L.push('      (br $cols)))');
  L.push('    (local.set $r (i32.add (local.get $r) (i32.const 1)))');
  L.push('    (br $rows)))');
  L.push(')');
  return L;
}

const f64splat = (x) => `(f64x2.splat ${x})`;
/** 4 float32 values at `at` as two float64 pairs (low, high) into locals `lo`, `hi`. */
function loadPromoted(at, lo, hi, L) {
  L.push(`(local.set $${lo} (f64x2.promote_low_f32x4 (v128.load64_zero ${at})))`);
  L.push(`(local.set $${hi} (f64x2.promote_low_f32x4 (v128.load64_zero offset=8 ${at})))`);
}
/** Two float64 pairs rounded to 4 float32 values, stored at `at`. */
function storeDemoted(at, lo, hi) {
  const pack = `(i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (f32x4.demote_f64x2_zero ${get(lo)}) (f32x4.demote_f64x2_zero ${get(hi)}))`;
  return `(v128.store ${at} ${pack})`;
}

function filterFunction(n) {
  const L = [];
  L.push(`(func (export "filter_u${n}")`);
  L.push('  (param $u i32) (param $size i32) ' + range(n).map((i) => `(param $t${i} i32)`).join(' ') + ' ' + range(n).map((i) => `(param $k${i} f64)`).join(' '));
  L.push('  (local $q i32) (local $end i32) (local $lo v128) (local $hi v128) (local $a v128) (local $b v128) ' + range(n).map((i) => `(local $K${i} v128)`).join(' '));
  for (let i = 0; i < n; i++) L.push(`  (local.set $K${i} ${f64splat(get(`k${i}`))})`);
  L.push('  (local.set $end (i32.shl (local.get $size) (i32.const 2)))');
  L.push('  (local.set $q (i32.const 0))');
  L.push('  (block $done (loop $next');
  L.push('    (br_if $done (i32.ge_u (local.get $q) (local.get $end)))');
  // 0 + k0 t0 + k1 t1 + ...: left to right, as the reference's expression.
  L.push(`    (local.set $lo ${f64splat('(f64.const 0)')})`);
  L.push(`    (local.set $hi ${f64splat('(f64.const 0)')})`);
  for (let i = 0; i < n; i++) {
    const S = [];
    loadPromoted(`(i32.add (local.get $t${i}) (local.get $q))`, 'a', 'b', S);
    S.push(`(local.set $lo (f64x2.add (local.get $lo) (f64x2.mul (local.get $K${i}) (local.get $a))))`);
    S.push(`(local.set $hi (f64x2.add (local.get $hi) (f64x2.mul (local.get $K${i}) (local.get $b))))`);
    for (const s of S) L.push('    ' + s);
  }
  L.push('    ' + storeDemoted('(i32.add (local.get $u) (local.get $q))', 'lo', 'hi'));
  L.push('    (local.set $q (i32.add (local.get $q) (i32.const 16)))');
  L.push('    (br $next)))');
  L.push(')');
  return L;
}

function scaleRowsFunction() {
  const L = [];
  L.push('(func (export "scale_rows")');
  L.push('  (param $x i32) (param $n i32) (param $out i32) (param $scale i32)');
  L.push('  (local $p i32) (local $end i32) (local $k i32) (local $rowEnd i32) (local $a v128) (local $b v128)');
  L.push('  (local.set $p (local.get $x))');
  L.push('  (local.set $end (i32.add (local.get $x) (i32.shl (local.get $n) (i32.const 2))))');
  L.push('  (block $done (loop $rows');
  L.push('    (br_if $done (i32.ge_u (local.get $p) (local.get $end)))');
  L.push('    (local.set $k (i32.const 0))');
  L.push('    (local.set $rowEnd (i32.shl (local.get $out) (i32.const 3)))');
  L.push('    (block $rowDone (loop $cols');
  L.push('      (br_if $rowDone (i32.ge_u (local.get $k) (local.get $rowEnd)))');
  const S = [];
  loadPromoted('(local.get $p)', 'a', 'b', S);
  // x * scale: the reference's product (float32 promoted exactly, one float64 rounding, then to float32).
  S.push('(local.set $a (f64x2.mul (local.get $a) (v128.load (i32.add (local.get $scale) (local.get $k)))))');
  S.push('(local.set $b (f64x2.mul (local.get $b) (v128.load offset=16 (i32.add (local.get $scale) (local.get $k)))))');
  S.push(storeDemoted('(local.get $p)', 'a', 'b'));
  S.push('(local.set $p (i32.add (local.get $p) (i32.const 16)))');
  S.push('(local.set $k (i32.add (local.get $k) (i32.const 32)))');
  for (const s of S) L.push('      ' + s);
  L.push('      (br $cols)))');
  L.push('    (br $rows)))');
  L.push(')');
  return L;
}

function watSource() {
  const header = [
    ';; GENERATED by tools/build_winograd_wasm.js (edit that file, not this one): the transforms of',
    ';; Winograd F(4x4, 3x3) in WebAssembly SIMD, 4 channels per lane group, on tensors in the tfjs',
    ';; wasm backend\'s memory. The generator\'s header documents the functions.',
  ];
  const body = ['(module', '  (import "env" "memory" (memory 1))'];
  const fns = [
    inputFunction(), outputFunction(false, false), outputFunction(false, true), outputFunction(true, false), outputFunction(true, true),
    filterFunction(1), filterFunction(3), filterFunction(9), scaleRowsFunction(),
  ];
  for (const f of fns) for (const l of f) body.push('  ' + l);
  body.push(')');
  return [...header, ...body].join('\n') + '\n';
}

async function main() {
  const wat = watSource();
  const bytes = await assembleWat('winograd_f4.wat', wat);
  const src = fs.readFileSync(TARGET, 'utf8');
  const next = spliceBytes(src, TARGET, BEGIN, END, 'export const WINOGRAD_F4_WASM', bytes);
  if (process.argv.includes('--check')) {
    const oldWat = fs.existsSync(WAT) ? fs.readFileSync(WAT, 'utf8') : '';
    if (next !== src || oldWat !== wat) {
      console.error('tools/winograd_f4.wat or src/kernels/wasm/winograd_wasm.ts is not what tools/build_winograd_wasm.js writes');
      process.exit(1);
    }
    console.log(`src/kernels/wasm/winograd_wasm.ts holds tools/winograd_f4.wat (${bytes.length} bytes)`);
    return;
  }
  fs.writeFileSync(WAT, wat);
  fs.writeFileSync(TARGET, next);
  console.log(`wrote tools/winograd_f4.wat and ${bytes.length} bytes of WebAssembly into src/kernels/wasm/winograd_wasm.ts`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
