#!/usr/bin/python3
"""Replicated parameter-server state: what a server failure costs with
`--replicas 1`, and what replication costs without one.

MNIST MLP (examples/mnist_mlp.toml), `dtrain train --strategy ps --servers 2
--workers 2` (sync), one BLAS thread per process, for each optimizer (SGD
with momentum 0.9, Adam), REPEATS times, interleaved:

  r0      --replicas 0, fault-free
  r1      --replicas 1, fault-free
  takeover  --replicas 1, --max-restarts 1, server 1 SIGKILLed (a child of
          the launcher) at a random step between half and all of an epoch's
          estimated steps (r1's epoch seconds / its median step); the workers
          see the broken connection and server 0 serves server 1's range from
          its copy at once (the run must log "took over server 1's range");
          the launcher's replacement retires ("replacement retires")
  covered   the same kill with --max-restarts 0: no replacement is started;
          the launcher logs the death as covered by the backup ("the job
          goes on without it") and the job goes on
  replaced  the same kill with distributed.ps.takeover = false: the workers
          wait for the launcher's replacement, which takes its range from
          server 0's copy (no checkpoint read: the run must log "took its
          shard from its backup's copy" and never "restored its shard")

and prints:
  - bit-identical: whether the final model (model.safetensors) of every
    takeover, replaced and r1 run equals r0's byte for byte;
  - recovery, for takeover, covered and replaced in the same invocation: kill -> the
    line saying who serves the range now (the backup's "took over", the
    replacement's "took its shard"), and kill -> the first progress line
    after it (the first step served with the range back), in ms and in
    fault-free steps, and the ratios replaced / takeover and covered /
    takeover; and each path's whole run in seconds (start to exit: a
    replacement that starts after training ended is told to exit a
    stop_grace later);
  - cost: median seconds of the last epoch (metrics.jsonl) with R = 1 and
    R = 0, and their ratio (same invocation, interleaved runs).

With PEER (another build's dtrain, e.g. main's), the same invocation also
runs PEER's r0, r1 and covered, interleaved, and prints this build's epoch
time and kill -> first step over PEER's (what a change to the wire costs),
and PEER's final models join the bit-identity check.

Usage: bench/ft/ps_replication.py BUILD/src/cli/dtrain [REPEATS] [EPOCHS] [PEER]
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
TOOK = {"takeover": "ps server 0: took over server 1's range",
        "covered": "ps server 0: took over server 1's range",
        "replaced": "took its shard from its backup's copy"}
RETIRED = "replacement retires"
RESTORED = "restored its shard from"
COVERED = "the job goes on without it"


def run(dtrain, out, epochs, extra, kill_step=None, path="replaced"):
    args = [dtrain, "train", "examples/mnist_mlp.toml", "--output", out, "--no-resume",
            "--progress", "plain", "--strategy", "ps", "--servers", "2", "--workers", "2",
            "--set", f"train.epochs={epochs}", "--set", "train.log_every_steps=1",
            # A loaded machine stalls processes for seconds: a longer heartbeat
            # timeout keeps a stall from being taken for a dead worker.
            "--set", f"distributed.heartbeat_timeout_ms={HEARTBEAT_MS}"] + extra
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    started = time.monotonic()
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
        if killed is not None and took is None and TOOK[path] in line:
            took = now
    p.wait(timeout=1200)
    wall = time.monotonic() - started
    if p.returncode != 0:
        sys.stderr.write("".join(log[-40:]))
        raise SystemExit(f"{out}: exit {p.returncode}")
    text = "".join(log)
    with open(os.path.join(out, "launcher.log"), "w") as f:
        f.write(text)
    if kill_step is not None and (took is None or first_after is None or RESTORED in text or
                                  (path == "takeover" and RETIRED not in text) or
                                  (path == "covered" and (COVERED not in text or
                                                          RETIRED in text))):
        sys.stderr.write("".join(l for l in log if "(global " not in l)[-6000:])
        raise SystemExit(f"{out}: the {path} path did not serve the range from the copy")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        epochs_s = [json.loads(l)["seconds"] for l in f if '"event":"epoch"' in l]
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    return {
        "model": digest(out),
        "epoch_s": epochs_s[-1],
        "step_s": statistics.median(gaps) if gaps else None,
        "took_s": (took - killed) if killed else None,
        "first_step_s": (first_after - killed) if killed else None,
        "wall_s": wall,
        "steps": len(steps),
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
    peer = sys.argv[4] if len(sys.argv) > 4 else None
    rng = random.Random(16)
    print(f"{os.cpu_count()} cores, load at the start {open('/proc/loadavg').read().split()[:3]}",
          flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name, extra in OPTIMIZERS.items():
            rows = {"r0": [], "r1": [], "takeover": [], "covered": [], "replaced": []}
            for i in range(repeats):
                r0 = run(dtrain, f"{folder}/{name}-r0-{i}", epochs, extra + ["--replicas", "0"])
                r1 = run(dtrain, f"{folder}/{name}-r1-{i}", epochs, extra + ["--replicas", "1"])
                per_epoch = max(2, int(r1["epoch_s"] / r1["step_s"])) if r1["step_s"] else 20
                # The estimate exceeds an epoch's steps where the epoch's time
                # holds more than its steps (the evaluation): at most one epoch.
                per_epoch = min(per_epoch, r1["steps"] // epochs)
                kill = rng.randint(per_epoch // 2, per_epoch)
                killed = extra + ["--replicas", "1", "--max-restarts", "1"]
                t = run(dtrain, f"{folder}/{name}-t-{i}", epochs, killed, kill, "takeover")
                c = run(dtrain, f"{folder}/{name}-c-{i}", epochs,
                        extra + ["--replicas", "1", "--max-restarts", "0"], kill, "covered")
                k = run(dtrain, f"{folder}/{name}-k-{i}", epochs,
                        killed + ["--set", "distributed.ps.takeover=false"], kill, "replaced")
                for key, r in (("r0", r0), ("r1", r1), ("takeover", t), ("covered", c),
                               ("replaced", k)):
                    rows[key].append(r)
                if peer:
                    for key, r in (
                            ("peer r0", run(peer, f"{folder}/{name}-p0-{i}", epochs,
                                            extra + ["--replicas", "0"])),
                            ("peer r1", run(peer, f"{folder}/{name}-p1-{i}", epochs,
                                            extra + ["--replicas", "1"])),
                            ("peer covered", run(peer, f"{folder}/{name}-pc-{i}", epochs,
                                                 extra + ["--replicas", "1", "--max-restarts",
                                                          "0"], kill, "covered"))):
                        rows.setdefault(key, []).append(r)
                print(f"{name} run {i + 1}: killed at step {kill}; first step after the kill: "
                      f"takeover {t['first_step_s'] * 1000:.0f} ms, covered "
                      f"{c['first_step_s'] * 1000:.0f} ms, replaced "
                      f"{k['first_step_s'] * 1000:.0f} ms; epoch r0 {r0['epoch_s']:.2f} s, "
                      f"r1 {r1['epoch_s']:.2f} s", flush=True)
            ref = rows["r0"][0]["model"]
            same = all(r["model"] == ref for v in rows.values() for r in v)
            step = statistics.median(r["step_s"] for r in rows["r0"])
            print(f"{name}: bit-identical final models ({', '.join(rows)}): {same}")
            first = {}
            for key in ("takeover", "covered", "replaced"):
                took = statistics.median(r["took_s"] for r in rows[key])
                first[key] = statistics.median(r["first_step_s"] for r in rows[key])
                print(f"{name}: {key} (median of {repeats}): range served again {took * 1000:.0f} "
                      f"ms after the kill, first step {first[key] * 1000:.0f} ms after it "
                      f"({first[key] / step:.1f} fault-free steps of {step * 1000:.1f} ms)")
            print(f"{name}: first step after the kill, replaced / takeover: "
                  f"{first['replaced'] / first['takeover']:.2f}, covered / takeover: "
                  f"{first['covered'] / first['takeover']:.2f}")
            walls = {k: statistics.median(r["wall_s"] for r in v) for k, v in rows.items()}
            print(f"{name}: whole run s (median): " +
                  ", ".join(f"{k} {w:.2f}" for k, w in walls.items()) +
                  f"; covered / takeover {walls['covered'] / walls['takeover']:.3f}")
            e0 = statistics.median(r["epoch_s"] for r in rows["r0"])
            e1 = statistics.median(r["epoch_s"] for r in rows["r1"])
            print(f"{name}: epoch s: R=0 {e0:.2f}, R=1 {e1:.2f}, ratio {e1 / e0:.3f}")
            if peer:
                p0 = statistics.median(r["epoch_s"] for r in rows["peer r0"])
                p1 = statistics.median(r["epoch_s"] for r in rows["peer r1"])
                pc = statistics.median(r["first_step_s"] for r in rows["peer covered"])
                print(f"{name}: against PEER (median of {repeats}): epoch R=0 {e0:.2f} / {p0:.2f} "
                      f"= {e0 / p0:.3f}, R=1 {e1:.2f} / {p1:.2f} = {e1 / p1:.3f}; covered kill -> "
                      f"first step {first['covered'] * 1000:.0f} / {pc * 1000:.0f} ms = "
                      f"{first['covered'] / pc:.2f}; PEER's R=1 / R=0 {p1 / p0:.3f}")
    print(f"{os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
