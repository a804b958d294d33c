#!/usr/bin/env bash
# Gradient compression in dtrain (issue 11): what each method costs in
# accuracy, what it saves on the wire, and what that buys on slow links.
# Every run trains examples/mnist_mlp.toml (or mnist_lenet5.toml) for EPOCHS
# epochs in a fresh output folder; the methods (--set compression.*):
#   dense     none
#   fp16      type=fp16                  bf16   type=bf16
#   topk      type=topk density=0.01, error feedback
#   randomk   type=randomk density=0.1, error feedback
#   qsgd      type=qsgd levels=16
#   sign      type=sign, error feedback
#   powersgd  type=powersgd rank=RANK start_step=START
#   localsgd  local_steps=8 (local SGD: models averaged every 8 updates;
#             with ps the servers' Nesterov momentum is SlowMo's outer
#             momentum on the rounds' mean movements)
#   randomk-dgc  randomk with DGC's momentum correction (momentum 0.5 in the
#             compressor, none in the optimizer)
#
# Sets (the first argument):
#   accuracy  the MLP with 4 allreduce workers and with the ps strategy in
#             sync mode (2 servers, 2 workers), every method; and LeNet-5,
#             4 allreduce workers, dense and powersgd rank LENET_RANK.
#             Figures: the last epoch's test accuracy, its difference to
#             dense in points, the median of the step records' bytes_per_step
#             (metrics.jsonl) and dense's bytes / the method's (x less).
#   links     the MLP, 4 allreduce workers over emulated links
#             (distributed.link_mbps = each of LINKS, link_latency_ms =
#             LATENCY_MS; shared memory off), every method. Figures: the
#             median epoch wall time (evaluation included), the time to
#             TARGET test accuracy (the summed epoch seconds up to the first
#             epoch at or above it; "never" if no epoch reaches it), and
#             dense's time / the method's (> 1: the method is faster), dense
#             run in the same invocation.
#   all       both.
# Raw outputs (logs, metrics.jsonl, one summary line per run) and the
# tables go to bench/compress/results/<set>-<timestamp>/; the tables also
# to stdout. A run that fails is shown as "failed" and the others go on.
#
# Usage: [METHODS="dense fp16 ..."] [CONFIGS="ar4 ps"] [RANK=4] [START=10] [LENET_RANK=2] [LENET=0|1]
#        [LINKS="1000 100"] [LATENCY_MS=1] [TARGET=0.98] [SMOKE_STEPS=N]
#        [DTRAIN=path/to/dtrain] \
#          bench/compress/run_compress_bench.sh accuracy|links|all [EPOCHS] [REPS]
# CONFIGS picks the accuracy set's MLP configurations (ar4, ps; both by
# default); a configuration left out shows as "failed".
# REPS > 1 repeats every run (interleaved) and takes medians. SMOKE_STEPS=N
# trains on the first N x 128 images only (N updates per epoch).
set -euo pipefail
cd "$(dirname "$0")/../.."
set_name=${1:-}
epochs=${2:-10}
reps=${3:-1}
methods=${METHODS:-dense fp16 bf16 topk randomk randomk-dgc qsgd sign powersgd localsgd}
configs=${CONFIGS:-ar4 ps}
rank=${RANK:-4}
start=${START:-10}
lenet_rank=${LENET_RANK:-2}
links=${LINKS:-1000 100}
latency_ms=${LATENCY_MS:-1}
export TARGET=${TARGET:-0.98}
smoke=${SMOKE_STEPS:-0}
bin=${DTRAIN:-build/src/cli/dtrain}
case $set_name in
  accuracy | links | all) ;;
  *) echo "usage: $0 accuracy|links|all [EPOCHS] [REPS]" >&2; exit 2 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck source=bench/compress/common.sh
source bench/compress/common.sh
check_dtrain_and_data
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

