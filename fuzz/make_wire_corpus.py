#!/usr/bin/env python3
"""Writes the seed corpus of the wire-frame fuzzer (fuzz/corpus/wire/).

An independent implementation of docs/wire-format.md: the regression test
(tests/comm/wire_format_test.cpp, WireCorpus) checks that every valid-* frame
written here decodes in C++ and every other one is refused, so the two
implementations keep each other honest. Setup shared with fuzz/wire_fuzz.cpp:
job name "fuzz", world size 8, any receiver, files whose name contains
"secret" use the job secret "fuzz-secret".

Usage: fuzz/make_wire_corpus.py [OUTPUT_DIR]
"""
import hashlib
import os
import struct
import sys

MAGIC = 0x4E525444
VERSION = 1
HEADER_BYTES = 88
FLAG_CRC, FLAG_MAC = 0x01, 0x02
DATA, HEARTBEAT, GOODBYE, REGISTER, TABLE, REJECT, STATUS = 1, 2, 3, 16, 17, 18, 19
COORDINATOR = 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def job_id(name: str) -> int:
    digest = hashlib.blake2b(b"dtrain job id v1" + name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def frame_key(name: str, secret: str) -> bytes:
    return hashlib.blake2b(b"dtrain frame key v1" + struct.pack("<Q", job_id(name)),
                           key=secret.encode(), digest_size=32).digest()


def frame(payload=b"", *, type_=DATA, sender=1, receiver=2, job="fuzz", sequence=0, tag=7,
          crc=True, secret=None, length=None, magic=MAGIC, version=VERSION, flags=None,
          reserved8=0, reserved32=0):
    f = (FLAG_CRC if crc else 0) | (FLAG_MAC if secret else 0)
    header = struct.pack("<IBBBBIIQQQQII", magic, version, type_, f if flags is None else flags,
                         reserved8, sender, receiver, job_id(job), sequence, tag,
                         len(payload) if length is None else length,
                         crc32c(payload) if crc else 0, reserved32) + bytes(32)
    assert len(header) == HEADER_BYTES
    if secret:
        mac = hashlib.blake2b(header + payload, key=frame_key(job, secret), digest_size=32).digest()
        header = header[:56] + mac
    return header + payload


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus/wire")
    os.makedirs(out, exist_ok=True)
    hello = b"hello, rank 2"
    big = bytes(range(256)) * 16
    secret_frame = frame(hello, secret="fuzz-secret")
    corpus = {
        "valid-data-crc": frame(hello),
        "valid-data-no-crc": frame(hello, crc=False),
        "valid-data-4k": frame(big, sequence=41, tag=2**63 + 5),
        "valid-heartbeat": frame(type_=HEARTBEAT, sequence=3),
        "valid-goodbye": frame(type_=GOODBYE, sender=7, receiver=0),
        "valid-register": frame(b"\x08\x00\x00\x00", type_=REGISTER, receiver=COORDINATOR),
        "valid-table-from-coordinator": frame(b"\x00\x00\x00\x00", type_=TABLE, sender=COORDINATOR),
        "valid-secret-data": secret_frame,
        "bad-empty": b"",
        "bad-short-header": frame(hello)[:40],
        "bad-magic": frame(hello, magic=0x12345678),
        "bad-version": frame(hello, version=9),
        "bad-type": frame(hello, type_=200),
        "bad-flags": frame(hello, flags=0x41),
        "bad-reserved": frame(hello, reserved8=1),
        "bad-job-id": frame(hello, job="another-job"),
        "bad-sender-out-of-range": frame(hello, sender=8),
        "bad-table-from-rank": frame(type_=TABLE, sender=3),
        "bad-length-huge": frame(hello, length=2**64 - 1),
        "bad-length-long": frame(hello, length=len(hello) + 1),
        "bad-length-short": frame(hello, length=len(hello) - 1),
        "bad-crc": frame(hello)[:-1] + b"?",
        "bad-secret-unsigned": frame(hello),
        "bad-secret-tampered-payload": secret_frame[:-1] + b"!",
        "bad-secret-tampered-tag": secret_frame[:32] + b"\x08" + secret_frame[33:],
        "bad-signed-frame-no-key": secret_frame,
    }
    for name, data in corpus.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
