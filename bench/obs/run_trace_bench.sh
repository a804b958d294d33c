#!/usr/bin/env bash
# What tracing (train.trace, docs/observability.md#timeline) costs, and what a
# traced run shows. On real MNIST (scripts/fetch_mnist.sh), the MLP of
# examples/mnist_mlp.toml, 2 allreduce workers, one BLAS thread each:
#  1. the same job with tracing off and on (every step recorded: the worst
#     case), alternating, REPS times each; the medians of the run's
#     samples/s (dtrain's closing line: training steps only, not start-up)
#     and the overhead ratio off/on - 1 (of the medians, and the median of
#     the back-to-back pairs' ratios);
#  2. a traced 2-worker allreduce run and a traced ps run (1 server, 2
#     workers, sync), each merged by `dtrain trace merge --stats`.
# Usage: bench/obs/run_trace_bench.sh [STEPS] [REPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-300}
reps=${2:-7}
bin=build/src/cli/dtrain
[[ -x $bin ]] || { echo "build first: scripts/build.sh release" >&2; exit 1; }
[[ -f data/mnist/train-images-idx3-ubyte ]] || scripts/fetch_mnist.sh >/dev/null
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
rate() { grep -o '[0-9.]* samples/s' | tail -1 | awk '{print $1}'; }
run() {  # run NAME [ARGS...]: one 2-worker allreduce run; prints its samples/s
  local name=$1; shift
  "$bin" train examples/mnist_mlp.toml --output "$work/$name" --no-resume --workers 2 \
    --progress plain --set train.max_steps="$steps" --set train.epochs=100 \
    --set train.log_every_steps=1000000 "$@" 2>&1 | rate
}

off=(); on=()
for ((r = 0; r < reps; ++r)); do
  off+=("$(run off)")
  on+=("$(run on --trace "$work/on/trace.json" --trace-steps "1:$steps")")
done
OFF=$(printf '%s\n' "${off[@]}" | median); ON=$(printf '%s\n' "${on[@]}" | median)
echo "tracing off: samples/s ${off[*]} (median $OFF)"
echo "tracing on:  samples/s ${on[*]} (median $ON)"
echo "events per rank file: $(grep -c '"ph":"X"' "$work/on/trace-rank0.json") complete events, $(du -k "$work/on/trace-rank0.json" | cut -f1) KiB for $steps steps"
awk -v a="$OFF" -v b="$ON" 'BEGIN {printf "overhead: %.1f%% of step time (off/on - 1)\n", 100 * (a / b - 1)}'
# Each repetition's off and on ran back to back: the median of their ratios
# is less exposed to the load drifting over the whole benchmark.
PAIR=$(for ((r = 0; r < reps; ++r)); do awk -v a="${off[r]}" -v b="${on[r]}" 'BEGIN {print a / b - 1}'; done | median)
awk -v p="$PAIR" 'BEGIN {printf "overhead, median of the pairs: %.1f%%\n", 100 * p}'

echo
echo "== traced 2-worker allreduce, steps 50:100 =="
"$bin" train examples/mnist_mlp.toml --output "$work/ar" --no-resume --workers 2 --progress none \
  --set train.max_steps=100 --trace auto --trace-steps 50:100 >/dev/null 2>&1
"$bin" trace merge -o "$work/ar/merged.json" --stats "$work/ar/trace/rank-0.json" \
  "$work/ar/trace/rank-1.json"
echo
echo "== traced ps (1 server, 2 workers, sync), steps 50:100 =="
"$bin" train examples/mnist_mlp_ps.toml --output "$work/ps" --no-resume --workers 2 --servers 1 \
  --progress none --set distributed.ps.consistency='"sync"' --set optimizer.lr=0.1 \
  --set train.max_steps=100 --trace auto --trace-steps 50:100 >/dev/null 2>&1
"$bin" trace merge -o "$work/ps/merged.json" --stats "$work/ps/trace/rank-0.json" \
  "$work/ps/trace/rank-1.json"

# The hidden share seen two ways: from the trace (bucket reduce time that
# overlaps backward, over steps 20:60 of a 2-worker LeNet-5 run on MNIST, batch
# 128 per worker) and from the DDP benchmark's own counters (train_step_bench,
# the same model and global batch 256, what run_ddp_bench.sh prints as
# "hidden"). The two measure the same overlap by different clocks.
echo
echo "== hidden share, LeNet-5, 2 workers: trace against train_step_bench =="
"$bin" train examples/mnist_lenet5.toml --output "$work/lenet" --no-resume --workers 2 \
  --progress none --set train.max_steps=60 --set train.batch_size=256 --trace auto \
  --trace-steps 20:60 >/dev/null 2>&1
"$bin" trace stats "$work/lenet/trace/rank-0.json" "$work/lenet/trace/rank-1.json"
step_bench=build/bench/train/train_step_bench
if [[ -x $step_bench ]]; then
  echo "train_step_bench lenet5 2 workers: hidden_share $("$step_bench" lenet5 40 1 2 allreduce 256 |
    grep -o '"hidden_share": [0-9.]*' | awk '{print $2}')"
fi
