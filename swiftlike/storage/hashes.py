"""Suffix hashes: the fingerprint replication compares, one per suffix directory.

Each partition directory keeps ``hashes.msgpack`` ({suffix: hex digest}) and an
append-only ``hashes.invalid`` journal of suffixes written since. Writers only append to
the journal (cheap, under a short lock); :func:`get_suffix_hashes` folds the journal in and
rehashes just the invalidated suffixes. Both sides hold an flock on ``.lock`` in the
partition directory, so threads and processes (object server, replicator) agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping

import msgpack

HASHES_FILE = "hashes.msgpack"
INVALID_FILE = "hashes.invalid"
LOCK_FILE = ".lock"


@contextlib.contextmanager
def partition_lock(partition_dir: str) -> Iterator[None]:
    """An exclusive flock on the partition's lock file (held per open file description)."""
    fd = os.open(os.path.join(partition_dir, LOCK_FILE), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def invalidate_suffix(partition_dir: str, suffix: str) -> None:
    """Record that a suffix changed; its hash is recomputed on the next read.

    Appends under an flock of the journal itself (one open per write); the reader takes
    the same lock while it reads and truncates the journal.
    """
    invalidate_suffixes(partition_dir, (suffix,))


def invalidate_object_dir(object_dir: str) -> None:
    """:func:`invalidate_suffix` for the suffix a hash directory
    (``<partition>/<suffix>/<hash>``) lies in."""
    suffix_dir = os.path.dirname(object_dir)
    invalidate_suffixes(os.path.dirname(suffix_dir), (os.path.basename(suffix_dir),))


def invalidate_suffixes(partition_dir: str, suffixes: Iterable[str]) -> None:
    """:func:`invalidate_suffix` for several suffixes of one partition in one append.

    A writer that put many files into a partition at once (the replication receiver's
    batches) records them with one open, lock and write instead of one per file.
    """
    record = "".join(suffix + "\n" for suffix in suffixes).encode("ascii")
    if not record:
        return
    try:
        fd = os.open(os.path.join(partition_dir, INVALID_FILE),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, record)
    finally:
        os.close(fd)


#: an empty directory changed more recently than this is left alone by a rehash
EMPTY_DIR_GRACE = 60.0


def _remove_if_idle(path: str) -> None:
    """rmdir an empty directory unless it changed recently.

    A writer creates the suffix and hash directories, then links its file in; a rehash
    (a REPLICATE from another node) running in between must not remove them, or the
    link fails and the write with it. A fresh empty directory is left for a later pass.
    """
    with contextlib.suppress(OSError):
        if time.time() - os.stat(path).st_mtime >= EMPTY_DIR_GRACE:
            os.rmdir(path)


def list_suffix_dir(suffix_dir: str) -> dict[str, list[str]]:
    """Hash directory -> its sorted file names, for one suffix; sidecars left out.

    Sidecar metadata files are left out: their names follow from the file they describe.
    """
    try:
        hash_dirs = sorted(os.listdir(suffix_dir))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    listing: dict[str, list[str]] = {}
    for hash_dir in hash_dirs:
        try:
            names = os.listdir(os.path.join(suffix_dir, hash_dir))
        except (FileNotFoundError, NotADirectoryError):
            continue
        listing[hash_dir] = sorted(name for name in names if not name.endswith(".msgpack"))
    return listing


def listing_digest(listing: Mapping[str, Iterable[str]]) -> str | None:
    """md5 over the sorted ``<hash>/<file>`` names of a suffix; None when it has none."""
    md5 = hashlib.md5(usedforsecurity=False)
    found = False
    for hash_dir in sorted(listing):
        for name in listing[hash_dir]:
            md5.update(f"{hash_dir}/{name}\n".encode())
            found = True
    return md5.hexdigest() if found else None


def hash_suffix_dir(suffix_dir: str) -> str | None:
    """The suffix's :func:`listing_digest`, read from disk now.

    Empty hash directories (and an empty suffix) are removed on the way, once idle.
    """
    listing = list_suffix_dir(suffix_dir)
    for hash_dir, names in listing.items():
        if not names:
            _remove_if_idle(os.path.join(suffix_dir, hash_dir))
    digest = listing_digest(listing)
    if digest is None:
        _remove_if_idle(suffix_dir)
    return digest


def _write_hashes(hashes_path: str, hashes: dict[str, str | None]) -> None:
    tmp = hashes_path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(msgpack.packb(hashes, use_bin_type=True))
    os.rename(tmp, hashes_path)


def is_suffix(name: str) -> bool:
    """A suffix directory's name: the last 3 hex digits of an object hash."""
    return len(name) == 3 and all(c in "0123456789abcdef" for c in name)


def get_suffix_hashes(device_path: str, partition: int | str,
                      recalculate: Iterable[str] = (), kind: str = "objects",
                      rehashed: set[str] | None = None) -> dict[str, str]:
    """{suffix: hash} of one partition, rehashing invalidated and ``recalculate`` suffixes.

    The replicator compares this dict with a peer's and syncs the suffixes that differ;
    it passes ``rehashed`` to learn which suffixes were recomputed just now (so it need
    not recompute them again later in the same pass).
    """
    partition_dir = os.path.join(device_path, kind, str(partition))
    if not os.path.isdir(partition_dir):
        return {}
    with partition_lock(partition_dir):
        hashes_path = os.path.join(partition_dir, HASHES_FILE)
        hashes: dict[str, str | None] = {}
        full_rehash = False
        try:
            with open(hashes_path, "rb") as handle:
                loaded = msgpack.unpackb(handle.read(), raw=False)
            if isinstance(loaded, dict):
                hashes = loaded
            else:
                full_rehash = True
        except (FileNotFoundError, ValueError, msgpack.UnpackException):
            full_rehash = True
        invalid_path = os.path.join(partition_dir, INVALID_FILE)
        journal_fd = os.open(invalid_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Held until the new hashes are saved: a writer's invalidation that arrives
            # meanwhile waits and lands in the emptied journal, never in the gap between
            # reading the journal and truncating it. One write of hashes.msgpack, then
            # the truncate: a crash in between only rehashes those suffixes again.
            fcntl.flock(journal_fd, fcntl.LOCK_EX)
            journal = b""
            while chunk := os.read(journal_fd, 65536):
                journal += chunk
            for line in journal.decode("ascii", "replace").splitlines():
                if is_suffix(line.strip()):
                    hashes[line.strip()] = None
            for suffix in recalculate:
                hashes[suffix] = None
            if full_rehash:
                hashes = {name: None for name in os.listdir(partition_dir) if is_suffix(name)}
            changed = False
            for suffix, value in list(hashes.items()):
                if value is None:
                    digest = hash_suffix_dir(os.path.join(partition_dir, suffix))
                    changed = True
                    if rehashed is not None:
                        rehashed.add(suffix)
                    if digest is None:
                        del hashes[suffix]
                    else:
                        hashes[suffix] = digest
            if changed or full_rehash:
                _write_hashes(hashes_path, hashes)
            if journal:
                os.ftruncate(journal_fd, 0)
        finally:
            os.close(journal_fd)
        return {suffix: value for suffix, value in hashes.items() if value is not None}
