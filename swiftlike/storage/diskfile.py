"""The on-disk object layout: one directory per object hash, files named by timestamp.

``<devices>/<device>/objects/<partition>/<suffix>/<hash>/<timestamp>.data|.ts|.meta``.
Every write goes to ``<device>/tmp`` first, is fsynced, then atomically renamed into the
hash directory, whose directory entry is fsynced too: a crash leaves either the old or the
new version, never half an object. Metadata (msgpack) lives in an xattr, or in a
``<file>.msgpack`` sidecar written before the file it describes where xattrs fail.

With ``[node] durability = "group"`` small writes skip the per-object fsyncs and share
a device-wide ``syncfs`` instead, in two steps, so the named file is never torn:

1. write the temp file and its metadata xattr (:meth:`ObjectWriter.seal`), then wait
   for a device flush: the bytes, size and xattr are on disk, still under ``tmp/``;
2. create the hash directory and rename the temp file into it
   (:meth:`ObjectWriter.publish`), then wait for the next flush: the directory
   entries are committed too. Only then is the write acknowledged.

Why not rename before the first flush: ext4 (delayed allocation) only forces a file's
data out ahead of a rename when the rename *replaces* an existing name, and our names
are new timestamps. A journal commit between rename and writeback could then make
``<ts>.data`` durable with length zero while ``cleanup_object_dir`` already removed the
older, acknowledged version. With step 1 first, every file that ever carries a final
name holds complete bytes, so a crash leaves the old version or the new one, never a
torn object.

Between step 2's link and its flush a name is visible but not yet durable: a crash
then loses it (the bytes are an unnamed orphan again). So whatever judges from what
it sees in a hash directory, and tells someone who may act on it, answers only after
a flush that began after it looked: a 409 or 412 from the object server (the proxy
turns a 409 into "accepted, superseded"), a streamed PUT whose commit may have cleaned
up its own file in favour of such a name, and the replication answers a sender may
delete its handoff copy on (suffix hashes, "not wanted", "stale").

Staged files are unnamed (``O_TMPFILE`` in ``tmp/``) and linked into place
instead of renamed: a crash before the link leaves only an orphan inode the file system
frees at mount. Obsolete files are
unlinked after the rename; the journal commits in order, so an unlink cannot become
durable without the rename that preceded it.

All functions here are blocking; the object server calls them through a thread pool.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field

import msgpack
import xxhash

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.body_io import (  # noqa: F401  (BODY_CHECKSUM_KEY re-exported)
    BODY_CHECKSUM_KEY,
    body_matches,
)
from swiftlike.storage.direct_write import DirectSpanWriter
from swiftlike.storage.durable_io import (  # noqa: F401  (re-exported for callers)
    FALLOCATE,
    LINKAT,
    META_XATTR,
    START_WRITEBACK,
    XATTR_FAILURES,
    close_fd,
    fsync_parents,
    link_anonymous,
    make_object_dir,
    makedirs_deferred,
    makedirs_durable,
    move_to_quarantine,
    set_xattr_metadata,
    write_sidecar,
)
from swiftlike.storage.durable_io import fsync_dir as _fsync_dir
from swiftlike.storage.hashes import invalidate_object_dir
from swiftlike.storage.object_headers import merge_post_metadata

#: How much of a large body is written before the disk is asked to start on it.
WRITEBACK_STEP = 4 * 1024 * 1024

SIDECAR_EXT = ".msgpack"
FILE_EXTS = (".data", ".ts", ".meta")


class DiskFileError(Exception):
    """Base of the errors the object server maps to statuses."""


class DiskFull(DiskFileError):
    """Not enough free space (or ENOSPC while writing): 507."""


class DiskFileQuarantined(DiskFileError):
    """The object was found damaged and moved aside: treat as not found."""


@dataclass
class OnDiskState:
    """What one hash directory holds, resolved by timestamp."""

    data_file: str | None = None
    ts_file: str | None = None
    meta_file: str | None = None
    data_timestamp: Timestamp | None = None
    ts_timestamp: Timestamp | None = None
    meta_timestamp: Timestamp | None = None
    obsolete: list[str] = field(default_factory=list)

    @property
    def newest_durable(self) -> Timestamp | None:
        """Timestamp of the winning .data or .ts: a write must be newer than this."""
        return self.data_timestamp or self.ts_timestamp


@dataclass
class OpenedObject:
    """A live object opened for reading: metadata merged with any newer .meta."""

    path: str
    metadata: dict[str, str]
    data_timestamp: Timestamp
    newest_timestamp: Timestamp
    size: int
    body: bytes | None = None  # whole content, read at open time for small objects
    fd: int | None = None  # open descriptor when the body was not read (caller closes)
    corrupt: bool = False  # small body read at open time did not match its ETag


def parse_file_name(name: str) -> tuple[Timestamp, str] | None:
    """(timestamp, extension) of an object file name, or None for anything else."""
    stem, dot, ext = name.rpartition(".")
    if not dot or "." + ext not in FILE_EXTS:
        return None
    try:
        return Timestamp(stem), "." + ext
    except ValueError:
        return None


def gather_ondisk_files(object_dir: str) -> OnDiskState:
    """Resolve a hash directory: newest .data or .ts wins, .meta counts only if newer."""
    state = OnDiskState()
    try:
        names = os.listdir(object_dir)
    except FileNotFoundError:
        return state
    parsed: list[tuple[Timestamp, str, str]] = []
    for name in names:
        info = parse_file_name(name)
        if info is not None:
            parsed.append((info[0], info[1], name))
    parsed.sort(key=lambda item: (item[0], item[1] != ".meta"), reverse=True)
    for stamp, ext, name in parsed:
        if state.newest_durable is None:
            if ext == ".meta":
                if state.meta_file is None:
                    state.meta_file, state.meta_timestamp = name, stamp
                else:
                    state.obsolete.append(name)
            elif ext == ".data":
                state.data_file, state.data_timestamp = name, stamp
            else:
                state.ts_file, state.ts_timestamp = name, stamp
        else:
            state.obsolete.append(name)
    if state.ts_file and state.meta_file:
        state.obsolete.append(state.meta_file)
        state.meta_file = state.meta_timestamp = None
    if state.newest_durable is None and state.meta_file:
        # a .meta with nothing under it describes nothing
        state.meta_file = state.meta_timestamp = None
    return state


def read_metadata(path: str, fd: int | None = None) -> dict[str, str]:
    """Metadata of an object file: the xattr, else its sidecar."""
    try:
        raw = os.getxattr(fd if fd is not None else path, META_XATTR)
    except OSError as err:
        if err.errno not in (errno.ENODATA, *XATTR_FAILURES):
            raise
        with open(path + SIDECAR_EXT, "rb") as sidecar:
            raw = sidecar.read()
    meta = msgpack.unpackb(raw, raw=False)
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a mapping")
    return meta


class ObjectWriter:
    """Streams one object into a temp file, then commits it atomically.

    Blocking methods: call them from a worker thread.
    """

    def __init__(self, device_path: str, object_dir: str, fsync: bool = True,
                 use_xattr: bool = True, compute_md5: bool = True,
                 direct_io: bool = False) -> None:
        self.device_path = device_path
        self.object_dir = object_dir
        self.fsync = fsync
        self.use_xattr = use_xattr
        self.fd: int | None = None
        self.tmp_path = ""
        # None when the md5 arrives from the proxy (a body footer, see
        # swiftlike.common.body_footer): the node then hashes only with xxh3.
        self.md5 = hashlib.md5(usedforsecurity=False) if compute_md5 else None
        self.bytes_written = 0
        self.writeback_from = 0  # bytes below this offset are already being written out
        self.final_path = ""
        self.body_checksum: xxhash.xxh3_128 | None = None  # see BODY_CHECKSUM_KEY
        self.checksummed_bytes = 0
        self.anonymous = False  # set by open_anonymous when O_TMPFILE worked
        self.made_dir = False  # commit created object_dir itself
        self.sidecar_of = ""  # the final path whose sidecar we wrote, not linked yet
        # write_chunks with O_DIRECT where the pieces allow (see direct_write)
        self.direct_io = direct_io
        self.spans: DirectSpanWriter | None = None

    def open(self, expected_size: int = 0) -> None:
        """Create the temp file; reserve ``expected_size`` bytes for it when known.

        The reservation (fallocate, size unchanged) makes ENOSPC show up here, before
        any body byte is received, and spares the file system its per-page delayed
        allocation work while the body is written (about a quarter of the write and
        fsync CPU of a 16 MiB object here).
        """
        tmp_dir = os.path.join(self.device_path, "tmp")
        try:
            self.fd, self.tmp_path = tempfile.mkstemp(dir=tmp_dir, suffix=".tmp")
        except FileNotFoundError:
            os.makedirs(tmp_dir, exist_ok=True)
            self.fd, self.tmp_path = tempfile.mkstemp(dir=tmp_dir, suffix=".tmp")
        if self.direct_io:
            self.spans = DirectSpanWriter(self.fd)
        if expected_size > 0 and FALLOCATE is not None:
            try:
                FALLOCATE(self.fd, expected_size)
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    self.abort()
                    raise DiskFull(str(err)) from err
                if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    self.abort()
                    raise

    def open_anonymous(self) -> None:
        """Open an unnamed temp file (O_TMPFILE) for :meth:`publish` to link into place.

        Saves creating and removing a name in the shared ``tmp/`` directory, and a crash
        before the link leaves nothing behind. Falls back to :meth:`open` where the file
        system lacks O_TMPFILE.
        """
        flag = getattr(os, "O_TMPFILE", 0)
        if flag and LINKAT is not None:
            tmp_dir = os.path.join(self.device_path, "tmp")
            try:
                self.fd = os.open(tmp_dir, flag | os.O_WRONLY, 0o644)
                self.tmp_path = ""
                self.anonymous = True
                return
            except FileNotFoundError:
                os.makedirs(tmp_dir, exist_ok=True)
                return self.open_anonymous()
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
        self.open()

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append bytes (also hashed); ENOSPC becomes DiskFull after cleanup."""
        if self.fd is None:
            self.open()
        assert self.fd is not None
        if self.md5 is not None:
            self.md5.update(chunk)
        try:
            if self.spans is not None:
                # through the direct writer, which tracks the file offset
                self.spans.feed(chunk)
                self.spans.flush()
            else:
                view = memoryview(chunk)
                while view:
                    written = os.write(self.fd, view)
                    view = view[written:]
        except OSError as err:
            self._write_failed(err)
        self.bytes_written += len(chunk)
        if self.spans is None and self.fsync and START_WRITEBACK is not None and \
                self.bytes_written - self.writeback_from >= WRITEBACK_STEP:
            # the disk starts on this stretch now; the final fsync waits for the tail only
            with contextlib.suppress(OSError):
                START_WRITEBACK(self.fd, self.writeback_from,
                                self.bytes_written - self.writeback_from)
            self.writeback_from = self.bytes_written

    def write_chunks(self, chunks: list[bytes | memoryview]) -> None:
        """Append several received chunks in one worker-thread hop.

        Streaming PUTs hand over the pieces as the socket delivered them: joining them
        on the event loop would copy every byte once more while holding the GIL; here
        md5, xxh3 and the write syscalls run with the GIL released.
        """
        if self.body_checksum is None and self.bytes_written == 0:
            self.body_checksum = xxhash.xxh3_128()
        spans = self.spans
        if spans is None:
            for chunk in chunks:
                self.write(chunk)
                self._checksum(chunk)
            return
        try:
            for chunk in chunks:
                if self.md5 is not None:
                    self.md5.update(chunk)
                self._checksum(chunk)
                spans.feed(chunk)
                self.bytes_written += len(chunk)
            spans.drain()
        except OSError as err:
            self._write_failed(err)

    def _checksum(self, chunk: bytes | memoryview) -> None:
        if self.body_checksum is not None:
            self.body_checksum.update(chunk)
            self.checksummed_bytes += len(chunk)

    def _flush_spans(self) -> None:
        """Hand the direct writer's held-back bytes to the kernel (before a sync, a
        close, or a plain :meth:`write`, which must land after them)."""
        if self.spans is not None:
            try:
                self.spans.flush()
            except OSError as err:
                self._write_failed(err)

    def _write_failed(self, err: OSError) -> None:
        self.abort()
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(str(err)) from err
        raise err

    def body_checksum_hex(self) -> str | None:
        """The BODY_CHECKSUM_KEY value, or None unless it covers every byte written."""
        if self.body_checksum is None or self.checksummed_bytes != self.bytes_written:
            return None
        return self.body_checksum.hexdigest()

    def commit(self, timestamp: Timestamp, ext: str, metadata: dict[str, str]) -> None:
        """fsync, attach metadata, rename into place, fsync the directory, drop old files."""
        if self.fd is None:
            self.open()
        assert self.fd is not None
        self._flush_spans()
        final_name = timestamp.internal + ext
        final_path = os.path.join(self.object_dir, final_name)
        packed = msgpack.packb(metadata, use_bin_type=True)
        try:
            # One hop, in order: data + metadata fsynced, renamed into place, then the
            # hash directory fsynced (which on a journaling file system also commits the
            # directories created just before), then the parents of any new directory.
            # Nothing is acknowledged before all of it is on disk.
            created = makedirs_deferred(self.object_dir)  # deepest first, ours only
            self.made_dir = created[:1] == [self.object_dir]
            if not set_xattr_metadata(self.fd, packed, self.use_xattr):
                self.sidecar_of = final_path
                write_sidecar(final_path + SIDECAR_EXT, packed, self.fsync)
            if self.fsync:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            try:
                os.rename(self.tmp_path, final_path)
            except FileNotFoundError:  # directories taken meanwhile, see publish()
                again = makedirs_deferred(self.object_dir)
                self.made_dir = again[:1] == [self.object_dir]
                created += again
                os.rename(self.tmp_path, final_path)
            self.sidecar_of = ""
            if self.fsync:
                _fsync_dir(self.object_dir)
                fsync_parents(created)
        except OSError as err:
            self.abort()
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(str(err)) from err
            raise
        cleanup_object_dir(self.object_dir)
        invalidate_object_dir(self.object_dir)

    def seal(self, timestamp: Timestamp, ext: str, metadata: dict[str, str]) -> None:
        """Group-commit step 1: attach metadata and close the temp file, no fsync.

        The caller then waits for a device flush (the temp file's bytes and xattr become
        durable while still invisible under ``tmp/``) before :meth:`publish`.
        """
        if self.fd is None:
            self.open()
        assert self.fd is not None
        self._flush_spans()
        self.final_path = os.path.join(self.object_dir, timestamp.internal + ext)
        packed = msgpack.packb(metadata, use_bin_type=True)
        try:
            if not set_xattr_metadata(self.fd, packed, self.use_xattr):
                makedirs_deferred(self.object_dir)
                self.sidecar_of = self.final_path
                write_sidecar(self.final_path + SIDECAR_EXT, packed, False)
            if not self.anonymous:
                os.close(self.fd)
                self.fd = None
        except OSError as err:
            self.abort()
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(str(err)) from err
            raise

    def publish(self, invalidate: bool = True, cleanup: bool = True,
                dir_made: bool = False, defer_cleanup: bool = False) -> bool:
        """Group-commit step 2: rename the flushed temp file into place, drop old files.

        No fsync: the caller waits for the next device flush before acknowledging, which
        commits the new directories and the rename in the journal. ``invalidate=False``
        leaves the suffix invalidation to the caller (the replication receiver records
        a whole batch's suffixes at once, see :func:`hashes.invalidate_suffixes`);
        ``cleanup=False`` when the caller just created the hash directory (nothing in it
        can be obsolete); ``dir_made=True`` when the caller has made sure it exists.
        A hash directory this call creates is not cleaned either: a new object's
        directory holds nothing but the file just published. ``defer_cleanup=True``
        leaves the cleanup to the caller; returns whether one is due.
        """
        try:
            if not dir_made and make_object_dir(self.object_dir):
                cleanup = False
            try:
                self._link_into_place()
            except FileNotFoundError:  # emptied directories taken by partition_removal
                # another writer may have made them again, with older files in them
                cleanup = not make_object_dir(self.object_dir)
                self._link_into_place()
        except OSError as err:
            self.abort()
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(str(err)) from err
            raise
        self.tmp_path = ""
        if cleanup and not defer_cleanup:
            cleanup_object_dir(self.object_dir)
        if invalidate:
            invalidate_object_dir(self.object_dir)
        return cleanup

    def _link_into_place(self) -> None:
        if self.anonymous:
            assert self.fd is not None
            link_anonymous(self.fd, self.final_path)
            os.close(self.fd)
            self.fd = None
        else:
            os.rename(self.tmp_path, self.final_path)
        self.sidecar_of = ""

    def abort(self) -> None:
        """Remove the temp file: nothing half-written ever reaches the object dir."""
        if self.spans is not None:
            self.spans.discard()
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        if self.tmp_path:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass
        if self.sidecar_of and not os.path.exists(self.sidecar_of):  # ours, orphaned
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sidecar_of + SIDECAR_EXT)
        self.sidecar_of = ""


