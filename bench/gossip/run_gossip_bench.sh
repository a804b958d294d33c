#!/usr/bin/env bash
# Gossip training (issue 14, "Must show"): accuracy of D-PSGD and AD-PSGD,
# time to target against allreduce with a straggler and with one slow link,
# and a worker SIGKILLed mid-training. Runs in stages; each prints what it
# ran and a table.
#
# Stages (STAGES="accuracy straggler slowlink kill", or the stage names as
# arguments; default: all four):
#   accuracy   MNIST MLP, WORKERS_LIST (4 8) x TOPOLOGIES (ring exponential)
#              x MODES (sync async), ACC_EPOCHS (10) epochs, no emulation:
#              the final test accuracy of the averaged model (what the chief
#              evaluates) and of worker 0's own model (test_accuracy_worker0),
#              and the last consensus distance. Goal: averaged >= 98.0%.
#   straggler  8 workers on an emulated cluster, one node per core as in
#              bench/strategy/run_dynamic_batch_bench.sh: every worker
#              --slowdown all=BASE (it computes, then sleeps BASE - 1 times
#              its compute time, so 8 workers need 8/BASE cores; BASE = 8:
#              one core), rank 3 FACTOR x BASE (FACTOR = 3: 3x slower than the
#              others). Runs allreduce, gossip sync and gossip async (each
#              topology of STRAGGLER_TOPOLOGIES; RUNS="allreduce sync async"
#              picks), interleaved per repetition,
#              REPS times (STOP_AT_TARGET=1, the default: each run is stopped
#              once it reached TARGET); figure: wall seconds from the run's first
#              metrics event to the first epoch whose test accuracy >= TARGET
#              (evaluation included), the median; ratios allreduce/gossip.
#              Goal: allreduce/async >= 1.5x.
#   slowlink   the same runs, every worker at BASE but none slowed, every
#              link emulated (distributed.link_mbps = LINK_MBPS,
#              link_latency_ms = LINK_LATENCY_MS; no shared memory) and rank
#              3's link SLOW_LINK times slower (--slow-link 3=SLOW_LINK).
#   kill       8 gossip workers (KILL_MODE, KILL_TOPOLOGY), KILL_EPOCHS
#              epochs: fault-free, then rank KILL_RANK SIGKILLed after step
#              KILL_STEP (default: half the run) by the test hook
#              DTRAIN_TEST_KILL_AT_STEP (cli/test_hooks.h), no restart; the
#              job must finish (exit 0) within TIMEOUT_S; figure: the
#              final accuracy difference. Goal: within 0.5 points.
# The CPU the job used (user + system seconds of dtrain and its workers per
# wall second) is printed per run, to show the emulation holds (well below
# the cores).
#
# Usage: [STAGES=...] [MNIST=data/mnist] [BATCH=128] [REPS=3] [TARGET=0.98]
#        [ACC_EPOCHS=10] [TTT_EPOCHS=10] [BASE=8] [FACTOR=3] [LINK_MBPS=1000]
#        [LINK_LATENCY_MS=0.1] [SLOW_LINK=10] [STRAGGLER_TOPOLOGIES=exponential]
#        [RUNS="allreduce sync async"] [STOP_AT_TARGET=1]
#        [WORKERS_LIST="4 8"] [TOPOLOGIES="ring exponential"] [MODES="sync async"]
#        [KILL_EPOCHS=10] [KILL_RANK=5] [KILL_STEP=...] [KILL_MODE=sync]
#        [KILL_TOPOLOGY=exponential] [TIMEOUT_S=3600 per run] [KEEP=dir]
#        [EXTRA_ARGS="dtrain args for every run"] [TRAIN_SAMPLES=60000 (KILL_STEP's default)]
#        bench/gossip/run_gossip_bench.sh [STAGE...]
# Needs a Release build of dtrain in ${DTRAIN_BUILD:-build} and MNIST (never
# downloaded here: MNIST names its folder). KEEP=dir keeps every run's output
# folder there (default: a temporary folder, removed at exit).
set -euo pipefail
cd "$(dirname "$0")/../.."
stages=${*:-${STAGES:-accuracy straggler slowlink kill}}
mnist=${MNIST:-data/mnist}
batch=${BATCH:-128}
reps=${REPS:-3}
target=${TARGET:-0.98}
acc_epochs=${ACC_EPOCHS:-10}
ttt_epochs=${TTT_EPOCHS:-10}
base=${BASE:-8}
factor=${FACTOR:-3}
link_mbps=${LINK_MBPS:-1000}
link_latency_ms=${LINK_LATENCY_MS:-0.1}
slow_link=${SLOW_LINK:-10}
straggler_topologies=${STRAGGLER_TOPOLOGIES:-exponential}
ttt_runs=${RUNS:-allreduce sync async}
workers_list=${WORKERS_LIST:-4 8}
topologies=${TOPOLOGIES:-ring exponential}
modes=${MODES:-sync async}
kill_epochs=${KILL_EPOCHS:-10}
kill_rank=${KILL_RANK:-5}
kill_mode=${KILL_MODE:-sync}
kill_topology=${KILL_TOPOLOGY:-exponential}
timeout_s=${TIMEOUT_S:-3600}
# shellcheck disable=SC2206
extra_args=(${EXTRA_ARGS:-})  # added to every run (a quick check: --set data.train_limit=6000)
train_samples=${TRAIN_SAMPLES:-60000}
steps_per_epoch=$(((train_samples + batch - 1) / batch))
kill_step=${KILL_STEP:-$((kill_epochs * steps_per_epoch / 2))}
bin=${DTRAIN_BUILD:-build}/src/cli/dtrain
summarize=bench/gossip/summarize_metrics.py
[[ -x $bin ]] || { echo "build first: scripts/build.sh release (or set DTRAIN_BUILD)" >&2; exit 1; }
[[ -f $mnist/train-images-idx3-ubyte || -f $mnist/train-images-idx3-ubyte.gz ]] ||
  { echo "needs MNIST in $mnist (set MNIST=folder; scripts/fetch_mnist.sh fetches it)" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
if [[ -n ${KEEP:-} ]]; then
  work=$KEEP
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
slow_factor=$(awk -v b="$base" -v f="$factor" 'BEGIN { print b * f }')
ncores=$(getconf _NPROCESSORS_ONLN)

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v s="$1" -v d="$2" 'BEGIN { if (s == "inf" || d == "inf") print "n/a"; else printf "%.2fx", s / d }'; }
# GNU time's last line (a failed command's status line comes first).
times_of() { tail -1 "$1"; }
cores_used() { read -r user sys wall < <(times_of "$1"); awk -v u="$user" -v s="$sys" -v w="$wall" 'BEGIN { printf "%.2f", (u + s) / w }'; }

