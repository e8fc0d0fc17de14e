"""An upload, stage or import whose process died no longer leaves its image stuck.

The image service runs here as its own process (``swiftlike image --config``) in front
of the real all-in-one cluster, with a short lease and sweep interval, so a test can
SIGKILL it in the middle of an upload and start another one on the same registry, as
an operator restarting a crashed worker would.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import requests

from swiftlike.image.context import ImageContext, ImageSettings, container_for
from swiftlike.image.registry import ImageRecord, SqliteImageRepository
from swiftlike.image.store import StoreError
from swiftlike.image.sweeper import sweep_stale
from tests.image.conftest import (
    ImageService,
    auth_headers,
    create_image,
    show_image,
    start_service,
)


def _new_image(url: str, token: str) -> str:
    return create_image(url, token, "lease")["id"]


def _status(url: str, token: str, image_id: str) -> str:
    return show_image(url, token, image_id)["status"]


def _wait_status(url: str, token: str, image_id: str, wanted: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    status = _status(url, token, image_id)
    while status != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
        status = _status(url, token, image_id)
    assert status == wanted


def _slow_body(chunks: list[bytes], pause: float) -> Iterator[bytes]:
    for chunk in chunks:
        yield chunk
        time.sleep(pause)


def set_holder(tmp_path: Path, image_id: str, status: str, busy_until: float | None
               ) -> None:
    """Change an image's status and lease in the shared registry behind the services'
    backs: what a dead holder, or a sweeper, leaves there."""
    registry = sqlite3.connect(tmp_path / "images.sqlite")
    try:
        with registry:
            registry.execute("UPDATE images SET status = ?, busy_until = ? WHERE id = ?",
                             (status, busy_until, image_id))
    finally:
        registry.close()


def _data_headers(token: str) -> dict[str, str]:
    return auth_headers(token, **{"Content-Type": "application/octet-stream"})


def test_an_upload_whose_process_died_is_swept_back_to_queued(
        service_conf: Path, tmp_path: Path, image_service: ImageService) -> None:
    token = image_service.token()
    store = image_service.store()
    first = start_service(service_conf, tmp_path, "first")
    try:
        image_id = _new_image(first.url, token)
        body = _slow_body([bytes([n]) * 64 * 1024 for n in range(60)], 0.1)  # 6 s, 3.75 MiB

        def upload() -> None:
            try:
                requests.put(f"{first.url}/v2/images/{image_id}/file", data=body,
                             timeout=60, headers=_data_headers(token))
            except requests.RequestException:
                pass  # the service is killed under it

        uploader = threading.Thread(target=upload)
        uploader.start()
        deadline = time.monotonic() + 20
        while not store.objects_of(image_id) and time.monotonic() < deadline:
            time.sleep(0.1)  # a segment of it has reached the store
        assert store.objects_of(image_id)
        assert _status(first.url, token, image_id) == "saving"
        first.kill()
        uploader.join(30)
    finally:
        first.kill()

    second = start_service(service_conf, tmp_path, "second")
    try:
        _wait_status(second.url, token, image_id, "queued", 20)
        assert store.objects_of(image_id) == []
        data = os.urandom(300 * 1024)
        resp = requests.put(f"{second.url}/v2/images/{image_id}/file", data=data,
                            timeout=60, headers=_data_headers(token))
        assert resp.status_code == 204, resp.text
        got = requests.get(f"{second.url}/v2/images/{image_id}/file",
                           headers=auth_headers(token), timeout=60)
        assert got.status_code == 200 and got.content == data
    finally:
        second.stop()


def test_a_live_slow_upload_keeps_its_image_through_many_sweeps(
        service_conf: Path, tmp_path: Path, image_service: ImageService) -> None:
    """Two services share the registry and sweep every 0.3 s; an upload that takes
    three times the lease is left alone, because its holder renews the lease."""
    token = image_service.token()
    one = start_service(service_conf, tmp_path, "one")
    other = start_service(service_conf, tmp_path, "other")
    try:
        image_id = _new_image(one.url, token)
        chunks = [bytes([n]) * 32 * 1024 for n in range(45)]
        expected = hashlib.md5(b"".join(chunks)).hexdigest()
        resp = requests.put(f"{one.url}/v2/images/{image_id}/file", timeout=60,
                            data=_slow_body(chunks, 0.1),  # 4.5 s in all
                            headers=_data_headers(token))
        assert resp.status_code == 204, resp.text
        image = requests.get(f"{other.url}/v2/images/{image_id}", headers=auth_headers(token),
                             timeout=30).json()
        assert image["status"] == "active" and image["checksum"] == expected
    finally:
        one.stop()
        other.stop()


def test_an_import_and_a_stage_whose_holder_died_are_swept(
        service_conf: Path, tmp_path: Path, image_service: ImageService) -> None:
    """Staged bytes of an import that died go with it; a stage that died mid-way too."""
    token = image_service.token()
    store = image_service.store()
    service = start_service(service_conf, tmp_path, "service")
    try:
        importing = _new_image(service.url, token)
        resp = requests.put(f"{service.url}/v2/images/{importing}/stage",
                            data=os.urandom(600 * 1024), timeout=60, headers=_data_headers(token))
        assert resp.status_code == 204, resp.text
        assert store.objects_of(importing)
        created = create_image(service.url, token, "lease")
        staging = created["id"]
        service.stop()

        # what a process killed inside the import, and one killed mid-stage, leave
        set_holder(tmp_path, importing, "importing", time.time() - 1)
        set_holder(tmp_path, staging, "uploading", time.time() - 1)
        container = container_for(ImageSettings(), created["owner"])
        requests.put(f"{store.storage_url}/{container}_segments", headers=store.headers,
                     timeout=30)
        resp = requests.put(f"{store.storage_url}/{container}_segments/{staging}/00000001",
                            data=b"x" * 1000, headers=store.headers, timeout=30)
        assert resp.status_code == 201

        service = start_service(service_conf, tmp_path, "again")
        _wait_status(service.url, token, importing, "queued", 20)
        _wait_status(service.url, token, staging, "queued", 20)
        assert store.objects_of(importing) == [] and store.objects_of(staging) == []
    finally:
        service.stop()


async def test_a_registry_from_before_leases_gains_them_and_old_stuck_images_are_stale(
        tmp_path: Path) -> None:
    path = tmp_path / "images.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE images (
            id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, visibility TEXT NOT NULL,
            protected INTEGER NOT NULL, owner TEXT NOT NULL, size INTEGER,
            virtual_size INTEGER, checksum TEXT, os_hash_algo TEXT, os_hash_value TEXT,
            disk_format TEXT, container_format TEXT, min_disk INTEGER NOT NULL,
            min_ram INTEGER NOT NULL, os_hidden INTEGER NOT NULL, created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL, location TEXT, extra TEXT NOT NULL,
            tags TEXT NOT NULL);
        INSERT INTO images VALUES ('stuck', NULL, 'saving', 'shared', 0, 'p', NULL, NULL,
            NULL, NULL, NULL, 'raw', 'bare', 0, 0, 0, 'x', 'x', NULL, '{}', '[]');
        INSERT INTO images VALUES ('staged', NULL, 'uploading', 'shared', 0, 'p', 3, NULL,
            NULL, NULL, NULL, 'raw', 'bare', 0, 0, 0, 'x', 'x', '{}', '{}', '[]');
    """)
    old.close()
    repo = SqliteImageRepository(path)
    try:
        assert [image.id for image in await repo.stale(time.time())] == ["stuck"]
        assert await repo.take_over("stuck", "saving", time.time(), time.time() + 60)
        assert not await repo.take_over("stuck", "saving", time.time(), time.time() + 60)
        assert await repo.stale(time.time()) == []  # killed, under the sweeper's lease
        claimed = time.time() + 60
        await repo.add(ImageRecord(id="live", owner="p", status="saving",
                                   busy_until=claimed))
        assert not await repo.renew("live", "saving", claimed - 1, time.time() + 120)
        assert not await repo.renew("live", "importing", claimed, time.time() + 120)
        assert await repo.renew("live", "saving", claimed, time.time() + 120)
        assert await repo.stale(time.time() + 30) == []
        # a sweeper that died while it held "stuck" as killed: its lease runs out too
        assert [i.id for i in await repo.stale(time.time() + 90)] == ["stuck"]
        assert [i.id for i in await repo.stale(time.time() + 200)] == ["stuck", "live"]
    finally:
        repo.close()


