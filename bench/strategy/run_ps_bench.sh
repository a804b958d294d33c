#!/usr/bin/env bash
# MNIST MLP time per epoch: the parameter-server strategy in sync mode (1 and
# 2 servers, 2 workers; and 2 servers co-located in the 2 workers' processes,
# --colocate: 2 processes instead of 4) beside allreduce (2 workers), the same job
# (examples/mnist_mlp.toml: the same updates in both) in one run, one BLAS
# thread per process, medians over interleaved repetitions. An epoch's time is
# the last epoch's "seconds" in metrics.jsonl (training and worker 0's test
# evaluation; the first epoch also pays start-up and is skipped when there
# are several). Prints seconds per epoch and the ps / allreduce ratios.
# With DTRAIN_BASE=path/to/another/dtrain its ps rows are measured too, in
# the same repetitions (interleaved), against the same allreduce.
# The "overlap" rows set distributed.ps.overlap = true (each server's push
# leaves during backward, docs/parameter-server.md "Pushes overlapped with
# backward") and are printed against both allreduce and the same ps row
# without it; OVERLAP=0 leaves them out. JOB=examples/mnist_lenet5.toml
# measures LeNet-5 instead of the MLP (JOB is any job file of the examples).
# Usage: bench/strategy/run_ps_bench.sh [REPS] [EPOCHS]   (DTRAIN=path/to/dtrain)
set -euo pipefail
cd "$(dirname "$0")/../.."
reps=${1:-3}
epochs=${2:-2}
bin=${DTRAIN:-build/src/cli/dtrain}
base=${DTRAIN_BASE:-}
job=${JOB:-examples/mnist_mlp.toml}
overlap=${OVERLAP:-1}
[[ -x $bin ]] || { echo "build first: scripts/build.sh release" >&2; exit 1; }
[[ -f data/mnist/train-images-idx3-ubyte ]] || { echo "fetch MNIST first: scripts/fetch_mnist.sh" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
# run NAME ARGS...: trains, prints the last epoch's seconds.
run() {
  local name=$1 exe=$bin
  shift
  if [[ $1 == --base ]]; then
    exe=$base
    shift
  fi
  if ! "$exe" train "$job" --output "$out/$name" --no-resume --progress none \
      --set train.epochs="$epochs" "$@" >"$out/$name.log" 2>&1; then
    cat "$out/$name.log" >&2
    exit 1
  fi
  grep '"event":"epoch"' "$out/$name/metrics.jsonl" | tail -1 | grep -o '"seconds":[0-9.]*' | cut -d: -f2
}

ar=(); ps1=(); ps2=(); pc2=(); bps1=(); bps2=(); ops1=(); ops2=(); opc2=()
ov=(--set distributed.ps.overlap=true)
for ((r = 0; r < reps; ++r)); do
  ar+=("$(run allreduce --workers 2)")
  ps1+=("$(run ps1 --strategy ps --servers 1 --workers 2)")
  ps2+=("$(run ps2 --strategy ps --servers 2 --workers 2)")
  pc2+=("$(run pc2 --strategy ps --servers 2 --workers 2 --colocate)")
  if [[ $overlap == 1 ]]; then
    ops1+=("$(run ops1 --strategy ps --servers 1 --workers 2 "${ov[@]}")")
    ops2+=("$(run ops2 --strategy ps --servers 2 --workers 2 "${ov[@]}")")
    opc2+=("$(run opc2 --strategy ps --servers 2 --workers 2 --colocate "${ov[@]}")")
  fi
  if [[ -n $base ]]; then
    bps1+=("$(run bps1 --base --strategy ps --servers 1 --workers 2)")
    bps2+=("$(run bps2 --base --strategy ps --servers 2 --workers 2)")
  fi
done
AR=$(printf '%s\n' "${ar[@]}" | median)
P1=$(printf '%s\n' "${ps1[@]}" | median)
P2=$(printf '%s\n' "${ps2[@]}" | median)
C2=$(printf '%s\n' "${pc2[@]}" | median)
printf '%-28s %10s %14s\n' configuration s/epoch "/ allreduce"
printf '%-28s %10.2f %14s\n' "allreduce, 2 workers" "$AR" 1.00
printf '%-28s %10.2f %14s\n' "ps sync, 1 server, 2 workers" "$P1" "$(ratio "$P1" "$AR")"
printf '%-28s %10.2f %14s\n' "ps sync, 2 servers, 2 workers" "$P2" "$(ratio "$P2" "$AR")"
printf '%-28s %10.2f %14s\n' "ps sync, 2 co-located" "$C2" "$(ratio "$C2" "$AR")"
if [[ $overlap == 1 ]]; then
  O1=$(printf '%s\n' "${ops1[@]}" | median)
  O2=$(printf '%s\n' "${ops2[@]}" | median)
  OC=$(printf '%s\n' "${opc2[@]}" | median)
  printf '%-28s %10.2f %14s   %s\n' "ps overlap, 1 server" "$O1" "$(ratio "$O1" "$AR")" \
    "$(ratio "$O1" "$P1") of no overlap"
  printf '%-28s %10.2f %14s   %s\n' "ps overlap, 2 servers" "$O2" "$(ratio "$O2" "$AR")" \
    "$(ratio "$O2" "$P2") of no overlap"
  printf '%-28s %10.2f %14s   %s\n' "ps overlap, 2 co-located" "$OC" "$(ratio "$OC" "$AR")" \
    "$(ratio "$OC" "$C2") of no overlap"
fi
if [[ -n $base ]]; then
  B1=$(printf '%s\n' "${bps1[@]}" | median)
  B2=$(printf '%s\n' "${bps2[@]}" | median)
  printf '%-28s %10.2f %14s\n' "base: ps, 1 server" "$B1" "$(ratio "$B1" "$AR")"
  printf '%-28s %10.2f %14s\n' "base: ps, 2 servers" "$B2" "$(ratio "$B2" "$AR")"
fi
echo "$job: medians of $reps runs of $epochs epochs each; $(getconf _NPROCESSORS_ONLN) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
