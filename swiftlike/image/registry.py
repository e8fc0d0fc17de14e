"""The image registry: image records, tags and members behind a small repository interface.

Why an interface: one API node uses SQLite in its data dir (the default); several API
nodes would share a server database by implementing ``ImageRepository`` again. SQLite
calls run in a worker thread under a lock so the event loop never waits on fsync.
Every write commits before it returns (``synchronous=FULL``), so a restart loses nothing
that was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


def utc_now(at: float | None = None) -> str:
    """Glance's timestamp format: ISO 8601 in UTC, seconds precision, ``Z`` suffix (of
    now, or of the epoch seconds ``at``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


#: columns of the ``images`` table that are image attributes (besides extra properties)
CORE_COLUMNS = (
    "id", "name", "status", "visibility", "protected", "owner", "size", "virtual_size",
    "checksum", "os_hash_algo", "os_hash_value", "disk_format", "container_format",
    "min_disk", "min_ram", "os_hidden", "created_at", "updated_at",
)


@dataclass
class ImageRecord:
    """One image as the registry stores it."""

    id: str
    owner: str
    name: str | None = None
    status: str = "queued"
    visibility: str = "shared"
    protected: bool = False
    size: int | None = None
    virtual_size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    disk_format: str | None = None
    container_format: str | None = None
    min_disk: int = 0
    min_ram: int = 0
    os_hidden: bool = False
    created_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)
    location: str | None = None  # JSON of store.Location, never shown to users
    #: while an upload, a stage or an import owns the image: until when (epoch seconds)
    #: its process has promised to renew this; past it, the owner is presumed dead
    #: (see :mod:`swiftlike.image.sweeper`). Never shown to users.
    busy_until: float | None = None
    extra: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


@dataclass
class MemberRecord:
    """A project an image is shared with, and its answer."""

    image_id: str
    member_id: str
    status: str = "pending"
    created_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)


@dataclass
class TaskRecord:
    """One asynchronous operation on an image (an import), as Glance's tasks API shows it."""

    id: str
    type: str
    owner: str
    image_id: str
    user_id: str
    request_id: str
    input: dict[str, Any]
    status: str = "processing"  # then "success" or "failure"
    result: dict[str, Any] | None = None
    message: str = ""
    created_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)
    expires_at: str | None = None  # set when it ends: it is forgotten after that


class ImageIdTaken(Exception):
    """The id names an image, or named one that was deleted: ids are never reused."""


