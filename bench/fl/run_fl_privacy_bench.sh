#!/usr/bin/env bash
# Privacy in federated rounds (issue 13): MNIST 2NN, K = 100, C = 0.1, IID,
# E = 1, B = 10 (examples/fl_mnist_2nn.toml, lr 0.1), in the simulation.
#
#   secagg  FedAvg with secure aggregation (full graph, clip SECAGG_CLIP)
#           against without, ROUNDS rounds each, same seed: final test
#           accuracy and their difference (the goal: within 0.2 points),
#           and the median seconds per round of each.
#   dp      DP-FedAvg (uniform weights, clip S = DP_CLIP, fixed denominator
#           m = 10) for each noise multiplier z of ZS, DP_ROUNDS rounds:
#           (epsilon at delta 1e-5, final test accuracy). With K = 100 the
#           sampling rate is q = 0.1 and the privacy is weak: McMahan et al.
#           2018 need K in the hundreds of thousands for small epsilon.
#   dpsec   one DP run with secure aggregation (distributed noise), z = DP_SEC_Z.
#
# Build Release first (scripts/build.sh release, or the dtrain target). MNIST
# from MNIST (default data/mnist). Variables: DTRAIN, THREADS (default 2),
# KEEP (folder for the runs), SEED, STAGES ("secagg dp dpsec").
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DTRAIN=${DTRAIN:-$ROOT/build/src/cli/dtrain}
MNIST=${MNIST:-$ROOT/data/mnist}
THREADS=${THREADS:-2}
SEED=${SEED:-1}
ROUNDS=${ROUNDS:-30}
SECAGG_CLIP=${SECAGG_CLIP:-1.0}
DP_ROUNDS=${DP_ROUNDS:-50}
DP_CLIP=${DP_CLIP:-1.0}
ZS=${ZS:-"0.5 1 2"}
DP_SEC_Z=${DP_SEC_Z:-1}
STAGES=${STAGES:-"secagg dp dpsec"}
KEEP=${KEEP:-$(mktemp -d /tmp/fl-privacy-bench.XXXXXX)}
mkdir -p "$KEEP"

echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores; runs in $KEEP"

# fl NAME [--set k=v ...]: one simulation of the 2NN job into $KEEP/NAME.
fl() {
  local name=$1
  shift
  rm -rf "${KEEP:?}/$name"
  "$DTRAIN" fl "$ROOT/examples/fl_mnist_2nn.toml" --output "$KEEP/$name" --threads "$THREADS" \
    --set "job.seed=$SEED" --set "data.path=$MNIST" --set train.tensorboard=false \
    --set data.partition=iid --set fl.target_accuracy=0 --set fl.checkpoint_every=0 "$@" \
    > "$KEEP/$name.log" 2>&1 || { echo "$name failed: tail of $KEEP/$name.log" >&2; tail -5 "$KEEP/$name.log" >&2; }
}

# summary NAME: one JSON line from its metrics.jsonl (last accuracy, median
# seconds a round, last epsilon).
summary() {
  /usr/bin/python3 - "$1" "$KEEP/$1/metrics.jsonl" <<'PY'
import json, statistics, sys
name, path = sys.argv[1], sys.argv[2]
rounds = [json.loads(l) for l in open(path) if '"event": "round"' in l or '"event":"round"' in l]
acc = [r["test_accuracy"] for r in rounds if r.get("test_accuracy") is not None]
out = {"run": name, "rounds": len(rounds),
       "accuracy": acc[-1] if acc else None,
       "median_round_s": statistics.median(r["seconds"] for r in rounds) if rounds else None,
       "failed_rounds": sum(1 for r in rounds if r.get("failed")),
       "epsilon": rounds[-1].get("epsilon") if rounds else None,
       "epsilon_classic": rounds[-1].get("epsilon_classic") if rounds else None}
print(json.dumps(out), flush=True)
PY
}

for stage in $STAGES; do
  case $stage in
    secagg)
      fl plain --set "fl.rounds=$ROUNDS"
      fl secure --set "fl.rounds=$ROUNDS" --set fl.secure_aggregation=true \
        --set "fl.secagg_clip=$SECAGG_CLIP"
      summary plain
      summary secure
      /usr/bin/python3 - "$KEEP" <<'PY'
import json, sys
def last(name):
    acc = [json.loads(l).get("test_accuracy") for l in open(f"{sys.argv[1]}/{name}/metrics.jsonl")]
    return [a for a in acc if a is not None][-1]
print(json.dumps({"secure_minus_plain_points": 100 * (last("secure") - last("plain"))}))
PY
      ;;
    dp)
      for z in $ZS; do
        fl "dp-z$z" --set "fl.rounds=$DP_ROUNDS" --set "fl.dp_clip=$DP_CLIP" \
          --set "fl.dp_noise_multiplier=$z"
        summary "dp-z$z"
      done
      ;;
    dpsec)
      fl "dpsec-z$DP_SEC_Z" --set "fl.rounds=$DP_ROUNDS" --set "fl.dp_clip=$DP_CLIP" \
        --set "fl.dp_noise_multiplier=$DP_SEC_Z" --set fl.secure_aggregation=true \
        --set "fl.secagg_clip=$SECAGG_CLIP"
      summary "dpsec-z$DP_SEC_Z"
      ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
