#!/usr/bin/env bash
# Builds what a run on the GPU machine needs into .gpu/ (git-ignored): first the Node binary,
# Dawn and the Vulkan loader (shared/gpu/prepare.sh), then the bundled GPU scripts in .gpu/app/,
# Dawn's addon as one archive, upstream's package and photo for side-by-side runs, and
# .gpu/app/run.sh, which a run sources first. Usage: npm run gpu:bundle [-- <upstream checkout>]
# Carry: .gpu/gl .gpu/node.xz .gpu/setup.sh .gpu/dawn.tar.xz .gpu/app .gpu/upstream_img2pose .gpu/teaser.jpeg .gpu/py
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${SHARED:-../shared}"
[ -s .gpu/node.xz ] || bash "$shared/gpu/prepare.sh"
mkdir -p .gpu/app .gpu/py
[ -s .gpu/dawn.tar.xz ] || tar -C .gpu -cJf .gpu/dawn.tar.xz node_modules/webgpu
banner="import{createRequire as __createRequire}from'module';const require=__createRequire(import.meta.url);const __dirname=process.cwd()+'/__tests__/utils';"
# One build with shared chunks: the scripts share tfjs and the library, and the whole tree that a
# run carries must stay under the device's 64 MiB. Whitespace and syntax are minified, names are
# not, so CPU profiles taken on the device (profile.mjs --cpu-profile) name their functions.
rm -rf .gpu/app && mkdir -p .gpu/app
npx esbuild kernels=bench/gpu_kernels.ts check=bench/gpu_check.ts bench=bench/gpu.ts stream=bench/gpu_stream.ts profile=bench/gpu_profile.ts \
  worker=src/runtime/worker.ts --bundle --splitting --platform=node --format=esm --outdir=.gpu/app --out-extension:.js=.mjs \
  --external:webgpu --banner:js="$banner" $([ "${MINIFY:-1}" = 1 ] && echo --minify-whitespace --minify-syntax) --log-level=warning
cp "$shared/bench/upstream_gpu.py" bench/upstream_gpu_stream.py .gpu/py/
cp bench/gpu_compare.sh .gpu/app/
upstream="${1:-/work/.mirror/TalHassner+img2pose/repo}"
if [ -d "$upstream" ] && [ ! -d .gpu/upstream_img2pose ]; then
  tmp=$(mktemp -d)
  git -C "$upstream" archive HEAD src/img2pose teaser.jpeg 2>/dev/null | tar -x -C "$tmp"
  mv "$tmp/src/img2pose" .gpu/upstream_img2pose && mv "$tmp/teaser.jpeg" .gpu/teaser.jpeg
  rm -rf "$tmp"
fi
cat > .gpu/app/run.sh <<'RUN'
# Sourced first by every run on the GPU machine, from the repo root.
[ -d .gpu/node_modules/webgpu ] || tar -C .gpu -xJf .gpu/dawn.tar.xz
source .gpu/setup.sh >/dev/null
export IMG2POSE_WORKER_SCRIPT="$PWD/.gpu/app/worker.mjs"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u +%FT%TZ; node --version
RUN
du -sh .gpu/app .gpu/dawn.tar.xz
