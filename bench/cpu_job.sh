#!/usr/bin/env bash
# The 4-photo CPU job, ours and upstream PyTorch as whole processes, alternating: each round runs
# `img2pose detect` on N copies of the photo, then upstream's CPU detect on the same files, each
# under /usr/bin/time -v; prints every run's wall, CPU (user + system) and peak RSS, then the
# medians. Needs `npm run build`, Debian's python3-torch/torchvision (for upstream) and upstream's
# source (UPSTREAM=/path/to/img2pose/src, e.g. from `git archive` of TalHassner/img2pose). With
# BEFORE=/path/to/another/checkout (built), each round also runs that checkout's `img2pose detect`
# ("before"), to compare two versions of ours in the same rounds.
#   bash bench/cpu_job.sh [rounds=3] [copies=4] [extra detect options...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"; copies="${2:-4}"; shift $(( $# < 2 ? $# : 2 ))
photo="${PHOTO:-assets/teaser.jpg}"
ckpt="${CKPT:-tmp/formula_ckpt}"
upstream="${UPSTREAM:-/tmp/upstream/src}"
out="$(mktemp -d)"
files=(); for _ in $(seq "$copies"); do files+=("$photo"); done
measure() { # name, command...: one line "name wall_s cpu_s peak_MB"
  local name="$1"; shift
  /usr/bin/time -v "$@" > "$out/$name.json" 2> "$out/time.txt" || { cat "$out/time.txt" >&2; exit 1; }
  awk -v n="$name" -F': ' '/Elapsed \(wall clock\)/{split($2,t,":"); w=(length(t)==3)?t[1]*3600+t[2]*60+t[3]:t[1]*60+t[2]}
    /User time/{u=$2} /System time/{s=$2} /Maximum resident/{m=$2/1024}
    END{printf "%s %.2f %.2f %.0f\n", n, w, u+s, m}' "$out/time.txt"
}
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $copies x $photo; rounds $rounds"
echo "# run wall_s cpu_s peak_MB"
for r in $(seq "$rounds"); do
  measure ours node bin/img2pose.js detect --weights "$ckpt/formula.pth" --backend wasm "$@" "${files[@]}" | tee -a "$out/runs"
  if [ -n "${BEFORE:-}" ]; then
    measure before node "$BEFORE/bin/img2pose.js" detect --weights "$ckpt/formula.pth" --backend wasm "$@" "${files[@]}" | tee -a "$out/runs"
    cmp -s "$out/ours.json" "$out/before.json" || echo "# round $r: the JSON of ours and before differ" >&2
  fi
  measure upstream /usr/bin/python3 bench/upstream_cpu.py detect --upstream "$upstream" --checkpoint "$ckpt/formula.pth" \
    --pose-mean "$ckpt/pose_mean.npy" --pose-stddev "$ckpt/pose_stddev.npy" --json /dev/stdout "${files[@]}" | tee -a "$out/runs"
done
echo "# medians: run wall_s cpu_s peak_MB"
for name in ours ${BEFORE:+before} upstream; do
  grep "^$name " "$out/runs" | awk -v n="$name" '{w[NR]=$2; c[NR]=$3; m[NR]=$4}
    function med(a, k,  i,j,t){for(i=1;i<=k;i++)for(j=i+1;j<=k;j++)if(a[j]<a[i]){t=a[i];a[i]=a[j];a[j]=t} return (k%2)?a[(k+1)/2]:(a[k/2]+a[k/2+1])/2}
    END{printf "%s %.2f %.2f %.0f\n", n, med(w,NR), med(c,NR), med(m,NR)}'
done
rm -rf "$out"
