#!/usr/bin/python3
"""Elastic mode: time to detect a dead worker and to re-form the group.

Runs `dtrain train JOB --workers 3 --elastic --min-workers 2` REPEATS times on
a synthetic job; in each run, once training is under way, SIGKILLs the worker
of slot 1 from outside (the launcher's second child) and reads the streamed
log with arrival times:

  detection    kill -> the first survivor's "re-forming the group" line
  re-formation that line -> "the group re-formed in" (and the duration the
               worker itself reports in it)
  recovery     kill -> the group re-formed

Prints each run and the medians. Usage:
  bench/ft/elastic_recovery.py BUILD/src/cli/dtrain [REPEATS]
"""
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from ft_bench_job import children, job_toml

JOB = job_toml("elastic-bench", 40)


def one_run(dtrain, folder, index):
    job = os.path.join(folder, "job.toml")
    with open(job, "w") as f:
        f.write(JOB)
    args = [dtrain, "train", job, "--output", os.path.join(folder, f"out{index}"), "--workers",
            "3", "--elastic", "--min-workers", "2", "--no-resume", "--progress", "plain"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, bufsize=1)
    killed_at = noticed_at = reformed_at = None
    reported = None
    steps = 0
    for line in p.stdout:
        now = time.monotonic()
        if "(global " in line:
            steps += 1
            if killed_at is None and steps == 50:
                victim = children(p.pid)[1]
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()
        if killed_at and noticed_at is None and "re-forming the group" in line:
            noticed_at = now
        if killed_at and reformed_at is None and "the group re-formed in" in line:
            reformed_at = now
            reported = float(re.search(r"re-formed in ([0-9.]+) s", line).group(1))
    p.wait(timeout=600)
    if p.returncode != 0 or None in (killed_at, noticed_at, reformed_at):
        raise SystemExit(f"run {index}: exit {p.returncode}, kill {killed_at}, "
                         f"noticed {noticed_at}, re-formed {reformed_at}")
    return noticed_at - killed_at, reformed_at - noticed_at, reported, reformed_at - killed_at


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    dtrain = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(repeats):
            d, r, rep, total = one_run(dtrain, folder, i)
            rows.append((d, r, rep, total))
            print(f"run {i + 1}: detection {d * 1000:.0f} ms, re-formation {r * 1000:.0f} ms "
                  f"(worker reports {rep * 1000:.0f} ms), kill to re-formed {total * 1000:.0f} ms")
    med = [statistics.median(c) for c in zip(*rows)]
    print(f"median over {repeats}: detection {med[0] * 1000:.0f} ms, re-formation "
          f"{med[1] * 1000:.0f} ms (worker reports {med[2] * 1000:.0f} ms), kill to re-formed "
          f"{med[3] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
