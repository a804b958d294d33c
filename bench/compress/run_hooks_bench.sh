#!/usr/bin/env bash
# Gradient compression against PyTorch 1.13's DDP communication hooks, side
# by side in one run (issue 11's goal: dtrain's test accuracy at most 0.2
# points below PyTorch's, and its epochs faster). The MNIST MLP of
# examples/mnist_mlp.toml, WORKERS processes on each side, one thread each:
#   dense     dtrain allreduce                 | DDP, no hook
#   fp16      compression.type=fp16            | fp16_compress_hook
#   powersgd  compression.type=powersgd,       | powerSGD_hook, PowerSGDState(
#             rank RANK, start_step START      |   matrix_approximation_rank=RANK,
#                                              |   start_powerSGD_iter=START)
#   bf16      (add it to METHODS) dtrain only: gloo has no bfloat16 in 1.13
# Both sides train the same job: real MNIST, SGD lr 0.1 Nesterov momentum
# 0.9 wd 1e-4, 200 warm-up updates then cosine to 0, global batch 128 split
# over the workers (torch_ddp_hooks.py copies dtrain's schedule and split).
# Transports differ and that is part of what is measured: dtrain's
# allreduce uses shared memory on one host, DDP gloo over loopback TCP.
#
# Figures, per method, medians over REPS interleaved repetitions:
#   accuracy   the last epoch's test accuracy (10,000 images)
#   epoch_s    median epoch wall time INCLUDING rank 0's test evaluation on
#              both sides (dtrain's epoch also writes its checkpoint)
#   train_s    median epoch time of the training steps only (forward,
#              backward, gradient exchange, update; batch assembly and
#              evaluation excluded) on both sides
#   torch/dt   PyTorch's time / dtrain's: > 1 means dtrain is faster
# Raw outputs: bench/compress/results/hooks-<timestamp>/.
#
# Usage: [RANK=4] [START=10] [WORKERS=2] [METHODS="dense fp16 powersgd"]
#        [SMOKE_STEPS=N] [DTRAIN=path/to/dtrain] \
#          bench/compress/run_hooks_bench.sh [EPOCHS] [REPS]
# SMOKE_STEPS=N: a smoke test, both sides train on the first N x 128 images
# only (N updates per epoch); the figures say little.
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=${1:-10}
reps=${2:-1}
rank=${RANK:-4}
start=${START:-10}
workers=${WORKERS:-2}
methods=${METHODS:-dense fp16 powersgd}
smoke=${SMOKE_STEPS:-0}
bin=${DTRAIN:-build/src/cli/dtrain}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck source=bench/compress/common.sh
source bench/compress/common.sh
check_dtrain_and_data
/usr/bin/python3 -c 'import torch' 2>/dev/null ||
  { echo "needs PyTorch for /usr/bin/python3 (python3-torch): scripts/setup.sh --bench" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
results=bench/compress/results/hooks-$(date +%Y%m%d-%H%M%S)
mkdir -p "$results"

dtrain_args() {  # METHOD -> the --set flags of that method
  case $1 in
    dense) ;;
    fp16 | bf16) echo "--set compression.type=$1" ;;
    powersgd) echo "--set compression.type=powersgd --set compression.rank=$rank --set compression.start_step=$start" ;;
    *) echo "unknown method '$1' (dense, fp16, bf16, powersgd)" >&2; return 1 ;;
  esac
}
torch_hook() {  # METHOD -> the torch_ddp_hooks.py hook
  case $1 in dense) echo none ;; *) echo "$1" ;; esac
}

