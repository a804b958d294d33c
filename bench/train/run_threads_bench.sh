#!/usr/bin/env bash
# Two cores, two ways, in one run: one process with train.threads = 2 against
# two worker processes (allreduce) with one thread each, the MNIST MLP and
# LeNet-5, the same global batch, back to back and alternating within every
# repetition (so that a change of load hits both arms alike).
#   1p x 1t: one process, one thread (the reference both arms divide by);
#   1p x 2t: one process, train.threads = 2: OpenBLAS's thread count and the
#            tensor layer's intra-op threads (run_job.cpp,
#            set_compute_threads), so this arm runs the bench with
#            OPENBLAS_NUM_THREADS=2 INTRA_OP_THREADS=2;
#   blas 2t: one process, OPENBLAS_NUM_THREADS=2 alone (train.threads before
#            the intra-op threads: only the GEMMs on two threads);
#   2p x 1t: --workers 2 --strategy allreduce, one thread each.
# Prints medians of samples/s over REPS repetitions, the ratios
# (1p x 2t)/(2p x 1t) and (blas 2t)/(2p x 1t), each arm's speed-up over
# 1p x 1t, and the load average
# before and after (the figures are only comparable within one run).
# Usage: [BIN=train_step_bench] [DATA=data/mnist] bench/train/run_threads_bench.sh [STEPS] [REPS] [GLOBAL_BATCH]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-200}
reps=${2:-5}
batch=${3:-256}
bin=${BIN:-build/bench/train/train_step_bench}
[[ -x $bin ]] || { echo "build first: cmake --build build --target train_step_bench" >&2; exit 1; }
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { grep -o "\"$1\": [0-9.]*" | awk '{print $2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
rate() { # BLAS_THREADS INTRA_OP_THREADS WORKERS MODE MODEL -> samples/s
  OPENBLAS_NUM_THREADS=$1 INTRA_OP_THREADS=$2 "$bin" "$5" "$steps" 1 "$3" "$4" "$batch" |
    field samples_per_s | head -1
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); steps $steps, reps $reps, global batch $batch"
printf '%-7s %10s %10s %10s %10s %8s %8s %8s %8s\n' model 1p_x_1t 1p_x_2t blas_2t 2p_x_1t \
  2t/2p blas/2p 2t/1t 2p/1t
for model in mlp lenet5; do
  s1=(); t2=(); b2=(); p2=()
  for ((r = 0; r < reps; ++r)); do
    # Alternate the order of the two arms under test from one repetition to the next.
    if ((r % 2 == 0)); then
      t2+=("$(rate 2 2 1 local "$model")")
      p2+=("$(rate 1 1 2 allreduce "$model")")
    else
      p2+=("$(rate 1 1 2 allreduce "$model")")
      t2+=("$(rate 2 2 1 local "$model")")
    fi
    b2+=("$(rate 2 1 1 local "$model")")
    s1+=("$(rate 1 1 1 local "$model")")
  done
  S1=$(printf '%s\n' "${s1[@]}" | median)
  T2=$(printf '%s\n' "${t2[@]}" | median)
  B2=$(printf '%s\n' "${b2[@]}" | median)
  P2=$(printf '%s\n' "${p2[@]}" | median)
  printf '%-7s %10.0f %10.0f %10.0f %10.0f %8s %8s %8s %8s\n' "$model" "$S1" "$T2" "$B2" "$P2" \
    "$(ratio "$T2" "$P2")" "$(ratio "$B2" "$P2")" "$(ratio "$T2" "$S1")" "$(ratio "$P2" "$S1")"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "samples/s, medians; 2t/2p: one process with 2 threads (BLAS + intra-op) / 2 processes with 1 thread;"
echo "blas/2p: one process with 2 BLAS threads only / 2 processes (same global batch)"
