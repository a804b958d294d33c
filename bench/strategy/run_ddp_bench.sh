#!/usr/bin/env bash
# Data-parallel throughput, dtrain against PyTorch DDP (gloo), side by side in
# one run: the MNIST MLP and LeNet-5, one thread per worker, 1 and 2 workers
# (processes), the same global batch, medians over interleaved repetitions.
# Prints samples/s, the 2-worker scaling efficiency (2-worker rate / 1-worker
# rate, since the global batch is fixed the ideal is 2x), the dtrain/PyTorch
# ratios, and the share of dtrain's allreduce time hidden behind backward;
# then, per model, the share of the optimizer update hidden behind the last
# buckets' allreduce (AllReduceOptions::overlap_update).
# BEFORE=path/to/an/older/train_step_bench (main's, for a branch) adds,
# interleaved in the same repetitions, that binary's 2-worker rate, its
# scaling against this run's 1-worker rate (the local step is the same code)
# and its hidden share (before/after comparisons on a loaded machine); the
# load average is printed before and after. THREADS=1 adds dtrain's 2 workers as
# threads of one process (MirroredStrategy) beside the 2 processes.
# MODELS="lenet5" (default "mlp lenet5") runs only the models named.
# Usage: [BEFORE=bin] [THREADS=1] [MODELS=...] bench/strategy/run_ddp_bench.sh [STEPS] [REPS] [GLOBAL_BATCH]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-200}
reps=${2:-5}
batch=${3:-256}
bin=build/bench/train/train_step_bench
[[ -x $bin ]] || { echo "build first: scripts/build.sh release" >&2; exit 1; }
/usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "needs python3-torch: scripts/setup.sh --bench" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { grep -o "\"$1\": [0-9.]*" | awk '{print $2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-7s %10s %10s %10s %10s %8s %8s %9s %9s %7s\n' model dt_1w dt_2w torch_1w ddp_2w dt_eff ddp_eff dt/torch dt/ddp hidden
before=${BEFORE:-}
threads=${THREADS:-}
extra=()
read -ra models <<<"${MODELS:-mlp lenet5}"
for model in "${models[@]}"; do
  d1=(); d2=(); t1=(); t2=(); h=(); u=(); b2=(); bh=(); m2=()
  for ((r = 0; r < reps; ++r)); do
    if [[ -n $before ]]; then
      out=$($before "$model" "$steps" 1 2 allreduce "$batch")
      b2+=("$(echo "$out" | field samples_per_s)")
      bh+=("$(echo "$out" | field hidden_share)")
    fi
    [[ -z $threads ]] || m2+=("$($bin "$model" "$steps" 1 2 mirrored "$batch" | field samples_per_s)")
    d1+=("$($bin "$model" "$steps" 1 1 local "$batch" | field samples_per_s)")
    out=$($bin "$model" "$steps" 1 2 allreduce "$batch")
    d2+=("$(echo "$out" | field samples_per_s)")
    h+=("$(echo "$out" | field hidden_share)")
    u+=("$(echo "$out" | field update_hidden_share)")
    t1+=("$(/usr/bin/python3 bench/train/torch_train_bench.py "$model" "$steps" 1 1 "$batch" | field samples_per_s)")
    t2+=("$(/usr/bin/python3 bench/strategy/torch_ddp_bench.py "$model" "$steps" 1 2 "$batch" | field samples_per_s)")
  done
  D1=$(printf '%s\n' "${d1[@]}" | median); D2=$(printf '%s\n' "${d2[@]}" | median)
  T1=$(printf '%s\n' "${t1[@]}" | median); T2=$(printf '%s\n' "${t2[@]}" | median)
  H=$(printf '%s\n' "${h[@]}" | median)
  printf '%-7s %10.0f %10.0f %10.0f %10.0f %7.0f%% %7.0f%% %9s %9s %6.0f%%\n' "$model" "$D1" "$D2" "$T1" "$T2" \
    "$(awk -v a="$D2" -v b="$D1" 'BEGIN {print 50*a/b}')" "$(awk -v a="$T2" -v b="$T1" 'BEGIN {print 50*a/b}')" \
    "$(ratio "$D1" "$T1")" "$(ratio "$D2" "$T2")" "$(awk -v h="$H" 'BEGIN {print 100*h}')"
  U=$(printf '%s\n' "${u[@]}" | median)
  extra+=("$(printf '%-7s update hidden behind the last buckets: %.0f%%' "$model" \
    "$(awk -v h="$U" 'BEGIN {print 100*h}')")")
  if [[ -n $before ]]; then
    B2=$(printf '%s\n' "${b2[@]}" | median); BH=$(printf '%s\n' "${bh[@]}" | median)
    extra+=("$(printf '%-7s before: dt_2w %.0f, scaling %.0f%% (after: %.0f%%), after/before %s, hidden %.0f%%' \
      "$model" "$B2" "$(awk -v a="$B2" -v b="$D1" 'BEGIN {print 50*a/b}')" \
      "$(awk -v a="$D2" -v b="$D1" 'BEGIN {print 50*a/b}')" "$(ratio "$D2" "$B2")" \
      "$(awk -v h="$BH" 'BEGIN {print 100*h}')")")
  fi
  if [[ -n $threads ]]; then
    M2=$(printf '%s\n' "${m2[@]}" | median)
    extra+=("$(printf '%-7s 2 threads (mirrored): %.0f samples/s, threads/processes %s' \
      "$model" "$M2" "$(ratio "$M2" "$D2")")")
  fi
done
for line in "${extra[@]}"; do echo "$line"; done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "dt_eff/ddp_eff: 2-worker rate / (2 x 1-worker rate); dt/torch: 1 worker; dt/ddp: 2 workers; hidden: share of allreduce time behind backward"
