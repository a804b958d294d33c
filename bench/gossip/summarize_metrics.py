#!/usr/bin/python3
"""Reads one run's metrics.jsonl (train/callbacks.h: JsonLinesWriter) for
bench/gossip/run_gossip_bench.sh.

  summarize_metrics.py ttt METRICS TARGET
      "SECONDS EPOCH ACCURACY": wall seconds from the run's first event (its
      "begin": training starts, after loading and connecting) to the first
      "epoch" event whose test_accuracy >= TARGET, that epoch and its
      accuracy; "inf 0 0" when no epoch reached it. Epoch times include the
      evaluation (gossip: fetching every worker's model for the average).
  summarize_metrics.py final METRICS [NAME]
      "ACCURACY ACCURACY_NAME EPOCH": the last epoch event's test_accuracy (the
      strategy's model(): gossip's averaged model) and test_accuracy_NAME
      (default NAME worker0; "n/a" when the strategy has no such model), in
      percent, and that epoch; "n/a n/a 0" without epoch events.
  summarize_metrics.py consensus METRICS
      the last step event's consensus_distance, "n/a" without one.

Lines that do not parse (a run killed mid-line leaves a torn one) are skipped.
"""
import json
import sys


def events(path):
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def time_to_target(path, target):
    start = None
    for e in events(path):
        if start is None:
            start = e["time"]
        if e.get("event") == "epoch" and e["test_accuracy"] >= target:
            return f"{e['time'] - start:.2f} {e['epoch']} {e['test_accuracy']:.4f}"
    return "inf 0 0"


def final(path, name):
    last = None
    for e in events(path):
        if e.get("event") == "epoch":
            last = e
    if last is None:
        return "n/a n/a 0"
    extra = last.get(f"test_accuracy_{name}")
    extra_text = "n/a" if extra is None else f"{100.0 * extra:.2f}"
    return f"{100.0 * last['test_accuracy']:.2f} {extra_text} {last['epoch']}"


def consensus(path):
    value = None
    for e in events(path):
        if e.get("event") == "step" and "consensus_distance" in e:
            value = e["consensus_distance"]
    return "n/a" if value is None else f"{value:.3g}"


def main(argv):
    if len(argv) >= 4 and argv[1] == "ttt":
        print(time_to_target(argv[2], float(argv[3])))
    elif len(argv) >= 3 and argv[1] == "final":
        print(final(argv[2], argv[3] if len(argv) > 3 else "worker0"))
    elif len(argv) == 3 and argv[1] == "consensus":
        print(consensus(argv[2]))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
