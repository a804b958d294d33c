#!/usr/bin/env bash
# Federated learning benchmark (issue 12, "Must show"). Stages:
#
#   paper     the FedAvg paper's MNIST rows (McMahan et al. 2017, Tables 1-2):
#             rounds to the target test accuracy, K = 100, C = 0.1, for each
#             learning rate of LRS, against the paper's rounds:
#               2nn-iid     2NN, E 1, B 10, IID, 97%        (paper 87)
#               2nn-shards  2NN, E 1, B 10, pathological, 97% (paper 664)
#               cnn-iid     CNN, E 5, B 10, IID, 99%        (paper 20)
#               fedsgd      2NN, FedSGD (E 1, B inf), IID, 97% (paper 1474),
#                           at most FEDSGD_ROUNDS rounds
#             PAPER_RUNS picks a subset ("2nn-iid cnn-iid").
#   fedprox   pathological split, 50% and 90% stragglers (10x slower):
#             FedAvg (drops them) against FedProx (mu in MUS, keeps their
#             partial work), test accuracy after PROX_ROUNDS rounds.
#   fedadam   pathological split: FedAvg against FedAdam (server lr
#             ADAM_LR, tau ADAM_TAU), accuracy after ADAM_ROUNDS rounds.
#   scale     10,000 clients, C = 0.01, and 1,000 clients, C = 0.1 (2NN):
#             peak RSS (/usr/bin/time), seconds per round, rounds per second,
#             against one process training the same samples per round
#             (`dtrain train`, batch 10) and the PyTorch FedAvg loop
#             (torch_fedavg.py, clients one after another).
#
# Build Release first (scripts/build.sh release). MNIST from MNIST (default
# data/mnist). Variables: DTRAIN (binary), THREADS (simulation threads,
# default 2), KEEP (folder for the runs; default a temp dir), SEED.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DTRAIN=${DTRAIN:-$ROOT/build/src/cli/dtrain}
MNIST=${MNIST:-$ROOT/data/mnist}
THREADS=${THREADS:-2}
SEED=${SEED:-1}
LRS=${LRS:-"0.05 0.1 0.2"}
PAPER_RUNS=${PAPER_RUNS:-"2nn-iid 2nn-shards cnn-iid fedsgd"}
MAX_ROUNDS_2NN=${MAX_ROUNDS_2NN:-900}
MAX_ROUNDS_CNN=${MAX_ROUNDS_CNN:-40}
FEDSGD_ROUNDS=${FEDSGD_ROUNDS:-2000}
FEDSGD_LRS=${FEDSGD_LRS:-"0.5"}
PROX_ROUNDS=${PROX_ROUNDS:-100}
MUS=${MUS:-"0.01 1"}
PROX_LR=${PROX_LR:-0.05}
ADAM_ROUNDS=${ADAM_ROUNDS:-100}
ADAM_LR=${ADAM_LR:-0.01}
ADAM_TAU=${ADAM_TAU:-0.001}
KEEP=${KEEP:-$(mktemp -d /tmp/fl-bench.XXXXXX)}
mkdir -p "$KEEP"
SUMMARIZE="/usr/bin/python3 $ROOT/bench/fl/summarize.py"

# fl JOB NAME [--set k=v ...]: one simulation into $KEEP/NAME.
fl() {
  local job=$1 name=$2
  shift 2
  rm -rf "${KEEP:?}/$name"
  "$DTRAIN" fl "$ROOT/examples/$job" --output "$KEEP/$name" --threads "$THREADS" \
    --set "job.seed=$SEED" --set "data.path=$MNIST" --set train.tensorboard=false "$@" \
    > "$KEEP/$name.log" 2>&1 || { echo "$name failed: tail of $KEEP/$name.log" >&2; tail -5 "$KEEP/$name.log" >&2; }
}

stage_paper() {
  for run in $PAPER_RUNS; do
    case $run in
      2nn-iid) job=fl_mnist_2nn.toml; target=0.97; paper=87; lrs=$LRS; max=$MAX_ROUNDS_2NN
               extra=(--set data.partition=iid) ;;
      2nn-shards) job=fl_mnist_2nn.toml; target=0.97; paper=664; lrs=$LRS; max=$MAX_ROUNDS_2NN
               extra=(--set data.partition=shards) ;;
      cnn-iid) job=fl_mnist_cnn.toml; target=0.99; paper=20; lrs=$LRS; max=$MAX_ROUNDS_CNN
               extra=(--set data.partition=iid) ;;
      fedsgd)  job=fl_mnist_2nn.toml; target=0.97; paper=1474; lrs=$FEDSGD_LRS; max=$FEDSGD_ROUNDS
               extra=(--set data.partition=iid --set fl.algorithm=fedsgd --set fl.local_batch=0 --set fl.eval_every=10) ;;
      *) echo "unknown paper run $run" >&2; exit 2 ;;
    esac
    for lr in $lrs; do
      name="paper-$run-lr$lr"
      fl "$job" "$name" --set "optimizer.lr=$lr" --set "fl.rounds=$max" \
        --set "fl.target_accuracy=$target" "${extra[@]}"
      $SUMMARIZE --target "$target" "$name=$KEEP/$name/metrics.jsonl" |
        /usr/bin/python3 -c "import json,sys
