#!/usr/bin/env bash
# Where a training step's time goes: `perf record` (cpu-clock samples, so the
# shares count only the time the process ran, whatever the machine's load)
# over one epoch of `dtrain train` on an example job, one thread, evaluation
# cut to one sample; the samples' own functions grouped into the rows of
# docs/performance.md.
# THREADS=n runs it with --threads n and prints the groups per thread (the
# threads in order of their samples, the caller first as a rule), with the
# team's polls as a group of their own: a thread that polls waits for the
# other (tensor/intra_op.h).
# Usage: [THREADS=1] bench/train/profile_step.sh [MODEL] [DTRAIN]   (default lenet5, build/src/cli/dtrain)
# Needs: perf (linux-perf); MNIST under data/mnist.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-lenet5}
dtrain=${2:-build/src/cli/dtrain}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
threads=${THREADS:-1}
OPENBLAS_NUM_THREADS=1 perf record -q -F 2000 -o "$work/perf.data" "$dtrain" train \
  "examples/mnist_$model.toml" --set train.epochs=1 --set data.test_limit=1 --threads "$threads" \
  --output "$work/run" --no-resume --progress none >/dev/null 2>&1
# One line per (thread, symbol): share, thread id, symbol.
perf report -i "$work/perf.data" --no-children --sort pid,symbol --stdio -t $'\t' 2>/dev/null |
  awk -F'\t' '/^ *[0-9.]+%/ {share = $1; sub(/%/, "", share); sub(/:.*/, "", $2); print share "\t" $2 "\t" $3}' |
  awk -F'\t' -v per_thread=$((threads > 1)) '
    function group(s) {
      if (s ~ /ThreadTeam::(run|worker)|sched_yield|__schedule/) return "team: polling for the other thread";
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
    { key = (per_thread ? $2 "\t" : "") group($3); total[key] += $1; by_thread[$2] += $1 }
    END {
      for (k in total) {
        if (per_thread) {
          split(k, f, "\t");
          printf "%6.1f%%  thread %s (%.0f%% of all)  %s\n", total[k], f[1], by_thread[f[1]], f[2];
        } else {
          printf "%6.1f%%  %s\n", total[k], k;
        }
      }
    }' | if ((threads > 1)); then sort -k3,3 -k1,1rn; else sort -rn; fi
