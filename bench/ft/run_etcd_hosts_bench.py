#!/usr/bin/python3
"""Elastic training on etcd across simulated hosts (issue #19's must-show).

Starts a real etcd (a temporary data folder, free loopback ports), then runs
the MNIST MLP job (examples/mnist_mlp.toml, EPOCHS epochs) as 3 simulated
hosts x 2 workers: each host is one `dtrain train ... --rdzv etcd://...`
agent in its own session (setsid), on its own address 127.0.0.1/.2/.3
(--host-address), with its own output folder (--shared-output: one folder
for every host, whose lock follows rank 0). Every line is read with its
arrival time.

  fault-free   the job as is: its final test accuracy is the reference.
  host killed  host 1 (the first started) is SIGKILLed with its whole
               process group (agent + workers: PR_SET_PDEATHSIG) in epoch 2;
               the 4 other workers re-form. Measured: kill -> the first
               survivor's "the group re-formed" line, against the lease TTL
               (goal < 2 x TTL). Once the group trained on, a replacement
               host (127.0.0.4) starts and joins at a step boundary (goal:
               a generation of 6 workers). Final accuracy against the
               fault-free run (goal within 0.5 points).
  etcd stopped etcd SIGSTOPped for 5 s in epoch 2, then SIGCONT: training
               goes on (the collectives do not need etcd) or fails naming
               etcd; never hangs (each run is bounded).

Usage (from the checkout, after building build/src/cli/dtrain):
  bench/ft/run_etcd_hosts_bench.py [--dtrain build/src/cli/dtrain] [--ttl 2]
      [--epochs 5] [--repeats 3] [--phases fault-free,host-killed,etcd-stopped]
      [--logs DIR] [--shared-output]
Prints one line per run, the medians of the host-killed runs and the load
average before and after.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
REPLACEMENT = "127.0.0.4"
PER_HOST = 2
LOGS = None  # --logs: where each host's log is kept
PHASE = [""]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    def __init__(self, folder):
        client, peer = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{client}"
        self.log = open(os.path.join(folder, "etcd.log"), "w")
        self.proc = subprocess.Popen(
            ["etcd", "--data-dir", os.path.join(folder, "etcd-data"),
             "--listen-client-urls", f"http://{self.endpoint}",
             "--advertise-client-urls", f"http://{self.endpoint}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", client), timeout=1):
                    time.sleep(1)  # elects itself
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("etcd did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Host:
    """One simulated host: an agent in its own session; lines with arrival times."""

    def __init__(self, args, job, folder, rdzv, address, name):
        self.name = name
        self.lines = []  # (time, text)
        self.cond = threading.Condition()
        self.eof = False
        self.output = os.path.join(folder, "out-shared" if args.shared_output else f"out-{name}")
        env = dict(os.environ, DTRAIN_JOB_SECRET="etcd-hosts-bench", OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [args.dtrain, "train", job, "--output", self.output,
             "--rdzv", rdzv, "--nnodes", f"2:{len(HOSTS)}", "--nproc-per-node", str(PER_HOST),
             "--host-address", address, "--rdzv-ttl", str(args.ttl), "--set", f"train.epochs={args.epochs}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env=env)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append((time.time(), line.rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, pattern, timeout, after=0.0):
        """The arrival time of the first line matching `pattern` after `after`."""
        rx = re.compile(pattern)
        end = time.time() + timeout
        with self.cond:
            while True:
                for t, text in self.lines:
                    if t >= after and rx.search(text):
                        return t
                if time.time() >= end or self.eof:
                    return None
                self.cond.wait(0.2)

    def find(self, pattern, after=0.0):
        rx = re.compile(pattern)
        with self.cond:
            return [(t, m) for t, text in self.lines if t >= after for m in [rx.search(text)] if m]

    def kill_group(self, sig=signal.SIGKILL):
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.proc.wait()
            code = None
        if LOGS:
            with open(os.path.join(LOGS, f"{PHASE[0]}-{self.name}.log"), "w") as f:
                f.writelines(f"{t:.3f} {text}\n" for t, text in self.lines)
        return code


def first_of(hosts, pattern, timeout, after=0.0):
    """The earliest arrival of a line matching `pattern` in any of `hosts`."""
    end = time.time() + timeout
    while True:
        found = [t for h in hosts for t, _ in h.find(pattern, after)]
        if found:
            return min(found)
        if time.time() >= end or all(h.eof for h in hosts):
            return None
        time.sleep(0.05)


def accuracy(args, job, hosts):
    """`dtrain eval` of the newest final model any of `hosts` wrote (rank 0
    of the last generation writes it into its host's folder; the chief's
    progress lines stop with slot 0's host)."""
    models = [os.path.join(h.output, "model.safetensors") for h in hosts]
    models = sorted({m for m in models if os.path.exists(m)})
    if not models:
        return None
    newest = max(models, key=os.path.getmtime)
    out = subprocess.run([args.dtrain, "eval", job, "--weights", newest], capture_output=True,
                         text=True).stdout + ""
    m = re.search(r"accuracy ([0-9.]+)%", out)
    return float(m.group(1)) if m else None


def checkpoints(folder):
    """The steps of the checkpoints in `folder`."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(m.group(1)) for n in names for m in [re.match(r"ckpt-(\d+)", n)] if m)


def start_hosts(args, job, folder, rdzv, addresses):
    hosts = []
    for i, address in enumerate(addresses):
        hosts.append(Host(args, job, folder, rdzv, address, f"host{i + 1}"))
        if i == 0 and hosts[0].wait_for(r"agent: node 0", 30) is None:
            raise RuntimeError("host 1's agent never claimed node 0:\n" + dump(hosts))
    return hosts


def dump(hosts):
    return "\n".join(f"{h.name}: {text}" for h in hosts for _, text in h.lines[-30:])


def fault_free(args, job, folder, etcd):
    hosts = start_hosts(args, job, folder, f"etcd://{etcd.endpoint}/ff", HOSTS)
    t0 = time.time()
    codes = [h.finish(args.limit) for h in hosts]
    acc = accuracy(args, job, hosts)
    print(f"fault-free: exit codes {codes}, test accuracy {acc}%, {time.time() - t0:.1f} s")
    return acc


def host_killed(args, job, folder, etcd, reference):
    hosts = start_hosts(args, job, folder, f"etcd://{etcd.endpoint}/killed", HOSTS)
    if hosts[0].wait_for(r"epoch 2 step \d+/", args.limit) is None:
        print("host-killed: training never reached epoch 2\n" + dump(hosts))
        return None
    t_kill = time.time()
    hosts[0].kill_group()
    survivors = hosts[1:]
    reformed = first_of(survivors, r"the group re-formed in", 60, after=t_kill)
    reform_s = reformed - t_kill if reformed else None
    # Once the 4 trained on a while, the replacement host starts.
    time.sleep(args.ttl)
    t_repl = time.time()
    replacement = Host(args, job, folder, f"etcd://{etcd.endpoint}/killed", REPLACEMENT, "host4")
    joined = first_of(survivors, r"re-formed in .*rank \d+ of 6", args.limit, after=t_repl)
    codes = [h.finish(args.limit) for h in survivors + [replacement]]
    acc = accuracy(args, job, survivors + [replacement])
    delta = None if acc is None or reference is None else acc - reference
    print(f"host-killed: lease TTL {args.ttl} s; kill -> re-formed group of 4: "
          + (f"{reform_s:.2f} s ({reform_s / args.ttl:.2f} x TTL)" if reform_s else "NOT SEEN"))
    print("host-killed: replacement host started -> group of 6: "
          + (f"{joined - t_repl:.2f} s" if joined else "NOT SEEN"))
    print(f"host-killed: exit codes {codes} (survivors, replacement); test accuracy {acc}% "
          f"(fault-free {reference}%, difference "
          + (f"{delta:+.2f} points)" if delta is not None else "n/a)"))
    if args.shared_output:
        took = [m.group(1) for h in survivors + [replacement]
                for _, m in h.find(r"slot (\d+) is rank 0: holds the lock", after=t_kill)]
        print(f"host-killed: shared output folder; the lock taken after the kill by slot(s) "
              f"{took or 'NONE'}; checkpoints {checkpoints(hosts[0].output)}")
    return reform_s, (joined - t_repl if joined else None), delta


def etcd_stopped(args, job, folder, etcd):
    hosts = start_hosts(args, job, folder, f"etcd://{etcd.endpoint}/outage", HOSTS)
    if hosts[0].wait_for(r"epoch 2 step \d+/", args.limit) is None:
        print("etcd-stopped: training never reached epoch 2\n" + dump(hosts))
        return
    t_stop = time.time()
    etcd.proc.send_signal(signal.SIGSTOP)
    time.sleep(5)
    etcd.proc.send_signal(signal.SIGCONT)
    codes = [h.finish(args.limit) for h in hosts]
    acc = accuracy(args, job, hosts)
    reforms = sum(len(h.find(r"the group re-formed in", after=t_stop)) for h in hosts)
    errors = [m.group(0) for h in hosts for _, m in h.find(r"(error|LeftOut).*", after=t_stop)]
    print(f"etcd-stopped: etcd SIGSTOPped 5 s in epoch 2; exit codes {codes} (None: hung, "
          f"killed after {args.limit} s); test accuracy {acc}%; re-formations after the stop "
          f"{reforms}; errors {errors[:3]}")


def summarize(runs, ttl):
    """Medians of the host-killed runs that measured each figure."""
    names = ["kill -> group of 4 (s)", "replacement -> group of 6 (s)",
             "accuracy - fault-free (points)"]
    for i, name in enumerate(names):
        got = [r[i] for r in runs if r and r[i] is not None]
        if got:
            extra = f", {statistics.median(got) / ttl:.2f} x TTL" if i == 0 else ""
            value = statistics.median(got)
            shown = f"{value:+.2f}" if i == 2 else f"{value:.2f}"
            print(f"host-killed median over {len(got)}/{len(runs)} run(s): {name} {shown}{extra}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtrain", default="build/src/cli/dtrain")
    p.add_argument("--job", default="examples/mnist_mlp.toml")
    p.add_argument("--ttl", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit", type=float, default=300, help="bound on each run, seconds")
    p.add_argument("--phases", default="fault-free,host-killed,etcd-stopped")
    p.add_argument("--repeats", type=int, default=1, help="runs of the host-killed phase")
    p.add_argument("--logs", help="keep each host's log (with arrival times) in this folder")
    p.add_argument("--shared-output", action="store_true",
                   help="one output folder for every host (its lock follows rank 0)")
    args = p.parse_args()
    global LOGS
    if args.logs:
        LOGS = os.path.abspath(args.logs)
        os.makedirs(LOGS, exist_ok=True)
    args.dtrain = os.path.abspath(args.dtrain)
    job = os.path.abspath(args.job)
    phases = args.phases.split(",")
    print(f"load average before: {os.getloadavg()}; "
          f"{'one shared output folder' if args.shared_output else 'one output folder per host'}")
    with tempfile.TemporaryDirectory(prefix="etcd-hosts-bench-") as folder:
        etcd = Etcd(folder)
        try:
            reference = None
            if "fault-free" in phases:
                PHASE[0] = "fault-free"
                reference = fault_free(args, job, os.path.join(folder, "ff"), etcd)
            if "host-killed" in phases:
                runs = []
                for r in range(args.repeats):
                    PHASE[0] = f"host-killed-{r}"
                    runs.append(host_killed(args, job, os.path.join(folder, f"killed{r}"), etcd,
                                            reference))
                summarize(runs, args.ttl)
            if "etcd-stopped" in phases:
                PHASE[0] = "etcd-stopped"
                etcd_stopped(args, job, os.path.join(folder, "outage"), etcd)
        finally:
            etcd.stop()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    sys.exit(main())
