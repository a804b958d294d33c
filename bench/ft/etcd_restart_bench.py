#!/usr/bin/python3
"""Restart mode on etcd: a host lost mid-epoch, against a fault-free run.

Starts a real etcd (/usr/bin/etcd) on loopback, then runs the MNIST MLP
(examples/mnist_mlp.toml, EPOCHS epochs, a checkpoint every 100 steps) as 3
simulated hosts x 2 workers: three `dtrain train --rdzv etcd://... --nnodes
2:3 --nproc-per-node 2 --no-elastic` agents, each in its own session (process
group), all on 127.0.0.1, sharing one output folder. Twice, in one invocation:

  fault-free   the three hosts train to the end;
  host killed  once rank 0 logged step KILL_STEP (mid-epoch 1), the first
               host (agent 0: the coordinator and checkpoint writer, with its
               workers) is SIGKILLed; the two survivors restart from the
               newest checkpoint as 2 hosts x 2 workers and finish.

REPEATS pairs (default 3), then the medians. Prints, for each: the wall time from the agents' start to the last exit, the
final test accuracy (rank 0's "done:" line), and for the faulty run the step
it resumed from, the time from the kill to the survivors' restarted workers,
and the accuracy and time differences against the fault-free run. The lease
TTL is LEASE_S (DTRAIN_RDZV_LEASE_TTL_S).

Usage (MNIST in data/mnist, or in the folder MNIST_DIR names):
  [MNIST_DIR=...] bench/ft/run_etcd_restart_bench.sh [BUILD/src/cli/dtrain] [EPOCHS] [REPEATS]
"""
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

KILL_STEP = 300
LEASE_S = "5"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(folder):
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    log = open(os.path.join(folder, "etcd.log"), "w")
    p = subprocess.Popen(["/usr/bin/etcd", "--data-dir", os.path.join(folder, "etcd"),
                          "--listen-client-urls", client, "--advertise-client-urls", client,
                          "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                          "--initial-cluster", "default=" + peer], stdout=log, stderr=log)
    endpoint = client[len("http://"):]
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", int(endpoint.split(":")[1])), 0.2):
                time.sleep(1.0)  # let it elect itself
                return p, endpoint
        except OSError:
            time.sleep(0.1)
    raise SystemExit("etcd did not start; see " + log.name)


class Agent:
    """One simulated host: an agent in its own session, its lines timestamped."""

    def __init__(self, dtrain, args, env):
        self.p = subprocess.Popen([dtrain] + args, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
                                  start_new_session=True)
        self.lines = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append((time.monotonic(), line))

    def find(self, pattern, after=0.0):
        for t, line in list(self.lines):
            m = re.search(pattern, line)
            if m and t >= after:
                return t, m
        return None


def one_run(dtrain, endpoint, folder, name, epochs, kill):
    out = os.path.join(folder, name)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", DTRAIN_JOB_SECRET="etcd-restart-bench",
               DTRAIN_RDZV_LEASE_TTL_S=LEASE_S, DTRAIN_RDZV_SETTLE_MS="3000")
    args = ["train", "examples/mnist_mlp.toml", "--output", out, "--rdzv",
            f"etcd://{endpoint}/{name}", "--nnodes", "2:3", "--nproc-per-node", "2",
            "--no-elastic", "--max-restarts", "2", "--progress", "plain",
            "--set", f"train.epochs={epochs}", "--set", "train.checkpoint_every_steps=100",
            "--set", "train.log_every_steps=50",
            "--set", "data.path=" + os.environ.get("MNIST_DIR", "data/mnist")]
    t0 = time.monotonic()
    agents = []
    for _ in range(3):
        agents.append(Agent(dtrain, args, env))
        time.sleep(0.3)  # node indexes in start order: agent 0 is node 0
    killed_at = None
    if kill:
        while killed_at is None and agents[0].p.poll() is None:
            steps = [int(m.group(1)) for _, line in list(agents[0].lines)
                     for m in [re.search(r"\(global (\d+)\)", line)] if m]
            if steps and max(steps) >= KILL_STEP:
                os.killpg(agents[0].p.pid, signal.SIGKILL)
                killed_at = time.monotonic()
            else:
                time.sleep(0.05)
    for a in agents:
        a.p.wait(timeout=3600)
        a.thread.join()
    wall = time.monotonic() - t0
    survivors = agents[1:] if kill else agents
    result = {"wall_s": wall, "codes": [a.p.returncode for a in agents]}
    for a in survivors:
        done = a.find(r"done: .*test accuracy ([0-9.]+)%", after=killed_at or 0.0)
        if done:
            result["accuracy"] = float(done[1].group(1))
        resumed = a.find(r"resumed from \S+ at step (\d+)")
        if resumed:
            result["resumed_step"] = int(resumed[1].group(1))
        restarted = a.find(r"of generation [1-9]", after=killed_at or 0.0)
        if killed_at and restarted:
            t = restarted[0] - killed_at
            result["kill_to_regroup_s"] = min(t, result.get("kill_to_regroup_s", t))
    if kill:
        result["killed_at_s"] = killed_at - t0 if killed_at else None
    with open(os.path.join(folder, name + ".log"), "w") as f:
        for i, a in enumerate(agents):
            f.writelines(f"[agent {i}] {line}" for _, line in a.lines)
    return result


def median_of(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main():
    dtrain = sys.argv[1] if len(sys.argv) > 1 else "build/src/cli/dtrain"
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    print(f"load average before: {os.getloadavg()}")
    cleans, faults = [], []
    with tempfile.TemporaryDirectory(prefix="etcd-restart-bench-") as folder:
        etcd, endpoint = start_etcd(folder)
        try:
            for i in range(repeats):
                cleans.append(one_run(dtrain, endpoint, folder, f"fault-free-{i}", epochs, False))
                print(f"fault-free {i}:  {cleans[-1]}", flush=True)
                faults.append(one_run(dtrain, endpoint, folder, f"host-killed-{i}", epochs, True))
                print(f"host killed {i}: {faults[-1]}", flush=True)
        finally:
            etcd.kill()
            etcd.wait()
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if keep:
            for name in os.listdir(folder):
                if name.endswith(".log"):
                    os.replace(os.path.join(folder, name), os.path.join(keep, name))
    print(f"load average after: {os.getloadavg()}")
    print(f"medians over {repeats}: fault-free {median_of(cleans, 'wall_s'):.1f} s, "
          f"{median_of(cleans, 'accuracy')}%; host killed {median_of(faults, 'wall_s'):.1f} s, "
          f"{median_of(faults, 'accuracy')}%, resumed from step "
          f"{median_of(faults, 'resumed_step')}, kill -> generation 1 "
          f"{median_of(faults, 'kill_to_regroup_s')} s")
    ratios = [f["wall_s"] / c["wall_s"] for c, f in zip(cleans, faults)]
    diffs = [f["accuracy"] - c["accuracy"] for c, f in zip(cleans, faults)
             if "accuracy" in c and "accuracy" in f]
    print(f"time ratio killed / fault-free (same repetition), median: "
          f"{statistics.median(ratios):.2f}")
    if diffs:
        print(f"accuracy difference killed - fault-free, median: "
              f"{statistics.median(diffs):+.2f} points")
    for c, f in zip(cleans, faults):
        if any(c["codes"]) or any(f["codes"][1:]) or "accuracy" not in f:
            raise SystemExit(f"an agent failed: {c['codes']} {f['codes']}")


if __name__ == "__main__":
    main()
