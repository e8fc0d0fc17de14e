"""An import's task (``GET /v2/images/{id}/tasks``): what became of it, and why it failed.

Driven by openstacksdk (``image_tasks``), python-glanceclient
(``get_associated_image_tasks``) and raw requests, against a stand-alone image
service that fetches from a real HTTP server on loopback.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import glanceclient
import pytest
import requests

from swiftlike.image.api_tasks import ABANDONED
from tests.image.conftest import (
    ImageProcess,
    ImageService,
    auth_headers,
    start_service,
)
from tests.image.test_upload_leases import _wait_status, set_holder
from tests.image.test_web_download import _create, _import, _settle
from tests.image.web_source import Source


@pytest.fixture
def service(service_conf: Path, tmp_path: Path, source: Source) -> Iterator[ImageProcess]:
    proc = start_service(service_conf, tmp_path, "tasks", extra=(
        f"web_download_allowed_ports = [{source.port}]\n"
        "web_download_timeout = 5.0\n"))
    yield proc
    proc.stop()


def _tasks(url: str, token: str, image_id: str) -> requests.Response:
    return requests.get(f"{url}/v2/images/{image_id}/tasks", headers=auth_headers(token),
                        timeout=30)


def _ended(url: str, token: str, image_id: str, count: int = 1) -> list[dict]:
    """The image's tasks once ``count`` of them have ended."""
    deadline = time.monotonic() + 30
    while True:
        tasks = _tasks(url, token, image_id).json()["tasks"]
        ended = [t for t in tasks if t["status"] in ("success", "failure")]
        if len(ended) >= count or time.monotonic() > deadline:
            return tasks
        time.sleep(0.1)


def test_openstacksdk_sees_the_task_of_a_web_download(
        service: ImageProcess, source: Source, image_service: ImageService) -> None:
    import openstack

    token = image_service.token()
    source.routes["/disk.img"] = (200, {}, os.urandom(200_000))
    conn = openstack.connection.Connection(
        auth_type="admin_token", auth={"endpoint": service.url, "token": token},
        image_endpoint_override=service.url)
    image = conn.image.create_image(name="tasked", disk_format="raw",
                                    container_format="bare")
    assert list(conn.image.image_tasks(image)) == []
    answer = _import(service.url, token, image.id, source.url("/disk.img"))
    assert answer.status_code == 202
    assert _settle(service.url, token, image.id)["status"] == "active"
    _ended(service.url, token, image.id)
    tasks = list(conn.image.image_tasks(image))
    assert len(tasks) == 1
    task = tasks[0]
    assert task.type == "api_image_import" and task.status == "success"
    assert task.image_id == image.id and task.result == {"image_id": image.id}
    assert task.message == ""
    assert task.input["import_req"]["method"] == {"name": "web-download",
                                                  "uri": source.url("/disk.img")}
    assert task.request_id == answer.headers["x-openstack-request-id"]
    assert task.user_id == "test:tester" and task.owner == "AUTH_test"
    assert task.created_at <= task.updated_at < task.expires_at  # kept 48 h by default


def test_a_failed_web_download_says_why_and_a_retry_gets_its_own_task(
        service: ImageProcess, source: Source, image_service: ImageService) -> None:
    token = image_service.token()
    image_id = _create(service.url, token)
    # a URL with a password: the reason must not repeat it
    secret_url = f"http://user:s3cret@127.0.0.1:{source.port}/missing"
    assert _import(service.url, token, image_id, secret_url).status_code == 202
    assert _settle(service.url, token, image_id)["status"] == "queued"
    failed, = _ended(service.url, token, image_id)
    assert failed["status"] == "failure" and failed["result"] is None
    assert "404" in failed["message"], failed["message"]
    assert "s3cret" not in json.dumps(failed)  # nor in the input it shows
    assert failed["input"]["import_req"]["method"]["uri"] == \
        f"http://127.0.0.1:{source.port}/missing"

    source.routes["/good"] = (200, {}, b"x" * 5000)
    assert _import(service.url, token, image_id, source.url("/good")).status_code == 202
    assert _settle(service.url, token, image_id)["status"] == "active"
    tasks = _ended(service.url, token, image_id, count=2)
    assert [t["status"] for t in tasks] == ["success", "failure"]  # newest first


