#!/usr/bin/env bash
# The cost of frame authentication, in two parts:
#   1. mac_bench (bench/comm/mac_bench.cpp): GB/s of each per-frame MAC
#      option on one core (keyed BLAKE2b, the wire's version 1; AES-256-GCM
#      and Poly1305 with a ChaCha20 one-time key, version 2; HMAC-SHA-256
#      from libsodium and OpenSSL; memcpy the ceiling) for 64 B to 16 MiB
#      frames, medians of SAMPLES samples of BYTES each, ratio to memcpy in
#      the same run;
#   2. with PS_REPS > 0: bench/ps/push_pull_bench, whose mac=0 and mac=1 rows
#      are the parameter server without and with a job secret, same run; with
#      BASELINE_BUILD set (a build of another commit, e.g. main's wire version
#      1), its push_pull_bench runs right after, for the change.
# Usage: bench/comm/run_mac_bench.sh [SAMPLES] [BYTES] [PS_REPS]
#   BUILD_DIR=build BASELINE_BUILD=/path/to/old/build bench/comm/run_mac_bench.sh 7 67108864 5
# Needs: scripts/build.sh release (targets mac_bench, push_pull_bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
samples=${1:-7}
bytes=${2:-67108864}
ps_reps=${3:-0}
build=${BUILD_DIR:-build}
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$build/bench/comm/mac_bench" "$samples" "$bytes"
if ((ps_reps > 0)); then
  echo "push_pull_bench ($build):"
  "$build/bench/ps/push_pull_bench" "$ps_reps"
  if [[ -n ${BASELINE_BUILD:-} ]]; then
    echo "push_pull_bench ($BASELINE_BUILD):"
    "$BASELINE_BUILD/bench/ps/push_pull_bench" "$ps_reps"
  fi
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
