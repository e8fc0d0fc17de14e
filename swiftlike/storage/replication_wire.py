"""The framing of SSYNC update streams, shared by the sender (replicator) and receiver.

An updates body is a sequence of frames: a 4-byte big-endian header length, a msgpack
header ``{"part", "hash", "name", "meta", "size"}``, then ``size`` bytes of file content;
a zero header length ends the stream. The files of many partitions travel in one request
on one keep-alive connection, which is what makes a rebuild fast.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

FRAME_HEADER = struct.Struct(">I")
END_OF_STREAM = FRAME_HEADER.pack(0)
MAX_HEADER = 1 << 20

#: aiohttp's HTTP parser (llhttp) refuses methods it does not know, so on the wire the
#: verbs travel as ``POST`` with this header naming the verb (REPLICATE or SSYNC).
VERB_HEADER = "X-Backend-Replication"
PHASE_HEADER = "X-Ssync-Phase"
PHASE_MISSING = "missing_check"
PHASE_UPDATES = "updates"
MSGPACK_TYPE = "application/x-msgpack"


def is_partition(value: object) -> bool:
    """A partition as the batch verbs name it: a decimal string."""
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12


def frame_header(part: str, object_hash: str, name: str, meta: dict[str, Any],
                 size: int) -> bytes:
    packed = msgpack.packb({"part": part, "hash": object_hash, "name": name, "meta": meta,
                            "size": size}, use_bin_type=True)
    return FRAME_HEADER.pack(len(packed)) + packed


def parse_frame_header(raw: bytes) -> dict[str, Any]:
    header = msgpack.unpackb(raw, raw=False)
    if not isinstance(header, dict) or not is_partition(header.get("part")) or \
            not isinstance(header.get("hash"), str) or \
            not isinstance(header.get("name"), str) or \
            not isinstance(header.get("meta"), dict) or \
            not isinstance(header.get("size"), int) or header["size"] < 0:
        raise ValueError("malformed frame header")
    return header


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)
