#!/usr/bin/env bash
# Restart mode on etcd (issue #19): 3 simulated hosts x 2 workers on
# 127.0.0.1, MNIST MLP, the first host SIGKILLed mid-epoch, against a
# fault-free run in the same invocation (bench/ft/etcd_restart_bench.py).
# Usage, from anywhere: bench/ft/run_etcd_restart_bench.sh [DTRAIN_BINARY] [EPOCHS] [REPEATS]
# (defaults: build/src/cli/dtrain, 2 epochs, 3 repetitions). Needs /usr/bin/etcd and MNIST in
# data/mnist or in the folder MNIST_DIR names.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 bench/ft/etcd_restart_bench.py "${1:-build/src/cli/dtrain}" "${2:-2}" "${3:-3}"