# dtrain on the MNIST MLP: OUT STRATEGY WORKERS EPOCHS [dtrain args...]; its
# CPU and wall seconds go to OUT.time, its output to OUT.log. Returns
# dtrain's exit status (124: TIMEOUT_S passed).
train() {
  local out=$1 strategy=$2 workers=$3 epochs=$4
  shift 4
  echo "  run: dtrain train examples/mnist_mlp.toml --strategy $strategy --workers $workers" \
    "(epochs $epochs) $* ${extra_args[*]}" >&2
  /usr/bin/time -f '%U %S %e' -o "$out.time" \
    timeout "$timeout_s" "$bin" train examples/mnist_mlp.toml --strategy "$strategy" \
    --workers "$workers" --output "$out" --no-resume --progress plain \
    --set data.path="\"$mnist\"" --set train.epochs="$epochs" --set train.batch_size="$batch" \
    --set train.log_every_steps=100 "$@" "${extra_args[@]}" > "$out.log" 2>&1
}
# As train(), but with STOP_AT_TARGET=1 (the default) the run is stopped
# (SIGTERM to its `timeout`, which passes it on to dtrain and its workers)
# once an epoch event reached TARGET: the figure is read from metrics.jsonl
# and the epochs after it only cost time. Returns 0 then.
train_to_target() {
  local out=$1
  if [[ ${STOP_AT_TARGET:-1} != 1 ]]; then
    train "$@"
    return
  fi
  train "$@" &
  local job=$! reached=0
  while kill -0 "$job" 2>/dev/null; do
    if [[ -f $out/metrics.jsonl ]] &&
      [[ $(/usr/bin/python3 "$summarize" ttt "$out/metrics.jsonl" "$target") != inf* ]]; then
      reached=1
      stop_timeout_under "$job"
      break
    fi
    sleep 1
  done
  local status=0
  wait "$job" || status=$?
  [[ $reached == 1 ]] || return "$status"
  echo "  (stopped once it reached $target)" >&2
}
# SIGTERM to the first `timeout` process under PID (breadth first).
stop_timeout_under() {
  local queue=("$1") p
  while ((${#queue[@]})); do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    if [[ $(cat "/proc/$p/comm" 2>/dev/null) == timeout ]]; then
      kill -TERM "$p" 2>/dev/null || true
      return
    fi
    # shellcheck disable=SC2207
    queue+=($(cat "/proc/$p/task/$p/children" 2>/dev/null))
  done
}
# Gossip's options as --set arguments: MODE TOPOLOGY.
gossip_args() {
  echo --set distributed.gossip.mode="\"$1\"" --set distributed.gossip.topology="\"$2\""
}
failed() { echo "the run $1 failed; its log:" >&2; tail -30 "$1.log" >&2; exit 1; }

stage_accuracy() {
  echo "== accuracy: MNIST MLP, $acc_epochs epochs, global batch $batch, no emulation"
  printf '%-8s %-12s %-6s %10s %10s %10s %11s %8s\n' workers topology mode averaged worker0 \
    consensus seconds cores
  for workers in $workers_list; do
    for topology in $topologies; do
      for mode in $modes; do
        local out="$work/acc-$workers-$topology-$mode"
        # shellcheck disable=SC2046
        train "$out" gossip "$workers" "$acc_epochs" $(gossip_args "$mode" "$topology") ||
          failed "$out"
        read -r avg w0 _ < <(/usr/bin/python3 "$summarize" final "$out/metrics.jsonl")
        read -r _ _ wall < <(times_of "$out.time")
        printf '%-8s %-12s %-6s %9s%% %9s%% %10s %11s %8s\n' "$workers" "$topology" "$mode" \
          "$avg" "$w0" "$(/usr/bin/python3 "$summarize" consensus "$out/metrics.jsonl")" "$wall" \
          "$(cores_used "$out.time")"
      done
    done
  done
  echo "goal: averaged model >= 98.00% in every row"
}

# The straggler and slow-link stages: STAGE (straggler|slowlink).
stage_time_to_target() {
  local stage=$1 emulation=(--slowdown "all=$base")
  if [[ $stage == straggler ]]; then
    emulation+=(--slowdown "3=$slow_factor")
    echo "== straggler: 8 workers, every worker --slowdown all=$base (a node per core: 8 workers" \
      "need $(awk -v b="$base" 'BEGIN { printf "%.2f", 8 / b }') cores of $ncores), rank 3" \
      "--slowdown 3=$slow_factor (${factor}x slower than the others)"
  else
    emulation+=(--set distributed.link_mbps="$link_mbps"
                --set distributed.link_latency_ms="$link_latency_ms" --slow-link "3=$slow_link")
    echo "== slow link: 8 workers, every worker --slowdown all=$base, every link $link_mbps" \
      "Mbit/s + $link_latency_ms ms emulated, rank 3's --slow-link 3=$slow_link" \
      "($(awk -v m="$link_mbps" -v f="$slow_link" 'BEGIN { print m / f }') Mbit/s," \
      "$(awk -v l="$link_latency_ms" -v f="$slow_link" 'BEGIN { print l * f }') ms)"
  fi
  echo "   target test accuracy $target, at most $ttt_epochs epochs, global batch $batch," \
    "$reps repetition(s), interleaved"
  local runs=()
  for kind in $ttt_runs; do
    if [[ $kind == allreduce ]]; then
      runs+=(allreduce)
    else
      for topology in $straggler_topologies; do runs+=("$kind-$topology"); done
    fi
  done
  declare -A secs epoch acc cores
  for ((r = 0; r < reps; ++r)); do
    for run in "${runs[@]}"; do
      local out="$work/$stage-$run-$r" args=()
      # shellcheck disable=SC2207
      [[ $run == allreduce ]] || args=($(gossip_args "${run%%-*}" "${run#*-}"))
      local strategy=gossip
      [[ $run == allreduce ]] && strategy=allreduce
      train_to_target "$out" "$strategy" 8 "$ttt_epochs" "${emulation[@]}" "${args[@]}" ||
        failed "$out"
      read -r t e a < <(/usr/bin/python3 "$summarize" ttt "$out/metrics.jsonl" "$target")
      secs[$run]+="$t "; epoch[$run]=$e; acc[$run]=$a; cores[$run]+="$(cores_used "$out.time") "
    done
  done
  printf '%-28s %10s %6s %9s %11s\n' run seconds epoch accuracy "cores used"
  declare -A med
  for run in "${runs[@]}"; do
    med[$run]=$(printf '%s\n' ${secs[$run]} | median)
    local label=$run
    [[ $run == allreduce ]] && label="allreduce"
    [[ $run == sync-* ]] && label="gossip D-PSGD (${run#sync-})"
    [[ $run == async-* ]] && label="gossip AD-PSGD (${run#async-})"
    printf '%-28s %10s %6s %9s %11s\n' "$label" "${med[$run]}" "${epoch[$run]}" "${acc[$run]}" \
      "$(printf '%s\n' ${cores[$run]} | median)"
  done
  for run in "${runs[@]}"; do echo "  $run seconds per repetition: ${secs[$run]}"; done
  for topology in $straggler_topologies; do
    echo "$stage ($topology): allreduce/D-PSGD $(ratio "${med[allreduce]:-inf}" "${med[sync-$topology]:-inf}")," \
      "allreduce/AD-PSGD $(ratio "${med[allreduce]:-inf}" "${med[async-$topology]:-inf}")" \
      "$([[ $stage == straggler ]] && echo '(goal: AD-PSGD >= 1.50x)')"
  done
}

stage_kill() {
  echo "== kill: 8 gossip workers ($kill_mode, $kill_topology), $kill_epochs epochs, rank" \
    "$kill_rank SIGKILLed after step $kill_step of $((kill_epochs * steps_per_epoch)), no restart"
  local clean="$work/kill-clean" killed="$work/kill-killed" status=0
  # shellcheck disable=SC2046
  train "$clean" gossip 8 "$kill_epochs" $(gossip_args "$kill_mode" "$kill_topology") ||
    failed "$clean"
  # shellcheck disable=SC2046
  DTRAIN_TEST_KILL_AT_STEP="$kill_rank:$kill_step" \
    train "$killed" gossip 8 "$kill_epochs" $(gossip_args "$kill_mode" "$kill_topology") ||
    status=$?
  read -r a_clean w_clean _ < <(/usr/bin/python3 "$summarize" final "$clean/metrics.jsonl")
  read -r a_killed w_killed e_killed < <(/usr/bin/python3 "$summarize" final "$killed/metrics.jsonl")
  read -r _ _ wall_clean < <(times_of "$clean.time")
  read -r _ _ wall_killed < <(times_of "$killed.time")
  printf '%-12s %6s %10s %10s %8s %9s\n' run exit averaged worker0 epochs seconds
  printf '%-12s %6s %9s%% %9s%% %8s %9s\n' fault-free 0 "$a_clean" "$w_clean" "$kill_epochs" \
    "$wall_clean"
  printf '%-12s %6s %9s%% %9s%% %8s %9s\n' killed "$status" "$a_killed" "$w_killed" "$e_killed" \
    "$wall_killed"
  echo "what the killed run said about it:"
  grep -E "killed by signal|dropped from the|left out of the average|continuing with" \
    "$killed.log" | sed 's/^/  /' | head -20 || true
  if [[ $status == 124 ]]; then
    echo "the killed run did not finish within TIMEOUT_S = $timeout_s s (a hang)"
  elif [[ $status != 0 ]]; then
    echo "the killed run failed (exit $status): tail of its log:"; tail -20 "$killed.log"
  else
    echo "accuracy difference fault-free - killed: $(awk -v a="$a_clean" -v b="$a_killed" \
      'BEGIN { d = a - b; printf "%.2f points: %s", d, (d <= 0.5 && d >= -0.5) ? "within 0.50 (goal met)" : "not within 0.50 (goal missed)" }')"
  fi
}

echo "gossip benchmark: stages [$stages], dtrain $bin, MNIST $mnist, $ncores cores, outputs in $work"
for stage in $stages; do
  case $stage in
    accuracy) stage_accuracy ;;
    straggler | slowlink) stage_time_to_target "$stage" ;;
    kill) stage_kill ;;
    *) echo "unknown stage '$stage' (accuracy, straggler, slowlink, kill)" >&2; exit 2 ;;
  esac
done
echo "load average: $(cut -d" " -f1-3 /proc/loadavg)"
