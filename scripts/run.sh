#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: installs the packages,
# fetches MNIST, builds dtrain (Release) and trains the MNIST MLP with two
# local workers. Any arguments replace the default job and options, e.g.
#   scripts/run.sh examples/mnist_lenet5.toml --workers 2
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch_mnist.sh
scripts/build.sh release >/dev/null
export OPENBLAS_NUM_THREADS=1
if [[ $# -eq 0 ]]; then
  set -- examples/mnist_mlp.toml --workers 2 --no-resume
fi
exec build/src/cli/dtrain train "$@"
