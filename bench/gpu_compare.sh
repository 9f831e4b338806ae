#!/usr/bin/env bash
# The side-by-side run of docs/benchmarks.md's GPU tables in one go on the GPU machine, from the
# repo root after `npm run gpu:bundle` (which copies this script to .gpu/app/): the golden and
# kernel checks, then ours (the photo single and in batches, in upstream's measured case
# `--few-dets` and with the formula weights' detections) and upstream alternately, then the
# random-size stream, ours and upstream's on the same sizes. Steps are skipped once BUDGET seconds
# have passed, so a run under a time limit still reports the checks and the first round.
#   bash .gpu/app/gpu_compare.sh [rounds=2] [stream images=300]
set -uo pipefail
rounds="${1:-2}"; images="${2:-300}"; budget="${BUDGET:-540}"
source .gpu/app/run.sh > /tmp/setup.log 2>&1; tail -3 /tmp/setup.log
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
within() { [ "$(elapsed)" -lt "$1" ]; }
step() { echo "== $1 [$(elapsed)s]"; }
step check; timeout 120 node .gpu/app/check.mjs 2>&1 | tail -2
step kernels; timeout 120 node .gpu/app/kernels.mjs --quick 2>&1 | tail -2
for r in $(seq "$rounds"); do
  within $(( budget / 2 )) || break
  step "ours, upstream's case (--few-dets), round $r"
  timeout 90 node .gpu/app/bench.mjs --batches 1,8,16 --few-dets 2>&1 | grep "^detections\|photo x\|mixed 8"
  step "ours, formula weights, round $r"
  timeout 90 node .gpu/app/bench.mjs --batches 1,8,16 2>&1 | grep "^detections\|photo x\|mixed 8"
  step "upstream, round $r"
  timeout 90 python3 .gpu/py/upstream_gpu.py 2>&1 | grep "dets/img"
done
within $(( budget - 120 )) && { step "stream of $images"; timeout 150 node .gpu/app/stream.mjs --images "$images" --every 100 2>&1 | grep -v "^backend\|^dispatches" | tail -8; }
within $(( budget - 60 )) && { step "upstream's stream of $images"; timeout 120 python3 .gpu/py/upstream_gpu_stream.py --images "$images" 2>&1 | tail -5; }
step done