def test_glanceclient_sees_a_glance_direct_import_whose_staged_bytes_vanished(
        service: ImageProcess, image_service: ImageService) -> None:
    """The staged bytes are deleted from the store behind the service's back: the
    import cannot read them back, and its task says so."""
    token = image_service.token()
    glance = glanceclient.Client("2", endpoint=service.url, token=token)
    image = glance.images.create(name="staged", disk_format="raw", container_format="bare")
    glance.images.stage(image.id, io.BytesIO(os.urandom(300_000)))
    store = image_service.store()
    for path in store.objects_of(image.id):
        assert requests.delete(f"{store.storage_url}/{path}", headers=store.headers,
                               timeout=30).status_code == 204
    glance.images.image_import(image.id, method="glance-direct")
    deadline = time.monotonic() + 30
    while glance.images.get(image.id).status == "importing" and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert glance.images.get(image.id).status == "queued"
    _ended(service.url, token, image.id)
    body = glance.images.get_associated_image_tasks(image.id)
    task, = body["tasks"]
    assert task["status"] == "failure", task
    assert task["input"]["import_req"] == {"method": {"name": "glance-direct"}}
    assert task["message"].startswith("Image import failed: "), task["message"]


def test_a_project_the_image_is_shared_with_sees_none_of_its_tasks(
        service: ImageProcess, source: Source, image_service: ImageService) -> None:
    """As Glance: 404 unless the caller sees the image, then only its own project's
    tasks (a task's input holds what the importer sent); admins see them all."""
    token = image_service.token()
    other = image_service.token("test2:tester2", "testing2")
    image_id = _create(service.url, token)
    source.routes["/disk.img"] = (200, {}, b"y" * 3000)
    assert _import(service.url, token, image_id, source.url("/disk.img")).status_code == 202
    assert len(_ended(service.url, token, image_id)) == 1
    assert _tasks(service.url, other, image_id).status_code == 404  # not shared yet
    assert requests.post(f"{service.url}/v2/images/{image_id}/members", timeout=30,
                         headers=auth_headers(token),
                         json={"member": "AUTH_test2"}).status_code == 200
    answer = _tasks(service.url, other, image_id)
    assert answer.status_code == 200 and answer.json() == {"tasks": []}, answer.text
    admin = image_service.token("admin:admin", "admin")
    assert len(_tasks(service.url, admin, image_id).json()["tasks"]) == 1
    assert _tasks(service.url, token, "00000000-0000-0000-0000-000000000000"
                  ).status_code == 404


def test_an_import_goes_on_when_its_task_cannot_be_recorded(
        service: ImageProcess, source: Source, image_service: ImageService,
        tmp_path: Path) -> None:
    """The image is already importing when the task is written: a registry failure
    there must not strand it (500 and importing until its lease ran out)."""
    registry = sqlite3.connect(tmp_path / "images.sqlite")
    try:
        registry.execute("DROP TABLE tasks")
        registry.commit()
    finally:
        registry.close()
    token = image_service.token()
    image_id = _create(service.url, token)
    source.routes["/disk.img"] = (200, {}, b"z" * 3000)
    assert _import(service.url, token, image_id, source.url("/disk.img")).status_code == 202
    assert _settle(service.url, token, image_id)["status"] == "active"


def test_the_task_of_an_import_whose_process_died_is_failed_by_the_sweeper(
        service_conf: Path, tmp_path: Path, source: Source,
        image_service: ImageService) -> None:
    token = image_service.token()
    proc = start_service(service_conf, tmp_path, "dies", extra=(
        f"web_download_allowed_ports = [{source.port}]\n"))
    try:
        image_id = _create(proc.url, token)
        assert _import(proc.url, token, image_id, source.url("/slow")).status_code == 202
        assert _tasks(proc.url, token, image_id).json()["tasks"][0]["status"] == \
            "processing"
        proc.kill()  # SIGKILL: no shutdown hook runs
    finally:
        proc.stop()
    set_holder(tmp_path, image_id, "importing", time.time() - 1)  # its lease ran out
    proc = start_service(service_conf, tmp_path, "again")
    try:
        task, = _ended(proc.url, token, image_id)
        assert task["status"] == "failure" and task["message"] == ABANDONED
        assert task["expires_at"] is not None
        _wait_status(proc.url, token, image_id, "queued", 30)  # via killed, bytes gone
    finally:
        proc.stop()
