#!/usr/bin/env bash
# Secure aggregation in the deployed federated mode (issue 13): 1 server and
# 8 client processes on loopback (`dtrain fl JOB --processes`), MNIST 2NN
# (examples/fl_mnist_2nn.toml: 199,210 parameters, IID, E 1, B 10, client
# SGD lr 0.1), fl.clients = 8, fl.fraction = 1, ROUNDS rounds, with and
# without fl.secure_aggregation (full graph, threshold 5 of 8, clip
# SECAGG_CLIP). Prints, per run and repetition, bench/fl/summarize.py's JSON:
# the median seconds per round (the server's round report: from sending the
# tasks to applying the aggregate) and the test accuracy after the last
# round. REPS repetitions, alternating the two modes.
#
# Build Release first (scripts/build.sh release). Variables: DTRAIN (binary),
# MNIST (default data/mnist), ROUNDS (10), REPS (1), SECAGG_CLIP (1.0),
# KEEP (folder for the runs; default a temp dir).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DTRAIN=${DTRAIN:-$ROOT/build/src/cli/dtrain}
MNIST=${MNIST:-$ROOT/data/mnist}
ROUNDS=${ROUNDS:-10}
REPS=${REPS:-1}
SECAGG_CLIP=${SECAGG_CLIP:-1.0}
KEEP=${KEEP:-$(mktemp -d /tmp/fl-secagg-bench.XXXXXX)}
export DTRAIN_JOB_SECRET=${DTRAIN_JOB_SECRET:-fl-secagg-bench-secret}
export OPENBLAS_NUM_THREADS=1

run() {  # NAME SECURE
  local name=$1 secure=$2
  rm -rf "${KEEP:?}/$name"
  "$DTRAIN" fl "$ROOT/examples/fl_mnist_2nn.toml" --processes --output "$KEEP/$name" \
    --set "data.path=$MNIST" --set train.tensorboard=false --set fl.clients=8 \
    --set fl.fraction=1 --set "fl.rounds=$ROUNDS" --set fl.min_fit_clients=4 \
    --set fl.round_timeout_s=60 --set fl.target_accuracy=0 --set "fl.secure_aggregation=$secure" \
    --set "fl.secagg_clip=$SECAGG_CLIP" > "$KEEP/$name.log" 2>&1 ||
    { echo "$name failed: tail of $KEEP/$name.log" >&2; tail -5 "$KEEP/$name.log" >&2; }
}

for rep in $(seq 1 "$REPS"); do
  run "plain-$rep" false
  run "secagg-$rep" true
  /usr/bin/python3 "$ROOT/bench/fl/summarize.py" "plain-$rep=$KEEP/plain-$rep/metrics.jsonl" \
    "secagg-$rep=$KEEP/secagg-$rep/metrics.jsonl"
done
echo "runs in $KEEP"
