#!/usr/bin/python3
"""End-to-end test of dtrain's TensorBoard files, run by ctest:

  tensorboard_job_test.py DTRAIN_BINARY

Trains a tiny synthetic job with two worker processes (dtrain train
--workers 2), then checks the event files with the independent reader
(read_tfevents.py, run as its own process): every chief scalar equals
metrics.jsonl at the same step to float32 precision, both worker folders
and the histograms are there; and a flipped byte, a truncated file and a
changed metric are each reported with their exact message.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
READER = os.path.join(HERE, "read_tfevents.py")
sys.path.insert(0, HERE)
import read_tfevents  # noqa: E402  (for the CRC values the messages quote)

JOB = """
[job]
name = "tensorboard"
seed = 5

[data]
dataset = "synthetic"
synthetic_samples = 600
synthetic_features = 10
synthetic_classes = 3

[model]
input_shape = [10]

[[model.layers]]
type = "linear"
name = "fc1"
out_features = 16

[[model.layers]]
type = "relu"

[[model.layers]]
type = "linear"
name = "fc2"
out_features = 3

[optimizer]
type = "adam"
lr = 0.01

[train]
epochs = 2
batch_size = 40
log_every_steps = 3
histogram_every_steps = 5
"""

TIMEOUT_S = 120
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
        print("FAILED: " + message)


def reader(*args):
    return subprocess.run([sys.executable, READER] + list(args), capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def expect_reader_error(path, message):
    r = reader(path)
    check(r.returncode == 1 and r.stderr == "read_tfevents: %s\n" % message,
          "reader on %s: want exit 1 and %r, got exit %d and %r"
          % (path, message, r.returncode, r.stderr))


def main():
    dtrain = sys.argv[1]
    work = tempfile.mkdtemp(prefix="dtrain-tensorboard-")
    try:
        job = os.path.join(work, "job.toml")
        with open(job, "w") as f:
            f.write(JOB)
        out = os.path.join(work, "out")
        run = subprocess.run([dtrain, "train", job, "--output", out, "--workers", "2",
                              "--progress", "plain"], capture_output=True, text=True,
                             timeout=TIMEOUT_S)
        if run.returncode != 0:
            print(run.stdout + run.stderr)
            return 1
        board = os.path.join(out, "tensorboard")

        # 24 steps, scalars every 3, two epochs: 8 x 6 step scalars (loss,
        # accuracy, lr, samples/s, bytes/step, compression ratio 1),
        # 2 x 3 epoch scalars, 8 throughputs per worker.
        r = reader("--compare", out)
        check(r.returncode == 0, "compare: " + r.stdout + r.stderr)
        check(r.stdout == "compared 70 scalars with metrics.jsonl in 2 worker folders, "
              "32 histograms: all equal\n", "compare said " + r.stdout)
        entries = sorted(os.listdir(board))
        check(len(entries) == 4 and entries[1:] == ["histograms", "worker-0", "worker-1"] and
              entries[0].startswith("events.out.tfevents."), "tensorboard/ holds %s" % entries)

        # Histograms: weights and gradients of the 4 parameters at steps 5, 10, 15, 20.
        histos = {}
        for e in read_tfevents.read_events(read_tfevents.event_files(
                os.path.join(board, "histograms"))[0]):
            for v in e.get("values", []):
                histos[(v["tag"], e["step"])] = v["histo"]
        tags = sorted({t for t, _ in histos})
        check(tags == ["grads/fc1.bias", "grads/fc1.weight", "grads/fc2.bias", "grads/fc2.weight",
                       "weights/fc1.bias", "weights/fc1.weight", "weights/fc2.bias",
                       "weights/fc2.weight"], "histogram tags %s" % tags)
        check(sorted({s for _, s in histos}) == [5, 10, 15, 20], "histogram steps")
        check(histos[("weights/fc1.weight", 5)]["num"] == 160.0, "fc1.weight has 160 values")
        check(histos[("grads/fc2.bias", 20)]["num"] == 3.0, "fc2.bias has 3 values")

        # Corruptions of the chief's file, each reported exactly.
        original = read_tfevents.event_files(board)[0]
        blob = open(original, "rb").read()
        first = struct.unpack("<Q", blob[:8])[0] + 16  # offset of record 1
        second_len = struct.unpack("<Q", blob[first:first + 8])[0]
        bad = os.path.join(work, "events.out.tfevents.bad")

        flipped = bytearray(blob)
        flipped[first + 12 + 2] ^= 0x01  # a byte of record 1's data
        open(bad, "wb").write(flipped)
        data_end = first + 12 + second_len
        stored = struct.unpack("<I", blob[data_end:data_end + 4])[0]
        computed = read_tfevents.masked_crc(bytes(flipped[first + 12:data_end]))
        check(stored != computed, "the flip changes the CRC")
        expect_reader_error(bad, "%s: record 1 at offset %d: data CRC mismatch "
                            "(stored 0x%08x, computed 0x%08x)" % (bad, first, stored, computed))

        flipped = bytearray(blob)
        flipped[first] ^= 0x40  # record 1's length
        open(bad, "wb").write(flipped)
        stored = struct.unpack("<I", blob[first + 8:first + 12])[0]
        computed = read_tfevents.masked_crc(bytes(flipped[first:first + 8]))
        expect_reader_error(bad, "%s: record 1 at offset %d: length CRC mismatch "
                            "(stored 0x%08x, computed 0x%08x)" % (bad, first, stored, computed))

        open(bad, "wb").write(blob[:first + 12 + 5])  # inside record 1's data
        expect_reader_error(bad, "%s: record 1 at offset %d: truncated data (record needs %d "
                            "bytes, 5 left)" % (bad, first, second_len + 4))

        open(bad, "wb").write(blob[:first + 7])  # inside record 1's length
        expect_reader_error(bad, "%s: record 1 at offset %d: truncated header (7 of 12 bytes)"
                            % (bad, first))

        # A metric that differs in its last float32 bit is found.
        copy = os.path.join(work, "copy")
        shutil.copytree(out, copy)
        metrics = os.path.join(copy, "metrics.jsonl")
        lines = open(metrics).read().splitlines()
        for i, line in enumerate(lines):
            m = json.loads(line)
            if m["event"] == "step" and m["step"] == 6:
                m["loss"] = m["loss"] * (1 + 2.0 ** -20)
                lines[i] = json.dumps(m)
        open(metrics, "w").write("\n".join(lines) + "\n")
        r = reader("--compare", copy)
        check(r.returncode == 1 and "train/loss at step 6 is " in r.stderr,
              "compare of a changed loss: exit %d, %r" % (r.returncode, r.stderr))

        # Dynamic batches: each worker's share of the rows, as in metrics.jsonl's split.
        dyn = os.path.join(work, "dynamic")
        run = subprocess.run([dtrain, "train", job, "--output", dyn, "--workers", "2", "--set",
                              "distributed.dynamic_batch=true", "--set",
                              "distributed.rebalance_every=2", "--slowdown", "1=3"],
                             capture_output=True, text=True, timeout=TIMEOUT_S)
        check(run.returncode == 0, "dynamic batches: " + run.stdout + run.stderr)
        r = reader("--compare", dyn)
        check(r.stdout == "compared 86 scalars with metrics.jsonl in 2 worker folders, "
              "32 histograms: all equal\n", "compare with dynamic batches: " + r.stdout + r.stderr)

        # train.tensorboard = false: no folder.
        off = os.path.join(work, "off")
        run = subprocess.run([dtrain, "train", job, "--output", off, "--set",
                              "train.tensorboard=false"], capture_output=True, text=True,
                             timeout=TIMEOUT_S)
        check(run.returncode == 0, "training without tensorboard: " + run.stdout + run.stderr)
        check(os.path.exists(os.path.join(off, "metrics.jsonl")) and
              not os.path.exists(os.path.join(off, "tensorboard")),
              "train.tensorboard = false still wrote %s" % os.listdir(off))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("%d failures" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
