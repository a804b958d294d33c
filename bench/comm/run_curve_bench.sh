#!/usr/bin/env bash
# The cost of security.encrypt (docs/security.md), encrypted against clear in
# the same run, interleaved so that machine noise hits both alike; medians of
# REPS runs:
#   1. the collective: allreduce_bench zmq-tcp / zmq-curve, 2 ranks over
#      loopback tcp (both with a job secret, so frames are MACed in both),
#      bus bandwidth of a BYTES message;
#   2. an allreduce job (2 workers) and a ps job (1 server, 2 workers) of
#      `dtrain train` over tcp (DTRAIN_TCP_ONLY=1: no ipc, no shared memory),
#      samples/s from the "done:" line, with and without
#      --set security.encrypt=true.
# Usage: bench/comm/run_curve_bench.sh [REPS] [BYTES] [STEPS]
# Needs: scripts/build.sh release.
set -euo pipefail
cd "$(dirname "$0")/../.."
reps=${1:-3}
bytes=${2:-67108864}
steps=${3:-60}
bench=build/bench/comm/allreduce_bench
dtrain=build/src/cli/dtrain
[[ -x $bench && -x $dtrain ]] || { echo "build first: scripts/build.sh release" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# Wall-clock bandwidth suffers from a loaded machine; the CPU time of a
# whole run (both ranks: user + system, /usr/bin/time) does much less, so the
# difference of the two modes' CPU seconds per GB sent is printed as well.
# A run is 15 allreduces (5 warm-up + 10 timed); with 2 ranks each sends
# BYTES per allreduce, so a run sends 30 x BYTES.
echo "allreduce of $bytes bytes, 2 ranks over loopback tcp (median of $reps):"
clear=(); curve=(); clear_cpu=(); curve_cpu=()
one() {  # mode -> "busbw cpu_seconds"
  local bw
  bw=$(/usr/bin/time -f '%U %S' -o "$work/cpu" $bench "$1" 2 "$bytes" 10 | sed 's/.*busbw_gbs=//')
  echo "$bw $(awk '{print $1 + $2}' "$work/cpu")"
}
for ((r = 0; r < reps; ++r)); do
  read -r bw cpu < <(one zmq-tcp); clear+=("$bw"); clear_cpu+=("$cpu")
  read -r bw cpu < <(one zmq-curve); curve+=("$bw"); curve_cpu+=("$cpu")
done
c=$(printf '%s\n' "${clear[@]}" | median)
e=$(printf '%s\n' "${curve[@]}" | median)
cc=$(printf '%s\n' "${clear_cpu[@]}" | median)
ec=$(printf '%s\n' "${curve_cpu[@]}" | median)
printf '  bus bandwidth: clear %.3f GB/s   curve %.3f GB/s   ratio %.2f   (runs: %s | %s)\n' "$c" "$e" \
  "$(awk -v a="$e" -v b="$c" 'BEGIN {print a/b}')" "${clear[*]}" "${curve[*]}"
printf '  CPU seconds a run: clear %.2f   curve %.2f   CURVE costs %.2f CPU s per GB sent (runs: %s | %s)\n' \
  "$cc" "$ec" "$(awk -v a="$ec" -v b="$cc" -v n="$bytes" 'BEGIN {print (a - b) / (30 * n / 1e9)}')" \
  "${clear_cpu[*]}" "${curve_cpu[*]}"

# A communication-heavy job: 784-1024-1024-10 (1.86M parameters, 7.4 MB a
# step) on synthetic blobs, batch 64.
cat > "$work/job.toml" <<TOML
[job]
name = "curve-bench"
seed = 1
[data]
dataset = "synthetic"
synthetic_samples = 8192
synthetic_features = 784
synthetic_classes = 10
[model]
input_shape = [784]
[[model.layers]]
type = "linear"
out_features = 1024
[[model.layers]]
type = "relu"
[[model.layers]]
type = "linear"
out_features = 1024
[[model.layers]]
type = "relu"
[[model.layers]]
type = "linear"
out_features = 10
[optimizer]
type = "sgd"
lr = 0.01
[train]
epochs = 1
batch_size = 64
max_steps = $steps
TOML

rate() { grep -o '[0-9.]* samples/s' | tail -1 | awk '{print $1}'; }
run_job() {  # name encrypt(0/1) args...
  local name=$1 enc=$2; shift 2
  local extra=()
  [[ $enc == 1 ]] && extra=(--set security.encrypt=true)
  DTRAIN_TCP_ONLY=1 $dtrain train "$work/job.toml" --output "$work/$name-$enc-$RANDOM" "${extra[@]}" "$@" 2>&1 | rate
}

for kind in allreduce ps; do
  if [[ $kind == allreduce ]]; then args=(--workers 2); else args=(--strategy ps --servers 1 --workers 2); fi
  clear=(); curve=()
  for ((r = 0; r < reps; ++r)); do
    clear+=("$(run_job "$kind" 0 "${args[@]}")")
    curve+=("$(run_job "$kind" 1 "${args[@]}")")
  done
  c=$(printf '%s\n' "${clear[@]}" | median)
  e=$(printf '%s\n' "${curve[@]}" | median)
  printf '%-9s job over tcp (%d steps, median of %d): clear %.0f samples/s   curve %.0f samples/s   ratio %.2f   (runs: %s | %s)\n' \
    "$kind" "$steps" "$reps" "$c" "$e" "$(awk -v a="$e" -v b="$c" 'BEGIN {print a/b}')" "${clear[*]}" "${curve[*]}"
done
