#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the packages,
# fetches MNIST, builds with ASan + UBSan, runs every test under ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/check_layering.sh
scripts/fetch_mnist.sh
scripts/build.sh asan
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OPENBLAS_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd build-asan
ctest --output-on-failure --timeout 600 -j "${DTRAIN_TEST_JOBS:-2}" "$@"
