#!/usr/bin/python3
"""Replicated parameter-server state: what a server failure costs with
`--replicas 1`, and what replication costs without one.

MNIST MLP (examples/mnist_mlp.toml), `dtrain train --strategy ps --servers 2
--workers 2` (sync), one BLAS thread per process, for each optimizer (SGD
with momentum 0.9, Adam), REPEATS times, interleaved:

  r0      --replicas 0, fault-free
  r1      --replicas 1, fault-free
  killed  --replicas 1, --max-restarts 1, server 1 SIGKILLed (a child of the
          launcher) at a random step between half and all of an epoch's
          estimated steps (r1's epoch seconds / its median step); the
          launcher starts a replacement, which takes its range from server
          0's copy (no checkpoint read: the run must log "took its shard from
          its backup's copy" and never "restored its shard")

and prints:
  - bit-identical: whether the final model (model.safetensors) of every
    killed run and every r1 run equals r0's byte for byte;
  - recovery: kill -> the replacement's "took its shard" line, and kill ->
    the first progress line after it (the first step served with the
    replaced range), in ms and in fault-free steps;
  - cost: median seconds of the last epoch (metrics.jsonl) with R = 1 and
    R = 0, and their ratio (same invocation, interleaved runs).

Usage: bench/ft/ps_replication.py BUILD/src/cli/dtrain [REPEATS] [EPOCHS]
(run from the checkout, with data/mnist fetched: scripts/fetch_mnist.sh)
"""
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from ft_bench_job import children

OPTIMIZERS = {
    "sgd+momentum": ["--set", "optimizer.momentum=0.9"],
    "adam": ["--set", "optimizer.type=\"adam\"", "--set", "optimizer.lr=0.001"],
}
HEARTBEAT_MS = 30000
TOOK = "took its shard from its backup's copy"
RESTORED = "restored its shard from"


def run(dtrain, out, epochs, extra, kill_step=None):
    args = [dtrain, "train", "examples/mnist_mlp.toml", "--output", out, "--no-resume",
            "--progress", "plain", "--strategy", "ps", "--servers", "2", "--workers", "2",
            "--set", f"train.epochs={epochs}", "--set", "train.log_every_steps=1",
            # A loaded machine stalls processes for seconds: a longer heartbeat
            # timeout keeps a stall from being taken for a dead worker.
            "--set", f"distributed.heartbeat_timeout_ms={HEARTBEAT_MS}"] + extra
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, bufsize=1)
    steps, log = [], []
    killed = took = first_after = None
    for line in p.stdout:
        now = time.monotonic()
        log.append(line)
        if "(global " in line:
            steps.append(now)
            if killed is not None and took is not None and first_after is None:
                first_after = now
            if kill_step is not None and killed is None and len(steps) == kill_step:
                os.kill(children(p.pid)[1], 9)
                killed = time.monotonic()
        if killed is not None and took is None and TOOK in line:
            took = now
    p.wait(timeout=1200)
    if p.returncode != 0:
        sys.stderr.write("".join(log[-40:]))
        raise SystemExit(f"{out}: exit {p.returncode}")
    text = "".join(log)
    with open(os.path.join(out, "launcher.log"), "w") as f:
        f.write(text)
    if kill_step is not None and (took is None or first_after is None or RESTORED in text):
        sys.stderr.write("".join(l for l in log if "(global " not in l)[-6000:])
        raise SystemExit(f"{out}: the replacement did not take the backup's copy")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        epochs_s = [json.loads(l)["seconds"] for l in f if '"event":"epoch"' in l]
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    return {
        "model": digest(out),
        "epoch_s": epochs_s[-1],
        "step_s": statistics.median(gaps) if gaps else None,
        "took_s": (took - killed) if killed else None,
        "first_step_s": (first_after - killed) if killed else None,
    }


def digest(out):
    for name in ("model.safetensors", "final.safetensors"):
        path = os.path.join(out, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
    raise SystemExit(f"{out}: no final model file")


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    dtrain = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    rng = random.Random(16)
    with tempfile.TemporaryDirectory() as folder:
        for name, extra in OPTIMIZERS.items():
            rows = {"r0": [], "r1": [], "killed": []}
            for i in range(repeats):
                r0 = run(dtrain, f"{folder}/{name}-r0-{i}", epochs, extra + ["--replicas", "0"])
                r1 = run(dtrain, f"{folder}/{name}-r1-{i}", epochs, extra + ["--replicas", "1"])
                per_epoch = max(2, int(r1["epoch_s"] / r1["step_s"])) if r1["step_s"] else 20
                kill = rng.randint(per_epoch // 2, per_epoch)
                k = run(dtrain, f"{folder}/{name}-k-{i}", epochs,
                        extra + ["--replicas", "1", "--max-restarts", "1"], kill_step=kill)
                rows["r0"].append(r0)
                rows["r1"].append(r1)
                rows["killed"].append(k)
                print(f"{name} run {i + 1}: killed at step {kill}; took {k['took_s'] * 1000:.0f} "
                      f"ms, first step {k['first_step_s'] * 1000:.0f} ms after the kill; epoch "
                      f"r0 {r0['epoch_s']:.2f} s, r1 {r1['epoch_s']:.2f} s", flush=True)
            ref = rows["r0"][0]["model"]
            same = all(r["model"] == ref for v in rows.values() for r in v)
            step = statistics.median(r["step_s"] for r in rows["r0"])
            took = statistics.median(r["took_s"] for r in rows["killed"])
            first = statistics.median(r["first_step_s"] for r in rows["killed"])
            e0 = statistics.median(r["epoch_s"] for r in rows["r0"])
            e1 = statistics.median(r["epoch_s"] for r in rows["r1"])
            print(f"{name}: bit-identical final models (r0, r1, killed): {same}")
            print(f"{name}: recovery (median of {repeats}): replacement took the copy "
                  f"{took * 1000:.0f} ms after the kill, first step {first * 1000:.0f} ms after "
                  f"it ({first / step:.1f} fault-free steps of {step * 1000:.1f} ms)")
            print(f"{name}: epoch s: R=0 {e0:.2f}, R=1 {e1:.2f}, ratio {e1 / e0:.3f}")
    print(f"{os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
