"""Durable file-system steps shared by the object layout, the queues and the databases.

Small, blocking primitives whose correctness is about crashes: a directory fsync, a
record renamed into place, directories created now and made durable later, O_TMPFILE
linking, space reservation, metadata in an xattr or a sidecar. Kept apart from
``diskfile`` (the object layout) so every writer uses the same few careful steps.
"""

from __future__ import annotations

import ctypes
import errno
import os
import uuid
from collections.abc import Callable
from typing import Any

import msgpack

META_XATTR = "user.swiftlike.meta"
XATTR_FAILURES = {errno.ENOTSUP, errno.E2BIG, errno.ENOSPC, errno.ERANGE, errno.EPERM}
if hasattr(errno, "EOPNOTSUPP"):
    XATTR_FAILURES.add(errno.EOPNOTSUPP)


def fsync_dir(path: str) -> None:
    """fsync a directory: its new or removed entries survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_record_atomic(device_path: str, final: str, record: dict[str, Any],
                        fsync: bool, tag: str) -> None:
    """A small msgpack record (a queued update, an expiry entry) put durably at ``final``.

    Written under the device's ``tmp/``, fsynced, renamed into place and its directory
    fsynced, so a reader sees the whole record or nothing, and a crash after the
    return cannot lose it. The directory of ``final`` must exist.
    """
    tmp_dir = os.path.join(device_path, "tmp")
    os.makedirs(tmp_dir, exist_ok=True)
    tmp = os.path.join(tmp_dir, f"{tag}-{uuid.uuid4().hex}")
    with open(tmp, "wb") as handle:
        handle.write(msgpack.packb(record, use_bin_type=True))
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    os.rename(tmp, final)
    if fsync:
        fsync_dir(os.path.dirname(final))


def makedirs_durable(path: str, fsync: bool) -> None:
    """Create missing directories, fsyncing each new entry's parent so they survive a crash."""
    created = makedirs_deferred(path)
    if fsync:
        fsync_parents(created)


#: tries of makedirs_deferred when a parent vanishes between two levels
MKDIR_ATTEMPTS = 3


def makedirs_deferred(path: str) -> list[str]:
    """Create missing directories without fsync; returns the ones created (deepest first).

    The caller fsyncs their parents (:func:`fsync_parents`) before it acknowledges
    anything stored under them. Deferring lets one journal commit carry the new
    directory entries together with the file written into them, instead of one
    commit per directory level before the write even starts.

    Only directories this call's own ``mkdir`` created are returned: one a concurrent
    writer made first is not ours to claim (its writer may have linked a name in it
    that is not durable yet, see ``diskfile``).

    A parent removed between two levels (a handoff partition's removal takes the
    directories it emptied, see ``partition_removal``) means starting again.
    """
    made: list[str] = []
    for attempt in range(MKDIR_ATTEMPTS):
        try:
            _makedirs_once(path, made)
            break
        except FileNotFoundError:
            if attempt + 1 == MKDIR_ATTEMPTS:
                raise
    # a failed attempt still made the levels above the one that vanished: their
    # parents must be fsynced as well (deepest first, as the callers expect)
    return sorted((d for d in dict.fromkeys(made) if os.path.isdir(d)), key=len,
                  reverse=True)


