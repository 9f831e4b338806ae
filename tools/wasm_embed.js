/**
 * Shared by the tools that embed a hand-written WebAssembly kernel in a source file: assembles a
 * .wat with wabt (not a project dependency: `npm install --no-save wabt@1.0.39`) and splices its
 * bytes into the file between a BEGIN and an END line.
 */

const fs = require('fs');
const path = require('path');

/** The module's bytes, or exit 2 with the install hint where wabt is missing. */
async function assembleWat(name, wat) {
  let wabtFactory;
  try {
    wabtFactory = require('wabt');
  } catch {
    console.error('needs the wabt package: npm install --no-save wabt@1.0.39');
    process.exit(2);
  }
  const wabt = await wabtFactory();
  const mod = wabt.parseWat(name, wat, { simd: true });
  mod.validate();
  const bytes = Array.from(mod.toBinary({}).buffer);
  mod.destroy();
  return bytes;
}

/** `src` with the lines from `begin` to `end` replaced by `declaration` = new Uint8Array([bytes]). */
function spliceBytes(src, file, begin, end, declaration, bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length; i += 24) lines.push('  ' + bytes.slice(i, i + 24).join(', ') + ',');
  const block = `${begin}\n${declaration} = new Uint8Array([\n${lines.join('\n')}\n]);\n${end}`;
  const a = src.indexOf(begin), b = src.indexOf(end);
  if (a < 0 || b < a) throw new Error(`${file}: no ${begin} ... ${end} block`);
  return src.slice(0, a) + block + src.slice(b + end.length);
}

/**
 * The command line of a tool that embeds one .wat: assembles `wat` (a path) and writes its bytes
 * into `target` between `// BEGIN <name>.wasm` and `// END <name>.wasm` as `declaration`; with
 * --check, exits 1 when `target` holds other bytes instead.
 */
function embedMain(name, wat, target, declaration) {
  const root = path.join(__dirname, '..');
  const shown = path.relative(root, target);
  const run = async () => {
    const bytes = await assembleWat(`${name}.wat`, fs.readFileSync(wat, 'utf8'));
    const src = fs.readFileSync(target, 'utf8');
    const next = spliceBytes(src, target, `// BEGIN ${name}.wasm`, `// END ${name}.wasm`, declaration, bytes);
    if (process.argv.includes('--check')) {
      if (next !== src) {
        console.error(`${shown} does not hold the assembled ${path.relative(root, wat)}`);
        process.exit(1);
      }
      console.log(`${shown} holds ${path.relative(root, wat)} (${bytes.length} bytes)`);
      return;
    }
    fs.writeFileSync(target, next);
    console.log(`wrote ${bytes.length} bytes of WebAssembly into ${shown}`);
  };
  run().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

module.exports = { assembleWat, spliceBytes, embedMain };
