#!/usr/bin/python3
"""A frozen worker: the time from `kill -STOP` of one worker to the job's reaction.

For each mode, runs a synthetic job REPEATS times; once training is under way
(50 progress lines) it SIGSTOPs one worker from outside (as a user's `kill
-STOP` or a hung host would) and reads the streamed log with arrival times:

  allreduce  `--workers 3`: STOP rank 1 -> the launcher's line blaming it
             ("worker rank 1 ... stopped responding or failed"); the job then
             ends with exit code 4.
  elastic    `--workers 3 --elastic --min-workers 2`: STOP slot 1 -> a
             survivor's "re-forming the group" (it dropped the silent
             worker); also printed: STOP -> "the group re-formed in" (the
             new group trains); then SIGCONT: the job must still exit 0.
  ps         `--strategy ps --servers 1 --workers 2`: STOP worker 1 -> the
             server's "worker 1 declared dead"; then SIGCONT: exit 0.

The goal (issue #18) is a reaction within the heartbeat timeout plus one
step. Each run prints the reaction time, the median step time before the
stop (the interval between progress lines) and the ratio
reaction / (heartbeat timeout + step); the last lines give the medians.
Usage:
  bench/ft/frozen_worker.py BUILD/src/cli/dtrain [REPEATS] [HEARTBEAT_MS]
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

JOB = job_toml("frozen-bench", 12)

MODES = {
    # args, the launcher child to stop, the reaction line, expected exit code
    "allreduce": (["--workers", "3"], 1, re.compile(r"worker rank 1 \(pid \d+\) stopped responding"), 4),
    "elastic": (["--workers", "3", "--elastic", "--min-workers", "2"], 1,
                re.compile(r"re-forming the group"), 0),
    "ps": (["--strategy", "ps", "--servers", "1", "--workers", "2"], 2,
           re.compile(r"worker 1 declared dead"), 0),
}


def one_run(dtrain, folder, mode, index, heartbeat_ms):
    extra, victim_slot, reaction, expected = MODES[mode]
    job = os.path.join(folder, "job.toml")
    with open(job, "w") as f:
        f.write(JOB)
    args = [dtrain, "train", job, "--output", os.path.join(folder, f"{mode}{index}"),
            "--no-resume", "--progress", "plain", "--set",
            f"distributed.heartbeat_timeout_ms={heartbeat_ms}"] + extra
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, bufsize=1)
    stopped_at = reacted_at = reformed_at = None
    victim = None
    step_times = []
    for line in p.stdout:
        now = time.monotonic()
        if stopped_at is None and "(global " in line:
            step_times.append(now)
            if len(step_times) == 50:
                victim = children(p.pid)[victim_slot]
                os.kill(victim, signal.SIGSTOP)
                stopped_at = time.monotonic()
        if stopped_at is not None and reacted_at is None and reaction.search(line):
            reacted_at = now
        if stopped_at is not None and reformed_at is None and "the group re-formed in" in line:
            reformed_at = now
        if reacted_at is not None and victim is not None and expected == 0 and \
                (mode != "elastic" or reformed_at is not None):
            os.kill(victim, signal.SIGCONT)  # it must leave quietly
            victim = None
    p.wait(timeout=600)
    if p.returncode != expected or reacted_at is None:
        raise SystemExit(f"{mode} run {index}: exit {p.returncode} (expected {expected}), "
                         f"stopped {stopped_at}, reacted {reacted_at}")
    gaps = [b - a for a, b in zip(step_times[10:], step_times[11:])]
    reformed = reformed_at - stopped_at if reformed_at else None
    return reacted_at - stopped_at, statistics.median(gaps), reformed


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    dtrain = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    heartbeat_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    heartbeat = heartbeat_ms / 1000.0
    print(f"heartbeat timeout {heartbeat_ms} ms; goal: reaction <= heartbeat timeout + one step")
    summary = []
    with tempfile.TemporaryDirectory() as folder:
        for mode in MODES:
            rows = []
            for i in range(repeats):
                reaction, step, reformed = one_run(dtrain, folder, mode, i, heartbeat_ms)
                ratio = reaction / (heartbeat + step)
                rows.append((reaction, step, ratio))
                extra = f", STOP -> re-formed {reformed * 1000:.0f} ms" if reformed else ""
                print(f"{mode} run {i + 1}: STOP -> reaction {reaction * 1000:.0f} ms, step "
                      f"{step * 1000:.1f} ms, reaction / (timeout + step) = {ratio:.2f}{extra}")
            med = [statistics.median(c) for c in zip(*rows)]
            summary.append(f"{mode}: median reaction {med[0] * 1000:.0f} ms over {repeats} runs, "
                           f"step {med[1] * 1000:.1f} ms, ratio to (timeout + step) {med[2]:.2f}")
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
