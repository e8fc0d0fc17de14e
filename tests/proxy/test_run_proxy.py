"""run_proxy: serves on its configured port with reuse_port (several workers, one port)."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
import pytest

from swiftlike.proxy.server import run_proxy
from tests.proxy.cluster import free_port, start_cluster, stop_cluster


@pytest.fixture
def restore_gc():
    """run_proxy tunes the collector of its process (gc_tuning): here that is pytest's."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


async def test_two_workers_share_a_port_and_accept_each_others_tokens(tmp_path, restore_gc):
    assert gc.get_freeze_count() == 0
    cluster = await start_cluster(tmp_path)
    port = free_port()
    conf = {**cluster.conf, "proxy": {**cluster.conf["proxy"], "bind_port": port}}
    workers = [asyncio.create_task(run_proxy(conf)) for _ in range(2)]
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            for _ in range(50):
                try:
                    async with s.get(url + "/healthcheck") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            async with s.get(url + "/auth/v1.0", headers={"X-Auth-User": "test:tester",
                                                          "X-Auth-Key": "testing"}) as r:
                token = r.headers["X-Auth-Token"]
                assert r.headers["X-Storage-Url"] == f"{url}/v1/AUTH_test"
            # the in-process proxy of the cluster is a third "worker": same secret
            async with s.put(cluster.url + "/v1/AUTH_test/shared",
                             headers={"X-Auth-Token": token}) as r:
                assert r.status in (201, 202)
            for _ in range(4):
                async with aiohttp.ClientSession() as fresh, fresh.head(
                        url + "/v1/AUTH_test/shared", headers={"X-Auth-Token": token}) as r:
                    assert r.status == 204
        assert gc.get_freeze_count() > 0  # the workers settled the collector once up
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await stop_cluster(cluster)
