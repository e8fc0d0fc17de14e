"""Bad input: every refusal gets Glance's status, a message, and leaves no bytes behind.

Truncated uploads (client hangs up) are in test_store_layout.py, which lists the store.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import requests

from tests.image.conftest import ImageService

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img (Debian qemu-utils) is needed")
PATCH = "application/openstack-images-v2.1-json-patch"


class Api:
    def __init__(self, service: ImageService, user: str = "test:tester", key: str = "testing"
                 ) -> None:
        self.service = service
        self.base = service.image_url + "/v2"
        self.headers = {"X-Auth-Token": service.token(user, key)}

    def create(self, **body: object) -> requests.Response:
        return requests.post(f"{self.base}/images", json=body, headers=self.headers, timeout=30)

    def new_image(self, disk_format: str = "raw") -> str:
        resp = self.create(name="bad-input", disk_format=disk_format, container_format="bare")
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    def get(self, image_id: str) -> dict:
        resp = requests.get(f"{self.base}/images/{image_id}", headers=self.headers, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def upload(self, image_id: str, data: bytes, **headers: str) -> requests.Response:
        return requests.put(f"{self.base}/images/{image_id}/file", data=data, timeout=60,
                            headers={**self.headers, "Content-Type": "application/octet-stream",
                                     **headers})

    def patch(self, image_id: str, ops: list, content_type: str = PATCH) -> requests.Response:
        return requests.patch(f"{self.base}/images/{image_id}", data=json.dumps(ops),
                              timeout=30,
                              headers={**self.headers, "Content-Type": content_type})


@pytest.fixture
def api(image_service: ImageService) -> Api:
    return Api(image_service)


def _assert_queued_without_data(api: Api, image_id: str) -> None:
    image = api.get(image_id)
    assert image["status"] == "queued"
    assert image["size"] is None and image["checksum"] is None
    resp = requests.get(f"{api.base}/images/{image_id}/file", headers=api.headers, timeout=30)
    assert resp.status_code == 204
    assert api.service.store().objects_of(image_id) == []  # nothing kept in the store


def test_qcow2_with_backing_file_is_refused(api: Api, tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw",
                    str(evil), "1M"], check=True, capture_output=True)
    for disk_format in ("qcow2", "raw"):  # refused under its own name and disguised as raw
        image_id = api.new_image(disk_format)
        resp = api.upload(image_id, evil.read_bytes())
        assert resp.status_code == 400, resp.text
        assert "backing file" in resp.text or "qcow2" in resp.text
        _assert_queued_without_data(api, image_id)


def test_qcow2_with_external_data_file_is_refused(api: Api, tmp_path: Path) -> None:
    evil = tmp_path / "datafile.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-o",
                    f"data_file={tmp_path / 'ext.raw'}", str(evil), "1M"],
                   check=True, capture_output=True)
    image_id = api.new_image("qcow2")
    resp = api.upload(image_id, evil.read_bytes())
    assert resp.status_code == 400 and "data file" in resp.text
    _assert_queued_without_data(api, image_id)


def test_vmdk_split_descriptor_is_refused(api: Api, tmp_path: Path) -> None:
    split = tmp_path / "split.vmdk"
    subprocess.run(["qemu-img", "create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
                    str(split), "1M"], check=True, capture_output=True)
    image_id = api.new_image("vmdk")
    resp = api.upload(image_id, split.read_bytes())
    assert resp.status_code == 400, resp.text
    _assert_queued_without_data(api, image_id)


def test_format_mismatch_is_refused(api: Api, tmp_path: Path) -> None:
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(disk), "1M"], check=True)
    image_id = api.new_image("vmdk")
    resp = api.upload(image_id, disk.read_bytes())
    assert resp.status_code == 400 and "qcow2" in resp.text
    _assert_queued_without_data(api, image_id)
    raw_image = api.new_image("qcow2")
    assert api.upload(raw_image, os.urandom(70_000)).status_code == 400
    _assert_queued_without_data(api, raw_image)


def test_wrong_checksum_is_refused_and_retry_works(api: Api) -> None:
    image_id = api.new_image()
    data = os.urandom(50_000)
    resp = api.upload(image_id, data, **{"Content-MD5": "0" * 32})
    assert resp.status_code == 400 and "Checksum" in resp.text
    _assert_queued_without_data(api, image_id)
    import hashlib

    ok = api.upload(image_id, data, **{"Content-MD5": hashlib.md5(data).hexdigest()})
    assert ok.status_code == 204, ok.text
    assert api.get(image_id)["status"] == "active"
    assert api.upload(image_id, data).status_code == 409  # no second upload


def test_quotas_and_size_cap_answer_413(api: Api) -> None:
    """Over a quota or the size cap: 413 with Glance's message (these were 500s: aiohttp's
    413 class wants arguments the error helper did not give)."""
    too_many = [f"t{i}" for i in range(129)]  # the default image_tag_quota is 128
    resp = api.create(name="x", tags=too_many)
    assert resp.status_code == 413 and "Maximum number of tags exceeded" in resp.text
    image_id = api.new_image()
    resp = api.patch(image_id, [{"op": "replace", "path": "/tags", "value": too_many}])
    assert resp.status_code == 413 and "Maximum number of tags exceeded" in resp.text
    assert api.get(image_id)["tags"] == []
    # a declared size over the cap (1 TiB by default) is refused before any byte is read
    url = urllib.parse.urlsplit(f"{api.base}/images/{image_id}/file")
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall((f"PUT {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      f"X-Auth-Token: {api.headers['X-Auth-Token']}\r\n"
                      "Content-Type: application/octet-stream\r\n"
                      f"Content-Length: {2 * 1024 ** 4}\r\n\r\n").encode())
        answer = sock.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "storage quota" in answer
    _assert_queued_without_data(api, image_id)


def test_the_os_glance_namespace_is_reserved(api: Api) -> None:
    resp = api.create(name="x", os_glance_failed_import="faked")
    assert resp.status_code == 403 and "reserved" in resp.text
    image_id = api.new_image()
    for op in ("add", "replace", "remove"):
        resp = api.patch(image_id, [{"op": op, "path": "/os_glance_stage_host",
                                     "value": "http://elsewhere"}])
        assert resp.status_code == 403, (op, resp.text)
    assert "os_glance_stage_host" not in api.get(image_id)


def test_changes_made_during_an_upload_survive_it(api: Api) -> None:
    """A PATCH and a tag while the data is still arriving: the upload's final write must
    not revert them, and they must not revert the upload's status (both used to write the
    whole record they had read)."""
    import threading
    import time

    image_id = api.new_image()
    started, release = threading.Event(), threading.Event()

    def body():
        yield b"x" * 50_000
        started.set()
        release.wait(30)  # bounded: the test releases it as soon as its changes are in
        for _ in range(3):
            yield b"y" * 50_000

    result: list[requests.Response] = []
    uploader = threading.Thread(target=lambda: result.append(
        api.upload(image_id, body())))  # a generator: sent chunked, while we go on
    uploader.start()
    try:
        assert started.wait(30)
        deadline = time.monotonic() + 30
        while api.get(image_id)["status"] != "saving" and time.monotonic() < deadline:
            time.sleep(0.05)
        resp = api.patch(image_id, [
            {"op": "replace", "path": "/name", "value": "renamed-mid-upload"},
            {"op": "replace", "path": "/protected", "value": True},
            {"op": "add", "path": "/os_distro", "value": "ubuntu"}])
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "saving"
        tag = requests.put(f"{api.base}/images/{image_id}/tags/important",
                           headers=api.headers, timeout=30)
        assert tag.status_code == 204
    finally:
        release.set()
        uploader.join(60)
    assert result and result[0].status_code == 204, result and result[0].text
    image = api.get(image_id)
    assert image["status"] == "active" and image["size"] == 200_000
    assert image["name"] == "renamed-mid-upload" and image["protected"] is True
    assert image["os_distro"] == "ubuntu" and image["tags"] == ["important"]
    assert requests.delete(f"{api.base}/images/{image_id}", headers=api.headers,
                           timeout=30).status_code == 403  # protected, as it was set
    assert api.patch(image_id, [{"op": "replace", "path": "/protected", "value": False}]
                     ).status_code == 200
    assert requests.delete(f"{api.base}/images/{image_id}", headers=api.headers,
                           timeout=30).status_code == 204


def _listed(api: Api, **params: str) -> requests.Response:
    return requests.get(f"{api.base}/images", params=params, headers=api.headers, timeout=30)


def test_time_filters_compare_instants_and_refuse_junk(api: Api) -> None:
    from datetime import datetime, timedelta, timezone

    image_id = api.new_image()
    created = datetime.fromisoformat(api.get(image_id)["created_at"])
    same_in_new_york = created.astimezone(timezone(timedelta(hours=-5))).isoformat()
    hour_later_in_new_york = (created + timedelta(hours=1)).astimezone(
        timezone(timedelta(hours=-5))).isoformat()

    def ids(expr: str) -> list[str]:
        resp = _listed(api, created_at=expr, limit="1000")
        assert resp.status_code == 200, resp.text
        return [img["id"] for img in resp.json()["images"]]

    assert image_id in ids(f"eq:{same_in_new_york}")
    assert image_id not in ids(f"gt:{same_in_new_york}")
    assert image_id in ids(f"gte:{same_in_new_york}")
    assert image_id in ids(f"lt:{hour_later_in_new_york}")
    assert image_id not in ids(f"neq:{created.isoformat()}")
    for junk in ("gt:yesterday", "lt:", "eq:2026-13-01T00:00:00Z"):
        resp = _listed(api, created_at=junk)
        assert resp.status_code == 400 and "created_at" in resp.text, junk


def test_next_link_survives_the_marker_leaving_the_filter(api: Api) -> None:
    """Page one lists queued images; its last one gets data (now active); the next link
    still works and goes on from where that image sorted, as Glance does."""
    tag = f"pages-{os.urandom(4).hex()}"
    made = []
    for _ in range(4):
        resp = api.create(name="paged", disk_format="raw", container_format="bare", tags=[tag])
        assert resp.status_code == 201
        made.append(resp.json()["id"])
    first = _listed(api, tag=tag, status="queued", limit="2", sort="name:asc,id:asc")
    assert first.status_code == 200
    page_one = [img["id"] for img in first.json()["images"]]
    assert api.upload(page_one[-1], b"x" * 1000).status_code == 204  # leaves the filter
    second = requests.get(api.service.image_url + first.json()["next"], headers=api.headers,
                          timeout=30)
    assert second.status_code == 200, second.text
    page_two = [img["id"] for img in second.json()["images"]]
    assert sorted(page_one + page_two) == sorted(made)
    assert _listed(api, marker="00000000-0000-0000-0000-000000000000").status_code == 400


def test_in_filter_takes_quoted_values(api: Api) -> None:
    tag = f"in-{os.urandom(4).hex()}"
    for name in ("glass, darkly", "share me", "other"):
        assert api.create(name=name, tags=[tag]).status_code == 201
    resp = _listed(api, tag=tag, name='in:"glass, darkly",share me')
    assert resp.status_code == 200
    assert sorted(img["name"] for img in resp.json()["images"]) == ["glass, darkly",
                                                                     "share me"]
    assert _listed(api, tag=tag, name='in:"glass, darkly').status_code == 400


def test_attribute_filters_and_boolean_checks(api: Api) -> None:
    import hashlib

    tag = f"attr-{os.urandom(4).hex()}"
    low = api.create(name="low", tags=[tag], min_ram=512, disk_format="raw",
                     container_format="bare").json()["id"]
    api.create(name="high", tags=[tag], min_ram=2048)
    assert api.upload(low, b"z" * 4096).status_code == 204

    def names(**params: str) -> list[str]:
        resp = _listed(api, tag=tag, **params)
        assert resp.status_code == 200, resp.text
        return sorted(img["name"] for img in resp.json()["images"])

    assert names(min_ram="512") == ["low"]
    assert names(min_disk="0") == ["high", "low"]
    assert names(virtual_size="4096") == ["low"]
    assert names(checksum=hashlib.md5(b"z" * 4096).hexdigest()) == ["low"]
    assert names(os_hash_value=hashlib.sha512(b"z" * 4096).hexdigest()) == ["low"]
    assert _listed(api, min_ram="lots").status_code == 400
    assert _listed(api, protected="maybe").status_code == 400
    assert _listed(api, os_hidden="yes").status_code == 400
    # an unsatisfiable range says the size, as RFC 9110 asks
    resp = requests.get(f"{api.base}/images/{low}/file", timeout=30,
                        headers={**api.headers, "Range": "bytes=5000-6000"})
    assert resp.status_code == 416 and resp.headers["Content-Range"] == "bytes */4096"


def test_every_answer_has_a_request_id(api: Api) -> None:
    ok = _listed(api, limit="1")
    missing = requests.get(f"{api.base}/images/00000000-0000-0000-0000-000000000000",
                           headers=api.headers, timeout=30)
    assert ok.status_code == 200 and missing.status_code == 404
    ids = {resp.headers["x-openstack-request-id"] for resp in (ok, missing)}
    assert len(ids) == 2 and all(i.startswith("req-") for i in ids)


def test_upload_needs_octet_stream(api: Api) -> None:
    image_id = api.new_image()
    for content_type in ("application/json", None):
        headers = dict(api.headers)
        if content_type:
            headers["Content-Type"] = content_type
        resp = requests.put(f"{api.base}/images/{image_id}/file", data=b"x" * 10,
                            headers=headers, timeout=30)
        assert resp.status_code == 415, (content_type, resp.text)
    _assert_queued_without_data(api, image_id)


def test_concurrent_patches_all_land(api: Api) -> None:
    """Each PATCH adds its own property; none may be lost to another's write of the
    whole property set (they used to read, change and write back the record)."""
    from concurrent.futures import ThreadPoolExecutor

    image_id = api.new_image()

    def add(i: int) -> int:
        return api.patch(image_id, [{"op": "add", "path": f"/p{i}", "value": str(i)}]
                         ).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(add, range(24))) == {200}
    image = api.get(image_id)
    assert {f"p{i}" for i in range(24)} <= set(image), sorted(k for k in image if
                                                             k.startswith("p"))


def test_read_only_and_invalid_attributes(api: Api) -> None:
    assert api.create(name="x", status="active").status_code == 403
    assert api.create(name="x", checksum="abc").status_code == 403
    assert api.create(name="x", disk_format="floppy").status_code == 400
    assert api.create(name="x", container_format="zip").status_code == 400
    assert api.create(name="x", visibility="public").status_code == 403  # admin only
    image_id = api.new_image()
    for path in ("/status", "/size", "/checksum", "/id", "/created_at", "/os_hash_value"):
        resp = api.patch(image_id, [{"op": "replace", "path": path, "value": "x"}])
        assert resp.status_code == 403, (path, resp.text)
    assert api.patch(image_id, [{"op": "replace", "path": "/disk_format",
                                 "value": "floppy"}]).status_code == 400
    assert api.patch(image_id, [{"op": "replace", "path": "/nope", "value": "1"}]
                     ).status_code == 409
    assert api.patch(image_id, [], content_type="application/json").status_code == 415
    assert api.upload(image_id, b"x" * 10).status_code == 204
    # formats are fixed once there is data
    assert api.patch(image_id, [{"op": "replace", "path": "/disk_format",
                                 "value": "qcow2"}]).status_code == 403


def test_other_accounts_cannot_see_or_touch(api: Api, image_service: ImageService) -> None:
    other = Api(image_service, "test2:tester2", "testing2")
    image_id = api.new_image()
    for method in ("get", "delete"):
        resp = requests.request(method, f"{other.base}/images/{image_id}",
                                headers=other.headers, timeout=30)
        assert resp.status_code == 404
    assert other.upload(image_id, b"x").status_code == 404
    resp = requests.get(f"{api.base}/images", headers={"X-Auth-Token": "bogus"}, timeout=30)
    assert resp.status_code == 401


def test_a_deleted_image_id_is_never_given_to_another_image(image_service) -> None:
    """An image id always means the same bytes: after a public image is deleted, another
    project re-creating its id (to put its own bytes behind everyone's references) gets
    409, as from Glance (OSSN-0075); so does the owner."""
    admin = Api(image_service, "admin:admin", "admin")
    other = Api(image_service, "test2:tester2", "testing2")
    resp = admin.create(name="official", visibility="public", disk_format="raw",
                        container_format="bare")
    assert resp.status_code == 201, resp.text
    image_id = resp.json()["id"]
    assert admin.upload(image_id, b"good" * 1024).status_code == 204
    resp = requests.delete(f"{admin.base}/images/{image_id}", headers=admin.headers,
                           timeout=30)
    assert resp.status_code == 204
    for api in (other, admin):
        resp = api.create(id=image_id, name="official", visibility="community",
                          disk_format="raw", container_format="bare")
        assert resp.status_code == 409, resp.text
        assert "already exists" in resp.text
    resp = requests.get(f"{other.base}/images/{image_id}", headers=other.headers, timeout=30)
    assert resp.status_code == 404


def test_an_image_of_no_project_is_refused_not_a_500(image_service) -> None:
    admin = Api(image_service, "admin:admin", "admin")
    for owner in (None, "", 7):
        resp = admin.create(name="ownerless", owner=owner, disk_format="raw",
                            container_format="bare")
        assert resp.status_code == 400, (owner, resp.status_code, resp.text)
        assert "owner" in resp.text


def test_a_user_who_does_not_own_its_account_only_reads_its_images(image_service) -> None:
    """tester3 has no .admin: Swift lets it do nothing in AUTH_test without an ACL, and
    the image API treats it as Glance's reader: it sees and downloads its project's
    images, and changes none."""
    owner = Api(image_service)
    reader = Api(image_service, "test:tester3", "testing3")
    image_id = owner.new_image()
    assert owner.upload(image_id, b"r" * 4096).status_code == 204
    assert reader.get(image_id)["id"] == image_id
    resp = requests.get(f"{reader.base}/images/{image_id}/file", headers=reader.headers,
                        timeout=30)
    assert resp.status_code == 200 and resp.content == b"r" * 4096
    assert reader.create(name="x", disk_format="raw",
                         container_format="bare").status_code == 403
    assert reader.patch(image_id, [{"op": "replace", "path": "/name",
                                    "value": "renamed"}]).status_code == 403
    for method, path in (("DELETE", ""), ("PUT", "/tags/t"),
                         ("POST", "/actions/deactivate")):
        resp = requests.request(method, f"{reader.base}/images/{image_id}{path}",
                                headers=reader.headers, timeout=30)
        assert resp.status_code == 403, (method, path, resp.status_code)
    resp = requests.post(f"{reader.base}/images/{image_id}/members", json={
        "member": "AUTH_test2"}, headers=reader.headers, timeout=30)
    assert resp.status_code == 403
    assert owner.get(image_id)["name"] == "bad-input"
