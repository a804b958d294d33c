#!/usr/bin/env bash
# Where a training step's time goes: `perf record` (cpu-clock samples, so the
# shares count only the time the process ran, whatever the machine's load)
# over one epoch of `dtrain train` on an example job, one thread, evaluation
# cut to one sample; the samples' own functions grouped into the rows of
# docs/performance.md.
# Usage: bench/train/profile_step.sh [MODEL] [DTRAIN]   (default lenet5, build/src/cli/dtrain)
# Needs: perf (linux-perf); MNIST under data/mnist.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-lenet5}
dtrain=${2:-build/src/cli/dtrain}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
OPENBLAS_NUM_THREADS=1 perf record -q -F 2000 -o "$work/perf.data" "$dtrain" train \
  "examples/mnist_$model.toml" --set train.epochs=1 --set data.test_limit=1 --threads 1 \
  --output "$work/run" --no-resume --progress none >/dev/null 2>&1
perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
  awk '/^ +[0-9.]+%/ {share = $1; sub(/%/, "", share); $1 = ""; $2 = ""; print share "\t" $0}' |
  awk -F'\t' '
    function group(s) {
      if (s ~ /im2col/) return "im2col";
      if (s ~ /col2im/) return "col2im";
      if (s ~ /ImplicitConv|transpose_to_channels_last/) return "implicit conv: pad, crop, transposes, row adds";
      if (s ~ /OffsetRows|small_m_offsets/) return "conv forward GEMM (implicit; own kernel)";
      if (s ~ /shifted_outer|outer_block|outer_rows/) return "conv weight-gradient GEMM (own kernel)";
      if (s ~ /StridedRows/) return "conv input-gradient GEMM (own kernel)";
      if (s ~ /small_m|long_k/) return "conv1 forward and weight-gradient GEMM (own kernels)";
      if (s ~ /sgemm|cblas|blas/) return "OpenBLAS GEMM (conv and linear)";
      if (s ~ /pool/) return "max pooling, with the fused ReLU (forward, backward)";
      if (s ~ /relu/) return "ReLU (forward, backward)";
      if (s ~ /ops::sum|linear_forward|add_bias|sum_rows/) return "bias (forward, gradient)";
      if (s ~ /softmax|cross_entropy|nll/) return "softmax and loss";
      if (s ~ /Sgd|optim|Optimizer|finite/) return "optimizer step (incl. finite check)";
      if (s ~ /malloc|free|memset|\[k\] (clear_page|.*page_fault|do_anonymous|.*folio|get_page)/) return "allocation, zeroing, page faults";
      if (s ~ /gather|convert_images|read_idx|DataLoader/) return "data: loading, batch gathering";
      if (s ~ /memmove|memcpy/) return "memmove (batch rows, the conv grid copies)";
      if (s ~ /conv2d/) return "conv layer glue (bias fill, loops)";
      return "other (autograd bookkeeping, kernel, start-up)";
    }
    { total[group($2)] += $1 }
    END { for (g in total) printf "%6.1f%%  %s\n", total[g], g }' | sort -rn
