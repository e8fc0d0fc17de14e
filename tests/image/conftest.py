"""Fixtures for the image API tests: a running image service and tokens for it.

The image service under test is the one `swiftlike serve` mounts at /image on the real
cluster (fixture `swift_cluster`). Only while the real proxy cannot start yet do we fall
back to a standalone image app in front of `fake_swift` (set SWIFTLIKE_IMAGE_FAKE=1 to
force the fallback).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from aiohttp import web

from tests.cluster_harness import free_port


@dataclass
class ImageService:
    """Where the image API is, and how to log in to the object store behind it."""

    image_url: str  # e.g. http://127.0.0.1:8080/image
    auth_url: str

    def token(self, user: str = "test:tester", key: str = "testing") -> str:
        resp = requests.get(self.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.headers["X-Auth-Token"]


class _ThreadLoop:
    """Runs aiohttp apps on an event loop in a background thread (tests use sync clients)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def serve(self, app: web.Application, port: int) -> None:
        async def start() -> None:
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners.append(runner)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)

    def close(self) -> None:
        async def stop() -> None:
            for runner in reversed(self.runners):
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _real_cluster_available() -> bool:
    if os.environ.get("SWIFTLIKE_IMAGE_FAKE") == "1":
        return False
    return importlib.util.find_spec("swiftlike.proxy.server") is not None


def start_fake_image_service(data_dir: Path, segment_size: int = 4 * 1024 * 1024
                             ) -> tuple[ImageService, _ThreadLoop]:
    from swiftlike.image.server import make_root_app
    from tests.image.fake_swift import make_fake_swift

    loop = _ThreadLoop()
    swift_port, image_port = free_port(), free_port()
    loop.serve(make_fake_swift(data_dir / "objects"), swift_port)
    base = f"http://127.0.0.1:{swift_port}"
    conf = {"image": {"object_store_url": base, "registry": str(data_dir / "images.sqlite"),
                      "store_user": "admin:admin", "store_key": "admin",
                      "segment_size": segment_size}}
    loop.serve(make_root_app(conf), image_port)
    return ImageService(f"http://127.0.0.1:{image_port}/image", f"{base}/auth/v1.0"), loop


@pytest.fixture(scope="session")
def image_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ImageService]:
    if _real_cluster_available():
        cluster = request.getfixturevalue("swift_cluster")
        yield ImageService(cluster.image_url, cluster.auth_url)
        return
    service, loop = start_fake_image_service(tmp_path_factory.mktemp("image-fake"))
    try:
        yield service
    finally:
        loop.close()
