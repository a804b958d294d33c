#!/usr/bin/env bash
# Configures and builds dtrain. Usage: scripts/build.sh [release|asan|tsan]
#   release: build/       (optimised, what the main job runs)
#   asan:    build-asan/  (AddressSanitizer + UndefinedBehaviorSanitizer, what the tests run)
#   tsan:    build-tsan/  (ThreadSanitizer; scripts/test.sh runs its 'threaded' tests)
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
# ccache: paths relative to the checkout, so that a clean clone elsewhere hits the cache.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
# Room for the release, ASan and TSan trees together: at ccache's default 5 GB
# the three evict each other and a test run rebuilds from scratch.
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-10G}
jobs=${DTRAIN_BUILD_JOBS:-$(nproc)}
case "$kind" in
  release)
    dir=build
    args=(-DCMAKE_BUILD_TYPE=Release) ;;
  asan)
    # The benchmarks are built here too, so that a change that breaks them
    # fails the test build (they are run from the release build).
    dir=build-asan
    args=(-DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" -DDTRAIN_SANITIZE=ON
          -DDTRAIN_WERROR=ON -DDTRAIN_BUILD_BENCH=ON) ;;
  tsan)
    dir=build-tsan
    args=(-DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" -DDTRAIN_TSAN=ON
          -DDTRAIN_WERROR=ON -DDTRAIN_BUILD_BENCH=OFF) ;;
  *) echo "usage: $0 [release|asan|tsan]" >&2; exit 2 ;;
esac
if [[ ! -f "$dir/build.ninja" ]]; then
  cmake -S . -B "$dir" -G Ninja "${args[@]}" >/dev/null
fi
cmake --build "$dir" -j "$jobs"
