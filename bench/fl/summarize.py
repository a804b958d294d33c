#!/usr/bin/env python3
"""Reads federated runs' metrics.jsonl files (`dtrain fl`, or torch_fedavg.py
output) and prints one JSON object per run: rounds, the first round whose
test accuracy reached TARGET, the final and best test accuracy, the median
seconds per round, and the clients that took part or were dropped.

Usage: summarize.py [--target 0.97] NAME=PATH [NAME=PATH ...]
"""
import argparse
import json
import statistics


def summarize(path, target):
    rounds = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if e.get("event") == "round":
                rounds.append(e)
    evaluated = [e for e in rounds if e.get("test_accuracy") is not None]
    reached = next((e["round"] for e in evaluated if e["test_accuracy"] >= target), None)
    return {
        "rounds": len(rounds),
        "target": target,
        "rounds_to_target": reached,
        "final_accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
        "best_accuracy": max((e["test_accuracy"] for e in evaluated), default=None),
        "median_round_s": statistics.median(e["seconds"] for e in rounds) if rounds else None,
        "dropped": sum(len(e["dropped"]) if isinstance(e.get("dropped"), list)
                       else e.get("dropped", 0) for e in rounds),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", type=float, default=0.97)
    p.add_argument("runs", nargs="+")
    a = p.parse_args()
    for run in a.runs:
        name, path = run.split("=", 1)
        print(json.dumps({"run": name, **summarize(path, a.target)}), flush=True)


if __name__ == "__main__":
    main()
