"""Change counters for account/container metadata, shared by a host's proxy workers.

Proxy workers cache account and container info (ACLs, quotas, keys, versioning) so a
plain object request does not HEAD the container first. A cache is only as good as
its invalidation: a worker sees its own writes at once, but a quota or ACL set through
another worker would otherwise stay invisible until the entry expires. Swift closes
that gap with one memcache shared by all proxies; we keep no extra daemon, so the
workers of one host share a small file of counters instead.

Each (account, container) hashes to one 64-bit slot of the file, mapped into every
worker. After an account or container write finishes (the backend has answered),
the worker that carried it bumps the slot. A cache entry remembers the slot's value
from before its fetch started and is used only while the slot still holds it, so a
change through any worker invalidates every worker's copy on the next lookup. Two
names sharing a slot only cost an extra fetch. Without a file (tests, one worker)
the counters live in the process.

A bump takes a lock on its 8 bytes (``lockf``), so concurrent bumps from several
workers never collapse into one; a read is a plain aligned 8-byte load.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from array import array

import xxhash

SLOTS = 4096
_SLOT = struct.Struct("=Q")


class InfoGenerations:
    """The counters: in a shared file (``path``) or, without one, in this process."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        if path is None:
            self._slots: memoryview = memoryview(array("Q", bytes(SLOTS * 8)))
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SLOTS * 8:
                os.ftruncate(fd, SLOTS * 8)  # zero-filled; racing workers agree on size
            self._map = mmap.mmap(fd, SLOTS * 8, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._slots = memoryview(self._map).cast("Q")

    @staticmethod
    def slot(account: str, container: str | None) -> int:
        key = f"{account}/{container}" if container is not None else account
        return xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogateescape")) % SLOTS

    def current(self, account: str, container: str | None = None) -> int:
        """The counter of ``(account, container)``; compare it with a cached copy's."""
        return self._slots[self.slot(account, container)]

    def bump(self, account: str, container: str | None = None) -> None:
        """Record that ``(account, container)`` changed: every cached copy is now stale."""
        index = self.slot(account, container)
        if self._fd is None:
            self._slots[index] = (self._slots[index] + 1) & 0xFFFFFFFFFFFFFFFF
            return
        offset = index * 8
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 8, offset)
        try:
            self._slots[index] = (self._slots[index] + 1) & 0xFFFFFFFFFFFFFFFF
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 8, offset)

    def close(self) -> None:
        self._slots.release()
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


INFO_GENERATIONS_KEY = "_info_generations"


def info_generations(conf: dict) -> InfoGenerations:
    """The app's counters, kept in ``conf`` (created on first use from
    ``[proxy] info_generations_file``)."""
    generations = conf.get(INFO_GENERATIONS_KEY)
    if generations is None:
        path = conf.get("proxy", {}).get("info_generations_file") or None
        generations = conf[INFO_GENERATIONS_KEY] = InfoGenerations(path)
    return generations
