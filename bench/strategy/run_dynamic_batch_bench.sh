#!/usr/bin/env bash
# Heterogeneous workers: dynamic batch sizing against equal static batches,
# side by side in one run (issue 7's goal: with one worker of 4 made 3x
# slower, dynamic batches reach 98% MNIST MLP test accuracy >= 1.5x sooner).
#
# Emulated cluster (docs/allreduce-strategy.md, "Benchmark"): the goal
# assumes a core per worker, and this machine may have fewer cores than
# workers. On 2 cores, 4 CPU-bound workers share the cores, and a slowed
# worker's sleep frees a core for the others, so the static run hardly loses
# and there is nothing to win. So every worker is slowed by a base factor
# BASE (--slowdown all=BASE): it computes, then sleeps (BASE - 1) times its
# compute time, so it is busy 1/BASE of the time and the 4 workers together
# need 4/BASE cores (1 with BASE = 4): each worker is a node BASE times slower
# than a core here, with a core of its own. The slow worker gets
# FACTOR x BASE (--slowdown 3=12): FACTOR times slower than the others. The
# script measures the CPU the workers used (user + system seconds of the job
# per wall second) to show the emulation holds: it must stay well below the
# cores.
#
# Runs, interleaved per repetition so machine noise hits all alike:
#   uniform  4 workers, all at BASE          (the bound: no slow worker)
#   static   4 workers, rank 3 at FACTOR x BASE, equal batches
#   dynamic  the same, dynamic batch sizing
#   static2/dynamic2  2 workers (one per core, no base factor), rank 1
#            FACTOR times slower: the real 2-core case, nothing emulated.
# Both runs of a pair do the same updates (the global batch is fixed; only
# who computes which rows differs), so they reach the same accuracy in the
# same epoch; the figure is the wall time until the test accuracy first
# reaches TARGET (summed epoch times, evaluated after every epoch), the
# median over REPS repetitions, and the static/dynamic ratio.
# Usage: [BATCH=128] [BASE=4] [FACTOR=3] [LR=...] \
#          bench/strategy/run_dynamic_batch_bench.sh [EPOCHS] [REPS] [TARGET]
# Needs a Release build of dtrain in ${DTRAIN_BUILD:-build} and data/mnist.
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=${1:-6}
reps=${2:-3}
target=${3:-0.98}
batch=${BATCH:-128}   # global batch
base=${BASE:-4}       # every worker of the 4-worker runs computes this many times slower
factor=${FACTOR:-3}   # the slow worker computes this many times slower than the others
lr=${LR:-}            # empty: the job's (0.1)
bin=${DTRAIN_BUILD:-build}/src/cli/dtrain
[[ -x $bin ]] || { echo "build first: scripts/build.sh release (or set DTRAIN_BUILD)" >&2; exit 1; }
[[ -f data/mnist/train-images-idx3-ubyte || -f data/mnist/train-images-idx3-ubyte.gz ]] ||
  { echo "needs MNIST in data/mnist: scripts/fetch_mnist.sh" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
slow_factor=$(awk -v b="$base" -v f="$factor" 'BEGIN { print b * f }')

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# Seconds (summed epoch times) until the first epoch with test accuracy >=
# target, that epoch and its accuracy; "inf 0 0" when never reached.
time_to_target() {
  /usr/bin/python3 - "$1" "$target" <<'PY'
import json, sys
total = 0.0
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") != "epoch":
        continue
    total += e["seconds"]
    if e["test_accuracy"] >= float(sys.argv[2]):
        print(f"{total:.2f} {e['epoch']} {e['test_accuracy']:.4f}")
        sys.exit(0)
print("inf 0 0")
PY
}
# The split rank 0 reported for the last batch of the last epoch.
last_split() { grep -o 'rows per worker in the last batch: [0-9 ]*' "$1" | tail -1 | cut -d: -f2; }

run() {  # MODE REP -> "seconds epoch accuracy cores_used"
  local mode=$1 out="$work/$1-$2" workers=4
  local extra=(--set train.batch_size="$batch")
  [[ -n $lr ]] && extra+=(--set optimizer.lr="$lr")
  case $mode in
    uniform) extra+=(--slowdown "all=$base") ;;
    static | dynamic) extra+=(--slowdown "all=$base" --slowdown "3=$slow_factor") ;;
    static2 | dynamic2) workers=2; extra+=(--slowdown "1=$factor") ;;
  esac
  [[ $mode == dynamic* ]] && extra+=(--set distributed.dynamic_batch=true
                                     --set distributed.rebalance_every=10
                                     --set distributed.smoothing=0.5 --set distributed.min_share=0.02)
  # The job's CPU seconds (the launcher waits for its workers, so their
  # time is included) per wall second: the cores it kept busy.
  /usr/bin/time -f '%U %S %e' -o "$out.time" \
    "$bin" train examples/mnist_mlp.toml --workers "$workers" --output "$out" --no-resume \
    --progress plain --set train.epochs="$epochs" --set train.log_every_steps=100000 \
    "${extra[@]}" > "$out.log" 2>&1 || { cat "$out.log" >&2; exit 1; }
  read -r user sys wall < "$out.time"
  echo "$(time_to_target "$out/metrics.jsonl") $(awk -v u="$user" -v s="$sys" -v w="$wall" \
    'BEGIN { printf "%.2f", (u + s) / w }')"
}