class FlakyStore:
    """A store whose deletes fail until ``healthy`` is set: the sweeper must not requeue
    an image whose bytes it could not remove. (A store double: the real store's failure
    modes are covered by the served tests above; this pins the sweeper's decision.)"""

    def __init__(self) -> None:
        self.healthy = False
        # one attempt from before attempt names, one after
        self.objects = {("glance_p", "stuck"), ("glance_p_segments", "stuck/00000001"),
                        ("glance_p", "stuck/0a1b"), ("glance_p_segments", "stuck/0a1b/00000001")}
        self.on_list: Callable[[], Awaitable[None]] | None = None

    async def list_objects(self, container: str, prefix: str = "") -> list[str]:
        if self.on_list is not None:
            await self.on_list()
        return [name for cont, name in self.objects
                if cont == container and name.startswith(prefix)]

    async def delete_object(self, container: str, name: str) -> bool:
        if not self.healthy:
            raise StoreError("503 from the proxy", 503)
        existed = (container, name) in self.objects
        self.objects.discard((container, name))
        return existed


async def test_the_sweeper_requeues_only_once_the_bytes_are_gone(tmp_path: Path) -> None:
    repo = SqliteImageRepository(tmp_path / "images.sqlite")
    store = FlakyStore()
    settings = ImageSettings(upload_lease=60.0)
    c = ImageContext(settings, repo, store, validator=None)  # type: ignore[arg-type]
    try:
        await repo.add(ImageRecord(id="stuck", owner="p", status="saving",
                                   busy_until=time.time() - 1))
        assert await sweep_stale(c) == []
        image = await repo.get("stuck")
        assert image is not None and image.status == "killed"
        assert store.objects  # nothing requeued over bytes still there
        assert await sweep_stale(c) == []  # its sweeper's lease still runs
        store.healthy = True
        assert await sweep_stale(c, now=time.time() + 61) == ["stuck"]
        image = await repo.get("stuck")
        assert image is not None and image.status == "queued" and image.busy_until is None
        assert not store.objects
    finally:
        repo.close()


