/**
 * Shared by the tools that embed a hand-written WebAssembly kernel in a source file: assembles a
 * .wat with wabt (not a project dependency: `npm install --no-save wabt@1.0.39`) and splices its
 * bytes into the file between a BEGIN and an END line.
 */

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

module.exports = { assembleWat, spliceBytes };