class ImageRepository(Protocol):
    """What the API needs from an image database."""

    async def add(self, image: ImageRecord) -> None: ...
    async def get(self, image_id: str) -> ImageRecord | None: ...
    async def save(self, image: ImageRecord, expect_status: str | None = None,
                   columns: tuple[str, ...] | None = None,
                   expect_lease: float | None = None) -> bool: ...
    async def update(self, image_id: str, change: Callable[[ImageRecord], None],
                     columns: tuple[str, ...]) -> ImageRecord | None: ...
    async def renew(self, image_id: str, status: str, held: float, until: float
                    ) -> bool: ...
    async def stale(self, now: float) -> list[ImageRecord]: ...
    async def take_over(self, image_id: str, status: str, now: float,
                        until: float) -> bool: ...
    async def remove(self, image_id: str) -> None: ...
    async def all_images(self) -> list[ImageRecord]: ...
    async def members(self, image_id: str) -> list[MemberRecord]: ...
    async def member_statuses(self, member_id: str) -> dict[str, str]: ...
    async def get_member(self, image_id: str, member_id: str) -> MemberRecord | None: ...
    async def save_member(self, member: MemberRecord) -> None: ...
    async def remove_member(self, image_id: str, member_id: str) -> bool: ...
    async def add_task(self, task: TaskRecord) -> None: ...
    async def finish_task(self, task: TaskRecord) -> None: ...
    async def image_tasks(self, image_id: str) -> list[TaskRecord]: ...
    async def fail_unfinished_tasks(self, image_id: str, message: str, expires_at: str,
                                    created_by: str) -> int: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, visibility TEXT NOT NULL,
    protected INTEGER NOT NULL, owner TEXT NOT NULL, size INTEGER, virtual_size INTEGER,
    checksum TEXT, os_hash_algo TEXT, os_hash_value TEXT, disk_format TEXT,
    container_format TEXT, min_disk INTEGER NOT NULL, min_ram INTEGER NOT NULL,
    os_hidden INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    location TEXT, extra TEXT NOT NULL, tags TEXT NOT NULL, busy_until REAL
);
CREATE TABLE IF NOT EXISTS members (
    image_id TEXT NOT NULL, member_id TEXT NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (image_id, member_id)
);
CREATE INDEX IF NOT EXISTS members_by_member ON members (member_id);
CREATE TABLE IF NOT EXISTS deleted_ids (id TEXT PRIMARY KEY, deleted_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, owner TEXT NOT NULL, image_id TEXT NOT NULL,
    user_id TEXT NOT NULL, request_id TEXT NOT NULL, input TEXT NOT NULL,
    status TEXT NOT NULL, result TEXT, message TEXT NOT NULL, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, expires_at TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_image ON tasks (image_id);
"""
_TASK_COLUMNS = ("id", "type", "owner", "image_id", "user_id", "request_id", "input",
                 "status", "result", "message", "created_at", "updated_at", "expires_at")

_ALL_COLUMNS = (*CORE_COLUMNS, "location", "extra", "tags", "busy_until")
_BOOL_COLUMNS = ("protected", "os_hidden")
#: What an upload, a stage or an import writes: the data and its status. A PATCH made
#: while a long upload runs must survive the upload's final write.
DATA_COLUMNS = ("status", "size", "virtual_size", "checksum", "os_hash_algo",
                "os_hash_value", "location", "updated_at", "busy_until")
#: What a PATCH or a tag call writes: never the status or the data, which an upload
#: running at the same time owns.
USER_COLUMNS = (*(c for c in _ALL_COLUMNS
                  if c not in DATA_COLUMNS and c not in ("id", "created_at")), "updated_at")
#: The states a live upload, stage or import holds with a lease (``busy_until``), and
#: ``killed``, which the sweeper holds while it removes a dead one's bytes.
LEASED_STATUSES = ("saving", "uploading", "importing", "killed")
#: What deactivate / reactivate write.
STATUS_COLUMNS = ("status", "updated_at")


_SELECT_ONE = f"SELECT {','.join(_ALL_COLUMNS)} FROM images WHERE id = ?"


def _update_sql(columns: tuple[str, ...]) -> str:
    """``UPDATE images SET <columns> WHERE id = ?``; ValueError for a column the table
    does not have (or id, which never changes)."""
    unknown = set(columns) - set(_ALL_COLUMNS[1:])
    if unknown:
        raise ValueError(f"unknown image columns {sorted(unknown)}")
    return f"UPDATE images SET {','.join(f'{col} = ?' for col in columns)} WHERE id = ?"


class SqliteImageRepository:
    """``ImageRepository`` on one SQLite file (WAL, full sync)."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # every image's record, private ones included: for the image service's eyes only
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(images)")}
        if "busy_until" not in columns:  # a registry from before upload leases
            with contextlib.suppress(sqlite3.OperationalError):  # another worker won
                self._db.execute("ALTER TABLE images ADD COLUMN busy_until REAL")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def _run(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(*args)

        return await asyncio.to_thread(locked)

    @staticmethod
    def _row_to_image(row: tuple[Any, ...]) -> ImageRecord:
        values = dict(zip(_ALL_COLUMNS, row, strict=True))
        for col in _BOOL_COLUMNS:
            values[col] = bool(values[col])
        values["extra"] = json.loads(values["extra"])
        values["tags"] = json.loads(values["tags"])
        return ImageRecord(**values)

    @staticmethod
    def _image_values(image: ImageRecord) -> list[Any]:
        values = []
        for col in _ALL_COLUMNS:
            value = getattr(image, col)
            if col in ("extra", "tags"):
                value = json.dumps(value)
            elif col in _BOOL_COLUMNS:
                value = int(value)
            values.append(value)
        return values

    @classmethod
    def _column_values(cls, image: ImageRecord, columns: tuple[str, ...]) -> list[Any]:
        """The stored form of ``image``'s ``columns``, in that order."""
        values = dict(zip(_ALL_COLUMNS, cls._image_values(image), strict=True))
        return [values[col] for col in columns]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; anything raised inside rolls it back (so
        the shared connection is never left inside a transaction)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def add(self, image: ImageRecord) -> None:
        """Store a new image; ImageIdTaken when its id is or was in use.

        Why remember deleted ids: an image id is a promise that it always means the same
        bytes (Nova boots by id, templates name ids). Another project re-creating a
        deleted public image's id would put its own bytes behind everyone's references
        (Glance's OSSN-0075), so a deleted id answers 409 as a live one does.
        """
        marks = ",".join("?" * len(_ALL_COLUMNS))
        sql = f"INSERT INTO images ({','.join(_ALL_COLUMNS)}) VALUES ({marks})"
        values = self._image_values(image)

        def insert() -> None:
            with self._transaction():
                if self._db.execute("SELECT 1 FROM deleted_ids WHERE id = ?",
                                    (image.id,)).fetchone() is not None:
                    raise ImageIdTaken(image.id)
                try:
                    self._db.execute(sql, values)
                except sqlite3.IntegrityError as err:
                    raise ImageIdTaken(image.id) from err

        await self._run(insert)

    async def get(self, image_id: str) -> ImageRecord | None:
        def fetch() -> ImageRecord | None:
            row = self._db.execute(_SELECT_ONE, (image_id,)).fetchone()
            return None if row is None else self._row_to_image(row)

        return await self._run(fetch)

    async def save(self, image: ImageRecord, expect_status: str | None = None,
                   columns: tuple[str, ...] | None = None,
                   expect_lease: float | None = None) -> bool:
        """Write the record; with ``expect_status`` only if the stored status still is that.

        The conditional form makes status transitions atomic: two uploads racing for one
        queued image cannot both move it to ``saving``. ``columns`` (DATA_COLUMNS,
        USER_COLUMNS ...) limits the write to what the caller owns, so concurrent
        writers of different parts do not undo each other.
        """
        wanted = _ALL_COLUMNS[1:] if columns is None else columns
        sql = _update_sql(wanted)
        args = [*self._column_values(image, wanted), image.id]
        if expect_status is not None:
            sql += " AND status = ?"
            args.append(expect_status)
        if expect_lease is not None:  # the holder's own lease: nobody took it over
            sql += " AND busy_until = ?"
            args.append(expect_lease)

        def update() -> bool:
            return self._db.execute(sql, args).rowcount == 1

        return await self._run(update)

    async def update(self, image_id: str, change: Callable[[ImageRecord], None],
                     columns: tuple[str, ...]) -> ImageRecord | None:
        """Read the image, apply ``change`` to it and write ``columns`` back, all in one
        write transaction; None if there is no such image.

        Why: two PATCHes that each read the record, add a property and write the whole
        property set back would lose one of the two. ``BEGIN IMMEDIATE`` takes SQLite's
        write lock before the read, so every proxy worker process waits its turn.
        Whatever ``change`` raises (a refused operation) rolls everything back.
        """
        sql = _update_sql(columns)

        def run() -> ImageRecord | None:
            with self._transaction():
                row = self._db.execute(_SELECT_ONE, (image_id,)).fetchone()
                if row is None:
                    return None
                image = self._row_to_image(row)
                change(image)
                self._db.execute(sql, [*self._column_values(image, columns), image_id])
                return image

        return await self._run(run)

    async def renew(self, image_id: str, status: str, held: float, until: float) -> bool:
        """Extend the lease ``held`` (the value its holder last wrote) of the upload or
        import that holds ``image_id`` in ``status``; False when it no longer does
        (deleted, finished, or taken over, even if another upload holds it now)."""
        def extend() -> bool:
            return self._db.execute(
                "UPDATE images SET busy_until = ? WHERE id = ? AND status = ? "
                "AND busy_until = ?", (until, image_id, status, held)).rowcount == 1

        return await self._run(extend)

    async def stale(self, now: float) -> list[ImageRecord]:
        """Images whose upload, stage or import lease ran out before ``now``.

        ``saving`` and ``importing`` without any lease are stale too: only a registry
        from before leases has them, and those states never last without an owner.
        An ``uploading`` image without a lease is a finished stage waiting for import.
        """
        def fetch() -> list[ImageRecord]:
            cur = self._db.execute(
                f"SELECT {','.join(_ALL_COLUMNS)} FROM images WHERE status IN "
                f"({','.join('?' * len(LEASED_STATUSES))}) AND (busy_until < ? OR "
                "(busy_until IS NULL AND status IN ('saving', 'importing')))",
                (*LEASED_STATUSES, now))
            return [self._row_to_image(row) for row in cur.fetchall()]

        return await self._run(fetch)

    async def take_over(self, image_id: str, status: str, now: float, until: float) -> bool:
        """Move a stale image to ``killed`` with a lease of the caller's, if it is still
        in ``status`` with its lease run out: of several sweepers, one wins."""
        def claim() -> bool:
            return self._db.execute(
                "UPDATE images SET status = 'killed', busy_until = ?, updated_at = ? "
                "WHERE id = ? AND status = ? AND (busy_until < ? OR (busy_until IS NULL "
                "AND status IN ('saving', 'importing')))",
                (until, utc_now(), image_id, status, now)).rowcount == 1

        return await self._run(claim)

    async def remove(self, image_id: str) -> None:
        def delete() -> None:
            with self._transaction():
                self._db.execute("DELETE FROM members WHERE image_id = ?", (image_id,))
                self._db.execute("DELETE FROM tasks WHERE image_id = ?", (image_id,))
                self._db.execute("DELETE FROM images WHERE id = ?", (image_id,))
                self._db.execute("INSERT OR IGNORE INTO deleted_ids (id, deleted_at) "
                                 "VALUES (?, ?)", (image_id, utc_now()))

        await self._run(delete)

    async def all_images(self) -> list[ImageRecord]:
        def fetch() -> list[ImageRecord]:
            cur = self._db.execute(f"SELECT {','.join(_ALL_COLUMNS)} FROM images")
            return [self._row_to_image(row) for row in cur.fetchall()]

        return await self._run(fetch)

    async def members(self, image_id: str) -> list[MemberRecord]:
        def fetch() -> list[MemberRecord]:
            cur = self._db.execute(
                "SELECT image_id, member_id, status, created_at, updated_at FROM members "
                "WHERE image_id = ? ORDER BY created_at, member_id", (image_id,)
            )
            return [MemberRecord(*row) for row in cur.fetchall()]

        return await self._run(fetch)

    async def member_statuses(self, member_id: str) -> dict[str, str]:
        """image id -> this project's membership status, for list filtering."""
        def fetch() -> dict[str, str]:
            cur = self._db.execute(
                "SELECT image_id, status FROM members WHERE member_id = ?", (member_id,)
            )
            return dict(cur.fetchall())

        return await self._run(fetch)

    async def get_member(self, image_id: str, member_id: str) -> MemberRecord | None:
        def fetch() -> MemberRecord | None:
            cur = self._db.execute(
                "SELECT image_id, member_id, status, created_at, updated_at FROM members "
                "WHERE image_id = ? AND member_id = ?", (image_id, member_id)
            )
            row = cur.fetchone()
            return None if row is None else MemberRecord(*row)

        return await self._run(fetch)

    async def save_member(self, member: MemberRecord) -> None:
        await self._run(
            self._db.execute,
            "INSERT OR REPLACE INTO members (image_id, member_id, status, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?)",
            (member.image_id, member.member_id, member.status, member.created_at,
             member.updated_at),
        )

    async def remove_member(self, image_id: str, member_id: str) -> bool:
        def delete() -> bool:
            cur = self._db.execute(
                "DELETE FROM members WHERE image_id = ? AND member_id = ?", (image_id, member_id)
            )
            return cur.rowcount == 1

        return await self._run(delete)

    async def add_task(self, task: TaskRecord) -> None:
        """Record a task; tasks past their ``expires_at`` are dropped on the way."""
        values = [json.dumps(v) if k in ("input", "result") and v is not None else v
                  for k, v in ((c, getattr(task, c)) for c in _TASK_COLUMNS)]

        def insert() -> None:
            with self._transaction():
                self._db.execute("DELETE FROM tasks WHERE expires_at < ?", (utc_now(),))
                self._db.execute(f"INSERT INTO tasks ({','.join(_TASK_COLUMNS)}) VALUES "
                                 f"({','.join('?' * len(_TASK_COLUMNS))})", values)

        await self._run(insert)

    async def finish_task(self, task: TaskRecord) -> None:
        """Write a task's outcome: status, result, message and times."""
        result = None if task.result is None else json.dumps(task.result)
        await self._run(
            self._db.execute,
            "UPDATE tasks SET status = ?, result = ?, message = ?, updated_at = ?, "
            "expires_at = ? WHERE id = ?",
            (task.status, result, task.message, task.updated_at, task.expires_at, task.id))

    async def fail_unfinished_tasks(self, image_id: str, message: str, expires_at: str,
                                    created_by: str) -> int:
        """Mark an image's tasks created by ``created_by`` and still ``processing`` as
        failed (their holder is gone; a later one may be a newer import's)."""
        def update() -> int:
            return self._db.execute(
                "UPDATE tasks SET status = 'failure', message = ?, updated_at = ?, "
                "expires_at = ? WHERE image_id = ? AND status = 'processing' "
                "AND created_at <= ?",
                (message, utc_now(), expires_at, image_id, created_by)).rowcount

        return await self._run(update)

    async def image_tasks(self, image_id: str) -> list[TaskRecord]:
        """An image's tasks not yet expired, newest first."""
        def fetch() -> list[TaskRecord]:
            cur = self._db.execute(
                f"SELECT {','.join(_TASK_COLUMNS)} FROM tasks WHERE image_id = ? AND "
                "(expires_at IS NULL OR expires_at >= ?) ORDER BY created_at DESC, "
                "rowid DESC", (image_id, utc_now()))
            tasks = []
            for row in cur.fetchall():
                fields = dict(zip(_TASK_COLUMNS, row, strict=True))
                fields["input"] = json.loads(fields["input"])
                if fields["result"] is not None:
                    fields["result"] = json.loads(fields["result"])
                tasks.append(TaskRecord(**fields))
            return tasks

        return await self._run(fetch)
