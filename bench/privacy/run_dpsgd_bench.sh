#!/usr/bin/env bash
# DP-SGD on MNIST, delta 1e-5 (docs/privacy.md, "DP-SGD: measured"):
#   (a) epsilon <= 7.05 and (b) epsilon <= 2, sigma solved from the target
#       for the planned steps, Opacus's MNIST CNN, batch 512 (Poisson,
#       q = 512/60000), C 0.1, SGD momentum 0.9 with lr 1.0 (a) and 0.5 (b),
#       EPOCHS epochs (default 18);
#   (c) DP-SGD throughput against non-private SGD of the same model and
#       batch in the same process (alternating, medians of 5).
# Usage: bench/privacy/run_dpsgd_bench.sh [EPOCHS] [THROUGHPUT_STEPS]
# Needs: scripts/build.sh release; data/mnist (scripts/fetch_mnist.sh).
# One BLAS thread per run; (a) and (b) run side by side (two cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=${1:-18}
steps=${2:-20}
bin=build/bench/privacy/dpsgd_mnist_bench
[[ -x $bin ]] || { echo "build first: scripts/build.sh release" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
out=$(mktemp -d)
#      model epochs batch lr momentum sigma C target
"$bin" cnn "$epochs" 512 1.0 0.9 0 0.1 7.05 >"$out/a.log" 2>&1 &
"$bin" cnn "$epochs" 512 0.5 0.9 0 0.1 2.0 >"$out/b.log" 2>&1 &
wait
echo "== (a) target epsilon 7.05"; grep -E "DP-SGD:|epoch .* done|privacy budget|result" "$out/a.log"
echo "== (b) target epsilon 2.0"; grep -E "DP-SGD:|epoch .* done|privacy budget|result" "$out/b.log"
echo "== (c) throughput"
for batch in 256 512; do
  "$bin" cnn 1 "$batch" 0.5 0.9 1.0 0.1 0 "$steps"
  "$bin" mlp 1 "$batch" 0.5 0.9 1.0 0.1 0 "$steps"
done
rm -rf "$out"
