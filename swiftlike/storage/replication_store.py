"""Blocking disk operations for object replication, shared by sender and receiver.

The replicator (sender) lists what a partition's suffixes hold; the node's SSYNC verb
(receiver) decides what it is missing and writes pushed files. Writes follow the same
rules as client writes in :mod:`swiftlike.storage.diskfile`: bytes go to ``<device>/tmp``,
are fsynced, get their metadata, are renamed into the hash directory, and the directory
is fsynced before the receiver answers; a pushed file never replaces a newer one.
Under group commit a batch of small files is staged, flushed once, linked, flushed again
(:class:`StagedFile`) instead.

All functions here block: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.diskfile import (
    SIDECAR_EXT,
    DiskFull,
    ObjectWriter,
    cleanup_object_dir,
    gather_ondisk_files,
    make_object_dir,
    makedirs_durable,
    quarantine_object_dir,
    read_metadata,
    set_xattr_metadata,
    stage_whole_object,
    write_sidecar,
)
from swiftlike.storage.hashes import invalidate_suffix, invalidate_suffixes

#: Kinds of file a hash directory can offer: the durable one (.data or .ts) and a .meta.
WANT_DURABLE = "d"
WANT_META = "m"


@dataclass
class OfferedObject:
    """What the sender holds for one object hash: file names, newest first."""

    object_hash: str
    suffix: str
    durable: str | None  # "<ts>.data" or "<ts>.ts"
    meta: str | None  # "<ts>.meta"

    def as_wire(self) -> list[str | None]:
        return [self.durable, self.meta]


def _stamp(name: str | None) -> Timestamp | None:
    if not name:
        return None
    return Timestamp(name.rpartition(".")[0])


def list_partition_offers(device_path: str, partition: str, suffixes: list[str],
                          reclaim_age: float, now: float | None = None
                          ) -> list[OfferedObject]:
    """Every live hash directory of the given suffixes, reclaiming old tombstones.

    A tombstone older than ``reclaim_age`` has done its job (every replica saw it within
    the consistency window): it is deleted here and not offered.
    """
    now = time.time() if now is None else now
    part_dir = os.path.join(device_path, "objects", partition)
    offers: list[OfferedObject] = []
    for suffix in suffixes:
        suffix_dir = os.path.join(part_dir, suffix)
        try:
            hashes = sorted(os.listdir(suffix_dir))
        except (FileNotFoundError, NotADirectoryError):
            continue
        reclaimed = False
        for object_hash in hashes:
            object_dir = os.path.join(suffix_dir, object_hash)
            state = cleanup_object_dir(object_dir)
            if state.ts_file and state.ts_timestamp is not None and \
                    state.ts_timestamp.timestamp < now - reclaim_age:
                _remove_object_file(object_dir, state.ts_file)
                with contextlib.suppress(OSError):
                    os.rmdir(object_dir)
                reclaimed = True
                continue
            durable = state.data_file or state.ts_file
            if durable is None:
                continue
            offers.append(OfferedObject(object_hash, suffix, durable, state.meta_file))
        if reclaimed:
            invalidate_suffix(part_dir, suffix)
    return offers


def _remove_object_file(object_dir: str, name: str) -> None:
    for victim in (name, name + SIDECAR_EXT):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(object_dir, victim))


def reclaim_partition(device_path: str, partition: str, reclaim_age: float) -> int:
    """Delete tombstones older than reclaim_age in a whole partition; returns how many."""
    part_dir = os.path.join(device_path, "objects", partition)
    try:
        suffixes = [s for s in os.listdir(part_dir) if len(s) == 3]
    except FileNotFoundError:
        return 0
    before = sum(1 for _ in _iter_ts_files(part_dir, suffixes))
    list_partition_offers(device_path, partition, suffixes, reclaim_age)
    after = sum(1 for _ in _iter_ts_files(part_dir, suffixes))
    return before - after


def _iter_ts_files(part_dir: str, suffixes: list[str]):
    for suffix in suffixes:
        suffix_dir = os.path.join(part_dir, suffix)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for object_hash in os.listdir(suffix_dir):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    for name in os.listdir(os.path.join(suffix_dir, object_hash)):
                        if name.endswith(".ts"):
                            yield name


def wanted_parts(device_path: str, partition: str,
                 offers: dict[str, list[str | None]]) -> dict[str, str]:
    """The receiver's missing check: for each offered hash, which files it needs.

    Returns ``{hash: "d" | "m" | "dm"}``: ``d`` when the offered .data/.ts is newer
    than whatever durable file is here, ``m`` when the offered .meta is newer than ours
    and would apply (its data is here or on its way).
    """
    part_dir = os.path.join(device_path, "objects", partition)
    wanted: dict[str, str] = {}
    for object_hash, (durable, meta) in offers.items():
        if not _is_hash(object_hash):
            continue
        state = gather_ondisk_files(os.path.join(part_dir, object_hash[-3:], object_hash))
        want = ""
        offered = _stamp(durable)
        local = state.newest_durable
        if offered is not None and (local is None or offered > local):
            want += WANT_DURABLE
        if meta and durable and durable.endswith(".data"):
            offered_meta = _stamp(meta)
            data_here_or_coming = want or (state.data_timestamp is not None
                                           and state.data_timestamp == offered)
            if data_here_or_coming and offered_meta is not None and (
                    state.meta_timestamp is None or offered_meta > state.meta_timestamp):
                want += WANT_META
        if want:
            wanted[object_hash] = want
    return wanted


def _is_hash(name: str) -> bool:
    return 16 <= len(name) <= 64 and all(c in "0123456789abcdef" for c in name)


def object_file_path(device_path: str, partition: str, object_hash: str, name: str) -> str:
    return os.path.join(device_path, "objects", partition, object_hash[-3:], object_hash, name)


def read_object_file(device_path: str, partition: str, object_hash: str, name: str
                     ) -> tuple[dict[str, str], int, int] | None:
    """Open a file to send: (metadata, size, fd); None when it vanished meanwhile."""
    path = object_file_path(device_path, partition, object_hash, name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        meta = read_metadata(path, fd)
        size = os.fstat(fd).st_size
    except (OSError, ValueError, msgpack.UnpackException):
        os.close(fd)
        return None
    return meta, size, fd


def quarantine_hash(device_path: str, partition: str, object_hash: str) -> None:
    """Move a local object aside that a peer found damaged (its md5 did not match)."""
    object_dir = os.path.join(device_path, "objects", partition, object_hash[-3:], object_hash)
    quarantine_object_dir(device_path, object_dir)


class ReceivedFile:
    """One pushed file being written on the receiver: tmp, fsync, metadata, rename."""

    def __init__(self, device_path: str, partition: str, object_hash: str, name: str,
                 metadata: dict[str, str], fsync: bool, use_xattr: bool) -> None:
        if not _is_hash(object_hash) or os.path.basename(name) != name or \
                _stamp_or_none(name) is None:
            raise ValueError(f"bad file name {object_hash}/{name}")
        self.object_dir = os.path.join(device_path, "objects", partition,
                                       object_hash[-3:], object_hash)
        self.name = name
        self.metadata = metadata
        self.fsync = fsync
        self.use_xattr = use_xattr
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0
        tmp_dir = os.path.join(device_path, "tmp")
        os.makedirs(tmp_dir, exist_ok=True)
        try:
            self.fd, self.tmp_path = tempfile.mkstemp(dir=tmp_dir, suffix=".repl")
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(str(err)) from err
            raise

    def write(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as err:
            self.abort()
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(str(err)) from err
            raise
        self.size += len(chunk)

    def commit(self) -> str:
        """Rename into place unless something newer is already there.

        Returns "written", "stale" (ours was older: dropped) or "corrupt" (the bytes do
        not match the ETag/Content-Length the metadata promises: dropped, so one bad copy
        can never spread). The caller fsyncs the directory (once per batch).
        """
        if self.name.endswith(".data"):
            etag = str(self.metadata.get("ETag", "")).strip('"')
            length = self.metadata.get("Content-Length")
            if (etag and etag != self.md5.hexdigest()) or \
                    (length is not None and int(length) != self.size):
                self.abort()
                return "corrupt"
        state = gather_ondisk_files(self.object_dir)
        stamp = _stamp(self.name)
        assert stamp is not None
        if self.name.endswith(".meta"):
            stale = state.data_timestamp is None or stamp <= (state.meta_timestamp or
                                                              state.data_timestamp)
        else:
            stale = state.newest_durable is not None and stamp <= state.newest_durable
        if stale:
            self.abort()
            return "stale"
        final = os.path.join(self.object_dir, self.name)
        packed = msgpack.packb(self.metadata, use_bin_type=True)
        try:
            makedirs_durable(self.object_dir, self.fsync)  # retries a parent removed meanwhile
            if not set_xattr_metadata(self.fd, packed, self.use_xattr):
                write_sidecar(final + SIDECAR_EXT, packed, self.fsync)
            if self.fsync:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            try:
                os.rename(self.tmp_path, final)
            except FileNotFoundError:  # emptied directories taken by partition_removal
                makedirs_durable(self.object_dir, self.fsync)
                os.rename(self.tmp_path, final)
        except OSError as err:
            self.abort()
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(str(err)) from err
            raise
        cleanup_object_dir(self.object_dir)
        return "written"

    def abort(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)


class StagedFile:
    """A pushed small file staged for group commit: written, sealed, not yet named.

    Batch durability on the receiver, the same two steps as a group-committed client
    write (see :mod:`swiftlike.storage.diskfile`): :func:`stage_received` writes every
    file of a batch as an unnamed temp file with its metadata (no fsync); the caller
    waits for one device flush; :func:`publish_received` links each into its hash
    directory (only if still newer than what is there); the caller waits for a second
    flush, then answers. A final name therefore never points at bytes that are not on
    disk, and a crash before the link leaves only an orphan inode.
    """

    def __init__(self, object_hash: str, name: str, object_dir: str,
                 writer: ObjectWriter, timestamp: Timestamp) -> None:
        self.object_hash = object_hash
        self.name = name
        self.object_dir = object_dir
        self.writer = writer
        self.timestamp = timestamp  # the file name's


def _is_stale(object_dir: str, name: str, coming_data: Timestamp | None = None) -> bool:
    """True when ``name`` would change nothing here. ``coming_data``: a .data of this
    object staged ahead of it in the same batch, to be linked before it."""
    state = gather_ondisk_files(object_dir)
    stamp = _stamp(name)
    assert stamp is not None
    if name.endswith(".meta"):
        data = state.data_timestamp
        if coming_data is not None and (data is None or coming_data > data):
            data = coming_data
        return data is None or stamp <= (state.meta_timestamp or data)
    return state.newest_durable is not None and stamp <= state.newest_durable


def stage_received(device_path: str, partition: str, object_hash: str, name: str,
                   metadata: dict[str, str], body: bytes, use_xattr: bool,
                   coming_data: Timestamp | None = None) -> StagedFile | str:
    """Group-commit step 1 for one pushed file; "corrupt"/"stale" when it is dropped.

    ``coming_data``: the timestamp of a .data of the same object staged earlier in this
    batch. A rebuild sends an object's .data and .meta together; judged against the
    directory alone, the .meta would find no .data yet and be dropped as stale.
    Raises ValueError for a bad name, DiskFull when the device is full.
    """
    stamp = _stamp_or_none(name)
    if not _is_hash(object_hash) or os.path.basename(name) != name or stamp is None:
        raise ValueError(f"bad file name {object_hash}/{name}")
    if name.endswith(".data"):
        etag = str(metadata.get("ETag", "")).strip('"')
        length = metadata.get("Content-Length")
        try:
            bad_length = length is not None and int(length) != len(body)
        except ValueError:
            bad_length = True
        if bad_length or (etag and etag != hashlib.md5(
                body, usedforsecurity=False).hexdigest()):
            return "corrupt"
    object_dir = os.path.join(device_path, "objects", partition, object_hash[-3:],
                              object_hash)
    if _is_stale(object_dir, name, coming_data):
        return "stale"
    ext = name.rpartition(".")[2]
    writer = stage_whole_object(device_path, object_dir, body, stamp, "." + ext,
                                metadata, use_xattr=use_xattr, compute_md5=False)
    return StagedFile(object_hash, name, object_dir, writer, stamp)


def publish_received(staged: StagedFile, invalidate: bool = True) -> str:
    """Group-commit step 2: link a flushed staged file into place unless now stale.

    Returns "written" or "stale". The caller flushes the device before answering.
    ``invalidate=False``: the caller records the suffix itself (once per batch, with
    :func:`invalidate_written`) before that flush.
    """
    try:
        # a hash directory this call creates holds nothing newer (and nothing obsolete):
        # a rebuild skips two listings per file
        created = make_object_dir(staged.object_dir)
    except OSError as err:
        staged.writer.abort()
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(str(err)) from err
        raise
    # a .meta is checked even in a new directory: the .data it was staged after may
    # have been dropped, and a .meta alone describes nothing
    if (not created or staged.name.endswith(".meta")) and \
            _is_stale(staged.object_dir, staged.name):
        staged.writer.abort()  # and the sidecar it wrote, if any
        return "stale"
    staged.writer.publish(invalidate=invalidate, cleanup=not created, dir_made=True)
    return "written"


def invalidate_written(object_dirs: Iterable[str]) -> None:
    """Invalidate the suffixes of the given hash directories: one append per partition."""
    by_partition: dict[str, set[str]] = {}
    for object_dir in object_dirs:
        suffix_dir = os.path.dirname(object_dir)
        by_partition.setdefault(os.path.dirname(suffix_dir), set()).add(
            os.path.basename(suffix_dir))
    for part_dir, suffixes in by_partition.items():
        invalidate_suffixes(part_dir, sorted(suffixes))


def _stamp_or_none(name: str) -> Timestamp | None:
    stem, dot, ext = name.rpartition(".")
    if not dot or ext not in ("data", "ts", "meta"):
        return None
    try:
        return Timestamp(stem)
    except ValueError:
        return None


def finish_received(device_path: str, partition: str, object_dirs: set[str],
                    fsync: bool) -> None:
    """fsync the touched hash directories and invalidate their suffixes, once per batch."""
    for object_dir in object_dirs:
        if fsync and os.path.isdir(object_dir):
            fd = os.open(object_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    invalidate_written(object_dirs)


def local_partitions(device_path: str, kind: str = "objects") -> list[str]:
    """Partition directory names present on a device."""
    try:
        return sorted((p for p in os.listdir(os.path.join(device_path, kind)) if p.isdigit()),
                      key=int)
    except FileNotFoundError:
        return []
