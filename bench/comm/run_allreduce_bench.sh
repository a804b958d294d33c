#!/usr/bin/env bash
# Side-by-side allreduce comparison on this host: dtrain's shared-memory
# allreduce, OpenMPI MPI_Allreduce, PyTorch gloo all_reduce (when torch
# imports) and single-core memcpy as the ceiling, for 2 and 4 processes and
# 4 KiB .. 64 MiB. Medians over repetitions; bus bandwidth 2(n-1)/n*bytes/time.
#
# usage: bench/comm/run_allreduce_bench.sh [build-dir]   (default: build)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-$here/../../build}"
bench="$build/bench/comm/allreduce_bench"
mpi_bench="$build/bench/comm/mpi_allreduce_bench"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[[ -x "$bench" ]] || { echo "missing $bench: build the allreduce_bench target" >&2; exit 1; }
have_mpi=0; [[ -x "$mpi_bench" ]] && command -v mpirun >/dev/null && have_mpi=1
have_gloo=0; /usr/bin/python3 -c "import torch.distributed" 2>/dev/null && have_gloo=1

reps_for() {  # fewer repetitions for the large sizes
  if (( $1 >= 16 << 20 )); then echo 7; elif (( $1 >= 1 << 20 )); then echo 21; else echo 201; fi
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

printf "%-6s %-6s | %-22s | %-22s | %-22s | %-10s | %-8s %-8s\n" ranks size \
  "dtrain-shm us  GB/s" "openmpi us  GB/s" "gloo us  GB/s" "memcpy GB/s" "dt/mpi" "dt/gloo"
for ranks in 2 4; do
  for bytes in 4096 65536 1048576 16777216 67108864; do
    reps=$(reps_for "$bytes")
    dt=$("$bench" shm "$ranks" "$bytes" "$reps")
    mc=$("$bench" memcpy 1 "$bytes" "$reps")
    mpi="n/a"; gloo="n/a"
    (( have_mpi )) && mpi=$(mpirun -np "$ranks" --oversubscribe "$mpi_bench" "$bytes" "$reps" 2>/dev/null | grep openmpi || true)
    (( have_gloo )) && gloo=$(/usr/bin/python3 "$here/gloo_allreduce_bench.py" "$ranks" "$bytes" "$reps" 2>/dev/null | grep gloo || true)
    dt_us=$(echo "$dt" | field median_us); dt_bw=$(echo "$dt" | field busbw_gbs)
    mpi_us=$(echo "$mpi" | field median_us); mpi_bw=$(echo "$mpi" | field busbw_gbs)
    gl_us=$(echo "$gloo" | field median_us); gl_bw=$(echo "$gloo" | field busbw_gbs)
    mc_bw=$(echo "$mc" | field busbw_gbs)
    ratio() { [[ -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }' || echo "n/a"; }
    printf "%-6s %-6s | %10s %10s | %10s %10s | %10s %10s | %10s | %-8s %-8s\n" "$ranks" \
      "$((bytes / 1024))K" "$dt_us" "$dt_bw" "${mpi_us:-n/a}" "${mpi_bw:-n/a}" "${gl_us:-n/a}" \
      "${gl_bw:-n/a}" "$mc_bw" "$(ratio "$dt_us" "$mpi_us")" "$(ratio "$dt_us" "$gl_us")"
  done
done
echo "ratios are speed-ups: dt/mpi = MPI time / dtrain time (> 1: dtrain faster)."