def sweep_context(tmp_path: Path) -> tuple[SqliteImageRepository, ImageContext, FlakyStore]:
    """A real registry in ``tmp_path`` and a healthy store double, for sweep_stale."""
    repo = SqliteImageRepository(tmp_path / "images.sqlite")
    store = FlakyStore()
    store.healthy = True
    c = ImageContext(ImageSettings(upload_lease=60.0), repo, store,  # type: ignore[arg-type]
                     validator=None)
    return repo, c, store


async def test_a_sweeper_that_stalled_past_its_lease_deletes_nothing(tmp_path: Path) -> None:
    """Between its listing and its deletes the image went on without it (swept again by
    another process and uploaded anew): the listing may hold the newer upload's
    objects, so it deletes none and leaves the record alone."""
    repo, c, store = sweep_context(tmp_path)
    try:
        await repo.add(ImageRecord(id="stuck", owner="p", status="saving",
                                   busy_until=time.time() - 1))

        async def moved_on() -> None:
            set_holder(tmp_path, "stuck", "saving", time.time() + 600)

        store.on_list = moved_on
        before = set(store.objects)
        assert await sweep_stale(c) == []
        assert store.objects == before
        image = await repo.get("stuck")
        assert image is not None and image.status == "saving"
    finally:
        repo.close()


