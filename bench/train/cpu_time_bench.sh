#!/usr/bin/env bash
# Before/after on a loaded machine: the CPU time (user + system seconds) that
# two train_step_bench binaries spend on the same STEPS compute-only steps
# (8 fixed batches of 128 real MNIST images, one thread), interleaved REPS
# times, medians printed. CPU time counts only the time the process ran, so
# it holds better under load than a wall-clock rate (other processes still
# evict its caches, so it rises somewhat with the load: compare within a run).
#
# Usage: bench/train/cpu_time_bench.sh BEFORE AFTER [MODEL] [STEPS] [REPS]
#   BEFORE, AFTER: train_step_bench binaries (e.g. main's and this build's
#   build/bench/train/train_step_bench); MODEL mlp or lenet5 (default lenet5);
#   STEPS default 200; REPS default 5.
# Needs: MNIST under data/mnist or DATA=dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# -ge 2 ]] || { sed -n '2,/^set/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
before=$1 after=$2 model=${3:-lenet5} steps=${4:-200} reps=${5:-5}
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# cpu_seconds BINARY -> user + system seconds of one run
cpu_seconds() {
  local TIMEFORMAT='%U %S'
  { time "$1" "$model" "$steps" 1 >/dev/null; } 2>&1 | awk '{printf "%.3f\n", $1 + $2}'
}
echo "load before: $(uptime | sed 's/.*load/load/')"
b=(); a=()
for ((r = 0; r < reps; ++r)); do
  b+=("$(cpu_seconds "$before")")
  a+=("$(cpu_seconds "$after")")
done
bm=$(printf '%s\n' "${b[@]}" | median)
am=$(printf '%s\n' "${a[@]}" | median)
echo "$model $steps steps, CPU seconds: before ${b[*]} | after ${a[*]}"
awk -v b="$bm" -v a="$am" 'BEGIN {printf "median before %.3f s, after %.3f s, after/before %.3f\n", b, a, a / b}'
echo "load after: $(uptime | sed 's/.*load/load/')"
