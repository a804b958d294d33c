#!/usr/bin/env bash
# Two cores, two ways, in one run: one process with train.threads = 2 against
# two worker processes (allreduce) with one thread each, the MNIST MLP and
# LeNet-5, the same global batch, back to back and alternating within every
# repetition (so that a change of load hits both arms alike).
#   1p x 1t:  one process, one thread (the reference the arms divide by);
#   1p x 2t:  one process, train.threads = 2 exactly as `dtrain train` sets it
#             (THREADS=2: train::set_compute_threads);
#             (OpenBLAS at one thread; the kernels and the dense layers'
#             GEMMs split over the intra-op team);
#   both 2t:  OpenBLAS at 2 threads and 2 intra-op threads: the kernels split
#             over the team, the dense layers' GEMMs split by OpenBLAS;
#   blas 2t:  OpenBLAS at 2 threads alone (only the GEMMs on two threads);
#   2p x 1t:  --workers 2 --strategy allreduce, one thread each.
# Prints medians of samples/s over REPS repetitions, every two-core arm over
# 2p x 1t and over 1p x 1t; the median CPU microseconds (user + system, the whole
# run with its start-up, all processes) per sample, which a loaded
# machine disturbs less than the wall clock and which shows threads that
# spin; and the load average before and after (the figures are only
# comparable within one run).
# DTRAIN_BASE=another train_step_bench (main's, say) adds its 1p x 2t and
# 2p x 1t arms to the same rotation, and prints its 2t/2p beside this
# build's and this build's 2t over its 2t (before and after in one run).
# Usage: [BIN=train_step_bench] [DTRAIN_BASE=train_step_bench] [DATA=data/mnist]
#        bench/train/run_threads_bench.sh [STEPS] [REPS] [GLOBAL_BATCH]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-200}
reps=${2:-5}
batch=${3:-256}
bin=${BIN:-build/bench/train/train_step_bench}
[[ -x $bin ]] || { echo "build first: cmake --build build --target train_step_bench" >&2; exit 1; }
base=${DTRAIN_BASE:-}
[[ -z $base || -x $base ]] || { echo "DTRAIN_BASE=$base is not an executable" >&2; exit 1; }
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { grep -o "\"$1\": [0-9.]*" | awk '{print $2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
rate() { # BIN ENV... -- WORKERS MODE MODEL -> "samples/s cpu_us_per_sample"
  local run_bin=$1 envs=() out cpu
  shift
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  out=$(mktemp)
  cpu=$( { TIMEFORMAT='%U %S'; time env "${envs[@]}" "$run_bin" "$3" "$steps" 1 "$1" "$2" "$batch" \
    >"$out"; } 2>&1 | tail -1)
  echo "$(field samples_per_s <"$out" | head -1)" \
    "$(awk -v c="$cpu" -v n=$((steps + 20)) -v b="$batch" \
      'BEGIN {split(c, t, " "); printf "%.2f", (t[1] + t[2]) * 1e6 / (n * b)}')"
  rm -f "$out"
}
arm() { # NAME MODEL -> samples/s of that arm (base_NAME: the DTRAIN_BASE binary's)
  local b=$bin a=$1
  if [[ $a == base_* ]]; then b=$base a=${a#base_}; fi
  case $a in
    s1) rate "$b" OPENBLAS_NUM_THREADS=1 INTRA_OP_THREADS=1 -- 1 local "$2" ;;
    t2) rate "$b" OPENBLAS_NUM_THREADS=1 THREADS=2 -- 1 local "$2" ;;
    both) rate "$b" OPENBLAS_NUM_THREADS=2 INTRA_OP_THREADS=2 -- 1 local "$2" ;;
    blas) rate "$b" OPENBLAS_NUM_THREADS=2 INTRA_OP_THREADS=1 -- 1 local "$2" ;;
    p2) rate "$b" OPENBLAS_NUM_THREADS=1 INTRA_OP_THREADS=1 -- 2 allreduce "$2" ;;
  esac
}

arms=(t2 p2 both blas s1)
[[ -n $base ]] && arms+=(base_t2 base_p2)
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); steps $steps, reps $reps, global batch $batch"
echo "samples/s, medians of $reps (and CPU microseconds per sample):"
printf '%-7s %16s %16s %16s %16s %16s\n' model 1p_x_1t 1p_x_2t both_2t blas_2t 2p_x_1t
declare -A med cpu
for model in mlp lenet5; do
  declare -A runs=() cpus=()
  for ((r = 0; r < reps; ++r)); do
    # Rotate the order of the arms from one repetition to the next.
    for ((i = 0; i < ${#arms[@]}; ++i)); do
      a=${arms[$(((i + r) % ${#arms[@]}))]}
      read -r rate_now cpu_now < <(arm "$a" "$model")
      runs[$a]+="$rate_now "
      cpus[$a]+="$cpu_now "
    done
  done
  for a in "${arms[@]}"; do
    med[$model.$a]=$(printf '%s\n' ${runs[$a]} | median)
    cpu[$model.$a]=$(printf '%s\n' ${cpus[$a]} | median)
  done
  line=$(printf '%-7s' "$model")
  for a in s1 t2 both blas p2; do
    line+=$(printf ' %8.0f (%5.1f)' "${med[$model.$a]}" "${cpu[$model.$a]}")
  done
  echo "$line"
done
echo "ratios of samples/s (medians):"
printf '%-7s %9s %9s %9s %9s %9s\n' model 2t/2p both/2p blas/2p 2t/1t 2p/1t
for model in mlp lenet5; do
  printf '%-7s %9s %9s %9s %9s %9s\n' "$model" \
    "$(ratio "${med[$model.t2]}" "${med[$model.p2]}")" \
    "$(ratio "${med[$model.both]}" "${med[$model.p2]}")" \
    "$(ratio "${med[$model.blas]}" "${med[$model.p2]}")" \
    "$(ratio "${med[$model.t2]}" "${med[$model.s1]}")" \
    "$(ratio "${med[$model.p2]}" "${med[$model.s1]}")"
done
if [[ -n $base ]]; then
  echo "against DTRAIN_BASE=$base (same run):"
  printf '%-7s %9s %9s %14s %14s\n' model 2t/2p base_2t/2p 2t/base_2t 2p/base_2p
  for model in mlp lenet5; do
    printf '%-7s %9s %9s %14s %14s\n' "$model" \
      "$(ratio "${med[$model.t2]}" "${med[$model.p2]}")" \
      "$(ratio "${med[$model.base_t2]}" "${med[$model.base_p2]}")" \
      "$(ratio "${med[$model.t2]}" "${med[$model.base_t2]}")" \
      "$(ratio "${med[$model.p2]}" "${med[$model.base_p2]}")"
  done
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "2t: train.threads = 2 as dtrain train sets it; both: + OpenBLAS at 2 threads; blas: OpenBLAS"
echo "at 2 threads alone; 2p: 2 allreduce processes, 1 thread each; 1t: one process, one thread"
echo "(same global batch everywhere)"