method_args() {  # METHOD -> its --set flags
  local c=--set\ compression
  case $1 in
    dense) ;;
    fp16 | bf16) echo "$c.type=$1" ;;
    topk) echo "$c.type=topk $c.density=0.01 $c.error_feedback=true" ;;
    randomk) echo "$c.type=randomk $c.density=0.1 $c.error_feedback=true" ;;
    # DGC's momentum correction: the compressor keeps the momentum (0.5;
    # 0.9 is too much for random-k's delays, docs/compression.md), the
    # optimizer runs without it.
    randomk-dgc) echo "$c.type=randomk $c.density=0.1 $c.error_feedback=true $c.momentum=0.5" \
      "--set optimizer.momentum=0 --set optimizer.nesterov=false" ;;
    randomk-guard) echo "$c.type=randomk $c.density=0.1 $c.error_feedback=true $c.guard=true" ;;
    topk-guard) echo "$c.type=topk $c.density=0.01 $c.error_feedback=true $c.guard=true" ;;
    qsgd) echo "$c.type=qsgd $c.levels=16" ;;
    sign) echo "$c.type=sign $c.error_feedback=true" ;;
    powersgd) echo "$c.type=powersgd $c.rank=$rank $c.start_step=$start" ;;
    powersgd-lenet) echo "$c.type=powersgd $c.rank=$lenet_rank $c.start_step=$start" ;;
    localsgd) echo "$c.local_steps=8" ;;
    *) echo "unknown method '$1' (dense fp16 bf16 topk randomk randomk-dgc qsgd sign powersgd localsgd)" >&2
       return 1 ;;
  esac
}
describe() {  # METHOD -> the row label
  case $1 in
    topk) echo "topk 0.01+EF" ;; randomk) echo "randomk 0.1+EF" ;; qsgd) echo "qsgd 16" ;;
    randomk-dgc) echo "randomk+EF+DGC" ;;
    sign) echo "sign+EF" ;; powersgd) echo "powersgd r$rank" ;; localsgd) echo "local SGD H=8" ;;
    *) echo "$1" ;;
  esac
}
for m in $methods; do method_args "$m" >/dev/null; done
[[ " $methods " == *" dense "* ]] || echo "note: METHODS lacks dense: no ratios" >&2
footer() {
  echo "$epochs epochs, medians of $reps reps; $(getconf _NPROCESSORS_ONLN) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  ((smoke > 0)) && echo "SMOKE TEST: $smoke updates per epoch; the figures say little"
  return 0
}

# configuration NAME -> the dtrain flags of a configuration of the accuracy set.
config_args() {
  case $1 in
    ar4) echo "--workers 4" ;;
    ps) echo "--strategy ps --servers 2 --workers 2" ;;
  esac
}

accuracy_set() {
  local results=$1 r m cfg
  for ((r = 0; r < reps; ++r)); do
    for m in $methods; do
      for cfg in $configs; do
        echo "  accuracy rep $((r + 1))/$reps: mlp $cfg $m" >&2
        # shellcheck disable=SC2046
        run_dtrain "$results" "mlp-$cfg-$m-$r" examples/mnist_mlp.toml $(config_args $cfg) \
          --set train.epochs="$epochs" $(method_args "$m")
      done
    done
    [[ ${LENET:-1} == 0 ]] && continue  # LENET=0: the MLP rows only
    for m in dense powersgd-lenet; do
      echo "  accuracy rep $((r + 1))/$reps: lenet5 ar4 $m" >&2
      # shellcheck disable=SC2046
      run_dtrain "$results" "lenet5-ar4-$m-$r" examples/mnist_lenet5.toml --workers 4 \
        --set train.epochs="$epochs" $(method_args "$m")
    done
  done
  {
    echo "accuracy and bytes on the wire: MNIST, $epochs epochs"
    printf '%-16s | %-43s | %-43s\n' "" "MLP, allreduce, 4 workers" "MLP, ps sync, 2 servers + 2 workers"
    printf '%-16s | %7s %7s %12s %6s %8s | %7s %7s %12s %6s %8s\n' method acc vs_dense bytes/step \
      x_less dt_ratio acc vs_dense bytes/step x_less dt_ratio
    local row model cells
    local lenet_rows="lenet5:dense lenet5:powersgd-lenet"
    [[ ${LENET:-1} == 0 ]] && lenet_rows=""
    for row in $methods $lenet_rows; do
      if [[ $row == lenet5:* ]]; then
        m=${row#lenet5:}; model=lenet5
        [[ $m == dense ]] && printf '%-16s |\n' "LeNet-5"
      else
        m=$row; model=mlp
      fi
      cells=()
      for cfg in ar4 ps; do
        if [[ $model == lenet5 && $cfg == ps ]]; then cells+=("" "" "" "" ""); continue; fi
        local files=("$results/$model-$cfg-$m-"*.sum) dense_files=("$results/$model-$cfg-dense-"*.sum)
        local acc bytes dacc dbytes
        acc=$(summary_col 1 "${files[@]}"); bytes=$(summary_col 4 "${files[@]}")
        if [[ -e ${dense_files[0]} ]]; then
          dacc=$(summary_col 1 "${dense_files[@]}"); dbytes=$(summary_col 4 "${dense_files[@]}")
        else
          dacc=-; dbytes=-
        fi
        cells+=("$(num "$acc" %.4f)"
                "$(awk -v a="$acc" -v d="$dacc" 'BEGIN {
                   if (a !~ /^[0-9.]+$/ || d !~ /^[0-9.]+$/) print "-"; else printf "%+.2f\n", 100 * (a - d) }')"
                "$(num "$bytes" %.0f)" "$(ratio "$dbytes" "$bytes" %.1f)"
                "$(num "$(summary_col 5 "${files[@]}")" %.1f)")
      done
      local label
      label=$(describe "$m"); [[ $m == powersgd-lenet ]] && label="powersgd r$lenet_rank"
      [[ $model == lenet5 ]] && label="  $label"
      printf '%-16s | %7s %7s %12s %6s %8s | %7s %7s %12s %6s %8s\n' "$label" "${cells[@]}"
    done
    echo "acc: last epoch's test accuracy; vs_dense: 100 x (acc - dense's), points"
    echo "bytes/step: median of the step records' bytes_per_step; x_less: dense's bytes/step / the method's;"
    echo "dt_ratio: median of dtrain's own compression_ratio; powersgd (MLP and LeNet-5) starts after $start dense updates"
    footer
  } | tee "$results/summary.txt"
}

