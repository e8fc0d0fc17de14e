"""Where image bytes live on the real cluster: the service account, SLO segments, cleanup.

Every check lists the image service's own account through the real proxy with the
credentials `swiftlike serve` generated, so "nothing left behind" is seen, not assumed.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections.abc import Callable
from urllib.parse import urlparse

import glanceclient
import pytest
import requests

from swiftlike.serve import IMAGE_SERVICE_USER
from tests.cluster_harness import ServedCluster
from tests.image.conftest import ImageService, StoreView, cluster_image_conf

MIB = 1024 * 1024


def _create(service: ImageService, token: str, name: str = "layout") -> str:
    resp = requests.post(f"{service.image_url}/v2/images", timeout=30,
                         headers={"X-Auth-Token": token},
                         json={"name": name, "disk_format": "raw", "container_format": "bare"})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _show(service: ImageService, token: str, image_id: str) -> dict:
    resp = requests.get(f"{service.image_url}/v2/images/{image_id}", timeout=30,
                        headers={"X-Auth-Token": token})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _wait_for(predicate: Callable[[], bool], within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_service_account_is_dedicated_and_not_reseller(swift_cluster: ServedCluster,
                                                       image_service: ImageService) -> None:
    conf = cluster_image_conf(swift_cluster)
    assert image_service.store_user == IMAGE_SERVICE_USER
    assert len(image_service.store_key) >= 32  # generated, not a well-known default
    groups = conf["auth"]["extra_users"][IMAGE_SERVICE_USER].split()[1:]
    assert groups == [".admin"]
    store = image_service.store()
    assert urlparse(store.storage_url).path == "/v1/AUTH_glance"
    # .admin of its own account only: other accounts are closed to it ...
    other = requests.get(swift_cluster.storage_url("test"), headers=store.headers, timeout=30)
    assert other.status_code == 403
    # ... and its account is closed to users, who reach image bytes only through the API
    user = {"X-Auth-Token": image_service.token()}
    assert requests.get(store.storage_url, headers=user, timeout=30).status_code == 403
    # the all-in-one's default users are still there beside it
    for user_name, key in (("admin:admin", "admin"), ("test2:tester2", "testing2")):
        assert image_service.token(user_name, key)


def test_large_image_is_an_slo_of_segments(image_service: ImageService) -> None:
    """10 MiB with 4 MiB segments: 3 segments + an SLO manifest the real middleware serves."""
    token = image_service.token()
    headers = {"X-Auth-Token": token}
    data = os.urandom(10 * MIB + 5)
    image_id = _create(image_service, token, "segmented")
    url = f"{image_service.image_url}/v2/images/{image_id}/file"
    resp = requests.put(url, data=data, timeout=120,  # declared Content-Length > segment
                        headers={**headers, "Content-Type": "application/octet-stream"})
    assert resp.status_code == 204, resp.text
    image = _show(image_service, token, image_id)
    assert image["status"] == "active" and image["size"] == len(data)
    assert image["checksum"] == hashlib.md5(data).hexdigest()
    assert image["os_hash_value"] == hashlib.sha512(data).hexdigest()

    store = image_service.store()
    container, seg_container = "glance_AUTH_test", "glance_AUTH_test_segments"
    stored = sorted(store.objects_of(image_id))
    # one object for this upload attempt, <image id>/<attempt>, and its segments
    name = stored[0].split("/", 1)[1]
    assert name.startswith(f"{image_id}/") and name.count("/") == 1
    assert stored == [
        f"{container}/{name}",
        *(f"{seg_container}/{name}/{n:08d}" for n in (1, 2, 3)),
    ]
    head = store.head(container, name)
    assert head.headers.get("X-Static-Large-Object", "").lower() == "true"
    assert int(head.headers["Content-Length"]) == len(data)
    manifest = store.get(container, name, **{"multipart-manifest": "get"}).json()
    assert [seg["bytes"] for seg in manifest] == [4 * MIB, 4 * MIB, 2 * MIB + 5]
    # the real SLO middleware assembles the segments, including a range across two
    assert store.get(container, name).content == data
    via_slo = requests.get(f"{store.storage_url}/{container}/{name}", timeout=60,
                           headers={**store.headers, "Range": f"bytes={4 * MIB - 2}-{4 * MIB + 1}"})
    assert via_slo.status_code == 206 and via_slo.content == data[4 * MIB - 2 : 4 * MIB + 2]

    # the image API's own download: whole (with Content-MD5) and ranges over boundaries
    full = requests.get(url, headers=headers, timeout=60)
    assert full.status_code == 200 and full.content == data
    assert full.headers["Content-MD5"] == hashlib.md5(data).hexdigest()
    for start, end in ((4 * MIB - 1, 4 * MIB), (3 * MIB, 9 * MIB), (0, len(data) - 1)):
        part = requests.get(url, headers={**headers, "Range": f"bytes={start}-{end}"},
                            timeout=60)
        assert part.status_code == 206, part.text
        assert part.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
        assert part.content == data[start : end + 1]

    assert requests.delete(f"{image_service.image_url}/v2/images/{image_id}", headers=headers,
                           timeout=60).status_code == 204
    assert store.objects_of(image_id) == []  # manifest AND segments are gone


def test_chunked_upload_is_segmented_and_deleted(image_service: ImageService) -> None:
    """glanceclient sends chunked bodies (no declared size): segments are still used."""
    glance = glanceclient.Client("2", endpoint=image_service.image_url,
                                 token=image_service.token())
    data = os.urandom(9 * MIB)
    img = glance.images.create(name="chunked", disk_format="raw", container_format="bare")
    glance.images.upload(img.id, io.BytesIO(data))
    store = image_service.store()
    names = store.objects_of(img.id)
    assert len([n for n in names if "_segments/" in n]) == 3
    assert b"".join(glance.images.data(img.id)) == data
    glance.images.delete(img.id)
    assert store.objects_of(img.id) == []


def _start_upload(service: ImageService, token: str, image_id: str, declared: int | None
                  ) -> socket.socket:
    url = urlparse(f"{service.image_url}/v2/images/{image_id}/file")
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    length = (f"Content-Length: {declared}\r\n" if declared is not None
              else "Transfer-Encoding: chunked\r\n")
    sock.sendall((f"PUT {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                  f"X-Auth-Token: {token}\r\n"
                  f"Content-Type: application/octet-stream\r\n{length}\r\n").encode())
    return sock


def _send(sock: socket.socket, data: bytes, chunked: bool) -> None:
    if chunked:
        sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    else:
        sock.sendall(data)


@pytest.mark.parametrize("declared", [3 * MIB, 12 * MIB, None],
                         ids=["single-object", "segmented", "chunked-segmented"])
def test_client_disconnect_leaves_queued_and_no_bytes(image_service: ImageService,
                                                      declared: int | None) -> None:
    token = image_service.token()
    image_id = _create(image_service, token, "truncated")
    store = image_service.store()
    sock = _start_upload(image_service, token, image_id, declared)
    try:
        if declared is not None and declared <= image_service.segment_size:
            _send(sock, os.urandom(MIB), chunked=False)
            assert _wait_for(lambda: _show(image_service, token, image_id)["status"] == "saving")
        else:
            # one whole segment, then part of the next: segment 1 is really stored ...
            for _ in range(6):
                _send(sock, os.urandom(MIB), chunked=declared is None)
            assert _wait_for(lambda: any(
                n.startswith("glance_AUTH_test_segments/") and n.endswith("/00000001")
                for n in store.objects_of(image_id))), \
                "the first segment never reached the store"
    finally:
        sock.close()  # ... when the client hangs up mid-upload
    assert _wait_for(lambda: _show(image_service, token, image_id)["status"] == "queued")
    image = _show(image_service, token, image_id)
    assert image["size"] is None and image["checksum"] is None
    assert _wait_for(lambda: store.objects_of(image_id) == []), store.objects_of(image_id)
    # and the image takes a complete upload afterwards
    data = os.urandom(5 * MIB)
    ok = requests.put(f"{image_service.image_url}/v2/images/{image_id}/file", data=data,
                      timeout=120, headers={"X-Auth-Token": token,
                                            "Content-Type": "application/octet-stream"})
    assert ok.status_code == 204, ok.text
    assert _show(image_service, token, image_id)["checksum"] == hashlib.md5(data).hexdigest()
    assert requests.delete(f"{image_service.image_url}/v2/images/{image_id}", timeout=60,
                           headers={"X-Auth-Token": token}).status_code == 204
    assert store.objects_of(image_id) == []


def test_refused_segmented_upload_leaves_no_segments(image_service: ImageService) -> None:
    """A checksum mismatch found only at the end, after 3 segments were stored."""
    token = image_service.token()
    image_id = _create(image_service, token, "bad-md5")
    data = os.urandom(9 * MIB)
    resp = requests.put(f"{image_service.image_url}/v2/images/{image_id}/file", data=data,
                        timeout=120, headers={"X-Auth-Token": token, "Content-MD5": "0" * 32,
                                              "Content-Type": "application/octet-stream"})
    assert resp.status_code == 400 and "Checksum" in resp.text
    assert _show(image_service, token, image_id)["status"] == "queued"
    store: StoreView = image_service.store()
    assert store.objects_of(image_id) == []
    requests.delete(f"{image_service.image_url}/v2/images/{image_id}", timeout=60,
                    headers={"X-Auth-Token": token})


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_refusal_found_mid_stream_is_400_not_500(image_service: ImageService,
                                                   chunked: bool) -> None:
    """Bytes that are not the declared disk format, found while they stream into the
    store: the refusal raised inside the body the store client sends used to come back
    wrapped in the client's own error, and the upload answered 500."""
    token = image_service.token()
    resp = requests.post(f"{image_service.image_url}/v2/images", timeout=30,
                         headers={"X-Auth-Token": token},
                         json={"name": "not-qcow2", "disk_format": "qcow2",
                               "container_format": "bare"})
    image_id = resp.json()["id"]
    data = os.urandom(3 * MIB if not chunked else 9 * MIB)
    body = iter([data[i:i + MIB] for i in range(0, len(data), MIB)]) if chunked else data
    resp = requests.put(f"{image_service.image_url}/v2/images/{image_id}/file", data=body,
                        timeout=120, headers={"X-Auth-Token": token,
                                              "Content-Type": "application/octet-stream"})
    assert resp.status_code == 400, resp.text
    assert _show(image_service, token, image_id)["status"] == "queued"
    assert image_service.store().objects_of(image_id) == []