# run_torch METHOD REP: PyTorch DDP with that hook; its summary line goes to
# $results/torch-METHOD-REP.sum (empty when the hook is unavailable, "failed").
run_torch() {
  local name=torch-$1-$2 rc=0
  /usr/bin/python3 $here/torch_ddp_hooks.py --hook "$(torch_hook "$1")" --world "$workers" \
    --epochs "$epochs" --rank "$rank" --start "$start" --train-limit $((smoke * 128)) \
    >"$results/$name.log" 2>"$results/$name.err" || rc=$?
  if ((rc == 3)); then  # the hook is unavailable here (bf16 on gloo)
    : >"$results/$name.sum"
  elif ((rc != 0)); then
    echo "  torch $1 failed (log: $results/$name.err):" >&2
    tail -3 "$results/$name.err" | sed 's/^/    /' >&2
    echo failed >"$results/$name.sum"
  else
    /usr/bin/python3 $here/summarize_run.py torch "$results/$name.log" >"$results/$name.sum" ||
      echo failed >"$results/$name.sum"
  fi
}

for m in $methods; do dtrain_args "$m" >/dev/null; done
echo "hooks bench: $epochs epochs, $reps reps, $workers workers, methods: $methods, PowerSGD rank $rank start $start; raw: $results" >&2
for ((r = 0; r < reps; ++r)); do
  for m in $methods; do
    echo "  rep $((r + 1))/$reps: $m" >&2
    # shellcheck disable=SC2046
    run_dtrain "$results" "dtrain-$m-$r" examples/mnist_mlp.toml --workers "$workers" \
      --set train.epochs="$epochs" $(dtrain_args "$m")
    run_torch "$m" "$r"
  done
done

{
  printf '%-9s %8s %8s %8s %9s %9s %8s %9s %9s %8s %6s\n' method dt_acc torch_acc diff_pts \
    dt_epoch_s torch_epoch torch/dt dt_train_s torch_train torch/dt goal
  for m in $methods; do
    dfiles=("$results"/dtrain-"$m"-*.sum)
    tfiles=("$results"/torch-"$m"-*.sum)
    da=$(summary_col 1 "${dfiles[@]}"); de=$(summary_col 2 "${dfiles[@]}"); dtr=$(summary_col 3 "${dfiles[@]}")
    if [[ -z $(cat "${tfiles[@]}") ]]; then  # no such hook in this PyTorch
      ta=n/a; te=n/a; ttr=n/a
    else
      ta=$(summary_col 1 "${tfiles[@]}"); te=$(summary_col 2 "${tfiles[@]}"); ttr=$(summary_col 3 "${tfiles[@]}")
    fi
    diff=$(awk -v a="$da" -v b="$ta" 'BEGIN {
      if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/) print "-"; else printf "%+.2f\n", 100 * (a - b) }')
    er=$(ratio "$te" "$de"); tr=$(ratio "$ttr" "$dtr")
    goal=-
    [[ $diff != - && $er != - ]] &&
      goal=$(awk -v d="$diff" -v r="$er" 'BEGIN {print (d >= -0.2 && r > 1) ? "met" : "missed"}')
    printf '%-9s %8s %8s %8s %9s %9s %8s %9s %9s %8s %6s\n' "$m" "$(num "$da" %.4f)" \
      "$(num "$ta" %.4f)" "$diff" "$(num "$de" %.2f)" "$(num "$te" %.2f)" "$er" "$(num "$dtr" %.2f)" \
      "$(num "$ttr" %.2f)" "$tr" "$goal"
  done
  echo "acc: last epoch's test accuracy; diff_pts: 100 x (dtrain - torch), goal >= -0.2"
  echo "epoch_s: median epoch wall time incl. rank 0's test evaluation (both sides; dtrain's also writes a checkpoint)"
  echo "train_s: median epoch time of the training steps only (evaluation and batch assembly excluded, both sides)"
  echo "torch/dt > 1: dtrain faster; goal: diff_pts >= -0.2 and epoch_s ratio > 1"
  echo "$epochs epochs, medians of $reps reps, $workers workers per side; PowerSGD rank $rank, start $start;" \
    "$(getconf _NPROCESSORS_ONLN) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  ((smoke > 0)) && echo "SMOKE TEST: $smoke updates per epoch; the figures say little"
} | tee "$results/summary.txt"