links_set() {
  local results=$1 r m mbps
  for ((r = 0; r < reps; ++r)); do
    for mbps in $links; do
      for m in $methods; do
        echo "  links rep $((r + 1))/$reps: ${mbps} Mbit/s $m" >&2
        # shellcheck disable=SC2046
        run_dtrain "$results" "link$mbps-$m-$r" examples/mnist_mlp.toml --workers 4 \
          --set train.epochs="$epochs" --set distributed.link_mbps="$mbps" \
          --set distributed.link_latency_ms="$latency_ms" $(method_args "$m")
      done
    done
  done
  {
    echo "emulated links: MNIST MLP, 4 allreduce workers, $epochs epochs, latency $latency_ms ms"
    printf '%-16s' ""
    for mbps in $links; do printf ' | %-46s' "$mbps Mbit/s"; done
    printf '\n%-16s' method
    for mbps in $links; do
      printf ' | %7s %8s %7s %9s %3s %7s' acc epoch_s speedup to_target ep speedup
    done
    printf '\n'
    for m in $methods; do
      printf '%-16s' "$(describe "$m")"
      for mbps in $links; do
        local files=("$results/link$mbps-$m-"*.sum) dense_files=("$results/link$mbps-dense-"*.sum)
        local acc epoch tt ep depoch dtt
        acc=$(summary_col 1 "${files[@]}"); epoch=$(summary_col 2 "${files[@]}")
        tt=$(summary_col 6 "${files[@]}"); ep=$(summary_col 7 "${files[@]}")
        depoch=-; dtt=-
        if [[ -e ${dense_files[0]} ]]; then
          depoch=$(summary_col 2 "${dense_files[@]}"); dtt=$(summary_col 6 "${dense_files[@]}")
        fi
        printf ' | %7s %8s %7s %9s %3s %7s' "$(num "$acc" %.4f)" "$(num "$epoch" %.2f)" \
          "$(ratio "$depoch" "$epoch")" "$(num "$tt" %.1f)" "$ep" "$(ratio "$dtt" "$tt")"
      done
      printf '\n'
    done
    echo "epoch_s: median epoch wall time (evaluation included); to_target: seconds until the first epoch"
    echo "with test accuracy >= $TARGET (summed epoch times), ep: that epoch; speedup: dense's time / the"
    echo "method's at the same link (> 1: faster than dense)"
    footer
  } | tee "$results/summary.txt"
}

stamp=$(date +%Y%m%d-%H%M%S)
if [[ $set_name == accuracy || $set_name == all ]]; then
  results=bench/compress/results/accuracy-$stamp
  mkdir -p "$results"
  echo "accuracy set: $epochs epochs, $reps reps, methods: $methods; raw: $results" >&2
  accuracy_set "$results"
fi
if [[ $set_name == links || $set_name == all ]]; then
  results=bench/compress/results/links-$stamp
  mkdir -p "$results"
  echo "links set: $epochs epochs, $reps reps, links $links Mbit/s, methods: $methods; raw: $results" >&2
  links_set "$results"
fi
