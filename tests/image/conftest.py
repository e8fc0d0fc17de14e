"""Fixtures for the image API tests: the image service of the real all-in-one cluster.

The service under test is the one `swiftlike serve` mounts at /image on the proxy port
(session fixture `swift_cluster`, started with 4 MiB image segments). Nothing is faked:
image bytes go through the real proxy, SLO middleware and storage nodes, and tests
check what is (or is not) left in the store by listing the image service's own account
with the credentials `swiftlike serve` generated for it in cluster.toml.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import requests

from tests.cluster_harness import ServedCluster
from tests.conftest import IMAGE_SEGMENT_SIZE


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
