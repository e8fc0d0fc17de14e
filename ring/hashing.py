"""Path hashing: the one function that turns a Swift path into ring coordinates.

Every process of a cluster (proxies, storage nodes, daemons) must agree on it, so it
lives in the ring package. The hash is salted with a per-cluster secret prefix and
suffix, so an outsider cannot choose names that all land on one partition.
"""

from __future__ import annotations

import xxhash


def hash_path(
    account: str,
    container: str | None = None,
    obj: str | None = None,
    *,
    prefix: bytes = b"",
    suffix: bytes = b"",
) -> bytes:
    """Return the 16-byte digest that places ``/account[/container[/object]]``.

    A container needs an account and an object needs a container: anything else is
    a programming error, not user input, so it raises ValueError.
    """
    if obj is not None and container is None:
        raise ValueError("an object path needs a container")
    if not account:
        raise ValueError("a path needs an account")
    parts = [account]
    if container is not None:
        parts.append(container)
        if obj is not None:
            parts.append(obj)
    path = ("/" + "/".join(parts)).encode("utf-8", "surrogateescape")
    return xxhash.xxh3_128_digest(prefix + path + suffix)


def hash_path_hex(
    account: str,
    container: str | None = None,
    obj: str | None = None,
    *,
    prefix: bytes = b"",
    suffix: bytes = b"",
) -> str:
    """Hex form of :func:`hash_path`; the name of an object's directory on disk."""
    return hash_path(account, container, obj, prefix=prefix, suffix=suffix).hex()


def partition_of(digest: bytes, part_power: int) -> int:
    """The partition of a path digest: its top ``part_power`` bits."""
    if part_power == 0:
        return 0
    return int.from_bytes(digest[:8], "big") >> (64 - part_power)


def suffix_of(hash_hex: str) -> str:
    """The suffix directory of a hashed path: its last three hex digits.

    Replication compares partitions suffix by suffix, so a change re-hashes only
    1/4096 of a partition.
    """
    return hash_hex[-3:]
