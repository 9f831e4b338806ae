// Worker threads run the compiled build (dist/), so the suite builds it first when src/ is newer
// (a fresh clone is built by `npm ci`; this covers edits made since).
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');

function newest(dir) {
  let t = 0;
  if (!fs.existsSync(dir)) return 0;
  for (const f of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, f.name);
    t = Math.max(t, f.isDirectory() ? newest(p) : fs.statSync(p).mtimeMs);
  }
  return t;
}

module.exports = async () => {
  const root = path.join(__dirname, '..');
  const built = newest(path.join(root, 'dist', 'src'));
  if (built >= newest(path.join(root, 'src'))) return;
  process.stderr.write('\njest global setup: src/ is newer than dist/, running `npm run build`\n');
  execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.build.json')], {
    cwd: root,
    stdio: 'inherit',
  });
};
