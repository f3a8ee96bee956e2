#!/usr/bin/env bash
# The speed tables of docs/performance.md (against model.fit and the matmul
# rate, conv_bn's ceiling, time to accuracy) and the README's configs table,
# remade one after the other in one run on one machine, so that they compare
# (the profile, exit-lag and start-up tables have commands of their own):
#
#   bash benchmarks/remeasure.sh ../shared/mnist /tmp/remeasure [PART ...]
#
# PART is any of the names below (all of them by default), in that order.
# Each part's table goes to OUT/PART.md as it prints, its raw numbers to
# OUT/PART/; the machine and the load before each part to OUT/machine.txt.
# On a 2-core AMD EPYC with AVX2 only (2026-12-07, quiet, oneDNN's kernels),
# throughput took 19 min, ab 2, tta_fast 4, ladder 10 and tta_995 14.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(realpath "${1:-../shared/mnist}")
out=${2:-/tmp/remeasure}
shift $(( $# < 2 ? $# : 2 ))
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(throughput ab tta_fast ladder tta_995)
python=${PYTHON:-python}
mkdir -p "$out"

part() {  # part NAME MODULE [FLAGS...]: one benchmark, its table kept.
  local name=$1 module=$2
  shift 2
  echo "$(date -u +%FT%TZ) $name: load average $(cut -d' ' -f1-3 /proc/loadavg)" \
    | tee -a "$out/machine.txt"
  "$python" -m "$module" --data_dir="$data" "$@" | tee "$out/$name.md"
}

grep -m1 'model name' /proc/cpuinfo >> "$out/machine.txt" || true
for name in "${parts[@]}"; do
  case $name in
    throughput)  # Against model.fit and the matmul rates; oneDNN, 3 rounds.
      part throughput benchmarks.throughput --configs=fast,dense,conv_bn \
        --repeat=3 --variant=eigen_kernels=TF_ENABLE_ONEDNN_OPTS=0 \
        --out="$out/throughput" ;;
    ab)  # conv_bn's ceiling: the same convolutions without batch norm.
      part ab benchmarks.ab --a=configs/conv_bn.py --b=configs/conv.py \
        --b.train.global_batch_size=64 --rounds=3 --steps=300 ;;
    tta_fast)  # 99% the MLPerf way, beside the GPU record recipe.
      part tta_fast benchmarks.time_to_accuracy --config=fast --target=0.99 \
        --peer --out="$out/tta_fast" ;;
    ladder)  # The README's configs table.
      part ladder benchmarks.ladder --workdir="$out/ladder" ;;
    tta_995)  # 99.5% the MLPerf way.
      part tta_995 benchmarks.time_to_accuracy --config=fast_995 \
        --target=0.995 --out="$out/tta_995" ;;
    *) echo "remeasure.sh: no part $name" >&2; exit 2 ;;
  esac
done