def test_a_segment_changed_behind_the_service_never_downloads_as_complete(
        image_service: ImageService) -> None:
    """The stored segment list has each segment's size and md5; a segment overwritten
    with other bytes (same size, or not) cuts the download instead of ending it cleanly
    with the wrong bytes under the right Content-Length."""
    token = image_service.token()
    image_id = _create(image_service, token, "tampered")
    data = os.urandom(9 * MIB)
    assert requests.put(f"{image_service.image_url}/v2/images/{image_id}/file", data=data,
                        timeout=120, headers={"X-Auth-Token": token,
                                              "Content-Type": "application/octet-stream"}
                        ).status_code == 204
    store = image_service.store()
    segments = sorted(n for n in store.objects_of(image_id) if "_segments/" in n)
    container, name = segments[1].split("/", 1)
    url = f"{store.storage_url}/{container}/{name}"
    for replacement in (os.urandom(4 * MIB), os.urandom(2 * MIB)):
        assert requests.put(url, data=replacement, headers=store.headers,
                            timeout=60).status_code == 201
        got = b""
        with pytest.raises(requests.exceptions.RequestException):
            with requests.get(f"{image_service.image_url}/v2/images/{image_id}/file",
                              headers={"X-Auth-Token": token}, timeout=60,
                              stream=True) as resp:
                assert resp.status_code == 200
                for chunk in resp.iter_content(MIB):
                    got += chunk
        assert len(got) < len(data)
    requests.delete(f"{image_service.image_url}/v2/images/{image_id}", timeout=60,
                    headers={"X-Auth-Token": token})