modes=(uniform static dynamic static2 dynamic2)
declare -A secs epoch acc cores
for ((r = 0; r < reps; ++r)); do
  for mode in "${modes[@]}"; do
    read -r t e a c < <(run "$mode" "$r") || true
    [[ -n ${t:-} ]] || { echo "the $mode run failed" >&2; exit 1; }
    secs[$mode]+="$t "; epoch[$mode]=$e; acc[$mode]=$a; cores[$mode]+="$c "
  done
done

ncores=$(getconf _NPROCESSORS_ONLN)
printf 'MNIST MLP, global batch %s, target test accuracy %s, %s repetition(s), %s epochs at most\n' \
  "$batch" "$target" "$reps" "$epochs"
printf 'emulated 4-node cluster: every worker --slowdown all=%s (busy 1/%s of its time: %s workers need %s cores of %s), rank 3 --slowdown 3=%s (%sx slower than the others)\n' \
  "$base" "$base" 4 "$(awk -v b="$base" 'BEGIN { printf "%.2f", 4 / b }')" "$ncores" "$slow_factor" "$factor"
printf '2-worker runs: one worker per core, rank 1 --slowdown 1=%s, no base factor\n' "$factor"
printf '%-34s %8s %6s %9s %11s   %s\n' run seconds epoch accuracy "cores used" "last split (rows per worker)"
declare -A med
for mode in "${modes[@]}"; do
  med[$mode]=$(printf '%s\n' ${secs[$mode]} | median)
  case $mode in
    uniform) label="4 workers, none slowed (bound)" ;;
    static) label="4 workers, rank 3 ${factor}x, static" ;;
    dynamic) label="4 workers, rank 3 ${factor}x, dynamic" ;;
    static2) label="2 workers, rank 1 ${factor}x, static" ;;
    dynamic2) label="2 workers, rank 1 ${factor}x, dynamic" ;;
  esac
  printf '%-34s %8s %6s %9s %11s   %s\n' "$label" "${med[$mode]}" "${epoch[$mode]}" "${acc[$mode]}" \
    "$(printf '%s\n' ${cores[$mode]} | median)" "$(last_split "$work/$mode-$((reps - 1)).log")"
done
for mode in "${modes[@]}"; do echo "  $mode seconds per repetition: ${secs[$mode]}"; done
ratio() { awk -v s="$1" -v d="$2" 'BEGIN { if (s == "inf" || d == "inf") print "n/a"; else printf "%.2fx", s / d }'; }
echo "4 workers (emulated): static/dynamic time to target $(ratio "${med[static]}" "${med[dynamic]}") (goal >= 1.5x); static/no slow worker $(ratio "${med[static]}" "${med[uniform]}")"
echo "2 workers (real cores): static/dynamic time to target $(ratio "${med[static2]}" "${med[dynamic2]}")"
echo "cores: $ncores; load average: $(cut -d" " -f1-3 /proc/loadavg)"
