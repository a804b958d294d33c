#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the packages,
# fetches MNIST, builds with ASan + UBSan and with TSan, runs the tests of the
# modules that run threads (ctest label `threaded`, tests/CMakeLists.txt says
# which) under ThreadSanitizer, then every test under ASan + UBSan, so that the
# output ends with the main suite's ctest summary. A TSan failure stops the
# script there, with that subset's summary last. Arguments go to the main
# suite's ctest; DTRAIN_TEST_TSAN=0 skips the TSan build and subset.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/check_layering.sh
scripts/check_format.sh
scripts/fetch_mnist.sh
scripts/build.sh asan
tsan=${DTRAIN_TEST_TSAN:-1}
[[ "$tsan" == 0 ]] || scripts/build.sh tsan
export OPENBLAS_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
jobs=${DTRAIN_TEST_JOBS:-2}
if [[ "$tsan" != 0 ]]; then
  # TSAN_OPTIONS (tests/tsan.supp) come with each test from CMakeLists.txt.
  (cd build-tsan && ctest --output-on-failure --timeout 600 -j "$jobs" -L threaded)
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd build-asan
ctest --output-on-failure --timeout 600 -j "$jobs" "$@"
