# shellcheck shell=bash disable=SC2154
# Shared by run_hooks_bench.sh and run_compress_bench.sh (sourced, from the
# repository root). Expects: $bin (dtrain), $work (a temporary folder),
# $smoke (updates per epoch for a smoke test, 0: off).

here=bench/compress

# The checks every compression benchmark makes before it starts.
check_dtrain_and_data() {
  [[ -x $bin ]] || { echo "no dtrain at $bin: scripts/build.sh release (or set DTRAIN)" >&2; exit 1; }
  [[ -f data/mnist/train-images-idx3-ubyte || -f data/mnist/train-images-idx3-ubyte.gz ]] ||
    { echo "needs MNIST in data/mnist: scripts/fetch_mnist.sh" >&2; exit 1; }
  /usr/bin/python3 -c 'import json, statistics' ||
    { echo "needs /usr/bin/python3 (it reads the metrics)" >&2; exit 1; }
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# summary_col N FILE...: the median of field N of the summary lines
# (summarize_run.py) in FILEs over the runs that did not fail; "failed" when
# all failed, "-" when a run lacks the figure, "never" when the median run
# never reached the target (counted as infinitely late).
summary_col() {
  local n=$1
  shift
  local values
  values=$(cat "$@" 2>/dev/null | awk -v n="$n" '$1 != "failed" {print ($n == "never") ? "inf" : $n}')
  if [[ -z $values ]]; then
    echo failed
  elif grep -q -- '^-$' <<<"$values"; then
    echo -
  else
    median <<<"$values" | sed 's/^inf$/never/'
  fi
}

# ratio A B [FORMAT]: A / B, or "-" when either is not a number.
ratio() {
  awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN {
    number = "^[+-]?[0-9]*[.]?[0-9]+([eE][+-]?[0-9]+)?$"
    if (a !~ number || b !~ number || b + 0 == 0) { print "-"; exit }
    printf f "\n", a / b }'
}

# num VALUE FORMAT: VALUE printf-formatted when it is a number, else as is.
num() {
  if [[ $1 =~ ^[+-]?[0-9]*\.?[0-9]+([eE][+-]?[0-9]+)?$ ]]; then
    # shellcheck disable=SC2059
    printf "$2" "$1"
  else
    printf '%s' "$1"
  fi
}

# run_dtrain RESULTS NAME JOB ARGS...: trains JOB with ARGS in a fresh output
# folder (no resuming), keeps its log and metrics.jsonl in RESULTS and writes
# RESULTS/NAME.sum: summarize_run.py's line, or "failed" (the log's tail is
# printed). Extra env for the figures: TARGET (default 0.98).
run_dtrain() {
  local results=$1 name=$2 job=$3
  shift 3
  local out
  out=$(mktemp -d "$work/run.XXXXXX")
  local extra=()
  ((smoke > 0)) && extra+=(--set data.train_limit=$((smoke * 128)))
  if ! "$bin" train "$job" --output "$out/output" --no-resume --progress plain "$@" "${extra[@]}" \
      >"$results/$name.log" 2>&1; then
    echo "  dtrain $name failed (log: $results/$name.log):" >&2
    tail -3 "$results/$name.log" | sed 's/^/    /' >&2
    echo failed >"$results/$name.sum"
    rm -rf "$out"
    return 0
  fi
  cp "$out/output/metrics.jsonl" "$results/$name.metrics.jsonl"
  rm -rf "$out"
  /usr/bin/python3 $here/summarize_run.py dtrain "$results/$name.metrics.jsonl" "${TARGET:-0.98}" \
    >"$results/$name.sum" || echo failed >"$results/$name.sum"
}
