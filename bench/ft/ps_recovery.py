#!/usr/bin/python3
"""Parameter-server failures: time to notice them and to recover.

Runs `dtrain train JOB --strategy ps --servers 2 --workers 2` (sync) REPEATS
times per scenario on a synthetic job and, once training is under way (step
40), SIGKILLs one process from outside (a child of the launcher: servers 0, 1,
then workers 0, 1 in start order). The streamed log is read with arrival times:

  server    server 1 killed, --max-restarts 1:
              detected  kill -> the launcher's "starting its replacement"
              restored  kill -> "replacement restored its shard" (checkpoint read)
              recovered kill -> the last worker's "re-joined replaced server 1"
  worker    worker 1 killed, --max-restarts 1:
              detected  kill -> the launcher's "starting worker 1 again"
              recovered kill -> "ps worker 1: joined the running job" (a new
                        process: start, data, connect)
  dead      worker 1 killed, no restart:
              detected  kill -> the servers' "worker 1 declared dead" (bounded
                        by distributed.heartbeat_timeout_ms, 1000 here)
              recovered kill -> worker 0's "split over 1 worker(s)"

Each time is also given in fault-free steps (divided by the median time
between two progress lines before the kill), and detection of a dead worker
against the heartbeat timeout. Prints each run and the medians. Usage:
  bench/ft/ps_recovery.py BUILD/src/cli/dtrain [REPEATS]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

from ft_bench_job import children, job_toml

JOB = job_toml("ps-recovery-bench", 3, momentum=0.9)

HEARTBEAT_S = 1.0
KILL_AT_STEP = 40

SCENARIOS = {
    # name: (victim child index, max restarts, detected marker, [restored marker], recovered marker, count)
    "server": (1, "1", "starting its replacement", "replacement restored its shard",
               "re-joined replaced server 1", 2),
    "worker": (3, "1", "starting worker 1 again", None, "ps worker 1: joined the running job", 1),
    "dead": (3, "0", "worker 1 declared dead", None, "split over 1 worker(s)", 1),
}


def one_run(dtrain, folder, scenario, index):
    victim_index, restarts, detected_mark, restored_mark, recovered_mark, needed = SCENARIOS[scenario]
    job = os.path.join(folder, "job.toml")
    with open(job, "w") as f:
        f.write(JOB)
    args = [dtrain, "train", job, "--output", os.path.join(folder, f"{scenario}{index}"),
            "--strategy", "ps", "--servers", "2", "--workers", "2", "--max-restarts", restarts,
            "--no-resume", "--progress", "plain"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, bufsize=1)
    step_times = []
    killed_at = detected = restored = recovered = None
    seen = 0
    for line in p.stdout:
        now = time.monotonic()
        if "(global " in line and killed_at is None:
            step_times.append(now)
            if len(step_times) == KILL_AT_STEP:
                os.kill(children(p.pid)[victim_index], 9)
                killed_at = time.monotonic()
        if killed_at is None:
            continue
        if detected is None and detected_mark in line:
            detected = now
        if restored_mark and restored is None and restored_mark in line:
            restored = now
        if recovered is None and recovered_mark in line:
            seen += 1
            if seen == needed:
                recovered = now
    p.wait(timeout=600)
    if p.returncode != 0 or None in (killed_at, detected, recovered):
        raise SystemExit(f"{scenario} run {index}: exit {p.returncode}, kill {killed_at}, "
                         f"detected {detected}, recovered {recovered}")
    gaps = [b - a for a, b in zip(step_times, step_times[1:])]
    step = statistics.median(gaps)
    return (detected - killed_at, (restored - killed_at) if restored else None,
            recovered - killed_at, step)


def ms(x):
    return "-" if x is None else f"{x * 1000:.0f} ms"


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    dtrain = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as folder:
        for scenario in SCENARIOS:
            rows = []
            for i in range(repeats):
                d, r, rec, step = one_run(dtrain, folder, scenario, i)
                rows.append((d, r, rec, step))
                print(f"{scenario} run {i + 1}: detected {ms(d)}, restored {ms(r)}, recovered "
                      f"{ms(rec)} ({rec / step:.1f} steps of {step * 1000:.1f} ms)")
            d = statistics.median(r[0] for r in rows)
            restored = [r[1] for r in rows if r[1] is not None]
            rec = statistics.median(r[2] for r in rows)
            step = statistics.median(r[3] for r in rows)
            line = (f"{scenario}: median over {repeats}: detected {ms(d)} ({d / step:.1f} steps"
                    f"{f', {d / HEARTBEAT_S:.2f} x the heartbeat timeout' if scenario == 'dead' else ''})")
            if restored:
                line += f", restored {ms(statistics.median(restored))}"
            line += f", recovered {ms(rec)} ({rec / step:.1f} steps of {step * 1000:.1f} ms)"
            print(line)


if __name__ == "__main__":
    main()
