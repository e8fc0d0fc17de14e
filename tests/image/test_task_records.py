"""Task records against a real SQLite registry: the sweeper's part, retries, redaction.

The store is test_upload_leases' FlakyStore double (healthy here): these pin what
the sweeper and the task helpers decide, the served tests cover the store itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from swiftlike.image import api_tasks
from swiftlike.image.api_data import failure_message
from swiftlike.image.api_tasks import ABANDONED
from swiftlike.image.registry import ImageRecord, SqliteImageRepository, TaskRecord, utc_now
from swiftlike.image.sweeper import sweep_stale
from swiftlike.image.web_download import shown
from tests.image.test_upload_leases import sweep_context


def _task(image_id: str, created_at: str) -> TaskRecord:
    return TaskRecord(id=f"t-{image_id}-{created_at}", type="api_image_import", owner="p",
                      image_id=image_id, user_id="p:u", request_id="req-1",
                      input={"image_id": image_id}, created_at=created_at)


def _drop_tasks_table(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute("DROP TABLE tasks")
        db.commit()
    finally:
        db.close()


async def test_the_sweeper_recovers_images_when_their_tasks_cannot_be_failed(
        tmp_path: Path) -> None:
    """Failing the tasks is a courtesy: a registry error there must not leave the image
    killed, nor stop the pass before the next stale image."""
    repo, c, _ = sweep_context(tmp_path)
    try:
        for image_id in ("a-stuck", "b-stuck"):
            await repo.add(ImageRecord(id=image_id, owner="p", status="importing",
                                       busy_until=time.time() - 1))
        _drop_tasks_table(tmp_path / "images.sqlite")
        assert sorted(await sweep_stale(c)) == ["a-stuck", "b-stuck"]
        for image_id in ("a-stuck", "b-stuck"):
            image = await repo.get(image_id)
            assert image is not None and image.status == "queued"
    finally:
        repo.close()


async def test_only_the_tasks_of_the_import_taken_over_are_failed(tmp_path: Path) -> None:
    repo = SqliteImageRepository(tmp_path / "images.sqlite")
    try:
        await repo.add(ImageRecord(id="img", owner="p", status="importing"))
        await repo.add_task(_task("img", "2026-12-08T00:00:00Z"))
        await repo.add_task(_task("img", "2026-12-08T00:05:00Z"))  # a newer import's
        failed = await repo.fail_unfinished_tasks("img", ABANDONED, "2026-12-10T00:00:00Z",
                                                  created_by="2026-12-08T00:01:00Z")
        assert failed == 1
        statuses = {t.created_at: t.status for t in await repo.image_tasks("img")}
        assert statuses == {"2026-12-08T00:00:00Z": "failure",
                            "2026-12-08T00:05:00Z": "processing"}
    finally:
        repo.close()


async def test_a_tasks_outcome_is_written_again_when_the_registry_was_busy(
        tmp_path: Path, monkeypatch) -> None:
    """The first write of the outcome fails (the table is gone); the retry, once it is
    back, records it, instead of the task saying "processing" for ever."""
    monkeypatch.setattr(api_tasks, "FINISH_RETRY_SECONDS", 1.0)
    path = tmp_path / "images.sqlite"
    repo = SqliteImageRepository(path)
    try:
        task = _task("img", utc_now())
        await repo.add_task(task)
        _drop_tasks_table(path)

        async def succeeded() -> None:
            return None

        running = asyncio.ensure_future(api_tasks.run_as_task(repo, task, 48.0,
                                                              succeeded()))
        await asyncio.sleep(0.1)
        assert not running.done()  # the first write failed: it waits to try again
        SqliteImageRepository(path).close()  # makes the table again
        db = sqlite3.connect(path)
        try:
            db.execute("INSERT INTO tasks (id, type, owner, image_id, user_id, request_id, "
                       "input, status, message, created_at, updated_at) VALUES (?, "
                       "'api_image_import', 'p', 'img', 'p:u', 'req-1', '{}', "
                       "'processing', '', ?, ?)", (task.id, task.created_at, task.created_at))
            db.commit()
        finally:
            db.close()
        await asyncio.wait_for(running, 10)
        assert [t.status for t in await repo.image_tasks("img")] == ["success"]
    finally:
        repo.close()


def test_a_failure_message_never_carries_a_url_password() -> None:
    class Refused(Exception):
        pass

    for text in ("Connection timeout to host http://u:s3cret@example.com/img",
                 "redirected to HTTP://svc:t0ken@mirror.example/img, a port not allowed",
                 "http://u:s3cret@example.com/a%20b answered 404",
                 "refused: http://svc:p@s3cret@mirror:99999/img",  # a raw @ in it
                 "url='http://u:s3cret@[::1]:8080/x', hdr='x@y'"):
        message = failure_message(Refused(text))
        assert "s3cret" not in message and "t0ken" not in message, message
        assert message.startswith("Image import failed: ")
    assert failure_message(Refused("url='http://h/x', hdr='x@y'")).endswith("hdr='x@y'")
    # a URL yarl cannot build (port out of range) is stripped by pattern
    assert shown("http://svc:p@s3cret@mirror:99999/img") == "http://mirror:99999/img"
