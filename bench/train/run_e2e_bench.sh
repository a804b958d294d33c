#!/usr/bin/env bash
# End-to-end training throughput, one thread, one epoch of real MNIST:
# `dtrain train examples/mnist_{mlp,lenet5}.toml` against a plain PyTorch 1.13
# loop on the same data (bench/train/torch_e2e_bench.py: batch 128, randperm
# order, SGD with the job's momentum, Nesterov and weight decay), and both
# against the GEMM-only bound measured in the same run (gemm_bound_bench:
# the step's matrix products through OpenBLAS, one thread).
#
# What is timed: the epoch's training loop, batch gathering included,
# evaluation excluded from both. dtrain's figure is 60000 / the epoch's wall
# seconds from its metrics.jsonl (the epoch event's "seconds"; data.test_limit
# = 1 makes its end-of-epoch evaluation one sample; the end-of-epoch
# checkpoint, 0.25 MiB, is inside); its own step-time-only figure is shown
# beside it. Runs are interleaved (dtrain, PyTorch, bound, repeated REPS
# times) so that machine noise hits all alike; medians are printed.
#
# Columns: *_sps samples/s; ratio = dtrain / PyTorch; *_bound = share of the
# GEMM-only bound. Two bounds: "blas" is the step's products at the speed
# OpenBLAS reaches on these very shapes; "flop" is the step's flops at the
# speed OpenBLAS reaches on the MLP's shapes (what the machine's GEMM does on
# friendly shapes; for LeNet-5 the skinny convolution products run far
# slower, so its blas bound is below what a direct convolution can reach).
#
# Usage: bench/train/run_e2e_bench.sh [REPS] [MODELS...]
#   DTRAIN_BEFORE=path/to/another/dtrain adds that binary's wall figure
#   (interleaved too), for before/after comparisons in one run.
# Needs: scripts/build.sh release (dtrain, gemm_bound_bench); python3-torch;
# MNIST under data/mnist (scripts/fetch_mnist.sh) or DATA=dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
reps=${1:-3}
shift || true
models=("$@")
[[ ${#models[@]} -gt 0 ]] || models=(mlp lenet5)
data=${DATA:-data/mnist}
dtrain=build/src/cli/dtrain
bound=build/bench/train/gemm_bound_bench
before=${DTRAIN_BEFORE:-}
for b in $dtrain $bound $before; do
  [[ -x $b ]] || { echo "missing $b: build first (scripts/build.sh release)" >&2; exit 1; }
done
[[ -f $data/train-images-idx3-ubyte ]] || { echo "no MNIST in $data" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { grep -o "\"$1\": *[0-9.e+-]*" | head -1 | sed 's/.*: *//'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# dtrain_epoch BINARY MODEL -> "wall_sps step_sps"
dtrain_epoch() {
  local out=$work/run
  rm -rf "$out"
  "$1" train "examples/mnist_$2.toml" --set train.epochs=1 --set data.test_limit=1 \
    --set data.path="$data" --threads 1 --output "$out" --no-resume --progress none \
    >/dev/null
  local epoch
  epoch=$(grep '"event":"epoch"' "$out/metrics.jsonl" | tail -1 | sed 's/,/, /g; s/":/": /g')
  awk -v s="$(field seconds <<<"$epoch")" -v r="$(field samples_per_s <<<"$epoch")" \
    'BEGIN {printf "%.1f %.1f\n", 60000 / s, r}'
}

echo "load before: $(uptime | sed 's/.*load/load/')"
printf '%-7s %9s %9s %9s %6s %9s %9s %10s %10s %10s %10s' model dtrain step_only torch ratio \
  blas_bnd flop_bnd dtr/blas dtr/flop trch/blas trch/flop
[[ -z $before ]] || printf ' %9s %6s' before gain
printf '\n'
mlp_gflops=()
for model in "${models[@]}"; do
  d=(); s=(); t=(); b=(); g=(); m=(); p=()
  for ((r = 0; r < reps; ++r)); do
    read -r wall step < <(dtrain_epoch $dtrain "$model")
    d+=("$wall"); s+=("$step")
    t+=("$(/usr/bin/python3 bench/train/torch_e2e_bench.py "$model" "$data" 1 | field samples_per_s)")
    line=$($bound "$model" 20 1)
    b+=("$(field samples_per_s <<<"$line")"); g+=("$(field mflop_per_step <<<"$line")")
    # The rate OpenBLAS reaches on friendly shapes: the MLP's products.
    m+=("$($bound mlp 40 1 | field gflop_per_s)")
    if [[ -n $before ]]; then
      read -r wall _ < <(dtrain_epoch "$before" "$model")
      p+=("$wall")
    fi
  done
  dm=$(printf '%s\n' "${d[@]}" | median); sm=$(printf '%s\n' "${s[@]}" | median)
  tm=$(printf '%s\n' "${t[@]}" | median); bm=$(printf '%s\n' "${b[@]}" | median)
  gm=$(printf '%s\n' "${g[@]}" | median); mm=$(printf '%s\n' "${m[@]}" | median)
  fm=$(awk -v f="$gm" -v r="$mm" 'BEGIN {print r * 1e3 / f * 128}')
  printf '%-7s %9.0f %9.0f %9.0f %6s %9.0f %9.0f %10s %10s %10s %10s' "$model" "$dm" "$sm" "$tm" \
    "$(ratio "$dm" "$tm")" "$bm" "$fm" "$(ratio "$dm" "$bm")" "$(ratio "$dm" "$fm")" \
    "$(ratio "$tm" "$bm")" "$(ratio "$tm" "$fm")"
  if [[ -n $before ]]; then
    pm=$(printf '%s\n' "${p[@]}" | median)
    printf ' %9.0f %6s' "$pm" "$(ratio "$dm" "$pm")"
  fi
  printf '\n'
done
echo "load after: $(uptime | sed 's/.*load/load/')"
