"""The web-download import: a stand-alone image service fetches image bytes from a real
HTTP server on loopback (the standard library's), filtered as the operator configured.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from swiftlike.image.api_tasks import INTERRUPTED
from swiftlike.image.web_download import UriFilter, UriRefused
from tests.image.conftest import (
    ImageProcess,
    ImageService,
    auth_headers,
    create_image,
    show_image,
    start_service,
)
from tests.image.web_source import Source


@pytest.fixture
def service(service_conf: Path, tmp_path: Path, source: Source) -> Iterator[ImageProcess]:
    """An image service allowed to fetch from the source's port only (and never from
    the host named in the disallowed list)."""
    proc = start_service(service_conf, tmp_path, "web", extra=(
        f"web_download_allowed_ports = [{source.port}]\n"
        'web_download_disallowed_hosts = ["localhost"]\n'
        "web_download_timeout = 5.0\n"))
    yield proc
    proc.stop()


def _create(url: str, token: str, disk_format: str = "raw") -> str:
    return create_image(url, token, "web", disk_format)["id"]


def _import(url: str, token: str, image_id: str, uri: object) -> requests.Response:
    method: dict[str, object] = {"name": "web-download"}
    if uri is not None:
        method["uri"] = uri
    return requests.post(f"{url}/v2/images/{image_id}/import", headers=auth_headers(token),
                         json={"method": method}, timeout=30)


def _settle(url: str, token: str, image_id: str, seconds: float = 30) -> dict:
    """The image once it has left ``importing``."""
    deadline = time.monotonic() + seconds
    image = show_image(url, token, image_id)
    while image["status"] == "importing" and time.monotonic() < deadline:
        time.sleep(0.1)
        image = show_image(url, token, image_id)
    return image


def test_openstacksdk_imports_an_image_from_a_url(
        service: ImageProcess, source: Source, image_service: ImageService) -> None:
    """openstacksdk's own web-download call; 3 MiB over 256 KiB segments, through a
    redirect the filter allows."""
    import openstack

    token = image_service.token()
    data = os.urandom(3 * 1024 * 1024 + 7)
    source.routes["/cirros.img"] = (200, {}, data)
    source.routes["/latest"] = (302, {"Location": "/cirros.img"}, b"")
    conn = openstack.connection.Connection(
        auth_type="admin_token", auth={"endpoint": service.url, "token": token},
        image_endpoint_override=service.url)
    image = conn.image.create_image(name="from-the-web", disk_format="raw",
                                    container_format="bare")
    conn.image.import_image(image, method="web-download", uri=source.url("/latest"))
    done = _settle(service.url, token, image.id)
    assert done["status"] == "active", done
    assert done["size"] == len(data)
    assert done["checksum"] == hashlib.md5(data).hexdigest()
    assert done["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert conn.image.download_image(conn.image.get_image(image.id)).content == data
    conn.image.delete_image(image.id)
    assert image_service.store().objects_of(image.id) == []


def test_import_info_offers_web_download(service: ImageProcess,
                                         image_service: ImageService) -> None:
    info = requests.get(f"{service.url}/v2/info/import", timeout=30,
                        headers=auth_headers(image_service.token())).json()
    assert "web-download" in info["import-methods"]["value"]


@pytest.mark.parametrize("uri", [
    None, "", 42,
    "file:///etc/passwd",
    "ftp://127.0.0.1/image",
    "http://127.0.0.1:1/image",          # a port not allowed
    "http://localhost:{port}/image",     # a host disallowed
    "http://LOCALHOST.:{port}/image",    # ... spelled otherwise
    "http://\u24dbocalhost:{port}/image",  # a circled l, which IDNA maps to l
    "http://127.0.0.1:99999/image",      # no such port
    "http:///image",                     # no host
])
def test_a_refused_uri_is_400_and_the_image_stays_queued(
        service: ImageProcess, source: Source, image_service: ImageService,
        uri: object) -> None:
    token = image_service.token()
    image_id = _create(service.url, token)
    if isinstance(uri, str):
        uri = uri.format(port=source.port)
    resp = _import(service.url, token, image_id, uri)
    assert resp.status_code == 400, resp.text
    assert show_image(service.url, token, image_id)["status"] == "queued"


@pytest.mark.parametrize("route", ["missing", "redirect-out", "cut", "not-qcow2"])
def test_a_failed_download_returns_the_image_to_queued_with_no_bytes(
        service: ImageProcess, source: Source, image_service: ImageService,
        route: str) -> None:
    """The source answers 404, redirects to a port the filter refuses, cuts the body
    after 1 MiB of a declared 2 MiB, or sends bytes that are not the declared format."""
    token = image_service.token()
    source.routes["/redirect-out"] = (302, {"Location": "http://127.0.0.1:1/x"}, b"")
    source.routes["/cut"] = (200, {"Content-Length": str(2 * 1024 * 1024)},
                             os.urandom(1024 * 1024))
    source.routes["/not-qcow2"] = (200, {}, os.urandom(600 * 1024))
    image_id = _create(service.url, token,
                       disk_format="qcow2" if route == "not-qcow2" else "raw")
    resp = _import(service.url, token, image_id, source.url(f"/{route}"))
    assert resp.status_code == 202, resp.text
    image = _settle(service.url, token, image_id)
    assert image["status"] == "queued", image
    assert image["size"] is None and image["checksum"] is None
    assert image_service.store().objects_of(image_id) == []
    if route == "not-qcow2":
        return
    # and it takes a good import afterwards
    data = os.urandom(1000)
    source.routes["/good"] = (200, {}, data)
    assert _import(service.url, token, image_id, source.url("/good")).status_code == 202
    image = _settle(service.url, token, image_id)
    assert image["status"] == "active" and image["checksum"] == hashlib.md5(data).hexdigest()


def test_only_a_queued_image_can_be_imported_from_the_web(
        service: ImageProcess, source: Source, image_service: ImageService) -> None:
    token = image_service.token()
    image_id = _create(service.url, token)
    source.routes["/a"] = (200, {}, b"a" * 1000)
    assert _import(service.url, token, image_id, source.url("/a")).status_code == 202
    assert _settle(service.url, token, image_id)["status"] == "active"
    resp = _import(service.url, token, image_id, source.url("/a"))
    assert resp.status_code == 409, resp.text
    # Glance's order: the state is judged before the URI
    resp = _import(service.url, token, image_id, "file:///etc/passwd")
    assert resp.status_code == 409 and "active" in resp.text, resp.text
    # and the formats before the URI too (409, as Glance)
    bare = requests.post(f"{service.url}/v2/images", headers=auth_headers(token), timeout=30,
                         json={"name": "no-formats"}).json()["id"]
    resp = _import(service.url, token, bare, None)
    assert resp.status_code == 409 and "needs to be set" in resp.text, resp.text
    checksum = show_image(service.url, token, image_id)["checksum"]
    assert checksum == hashlib.md5(b"a" * 1000).hexdigest()


def test_the_filter_rules() -> None:
    """Glance's rule: an allowed list, when set, is the whole rule; otherwise the
    disallowed list; hosts compared in one spelling."""
    default = UriFilter()
    assert default.check("https://images.example.com/a.img")
    assert default.check("http://images.example.com:80/a.img")
    for refused in ("http://images.example.com:8080/a.img", "gopher://h/a",
                    "https://h:0x50/a"):
        with pytest.raises(UriRefused):
            default.check(refused)
    no_loopback = UriFilter(allowed_ports=(), disallowed_hosts=("127.0.0.1", "::1"))
    assert no_loopback.check("http://10.0.0.1:8080/a")
    for refused in ("http://127.0.0.1/a", "http://[::1]/a", "http://[0:0::1]:81/a",
                    "http://127.0.0.1./a"):
        with pytest.raises(UriRefused):
            no_loopback.check(refused)
    punycode = UriFilter(allowed_ports=(), disallowed_hosts=("xn--bcher-kva.example",))
    for refused in ("http://b\u00fccher.example/a", "http://xn--bcher-kva.example/a"):
        with pytest.raises(UriRefused):
            punycode.check(refused)
    only = UriFilter(allowed_hosts=("images.example.com",), disallowed_hosts=("x",))
    assert only.check("http://IMAGES.example.com/a")
    with pytest.raises(UriRefused):
        only.check("http://other.example.com/a")


def test_a_host_refused_by_address_is_refused_however_spelled(
        service_conf: Path, tmp_path: Path, source: Source,
        image_service: ImageService) -> None:
    """With loopback refused as a network, the spellings that reach it are refused:
    an IPv4-mapped IPv6 address and the unspecified address at once (400), a name
    that only resolves to it (``0x7f000001``, which getaddrinfo reads as a number)
    when the download connects; the source never sees a request."""
    token = image_service.token()
    proc = start_service(service_conf, tmp_path, "no-loopback", extra=(
        f"web_download_allowed_ports = [{source.port}]\n"
        'web_download_disallowed_hosts = ["127.0.0.0/8", "::1"]\n'))
    try:
        source.routes["/img"] = (200, {}, b"secret" * 100)
        for host in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "0.0.0.0",
                     "[::]", "\uff11\uff12\uff17.0.0.1"):
            image_id = _create(proc.url, token)
            resp = _import(proc.url, token, image_id, f"http://{host}:{source.port}/img")
            assert resp.status_code == 400, (host, resp.text)
        image_id = _create(proc.url, token)
        resp = _import(proc.url, token, image_id, f"http://0x7f000001:{source.port}/img")
        assert resp.status_code == 202, resp.text
        image = _settle(proc.url, token, image_id)
        assert image["status"] == "queued", image
        assert source.seen == []
        assert image_service.store().objects_of(image_id) == []
    finally:
        proc.stop()


def test_deleting_the_image_stops_its_download(
        service: ImageProcess, source: Source, image_service: ImageService) -> None:
    """The download learns at its next lease renewal (every 0.5 s here) that its image
    is gone: it stops reading the source and deletes what it wrote, instead of going
    on for as long as the source lasts."""
    token = image_service.token()
    store = image_service.store()
    image_id = _create(service.url, token)
    assert _import(service.url, token, image_id, source.url("/slow")).status_code == 202
    deadline = time.monotonic() + 20
    while not store.objects_of(image_id):  # a 256 KiB segment of it is stored
        assert time.monotonic() < deadline, "no segment reached the store"
        time.sleep(0.1)
    assert requests.delete(f"{service.url}/v2/images/{image_id}", timeout=30,
                           headers=auth_headers(token)).status_code == 204
    assert source.cut.wait(10), "the download went on reading the source"
    deadline = time.monotonic() + 10
    while store.objects_of(image_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.objects_of(image_id) == []


def test_stopping_the_service_mid_download_requeues_the_image(
        service: ImageProcess, source: Source, image_service: ImageService,
        tmp_path: Path) -> None:
    """SIGTERM: the download is cancelled, its bytes deleted and the image back to
    queued before the process exits, not left importing until its lease runs out."""
    token = image_service.token()
    store = image_service.store()
    image_id = _create(service.url, token)
    assert _import(service.url, token, image_id, source.url("/slow")).status_code == 202
    deadline = time.monotonic() + 20
    while not store.objects_of(image_id):
        assert time.monotonic() < deadline, "no segment reached the store"
        time.sleep(0.1)
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started < 15
    registry = sqlite3.connect(tmp_path / "images.sqlite")
    try:
        status, = registry.execute("SELECT status FROM images WHERE id = ?",
                                   (image_id,)).fetchone()
        task = registry.execute("SELECT status, message FROM tasks WHERE image_id = ?",
                                (image_id,)).fetchall()
    finally:
        registry.close()
    assert status == "queued"
    assert store.objects_of(image_id) == []
    assert task == [("failure", INTERRUPTED)]  # its task does not stay "processing"


def test_a_declared_size_over_the_cap_is_refused_before_the_body(
        service_conf: Path, tmp_path: Path, source: Source,
        image_service: ImageService) -> None:
    token = image_service.token()
    proc = start_service(service_conf, tmp_path, "capped", extra=(
        f"web_download_allowed_ports = [{source.port}]\nimage_size_cap = 100000\n"))
    try:
        # declares a petabyte; sends 1 MiB and hangs up (if it were read)
        source.routes["/huge"] = (200, {"Content-Length": str(10**15)},
                                  os.urandom(1024 * 1024))
        image_id = _create(proc.url, token)
        assert _import(proc.url, token, image_id, source.url("/huge")).status_code == 202
        assert _settle(proc.url, token, image_id)["status"] == "queued"
        assert image_service.store().objects_of(image_id) == []
        log = (tmp_path / "capped.log").read_text()
        assert "declares 1000000000000000 bytes" in log
    finally:
        proc.stop()
