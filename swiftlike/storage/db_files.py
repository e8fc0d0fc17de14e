"""Database files as files: telling damage from other SQLite errors, moving a damaged
database aside, and taking a database's directory away (see DatabaseBroker.remove_if).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import uuid
from urllib.parse import quote

from swiftlike.storage.durable_io import fsync_dir, move_to_quarantine

#: SQLite's words for a file that is not (or no longer) a usable database. Busy, locked
#: or full are other DatabaseErrors, and are not damage.
_DAMAGE_MESSAGES = ("file is not a database", "database disk image is malformed",
                    "malformed database schema", "no such table")


def is_damaged(err: BaseException) -> bool:
    """True when ``err`` says the database file itself is broken."""
    return isinstance(err, sqlite3.DatabaseError) and any(
        text in str(err).lower() for text in _DAMAGE_MESSAGES)


def still_damaged(db_path: str) -> bool:
    """Whether the file now at ``db_path`` fails SQLite's quick check (False if absent)."""
    try:  # mode=rw: never create a file where there is none
        conn = sqlite3.connect(f"file:{quote(db_path)}?mode=rw", uri=True)
    except sqlite3.Error:
        return False
    try:
        result = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as err:
        return is_damaged(err)
    finally:
        conn.close()
    return result != [("ok",)]


def quarantine_database(db_path: str) -> str | None:
    """Move a damaged database's hash directory to ``<device>/quarantined/<kind>/<hash>``.

    Why move rather than repair: a replica that answers 500 for ever serves nobody, and
    a fresh one is rebuilt from the other replicas (replication recreates it and ships
    every row); the damaged file is kept for an operator to look at. Returns the new
    place, or None when it was already gone.
    """
    hash_dir = os.path.dirname(db_path)
    device_path, kind = _device_and_kind(hash_dir)
    return move_to_quarantine(device_path, kind, hash_dir)


def _device_and_kind(hash_dir: str) -> tuple[str, str]:
    """(device path, "accounts"|"containers") of ``<device>/<kind>/<part>/<suffix>/<hash>``."""
    return os.path.split(os.path.dirname(os.path.dirname(os.path.dirname(hash_dir))))


def remove_directory(hash_dir: str) -> None:
    """Take a database's directory away in one step, then delete it.

    Why not rmtree in place: it unlinks the files before it removes the directory, and an
    appender opening ``.pending`` (O_CREAT) in between would make a new file there, one
    no lock of the remover covers, and park acknowledged rows in a directory about to go.
    Once renamed, the path is simply gone. Called with the writers' locks held, so that
    every file is unlinked (``st_nlink`` 0) before a waiting appender gets its lock.
    """
    device_path, _ = _device_and_kind(hash_dir)
    trash = os.path.join(device_path, "tmp", f"removed-{uuid.uuid4().hex}")
    os.makedirs(os.path.dirname(trash), exist_ok=True)
    os.rename(hash_dir, trash)
    shutil.rmtree(trash)
    # and the suffix and partition directories it leaves empty, so a device drained of
    # a partition's databases holds no trace of it (an operator's sign that a rebalance
    # is done); one that has something else in it stays
    suffix_dir = os.path.dirname(hash_dir)
    for parent in (suffix_dir, os.path.dirname(suffix_dir)):
        try:
            os.rmdir(parent)
        except OSError:
            break


def remove_stale_tmp(device_path: str, older_than: float) -> int:
    """Remove what a crash left in the device's ``tmp/`` (a database built or shipped
    in, a directory on its way out) last touched before ``older_than``; how many.

    Why: every such file is renamed or linked out of ``tmp/``, or removed, by the call
    that made it; one that is still there after ``reclaim_age`` (a week) belongs to a
    process that died, and would otherwise fill the device for good. Swift's
    replicator clears its tmp directory the same way.
    """
    root = os.path.join(device_path, "tmp")
    removed = 0
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return 0
    for name in names:
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
            if st.st_mtime >= older_than:
                continue
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed += 1
        except FileNotFoundError:
            continue
    return removed


def place_database(tmp_path: str, db_path: str, fsync: bool) -> bool:
    """Link a database file made (and fsynced) in ``tmp/`` in at ``db_path``; False,
    leaving everything as it was, when a database is there already.

    ``link`` never replaces a file, so of two writers racing to create one database
    (a container PUT, a replicator's sync or ship) exactly one wins, without the window
    an exists-check before a rename leaves. The caller removes ``tmp_path``.
    """
    directory = os.path.dirname(db_path)
    created = not os.path.isdir(directory)
    for attempt in range(3):
        os.makedirs(directory, exist_ok=True)
        try:
            os.link(tmp_path, db_path)
            break
        except FileExistsError:
            return False
        except FileNotFoundError:
            # the replicator removed the emptied parents meanwhile (see
            # remove_directory): make them again
            if attempt == 2:
                raise
    if fsync:
        fsync_dir(directory)
        if created:
            for parent in (os.path.dirname(directory),
                           os.path.dirname(os.path.dirname(directory))):
                fsync_dir(parent)
    return True


def remove_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