for l in sys.stdin:
  r=json.loads(l); t=r['rounds_to_target']
  print(json.dumps({**r,'paper_rounds':$paper,'ratio_to_paper':(t/$paper if t else None)}))"
    done
  done
}

stage_fedprox() {
  for s in 0.5 0.9; do
    fl fl_mnist_2nn.toml "prox-fedavg-s$s" --set data.partition=shards --set "fl.rounds=$PROX_ROUNDS" \
      --set "fl.stragglers=$s" --set "optimizer.lr=$PROX_LR"
    runs=("fedavg-s$s=$KEEP/prox-fedavg-s$s/metrics.jsonl")
    for mu in $MUS; do
      fl fl_mnist_2nn.toml "prox-fedprox-mu$mu-s$s" --set data.partition=shards \
        --set "fl.rounds=$PROX_ROUNDS" --set "fl.stragglers=$s" --set fl.algorithm=fedprox \
        --set "fl.proximal_mu=$mu" --set "optimizer.lr=$PROX_LR"
      runs+=("fedprox-mu$mu-s$s=$KEEP/prox-fedprox-mu$mu-s$s/metrics.jsonl")
    done
    $SUMMARIZE --target 0.97 "${runs[@]}"
  done
}

stage_fedadam() {
  fl fl_mnist_2nn.toml adam-fedavg --set data.partition=shards --set "fl.rounds=$ADAM_ROUNDS" \
    --set "optimizer.lr=$PROX_LR"
  fl fl_mnist_2nn.toml adam-fedadam --set data.partition=shards --set "fl.rounds=$ADAM_ROUNDS" \
    --set "optimizer.lr=$PROX_LR" --set fl.server_optimizer=adam --set "fl.server_lr=$ADAM_LR" \
    --set "fl.server_tau=$ADAM_TAU"
  $SUMMARIZE --target 0.97 "fedavg=$KEEP/adam-fedavg/metrics.jsonl" \
    "fedadam=$KEEP/adam-fedadam/metrics.jsonl"
}

stage_scale() {
  local rounds=${SCALE_ROUNDS:-20}
  for cfg in "10000 0.01" "1000 0.1"; do
    set -- $cfg
    name="scale-k$1"
    /usr/bin/time -v -o "$KEEP/$name.time" true
    rm -rf "${KEEP:?}/$name"
    /usr/bin/time -v -o "$KEEP/$name.time" "$DTRAIN" fl "$ROOT/examples/fl_mnist_2nn.toml" \
      --output "$KEEP/$name" --threads "$THREADS" --set "data.path=$MNIST" \
      --set train.tensorboard=false --set "fl.clients=$1" --set "fl.fraction=$2" \
      --set "fl.rounds=$rounds" --set "fl.eval_every=$rounds" > "$KEEP/$name.log" 2>&1
    rss=$(awk -F: '/Maximum resident/ {print $2+0}' "$KEEP/$name.time")
    # One process, the same samples as a round (C K clients x 60000/K samples, E = 1, B = 10).
    samples=$(/usr/bin/python3 -c "print(max(1, round($1 * $2)) * (60000 // $1))")
    rm -rf "${KEEP:?}/$name-central"
    "$DTRAIN" train "$ROOT/examples/fl_mnist_2nn.toml" --output "$KEEP/$name-central" \
      --threads 1 --set "data.path=$MNIST" --set train.tensorboard=false \
      --set train.batch_size=10 --set "train.max_steps=$((samples / 10))" --set train.epochs=1 \
      --set train.log_every_steps=10 \
      > "$KEEP/$name-central.log" 2>&1
    torch_json=$(/usr/bin/python3 "$ROOT/bench/fl/torch_fedavg.py" --mnist "$MNIST" --clients "$1" \
      --fraction "$2" --rounds 5 --threads 1 | tail -2)
    /usr/bin/python3 - "$KEEP/$name/metrics.jsonl" "$KEEP/$name-central/metrics.jsonl" "$rss" \
      "$samples" "$1" "$2" "$torch_json" <<'PY'
import json, statistics, sys
fl, central, rss, samples, k, c, torch_lines = sys.argv[1:]
rounds = [json.loads(l) for l in open(fl) if '"round"' in l and l.strip().startswith("{")]
rounds = [r for r in rounds if r.get("event") == "round"]
s = statistics.median(r["seconds"] for r in rounds)
events = [json.loads(l) for l in open(central) if l.strip().startswith("{")]
rate = statistics.median(e["samples_per_s"] for e in events if e["event"] == "step")
central_s = int(samples) / rate  # training only: no data loading, no evaluation
t = [json.loads(l) for l in torch_lines.splitlines()]
torch_round = statistics.median(e["seconds"] for e in t if e["event"] == "round") if any(e["event"] == "round" for e in t) else None
print(json.dumps({"clients": int(k), "fraction": float(c), "rounds": len(rounds),
                  "peak_rss_mib": int(rss) / 1024, "median_round_s": s, "rounds_per_s": 1 / s,
                  "central_same_samples_s": central_s, "round_over_central": s / central_s,
                  "torch_round_s": torch_round,
                  "torch_over_dtrain": (torch_round / s) if torch_round else None}))
PY
  done
}

for stage in "${@:-paper}"; do
  echo "== $stage (runs in $KEEP)"
  "stage_$stage"
done