def test_a_holder_taken_over_leaves_the_newer_record_alone(
        service_conf: Path, tmp_path: Path, image_service: ImageService) -> None:
    """A holder that stalled past its lease finds, at its end, that the image was swept
    and uploaded again: it answers 409, does not write its record over the newer one,
    and deletes its own objects. Each attempt writes under a name of its own, so its
    last writes (its manifest, written after the newer upload finished) do not replace
    the newer bytes: those used to share the image's name, and the image then failed
    to download."""
    token = image_service.token()
    store = image_service.store()
    service = start_service(service_conf, tmp_path, "service")
    try:
        image_id = _new_image(service.url, token)
        slow_result: list[int] = []

        def slow_upload() -> None:
            body = _slow_body([b"old!" * 8192 for _ in range(30)], 0.1)  # 3 s
            resp = requests.put(f"{service.url}/v2/images/{image_id}/file", data=body,
                                timeout=60, headers=_data_headers(token))
            slow_result.append(resp.status_code)

        uploader = threading.Thread(target=slow_upload)
        uploader.start()
        deadline = time.monotonic() + 20
        while _status(service.url, token, image_id) != "saving":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # what a sweeper does to a holder silent past its lease (this one is not: the
        # registry is changed under it, as if its process had stalled)
        set_holder(tmp_path, image_id, "queued", None)
        newer = os.urandom(100 * 1024)
        resp = requests.put(f"{service.url}/v2/images/{image_id}/file", data=newer,
                            timeout=60, headers=_data_headers(token))
        assert resp.status_code == 204, resp.text
        uploader.join(60)
        assert slow_result == [409]
        image = requests.get(f"{service.url}/v2/images/{image_id}", timeout=30,
                             headers=auth_headers(token)).json()
        assert image["status"] == "active"
        assert image["checksum"] == hashlib.md5(newer).hexdigest()
        got = requests.get(f"{service.url}/v2/images/{image_id}/file", timeout=60,
                           headers=auth_headers(token))
        assert got.status_code == 200 and got.content == newer
        # the stalled attempt's manifest and segments are gone; the newer one's object
        # (a single object: 100 KiB) is all that is left
        left = store.objects_of(image_id)
        assert len(left) == 1 and "_segments/" not in left[0], left
    finally:
        service.stop()


def test_deleting_an_image_removes_what_dead_attempts_left(
        service_conf: Path, tmp_path: Path, image_service: ImageService) -> None:
    """An attempt whose process died after it was taken over leaves objects under the
    image's prefix that its location does not name; deleting the image removes them."""
    token = image_service.token()
    store = image_service.store()
    service = start_service(service_conf, tmp_path, "service")
    try:
        created = create_image(service.url, token, "lease")
        image_id = created["id"]
        resp = requests.put(f"{service.url}/v2/images/{image_id}/file", timeout=60,
                            data=os.urandom(1000), headers=_data_headers(token))
        assert resp.status_code == 204, resp.text
        container = container_for(ImageSettings(), created["owner"])
        requests.put(f"{store.storage_url}/{container}_segments", headers=store.headers,
                     timeout=30)
        for path in (f"{container}/{image_id}/0123456789abcdef",
                     f"{container}_segments/{image_id}/0123456789abcdef/00000001"):
            assert requests.put(f"{store.storage_url}/{path}", data=b"dead attempt",
                                headers=store.headers, timeout=30).status_code == 201
        assert len(store.objects_of(image_id)) == 3
        assert requests.delete(f"{service.url}/v2/images/{image_id}", timeout=60,
                               headers=auth_headers(token)).status_code == 204
        assert store.objects_of(image_id) == []
    finally:
        service.stop()


async def test_a_renewal_in_flight_when_the_work_ends_is_known_to_the_final_write(
        tmp_path: Path) -> None:
    """The registry write of a renewal runs in a thread a cancel cannot stop: if the
    body ended while one was in flight and the lease only dropped it, the write landed
    later with a lease the holder did not know, and its final (conditional) save of a
    finished upload failed."""
    import asyncio

    from swiftlike.image.sweeper import held_lease

    repo = SqliteImageRepository(tmp_path / "images.sqlite")
    try:
        claimed = time.time() + 60
        await repo.add(ImageRecord(id="img", owner="p", status="saving", busy_until=claimed))
        async with held_lease(repo, "img", "saving", 0.3, claimed) as held:
            await asyncio.sleep(0.05)
            repo._lock.acquire()  # the renewal due at 0.1 s waits for it in its thread
            threading.Timer(0.3, repo._lock.release).start()
            await asyncio.sleep(0.12)  # ... and the body ends meanwhile
        image = await repo.get("img")
        assert image is not None and image.busy_until == held.until
        assert held.until != claimed  # the renewal did land, and the holder knows it
    finally:
        repo.close()
