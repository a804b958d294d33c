#!/usr/bin/python3
"""An independent reader of TensorBoard event files, for dtrain's tests.

Pure Python 3, standard library only, sharing no code with dtrain's C++
writer (src/obs): its own CRC-32C table and its own protocol-buffer wire
format decoder.

  read_tfevents.py FILE...
      Decodes every record of every file (TFRecord framing: uint64 length,
      uint32 masked CRC-32C of the length, the data, uint32 masked CRC-32C of
      the data) and prints one JSON object per event. Every length CRC and
      data CRC is checked; a bad one, a truncated record or undecodable
      protobuf bytes stop the reader with exit code 1 and one line on stderr
      naming the file, the record and its offset.

  read_tfevents.py --compare OUTPUT
      Reads OUTPUT/metrics.jsonl and every event file under
      OUTPUT/tensorboard, and checks that the chief's scalars equal the
      metrics (as float32) at the same steps, no more and no fewer (with
      dynamic batches also each worker's share of the rows), that each
      worker folder has its throughput at the same steps, and that every
      histogram's bucket counts add up to its count. Exit code 0 with a
      summary line, or 1 with the first difference.
"""

import json
import math
import os
import struct
import sys


class DecodeError(Exception):
    pass


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data):
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path):
    """The data of every record of the file at `path`, checked."""
    with open(path, "rb") as f:
        blob = f.read()
    records = []
    offset = 0
    while offset < len(blob):
        where = "%s: record %d at offset %d" % (path, len(records), offset)
        if len(blob) - offset < 12:
            raise DecodeError("%s: truncated header (%d of 12 bytes)" % (where, len(blob) - offset))
        header = blob[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        (stored,) = struct.unpack("<I", blob[offset + 8:offset + 12])
        computed = masked_crc(header)
        if stored != computed:
            raise DecodeError("%s: length CRC mismatch (stored 0x%08x, computed 0x%08x)"
                              % (where, stored, computed))
        start = offset + 12
        if len(blob) - start < length + 4:
            raise DecodeError("%s: truncated data (record needs %d bytes, %d left)"
                              % (where, length + 4, len(blob) - start))
        data = blob[start:start + length]
        (stored,) = struct.unpack("<I", blob[start + length:start + length + 4])
        computed = masked_crc(data)
        if stored != computed:
            raise DecodeError("%s: data CRC mismatch (stored 0x%08x, computed 0x%08x)"
                              % (where, stored, computed))
        records.append(data)
        offset = start + length + 4
    return records


def _varint(buf, pos):
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("varint runs past the end of the message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def fields(buf):
    """(field number, wire type, value) for each field of a message: an int
    for varints, bytes for the fixed widths and length-delimited fields."""
    pos = 0
    out = []
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise DecodeError("field %d: fixed%d runs past the end" % (number, 8 * size))
            value = buf[pos:pos + size]
            pos += size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise DecodeError("field %d: %d bytes run past the end" % (number, size))
            value = buf[pos:pos + size]
            pos += size
        else:
            raise DecodeError("field %d: unsupported wire type %d" % (number, wire))
        out.append((number, wire, value))
    return out


def _double(b):
    return struct.unpack("<d", b)[0]


def _int64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_doubles(b):
    if len(b) % 8:
        raise DecodeError("packed doubles of %d bytes" % len(b))
    return list(struct.unpack("<%dd" % (len(b) // 8), b))


def decode_histogram(buf):
    h = {"min": 0.0, "max": 0.0, "num": 0.0, "sum": 0.0, "sum_squares": 0.0,
         "bucket_limit": [], "bucket": []}
    names = {1: "min", 2: "max", 3: "num", 4: "sum", 5: "sum_squares"}
    for number, wire, value in fields(buf):
        if number in names and wire == 1:
            h[names[number]] = _double(value)
        elif number == 6 and wire == 2:
            h["bucket_limit"] += _packed_doubles(value)
        elif number == 7 and wire == 2:
            h["bucket"] += _packed_doubles(value)
    return h


def decode_value(buf):
    v = {}
    for number, wire, value in fields(buf):
        if number == 1 and wire == 2:
            v["tag"] = value.decode("utf-8")
        elif number == 2 and wire == 5:
            v["simple_value"] = struct.unpack("<f", value)[0]
        elif number == 5 and wire == 2:
            v["histo"] = decode_histogram(value)
    return v


def decode_event(buf):
    e = {"wall_time": 0.0, "step": 0}
    for number, wire, value in fields(buf):
        if number == 1 and wire == 1:
            e["wall_time"] = _double(value)
        elif number == 2 and wire == 0:
            e["step"] = _int64(value)
        elif number == 3 and wire == 2:
            e["file_version"] = value.decode("utf-8")
        elif number == 5 and wire == 2:
            e["values"] = [decode_value(v) for n, w, v in fields(value) if n == 1 and w == 2]
    return e


def read_events(path):
    events = []
    for i, data in enumerate(read_records(path)):
        try:
            events.append(decode_event(data))
        except DecodeError as err:
            raise DecodeError("%s: record %d: %s" % (path, i, err))
    if not events or events[0].get("file_version") != "brain.Event:2":
        raise DecodeError("%s: the first event is not file_version \"brain.Event:2\"" % path)
    return events


def event_files(folder):
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.startswith("events.out.tfevents."))


def scalars(folder):
    """{(tag, step): value} of every event file directly in `folder`."""
    out = {}
    for path in event_files(folder):
        for e in read_events(path):
            for v in e.get("values", []):
                if "simple_value" in v:
                    key = (v["tag"], e["step"])
                    if key in out:
                        raise DecodeError("%s: %s at step %d twice" % (path, key[0], key[1]))
                    out[key] = v["simple_value"]
    return out


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def expected_scalars(metrics_path):
    want = {}
    steps = []
    with open(metrics_path) as f:
        for line in f:
            m = json.loads(line)
            if m["event"] == "step":
                steps.append(m["step"])
                for tag, key in (("train/loss", "loss"), ("train/accuracy", "accuracy"),
                                 ("train/lr", "lr"), ("train/samples_per_s", "samples_per_s")):
                    want[(tag, m["step"])] = m[key]
                if m.get("bytes_per_step", 0) > 0:
                    want[("comm/bytes_per_step", m["step"])] = m["bytes_per_step"]
                if m.get("compression_ratio", 0) > 0:
                    want[("comm/compression_ratio", m["step"])] = m["compression_ratio"]
            elif m["event"] == "epoch":
                want[("test/loss", m["step"])] = m["test_loss"]
                want[("test/accuracy", m["step"])] = m["test_accuracy"]
                want[("epoch/samples_per_s", m["step"])] = m["samples_per_s"]
    return want, steps


def expected_shares(metrics_path):
    want = {}
    with open(metrics_path) as f:
        for line in f:
            m = json.loads(line)
            if m["event"] == "step" and sum(m.get("split", [])) > 0:
                for r, rows in enumerate(m["split"]):
                    want[("batch/share_worker%d" % r, m["step"])] = rows / sum(m["split"])
    return want


def compare(output):
    want, steps = expected_scalars(os.path.join(output, "metrics.jsonl"))
    board = os.path.join(output, "tensorboard")
    got = scalars(board)
    # Dynamic batches add each worker's share, which metrics.jsonl holds as
    # rows ("split"): expected only when the run wrote shares at all.
    if any(tag.startswith("batch/share_worker") for tag, _ in got):
        want.update(expected_shares(os.path.join(output, "metrics.jsonl")))
    got = {k: v for k, v in got.items() if not k[0].startswith("guard/")}
    if not want:
        raise DecodeError("%s/metrics.jsonl: no step or epoch events" % output)
    for key in sorted(set(want) | set(got)):
        if key not in got:
            raise DecodeError("%s: %s at step %d is missing (metrics.jsonl: %r)"
                              % (board, key[0], key[1], want[key]))
        if key not in want:
            raise DecodeError("%s: %s at step %d is not in metrics.jsonl" % (board, key[0], key[1]))
        if got[key] != f32(want[key]):
            raise DecodeError("%s: %s at step %d is %r, metrics.jsonl has %r (float32 %r)"
                              % (board, key[0], key[1], got[key], want[key], f32(want[key])))
    compared = len(want)
    workers = sorted(n for n in os.listdir(board) if n.startswith("worker-"))
    if not workers:
        raise DecodeError("%s: no worker-<r> folder" % board)
    for w in workers:
        throughput = {k[1]: v for k, v in scalars(os.path.join(board, w)).items()
                      if k[0] == "throughput/samples_per_s"}
        if sorted(throughput) != steps:
            raise DecodeError("%s/%s: throughput at steps %s, metrics.jsonl at %s"
                              % (board, w, sorted(throughput), steps))
        if any(not (v > 0 and math.isfinite(v)) for v in throughput.values()):
            raise DecodeError("%s/%s: a throughput is not positive: %s" % (board, w, throughput))
        compared += len(throughput)
    histograms = 0
    folder = os.path.join(board, "histograms")
    if os.path.isdir(folder):
        for path in event_files(folder):
            for e in read_events(path):
                for v in e.get("values", []):
                    if "histo" not in v:
                        continue
                    h = v["histo"]
                    if sum(h["bucket"]) != h["num"] or len(h["bucket"]) != len(h["bucket_limit"]):
                        raise DecodeError("%s: %s at step %d: buckets add up to %r, num %r"
                                          % (path, v["tag"], e["step"], sum(h["bucket"]), h["num"]))
                    histograms += 1
    print("compared %d scalars with metrics.jsonl in %d worker folders, %d histograms: all equal"
          % (compared, len(workers), histograms))


def main(argv):
    try:
        if len(argv) == 3 and argv[1] == "--compare":
            compare(argv[2])
            return 0
        if len(argv) < 2 or argv[1].startswith("-"):
            sys.stderr.write(__doc__)
            return 2
        for path in argv[1:]:
            for e in read_events(path):
                print(json.dumps(e, sort_keys=True))
        return 0
    except (DecodeError, OSError, ValueError, KeyError) as err:
        sys.stderr.write("read_tfevents: %s\n" % err)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
