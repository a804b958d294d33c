#!/usr/bin/env bash
# Side-by-side allreduce comparison on this host, like with like over tcp:
# dtrain over ZeroMQ on loopback tcp (no ipc, shared memory off) with a job
# secret (every frame MACed, as a launched job) and without one, OpenMPI
# forced onto tcp (--mca btl tcp,self: no shared memory, no vader), PyTorch
# gloo all_reduce (tcp; when /usr/bin/python3 imports torch); beside them
# dtrain's shared-memory allreduce and single-core memcpy as the ceiling.
# 2 and 4 processes, 4 KiB .. 64 MiB. Medians over repetitions; bus
# bandwidth 2(n-1)/n*bytes/time. Prints a Markdown table, then the load
# average (the figures of a loaded machine are only comparable within a row).
#
# With BASELINE_BUILD set (a build of another commit, e.g. main's), each row
# also runs that build's allreduce_bench zmq-tcp and zmq-tcp-nomac right
# after this one's, and adds their times and the speed-ups (baseline time /
# this time, > 1: this build faster), so a loaded machine compares before
# and after within one row.
#
# usage: [BASELINE_BUILD=dir] bench/comm/run_allreduce_bench.sh [build-dir] [ranks...]
#        (default: build, ranks 2 4)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-$here/../../build}"
shift || true
ranks_list=("$@")
(( ${#ranks_list[@]} )) || ranks_list=(2 4)
bench="$build/bench/comm/allreduce_bench"
mpi_bench="$build/bench/comm/mpi_allreduce_bench"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[[ -x "$bench" ]] || { echo "missing $bench: build the allreduce_bench target" >&2; exit 1; }
have_mpi=0; [[ -x "$mpi_bench" ]] && command -v mpirun >/dev/null && have_mpi=1
have_gloo=0; /usr/bin/python3 -c "import torch.distributed" 2>/dev/null && have_gloo=1
base_bench=""
if [[ -n "${BASELINE_BUILD:-}" ]]; then
  base_bench="$BASELINE_BUILD/bench/comm/allreduce_bench"
  [[ -x "$base_bench" ]] || { echo "missing $base_bench" >&2; exit 1; }
fi

reps_for() {  # fewer repetitions for the large sizes
  if (( $1 >= 16 << 20 )); then echo 7; elif (( $1 >= 1 << 20 )); then echo 21; else echo 201; fi
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
# ratio <dtrain us> <other us>: other / dtrain (> 1: dtrain faster)
ratio() { [[ -n "$1" && -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }' || echo "n/a"; }
cell() { [[ -n "$1" ]] && echo "$1 / $2" || echo "n/a"; }
size_name() { if (( $1 >= 1 << 20 )); then echo "$(($1 >> 20)) MiB"; else echo "$(($1 >> 10)) KiB"; fi; }

base_head=""; base_rule=""
[[ -n "$base_bench" ]] && base_head=" base-tcp µs | base-nomac µs | tcp base/now | nomac base/now |" && base_rule="---|---|---|---|"
echo "| ranks | size | dtrain-shm µs / GB/s | dtrain-tcp µs / GB/s | dtrain-tcp-nomac µs / GB/s | OpenMPI-tcp µs / GB/s | gloo µs / GB/s | memcpy GB/s | tcp/mpi | tcp/gloo | nomac/mpi | nomac/gloo |$base_head"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|$base_rule"
for ranks in "${ranks_list[@]}"; do
  for bytes in 4096 65536 1048576 16777216 67108864; do
    reps=$(reps_for "$bytes")
    shm=$("$bench" shm "$ranks" "$bytes" "$reps" || true)
    tcp=$("$bench" zmq-tcp "$ranks" "$bytes" "$reps" || true)
    nomac=$("$bench" zmq-tcp-nomac "$ranks" "$bytes" "$reps" || true)
    base_tcp=""; base_nm=""
    if [[ -n "$base_bench" ]]; then
      base_tcp=$("$base_bench" zmq-tcp "$ranks" "$bytes" "$reps" || true)
      base_nm=$("$base_bench" zmq-tcp-nomac "$ranks" "$bytes" "$reps" || true)
    fi
    mc=$("$bench" memcpy 1 "$bytes" "$reps")
    mpi=""; gloo=""
    (( have_mpi )) && mpi=$(mpirun -np "$ranks" --oversubscribe --mca btl tcp,self "$mpi_bench" "$bytes" "$reps" 2>/dev/null | grep openmpi || true)
    (( have_gloo )) && gloo=$(/usr/bin/python3 "$here/gloo_allreduce_bench.py" "$ranks" "$bytes" "$reps" 2>/dev/null | grep gloo || true)
    shm_us=$(echo "$shm" | field median_us); shm_bw=$(echo "$shm" | field busbw_gbs)
    tcp_us=$(echo "$tcp" | field median_us); tcp_bw=$(echo "$tcp" | field busbw_gbs)
    nm_us=$(echo "$nomac" | field median_us); nm_bw=$(echo "$nomac" | field busbw_gbs)
    mpi_us=$(echo "$mpi" | field median_us); mpi_bw=$(echo "$mpi" | field busbw_gbs)
    gl_us=$(echo "$gloo" | field median_us); gl_bw=$(echo "$gloo" | field busbw_gbs)
    mc_bw=$(echo "$mc" | field busbw_gbs)
    base_cells=""
    if [[ -n "$base_bench" ]]; then
      bt_us=$(echo "$base_tcp" | field median_us); bn_us=$(echo "$base_nm" | field median_us)
      base_cells=" ${bt_us:-n/a} | ${bn_us:-n/a} | $(ratio "$tcp_us" "$bt_us") | $(ratio "$nm_us" "$bn_us") |"
    fi
    echo "| $ranks | $(size_name "$bytes") | $(cell "$shm_us" "$shm_bw") | $(cell "$tcp_us" "$tcp_bw") | $(cell "$nm_us" "$nm_bw") | $(cell "$mpi_us" "$mpi_bw") | $(cell "$gl_us" "$gl_bw") | $mc_bw | $(ratio "$tcp_us" "$mpi_us") | $(ratio "$tcp_us" "$gl_us") | $(ratio "$nm_us" "$mpi_us") | $(ratio "$nm_us" "$gl_us") |$base_cells"
  done
done
echo
echo "Ratios are speed-ups: tcp/mpi = OpenMPI-tcp time / dtrain-tcp time (> 1: dtrain faster);"
echo "nomac: dtrain over tcp without a job secret (OpenMPI and gloo authenticate nothing)."
echo "Load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores."
