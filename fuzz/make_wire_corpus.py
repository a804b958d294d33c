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

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

MAGIC = 0x4E525444
VERSION = 2
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


AES_GCM, POLY1305 = 1, 2


def frame_key(name: str, secret: str, algorithm: int) -> bytes:
    domain = b"dtrain frame key aes-256-gcm v2" if algorithm == AES_GCM else \
        b"dtrain frame key poly1305 v2"
    return hashlib.blake2b(domain + struct.pack("<Q", job_id(name)), key=secret.encode(),
                           digest_size=32).digest()


def frame_tag(key: bytes, algorithm: int, nonce: bytes, header: bytes, payload: bytes) -> bytes:
    if algorithm == AES_GCM:
        # The payload is the additional data, the header the message; keep the tag.
        return AESGCM(key).encrypt(nonce, header, payload)[-16:]
    # RFC 8439 2.6: the one-time key is ChaCha20 block 0 (cryptography's
    # 16-byte nonce is the 32-bit block counter, then the 96-bit nonce).
    chacha = Cipher(algorithms.ChaCha20(key, bytes(4) + nonce), mode=None).encryptor()
    one_time_key = chacha.update(bytes(32))
    return Poly1305.generate_tag(one_time_key, header + payload)


def frame(payload=b"", *, type_=DATA, sender=1, receiver=2, job="fuzz", sequence=0, tag=7,
          crc=True, secret=None, length=None, magic=MAGIC, version=VERSION, flags=None,
          reserved8=0, reserved32=0, algorithm=AES_GCM, nonce_source=0x0badcafe, counter=41):
    f = (FLAG_CRC if crc else 0) | (FLAG_MAC if secret else 0)
    header = struct.pack("<IBBBBIIQQQQII", magic, version, type_, f if flags is None else flags,
                         reserved8, sender, receiver, job_id(job), sequence, tag,
                         len(payload) if length is None else length,
                         crc32c(payload) if crc else 0, reserved32) + bytes(32)
    assert len(header) == HEADER_BYTES
    if secret:
        nonce = struct.pack("<IQ", nonce_source, counter)
        tag = frame_tag(frame_key(job, secret, algorithm), algorithm, nonce, header, payload)
        header = header[:56] + nonce + bytes([algorithm, 0, 0, 0]) + tag
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
        "valid-secret-poly1305": frame(hello, secret="fuzz-secret", algorithm=POLY1305),
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
        "bad-secret-tampered-nonce": secret_frame[:60] + b"\x2a" + secret_frame[61:],
        "bad-secret-unknown-algorithm": secret_frame[:68] + b"\x07" + secret_frame[69:],
        "bad-secret-wrong-algorithm": secret_frame[:68] + b"\x02" + secret_frame[69:],
        "bad-secret-version-1": frame(hello, secret="fuzz-secret", version=1),
    }
    for name, data in corpus.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