def _makedirs_once(path: str, made: list[str]) -> None:
    """One pass, shallowest level first; appends to ``made`` what its mkdir created."""
    missing = []
    probe = path
    while not os.path.isdir(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for directory in reversed(missing):  # shallowest first
        try:
            os.mkdir(directory)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue
        made.append(directory)


def make_object_dir(object_dir: str) -> bool:
    """Ensure a hash directory exists, in one ``mkdir`` when its suffix directory does.

    :func:`makedirs_deferred` probes every level with a stat first; a rebuild creates
    thousands of fresh hash directories, so the common cases are tried directly: the
    directory is there (EEXIST) or only it is missing. No fsync (group commit: the
    caller's next device flush makes the new entries durable). True when this call
    created the hash directory itself.
    """
    try:
        os.mkdir(object_dir)
        return True
    except FileExistsError:
        return False
    except FileNotFoundError:
        pass
    suffix_dir = os.path.dirname(object_dir)
    try:
        os.mkdir(suffix_dir)
    except FileExistsError:
        pass
    except FileNotFoundError:
        return makedirs_deferred(object_dir)[:1] == [object_dir]
    try:
        os.mkdir(object_dir)
        return True
    except FileExistsError:
        return False
    except FileNotFoundError:  # the suffix directory was removed meanwhile
        return makedirs_deferred(object_dir)[:1] == [object_dir]


def fsync_parents(created: list[str]) -> None:
    """Make the entries of newly created directories durable (deepest first)."""
    for directory in created:
        fsync_dir(os.path.dirname(directory))


def _process_symbols() -> ctypes.CDLL | None:
    """This process's own symbols, libc's among them: no library search (which runs
    ``ldconfig -p``, a few ms per call at every process start)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _process_symbols()


def libc_call(name: str, argtypes: list[Any]) -> Callable[..., None] | None:
    """libc's ``name`` as a function raising OSError when it fails, or None where this
    platform lacks it. ctypes releases the GIL around the call."""
    func = getattr(_LIBC, name, None) if _LIBC is not None else None
    if func is None:
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int

    def call(*args: Any) -> None:
        if func(*args) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return call


def _load_linkat() -> Callable[[str, str], None] | None:
    """``linkat(AT_FDCWD, src, AT_FDCWD, dst, AT_SYMLINK_FOLLOW)`` from libc, or None.

    ``os.link`` calls link(2), which does not follow the ``/proc/self/fd/N`` symlink an
    O_TMPFILE file must be linked through; linkat with AT_SYMLINK_FOLLOW does.
    """
    if not hasattr(os, "O_TMPFILE"):
        return None
    linkat = libc_call("linkat", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                  ctypes.c_char_p, ctypes.c_int])
    if linkat is None:
        return None

    def call(source: str, target: str) -> None:
        try:
            linkat(-100, os.fsencode(source), -100, os.fsencode(target), 0x400)
        except OSError as err:
            raise OSError(err.errno, err.strerror, target) from None

    return call


LINKAT = _load_linkat()


def _load_fallocate() -> Callable[[int, int], None] | None:
    """``fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, length)`` from libc, or None.

    Not ``os.posix_fallocate``: where the file system cannot reserve space, glibc
    emulates that one by writing zeros, which would double the I/O of a write.
    """
    fallocate = libc_call("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                        ctypes.c_int64])
    if fallocate is None:
        return None

    def call(fd: int, length: int) -> None:
        fallocate(fd, 1, 0, length)  # 1 = FALLOC_FL_KEEP_SIZE

    return call


FALLOCATE = _load_fallocate()


def _load_start_writeback() -> Callable[[int, int, int], None] | None:
    """``sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)`` from libc, or None.

    Starts writing a file's dirty pages to the device without waiting for it. A large
    object's final fsync then only waits for the tail instead of the whole body: the
    disk works while the rest of the body is still arriving. Not a durability point.
    """
    sync_file_range = libc_call("sync_file_range", [ctypes.c_int, ctypes.c_int64,
                                                    ctypes.c_int64, ctypes.c_uint])
    if sync_file_range is None:
        return None

    def call(fd: int, offset: int, length: int) -> None:
        sync_file_range(fd, offset, length, 2)  # 2 = SYNC_FILE_RANGE_WRITE

    return call


START_WRITEBACK = _load_start_writeback()


def link_anonymous(fd: int, final_path: str) -> None:
    """Give an O_TMPFILE file its name (replacing a same-named file, as rename would)."""
    assert LINKAT is not None
    source = f"/proc/self/fd/{fd}"
    try:
        LINKAT(source, final_path)
    except FileExistsError:  # a replay of the same timestamp: replace it atomically
        spare = f"{final_path}.{uuid.uuid4().hex}.tmp"
        LINKAT(source, spare)
        os.replace(spare, final_path)


def set_xattr_metadata(fd: int, packed: bytes, use_xattr: bool) -> bool:
    """Store packed metadata in the open file's xattr.

    False when the caller must write a sidecar instead: xattrs switched off, or the
    file system lacks them or has too little room for this metadata.
    """
    if not use_xattr:
        return False
    try:
        os.setxattr(fd, META_XATTR, packed)
    except OSError as err:
        if err.errno not in XATTR_FAILURES:
            raise
        return False
    return True


def write_sidecar(path: str, packed: bytes, fsync: bool) -> None:
    """Metadata beside its file, written to a temp name and renamed, so never torn."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(packed)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    os.rename(tmp, path)


def close_fd(fd: int) -> None:
    os.close(fd)


def free_bytes(device_path: str) -> int:
    stats = os.statvfs(device_path)
    return stats.f_bavail * stats.f_frsize


def reserve_bytes(device_path: str, reserve: str | int | float) -> int:
    """fallocate_reserve as bytes: an absolute number or ``"N%"`` of the device."""
    if isinstance(reserve, str) and reserve.strip().endswith("%"):
        stats = os.statvfs(device_path)
        return int(stats.f_blocks * stats.f_frsize * float(reserve.strip()[:-1]) / 100)
    return int(float(reserve))



def move_to_quarantine(device_path: str, kind: str, hash_dir: str) -> str | None:
    """Rename a damaged hash directory to ``<device>/quarantined/<kind>/<hash>``.

    A name already taken there gets a unique suffix, so an earlier quarantined copy is
    never overwritten. Returns the new path, or None when ``hash_dir`` was already gone.
    """
    target_root = os.path.join(device_path, "quarantined", kind)
    os.makedirs(target_root, exist_ok=True)
    target = os.path.join(target_root, os.path.basename(hash_dir))
    if os.path.exists(target):
        target = f"{target}-{uuid.uuid4().hex}"
    try:
        os.rename(hash_dir, target)
    except FileNotFoundError:
        return None
    return target
