#!/usr/bin/python3
"""One training run's figures for the compression benchmarks, on one line.

  summarize_run.py dtrain METRICS_JSONL [TARGET]   dtrain's <output>/metrics.jsonl
  summarize_run.py torch LOG [TARGET]              torch_ddp_hooks.py's stdout

Prints nine space-separated fields ("-" where the run has no such figure):
  accuracy    the last epoch's test accuracy
  epoch_s     median over the epochs of the epoch's wall time, evaluation
              included (dtrain's epoch "seconds": the training steps, rank 0's
              test evaluation and its epoch-end checkpoint; torch's "seconds":
              the training steps and rank 0's evaluation)
  train_s     median over the epochs of the training steps' time only (dtrain:
              the epoch's samples / its samples_per_s, which dtrain counts over
              its step times; torch: the sum of rank 0's step times)
  bytes       median of dtrain's step records' bytes_per_step
  ratio       median of dtrain's step records' compression_ratio
  target_s    cumulative epoch seconds at the end of the first epoch whose
              test accuracy reaches TARGET (default 0.98); "never" if none does
  target_ep   that epoch ("never" if none)
  epochs      epochs recorded
  total_s     the sum of the epochs' seconds
A dtrain folder resumed or run twice would mix runs: the benchmarks give
every run a fresh folder; here only the last "begin" record's run is read.
"""
import json
import statistics
import sys


def records(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def median_of(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("dtrain", "torch"):
        sys.exit(__doc__)
    kind, path = sys.argv[1], sys.argv[2]
    target = float(sys.argv[3]) if len(sys.argv) > 3 else 0.98
    recs = records(path)
    if kind == "dtrain":
        begins = [i for i, r in enumerate(recs) if r.get("event") == "begin"]
        if begins:
            recs = recs[begins[-1]:]
        begin = recs[0] if recs and recs[0].get("event") == "begin" else {}
        samples = begin.get("train_samples")
        epochs = [r for r in recs if r.get("event") == "epoch"]
        steps = [r for r in recs if r.get("event") == "step"]
        train = [samples / e["samples_per_s"] if samples and e.get("samples_per_s") else None
                 for e in epochs]
        bytes_per_step = median_of([s.get("bytes_per_step") for s in steps])
        ratio = median_of([s.get("compression_ratio") for s in steps])
    else:
        epochs = [r for r in recs if r.get("event") == "epoch"]
        train = [e.get("train_seconds") for e in epochs]
        bytes_per_step = ratio = None
    if not epochs:
        sys.exit(f"summarize_run.py: {path}: no epoch records")
    total = 0.0
    target_s = target_ep = "never"
    for e in epochs:
        total += e["seconds"]
        if target_ep == "never" and e["test_accuracy"] >= target:
            target_s, target_ep = f"{total:.2f}", str(e["epoch"])
    print(fmt(epochs[-1]["test_accuracy"], ".4f"), fmt(median_of([e["seconds"] for e in epochs]), ".3f"),
          fmt(median_of(train), ".3f"), fmt(bytes_per_step, ".0f"), fmt(ratio, ".2f"), target_s,
          target_ep, len(epochs), f"{total:.2f}")


if __name__ == "__main__":
    main()
