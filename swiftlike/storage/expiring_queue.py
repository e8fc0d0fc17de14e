"""The node-local queue of objects to delete at their X-Delete-At time.

Every node that stores an object carrying ``X-Delete-At`` (PUT, POST, or a replicated
copy found by the auditor) records it under
``<device>/expiring/<delete_at>/<hash>-<timestamp>`` (msgpack ``{account, container,
obj, delete_at, timestamp}``, fsynced, renamed into place). The queue lives on disk, so
it survives restarts; every replica's node holds an entry, so losing one node loses no
expiry. The expirer pops due entries and deletes the object on all its primaries with
``X-If-Delete-At``; deletes are idempotent, so several nodes expiring the same object is
harmless. Entry names are deterministic, so enqueueing twice writes one entry.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import msgpack

from ring.hashing import hash_path_hex
from swiftlike.storage.durable_io import write_record_atomic

QUEUE_DIR = "expiring"


def entry_path(device_path: str, account: str, container: str, obj: str, delete_at: int,
               timestamp: str, hash_prefix: bytes, hash_suffix: bytes) -> str:
    object_hash = hash_path_hex(account, container, obj, prefix=hash_prefix,
                                suffix=hash_suffix)
    return os.path.join(device_path, QUEUE_DIR, f"{int(delete_at):010d}",
                        f"{object_hash}-{timestamp}")


def enqueue_expiring(device_path: str, account: str, container: str, obj: str,
                     delete_at: int | str, timestamp: str, hash_prefix: bytes,
                     hash_suffix: bytes, fsync: bool = True) -> str:
    """Durably record that ``/account/container/obj`` must go at ``delete_at`` (blocking).

    The object server calls this after storing an object with X-Delete-At (the caller
    passes the write's X-Timestamp).
    """
    delete_at = int(delete_at)
    final = entry_path(device_path, account, container, obj, delete_at, timestamp,
                       hash_prefix, hash_suffix)
    if os.path.exists(final):
        return final
    directory = os.path.dirname(final)
    os.makedirs(directory, exist_ok=True)
    record = {"account": account, "container": container, "obj": obj,
              "delete_at": delete_at, "timestamp": timestamp}
    write_record_atomic(device_path, final, record, fsync, "expiring")
    return final


def due_entries(device_path: str, now: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, record) of every entry whose delete_at has passed, oldest first."""
    root = os.path.join(device_path, QUEUE_DIR)
    try:
        # by number: a bucket with more digits (an older release stored any X-Delete-At)
        # would sort first as a string and, being in the future, end every pass
        buckets = sorted((b for b in os.listdir(root) if b.isdigit()), key=int)
    except FileNotFoundError:
        return
    for bucket in buckets:
        if int(bucket) > now:
            break
        bucket_dir = os.path.join(root, bucket)
        try:
            names = sorted(os.listdir(bucket_dir))
        except FileNotFoundError:
            continue
        for name in names:
            path = os.path.join(bucket_dir, name)
            try:
                with open(path, "rb") as handle:
                    record = msgpack.unpackb(handle.read(), raw=False)
            except (OSError, ValueError, msgpack.UnpackException):
                record = None
            if not isinstance(record, dict) or not all(
                    k in record for k in ("account", "container", "obj", "delete_at")):
                remove_entry(path)  # unreadable: nothing we could ever do with it
                continue
            yield path, record


def remove_entry(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))  # only succeeds once the bucket is empty


def pending_count(device_path: str) -> int:
    root = os.path.join(device_path, QUEUE_DIR)
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for bucket in os.listdir(root):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                total += len(os.listdir(os.path.join(root, bucket)))
    return total
