#!/usr/bin/env bash
# Training throughput, dtrain against PyTorch 1.13, side by side in one run:
# the MNIST MLP and LeNet-5, batch 128, one thread each (OpenBLAS and torch),
# medians over repetitions, and the dtrain/PyTorch ratio.
# Usage: bench/train/run_train_bench.sh [STEPS] [REPS]
# Both sides train on the same 8 batches of real MNIST images (data/mnist,
# or DATA=dir).
# Needs: scripts/build.sh release; scripts/setup.sh --bench (python3-torch).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-200}
reps=${2:-5}
bin=build/bench/train/train_step_bench
[[ -x $bin ]] || { echo "build first: scripts/build.sh release" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
rate() { grep -o '"samples_per_s": [0-9.]*' | awk '{print $2}'; }

printf '%-8s %16s %16s %8s\n' model dtrain_samples/s torch_samples/s ratio
for model in mlp lenet5; do
  # Interleave the two so that machine noise hits both alike.
  d=(); t=()
  for ((r = 0; r < reps; ++r)); do
    d+=("$($bin "$model" "$steps" 1 | rate)")
    if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
      t+=("$(/usr/bin/python3 bench/train/torch_train_bench.py "$model" "$steps" 1 1 | rate)")
    fi
  done
  dm=$(printf '%s\n' "${d[@]}" | median)
  if [[ ${#t[@]} -gt 0 ]]; then
    tm=$(printf '%s\n' "${t[@]}" | median)
    printf '%-8s %16.0f %16.0f %8.2f\n' "$model" "$dm" "$tm" "$(awk -v a="$dm" -v b="$tm" 'BEGIN {print a/b}')"
  else
    printf '%-8s %16.0f %16s %8s\n' "$model" "$dm" "(no torch)" "-"
  fi
done
