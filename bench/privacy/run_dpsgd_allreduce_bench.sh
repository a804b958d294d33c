#!/usr/bin/env bash
# DP-SGD on MNIST over allreduce against one process (docs/privacy.md,
# "Over allreduce: measured"): examples/mnist_mlp_dpsgd.toml (MLP
# 784-256-256-10, Poisson batches of 512 expected, C 0.1, SGD momentum 0.9,
# lr 1.0, sigma solved for epsilon 7.05 at delta 1e-5), through the dtrain
# executable:
#   (a) accuracy: one full run each of `--workers 1` (strategy local) and
#       `--workers 2 --strategy allreduce`, EPOCHS epochs (default 18);
#   (b) throughput: REPEATS (default 3) alternating pairs of the same two
#       runs cut to STEPS updates (default 60; sigma is then solved for those
#       steps, which does not change the work), the medians of the "done:"
#       line's training samples/s and their ratio (allreduce / local).
# Usage: bench/privacy/run_dpsgd_allreduce_bench.sh [EPOCHS] [REPEATS] [STEPS]
# Needs: scripts/build.sh release; data/mnist (scripts/fetch_mnist.sh).
# One BLAS thread per process; the two workers take both cores of a 2-core
# machine, so run it on an otherwise idle one or report the load.
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=${1:-18}
repeats=${2:-3}
steps=${3:-60}
bin=build/src/cli/dtrain
job=examples/mnist_mlp_dpsgd.toml
[[ -x $bin ]] || { echo "build first: scripts/build.sh release" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# run NAME WORKERS [--set ...]: trains, keeps the log in $out/NAME.log.
run() {
  local name=$1 workers=$2
  shift 2
  local strategy=()
  [[ $workers -gt 1 ]] && strategy=(--strategy allreduce)
  "$bin" train "$job" --output "$out/$name" --workers "$workers" "${strategy[@]}" \
    --progress plain --set "train.epochs=$epochs" "$@" >"$out/$name.log" 2>&1
}
# The "done:" line's samples/s of a log.
rate() { grep -E '^(\[rank 0\] )?done: ' "$1" | grep -oE '[0-9.]+ samples/s' | cut -d' ' -f1; }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== (a) accuracy, $epochs epochs"
for w in 1 2; do
  run "full$w" "$w"
  echo "-- workers $w"
  grep -E "DP-SGD:|epoch .* done|privacy budget|done:" "$out/full$w.log"
done
echo "== (b) throughput, $steps steps, $repeats repeats (load $(cut -d' ' -f1-3 /proc/loadavg))"
for ((i = 0; i < repeats; ++i)); do
  for w in 1 2; do
    run "t$w-$i" "$w" --set "train.max_steps=$steps"
    rate "$out/t$w-$i.log" >>"$out/rates$w"
  done
done
local_rate=$(median <"$out/rates1")
allreduce_rate=$(median <"$out/rates2")
echo "local samples/s:       $(tr '\n' ' ' <"$out/rates1")-> median $local_rate"
echo "allreduce-2 samples/s: $(tr '\n' ' ' <"$out/rates2")-> median $allreduce_rate"
awk -v a="$allreduce_rate" -v l="$local_rate" 'BEGIN {printf "allreduce-2 / local: %.2fx\n", a / l}'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
