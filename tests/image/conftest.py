"""Fixtures for the image API tests: the image service of the real all-in-one cluster.

The service under test is the one `swiftlike serve` mounts at /image on the proxy port
(session fixture `swift_cluster`, started with 4 MiB image segments). Nothing is faked:
image bytes go through the real proxy, SLO middleware and storage nodes, and tests
check what is (or is not) left in the store by listing the image service's own account
with the credentials `swiftlike serve` generated for it in cluster.toml.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.cluster_harness import ServedCluster, free_port
from tests.conftest import IMAGE_SEGMENT_SIZE
from tests.image.web_source import Source

#: segment size of the stand-alone services (``service_conf``)
SEGMENT = 256 * 1024


@dataclass
class ImageService:
    """Where the image API is, how to log in, and a view of the store behind it."""

    image_url: str  # e.g. http://127.0.0.1:8080/image
    auth_url: str
    store_user: str
    store_key: str
    segment_size: int

    def token(self, user: str = "test:tester", key: str = "testing") -> str:
        resp = requests.get(self.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.headers["X-Auth-Token"]

    def store(self) -> StoreView:
        """The object store as the image service sees it (its own account)."""
        resp = requests.get(self.auth_url, timeout=30, headers={
            "X-Auth-User": self.store_user, "X-Auth-Key": self.store_key})
        assert resp.status_code == 200, resp.text
        return StoreView(resp.headers["X-Storage-Url"], resp.headers["X-Auth-Token"])


@dataclass
class StoreView:
    """Plain Swift API calls on the image service's account, for checking its contents."""

    storage_url: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Auth-Token": self.token}

    def _listing(self, path: str) -> list[dict]:
        rows: list[dict] = []
        marker = ""
        while True:
            resp = requests.get(f"{self.storage_url}{path}", headers=self.headers, timeout=30,
                                params={"format": "json", "marker": marker})
            if resp.status_code == 404:
                return rows
            assert resp.status_code in (200, 204), resp.text
            page = resp.json() if resp.status_code == 200 else []
            if not page:
                return rows
            rows.extend(page)
            marker = page[-1]["name"]

    def containers(self) -> list[str]:
        return [row["name"] for row in self._listing("")]

    def objects(self, container: str) -> list[str]:
        return [row["name"] for row in self._listing(f"/{quote(container)}")]

    def objects_of(self, image_id: str) -> list[str]:
        """Every ``container/object`` in the whole account that belongs to ``image_id``."""
        return [f"{c}/{o}" for c in self.containers() for o in self.objects(c)
                if o == image_id or o.startswith(f"{image_id}/")]

    def get(self, container: str, name: str, **params: str) -> requests.Response:
        return requests.get(f"{self.storage_url}/{quote(container)}/{quote(name)}",
                            headers=self.headers, params=params or None, timeout=60)

    def head(self, container: str, name: str) -> requests.Response:
        return requests.head(f"{self.storage_url}/{quote(container)}/{quote(name)}",
                             headers=self.headers, timeout=30)


def cluster_image_conf(cluster: ServedCluster) -> dict:
    """The [image] table `swiftlike serve` wrote into the cluster's cluster.toml."""
    with (cluster.data_dir / "cluster.toml").open("rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="session")
def image_service(swift_cluster: ServedCluster) -> ImageService:
    conf = cluster_image_conf(swift_cluster)["image"]
    assert int(conf["segment_size"]) == IMAGE_SEGMENT_SIZE
    return ImageService(swift_cluster.image_url, swift_cluster.auth_url,
                        conf["store_user"], conf["store_key"], int(conf["segment_size"]))


class ImageProcess:
    """``swiftlike image`` on a free port, killed or stopped by the test."""

    def __init__(self, conf_path: Path, port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}/image"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "swiftlike", "image", "--config", str(conf_path)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/versions", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.1)
        raise AssertionError(f"image service did not start: {log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def service_conf(swift_cluster: ServedCluster, tmp_path: Path) -> Iterator[Path]:
    """A config for stand-alone image services sharing one registry: 1.5 s leases,
    sweeps every 0.3 s, 256 KiB segments."""
    image = dict(cluster_image_conf(swift_cluster)["image"])
    image.update(registry=str(tmp_path / "images.sqlite"), segment_size=SEGMENT,
                 upload_lease=1.5, sweep_interval=0.3,
                 object_store_url=swift_cluster.proxy_url)
    lines = ["[image]"]
    for key, value in image.items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, str)
                     else f'{key} = "{value}"')
    conf = tmp_path / "image.toml"
    conf.write_text("\n".join(lines) + "\n")
    yield conf


def start_service(conf: Path, tmp_path: Path, name: str, extra: str = "") -> ImageProcess:
    """A stand-alone ``swiftlike image`` with ``conf`` (plus ``extra`` lines of its
    [image] table) on a free port."""
    text = conf.read_text().replace("[image]\n", "")
    port = free_port()
    path = tmp_path / f"{name}.toml"
    path.write_text(f"[image]\nbind_port = {port}\n{extra}\n{text}")
    return ImageProcess(path, port, tmp_path / f"{name}.log")


def auth_headers(token: str, **extra: str) -> dict[str, str]:
    return {"X-Auth-Token": token, **extra}


def create_image(url: str, token: str, name: str, disk_format: str = "raw") -> dict:
    """A new image (queued, formats set) through the image API at ``url``."""
    resp = requests.post(f"{url}/v2/images", headers=auth_headers(token), timeout=30,
                         json={"name": name, "disk_format": disk_format,
                               "container_format": "bare"})
    assert resp.status_code == 201, resp.text
    return resp.json()


def show_image(url: str, token: str, image_id: str) -> dict:
    resp = requests.get(f"{url}/v2/images/{image_id}", headers=auth_headers(token),
                        timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture
def source() -> Iterator[Source]:
    """An HTTP server on loopback that web-download imports fetch from."""
    server = Source()
    yield server
    server.close()