def cleanup_object_dir(object_dir: str) -> OnDiskState:
    """Delete files a newer .data/.ts made obsolete (and their sidecars)."""
    state = gather_ondisk_files(object_dir)
    remove_files(object_dir, state.obsolete)
    return state


def remove_files(object_dir: str, names: list[str]) -> None:
    """Unlink ``names`` (and their sidecars) from ``object_dir``; missing ones are fine
    (another writer's cleanup may have taken them first)."""
    for name in names:
        for victim in (name, name + SIDECAR_EXT):
            try:
                os.unlink(os.path.join(object_dir, victim))
            except FileNotFoundError:
                pass


def write_whole_object(device_path: str, object_dir: str, body: bytes, timestamp: Timestamp,
                       ext: str, metadata: dict[str, str], fsync: bool = True,
                       use_xattr: bool = True) -> None:
    """Write a small object (or tombstone / .meta) in one worker-thread hop."""
    writer = ObjectWriter(device_path, object_dir, fsync=fsync, use_xattr=use_xattr)
    writer.open()
    if body:
        writer.write(body)
    writer.commit(timestamp, ext, metadata)


def stage_whole_object(device_path: str, object_dir: str, body: bytes, timestamp: Timestamp,
                       ext: str, metadata: dict[str, str], use_xattr: bool = True,
                       compute_md5: bool = True) -> ObjectWriter:
    """Group-commit step 1 for a small object: temp file written and sealed, not synced.

    ``compute_md5=False`` when the caller already checked the body's md5 (the
    replication receiver does, before staging).

    Returns the writer; after a device flush call its ``publish()``, then flush again
    before acknowledging (see :mod:`swiftlike.storage.group_commit`).
    """
    writer = ObjectWriter(device_path, object_dir, fsync=False, use_xattr=use_xattr,
                          compute_md5=compute_md5)
    writer.open_anonymous()
    if body:
        writer.write(body)
    writer.seal(timestamp, ext, metadata)
    return writer


def quarantine_object_dir(device_path: str, object_dir: str) -> str:
    """Move a damaged hash directory to ``<device>/quarantined/objects/<hash>``."""
    target = move_to_quarantine(device_path, "objects", object_dir)
    if target is None:
        return os.path.join(device_path, "quarantined", "objects",
                            os.path.basename(object_dir))
    invalidate_object_dir(object_dir)
    return target


def open_object(device_path: str, object_dir: str, read_limit: int, keep_fd: bool = False
                ) -> tuple[OnDiskState, OpenedObject | None]:
    """Resolve and open the live object of a hash directory.

    Returns the on-disk state and, when a .data wins, its merged metadata. Objects of at
    most ``read_limit`` bytes are read whole (and checked, see :func:`body_matches`: a
    mismatch quarantines them and sets ``corrupt``); bigger ones keep their descriptor open when
    ``keep_fd``. A .data whose metadata cannot be read or whose size disagrees with its
    metadata is quarantined (DiskFileQuarantined).
    """
    state = gather_ondisk_files(object_dir)
    if state.data_file is None or state.data_timestamp is None:
        return state, None
    data_path = os.path.join(object_dir, state.data_file)
    try:
        fd = os.open(data_path, os.O_RDONLY)
    except FileNotFoundError:
        return gather_ondisk_files(object_dir), None
    keep = False
    corrupt = False
    try:
        body = None
        try:
            metadata = read_metadata(data_path, fd)
            expected = int(metadata.get("Content-Length", -1))
            if 0 <= expected <= read_limit:
                # one byte more than promised: a longer file shows without an fstat
                body = os.pread(fd, expected + 1, 0)
                size = len(body)
            else:
                size = os.fstat(fd).st_size
            if expected != size:
                raise ValueError("size on disk disagrees with metadata")
        except (OSError, ValueError, msgpack.UnpackException) as err:
            if isinstance(err, OSError) and err.errno not in (errno.ENODATA, errno.ENOENT):
                raise
            quarantine_object_dir(device_path, object_dir)
            raise DiskFileQuarantined(str(err)) from err
        if body is not None:
            if not body_matches(body, metadata):
                quarantine_object_dir(device_path, object_dir)
                corrupt = True
        elif keep_fd:
            keep = True
    finally:
        if not keep:
            os.close(fd)
    newest = state.data_timestamp
    if state.meta_file and state.meta_timestamp:
        try:
            post_meta = read_metadata(os.path.join(object_dir, state.meta_file))
        except (OSError, ValueError):
            post_meta = {}
        if post_meta:
            metadata = merge_post_metadata(metadata, post_meta)
            newest = state.meta_timestamp
    return state, OpenedObject(data_path, metadata, state.data_timestamp, newest, size,
                               body, fd if keep else None, corrupt)


def is_expired(metadata: dict[str, str], now: float | None = None) -> bool:
    """True when X-Delete-At has passed: the object reads as gone."""
    delete_at = metadata.get("X-Delete-At")
    if not delete_at:
        return False
    try:
        return int(delete_at) <= (time.time() if now is None else now)
    except ValueError:
        return False
