"""Shared info-cache invalidation between proxy workers (swiftlike/proxy/info_generations.py).

The end-to-end test runs two proxy apps (two "workers") over one cluster and one
counters file, and a third without the file to show what the file buys: a quota set
through one worker binds the next write through another at once, where a worker
without it keeps using its cached "no quota" answer.
"""

from __future__ import annotations

import multiprocessing

import aiohttp
import pytest
from aiohttp import web

from swiftlike.proxy.info_generations import SLOTS, InfoGenerations
from swiftlike.proxy.mw_util import InfoCache
from swiftlike.proxy.pipeline import DEFAULT_PIPELINE, SwiftRequest, SwiftResponse
from tests.cluster_harness import free_port
from tests.proxy.cluster import start_cluster, stop_cluster


def test_counters_are_shared_through_the_file(tmp_path) -> None:
    path = str(tmp_path / "gens")
    first, second = InfoGenerations(path), InfoGenerations(path)
    try:
        before = second.current("AUTH_a", "c")
        first.bump("AUTH_a", "c")
        assert second.current("AUTH_a", "c") == before + 1
        assert second.current("AUTH_a") == 0  # the account has its own counter
        assert 0 <= InfoGenerations.slot("AUTH_a", "c") < SLOTS
    finally:
        first.close()
        second.close()


def test_counters_without_a_file_live_in_the_process() -> None:
    gens = InfoGenerations()
    gens.bump("AUTH_a")
    gens.bump("AUTH_a")
    assert gens.current("AUTH_a") == 2
    gens.close()


def _bump_many(path: str, times: int) -> None:
    gens = InfoGenerations(path)
    for _ in range(times):
        gens.bump("AUTH_a", "c")
    gens.close()


def test_concurrent_bumps_from_processes_are_never_lost(tmp_path) -> None:
    path = str(tmp_path / "gens")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump_many, args=(path, 3000)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    gens = InfoGenerations(path)
    assert gens.current("AUTH_a", "c") == 9000
    gens.close()


async def test_info_cache_refetches_after_a_bump() -> None:
    heads: list[str] = []

    async def app(req: SwiftRequest) -> SwiftResponse:
        heads.append(req.path)
        return SwiftResponse(204, {"X-Container-Meta-Quota-Count": str(len(heads))}, b"")

    gens = InfoGenerations()
    cache = InfoCache(app, ttl=60.0, source="T", generations=gens)
    req = SwiftRequest("PUT", "/v1/AUTH_a/c/o")
    assert (await cache.container(req, "AUTH_a", "c"))["meta"]["quota-count"] == "1"
    assert (await cache.container(req, "AUTH_a", "c"))["meta"]["quota-count"] == "1"
    gens.bump("AUTH_a", "c")
    assert (await cache.container(req, "AUTH_a", "c"))["meta"]["quota-count"] == "2"
    gens.bump("AUTH_a")  # another name's change leaves this entry alone
    assert (await cache.container(req, "AUTH_a", "c"))["meta"]["quota-count"] == "2"
    assert heads == ["/v1/AUTH_a/c", "/v1/AUTH_a/c"]


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    port = free_port()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.asyncio(loop_scope="function")
async def test_quota_set_through_one_worker_binds_the_other_at_once(tmp_path) -> None:
    from swiftlike.proxy.server import make_app

    gens_file = str(tmp_path / "proxy-info-generations")
    (tmp_path / "c").mkdir()
    cluster = await start_cluster(tmp_path / "c", proxy_conf={
        "pipeline": DEFAULT_PIPELINE, "info_generations_file": gens_file})
    # a cache that outlives the test: only the shared counters can end it
    cluster.conf["container_quotas"] = {"info_cache_seconds": 300.0}
    other_conf = {**cluster.conf}
    lone_conf = {**cluster.conf, "proxy": {k: v for k, v in cluster.conf["proxy"].items()
                                           if k != "info_generations_file"}}
    other_runner, other_url = await _serve(make_app(other_conf))
    lone_runner, lone_url = await _serve(make_app(lone_conf))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(cluster.auth_url, headers={
                    "X-Auth-User": "test:tester", "X-Auth-Key": "testing"}) as resp:
                assert resp.status == 200, await resp.text()
                token = resp.headers["X-Auth-Token"]
                path = resp.headers["X-Storage-Url"].split(str(cluster.proxy_port), 1)[1]
            auth = {"X-Auth-Token": token}

            async def put(base: str, name: str) -> int:
                async with http.put(f"{base}{path}/box/{name}", data=b"x", headers=auth) as r:
                    await r.read()
                    return r.status

            async with http.put(f"{cluster.url}{path}/box", headers=auth) as resp:
                assert resp.status == 201
            # both other workers cache "box has no quota"
            assert await put(other_url, "a") == 201
            assert await put(lone_url, "b") == 201
            async with http.post(f"{cluster.url}{path}/box", headers={
                    **auth, "X-Container-Meta-Quota-Count": "2"}) as resp:
                assert resp.status == 204
            assert await put(other_url, "c") == 413  # saw the change through the file
            assert await put(lone_url, "d") == 201  # still on its cached answer
            async with http.get(f"{cluster.url}{path}/box", headers=auth) as resp:
                assert (await resp.text()).split() == ["a", "b", "d"]
    finally:
        await other_runner.cleanup()
        await lone_runner.cleanup()
        await stop_cluster(cluster)


@pytest.mark.asyncio(loop_scope="function")
async def test_versioning_enabled_through_one_worker_applies_in_the_other(tmp_path) -> None:
    from swiftlike.proxy.server import make_app

    (tmp_path / "c").mkdir()
    cluster = await start_cluster(tmp_path / "c", proxy_conf={
        "pipeline": DEFAULT_PIPELINE,
        "info_generations_file": str(tmp_path / "proxy-info-generations")})
    cluster.conf["object_versioning"] = {"info_cache_seconds": 300.0}
    other_runner, other_url = await _serve(make_app({**cluster.conf}))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(cluster.auth_url, headers={
                    "X-Auth-User": "test:tester", "X-Auth-Key": "testing"}) as resp:
                token = resp.headers["X-Auth-Token"]
                path = resp.headers["X-Storage-Url"].split(str(cluster.proxy_port), 1)[1]
            auth = {"X-Auth-Token": token}
            async with http.put(f"{cluster.url}{path}/docs", headers=auth) as resp:
                assert resp.status == 201
            for body in (b"draft", b"first"):  # the other worker caches "unversioned"
                async with http.put(f"{other_url}{path}/docs/report", data=body,
                                    headers=auth) as resp:
                    assert resp.status == 201
            async with http.post(f"{cluster.url}{path}/docs", headers={
                    **auth, "X-Versions-Enabled": "true"}) as resp:
                assert resp.status == 204
            for body in (b"second", b"third"):
                async with http.put(f"{other_url}{path}/docs/report", data=body,
                                    headers=auth) as resp:
                    assert resp.status == 201
            async with http.get(f"{cluster.url}{path}/docs", params={
                    "versions": "", "format": "json"}, headers=auth) as resp:
                assert resp.status == 200
                rows = await resp.json()
            # "first" (kept as the null version), "second" and "third": the writes after
            # the POST were versioned although this worker had cached the old setting
            assert [r["name"] for r in rows] == ["report"] * 3
            async with http.get(f"{other_url}{path}/docs/report", headers=auth) as resp:
                assert await resp.read() == b"third"
    finally:
        await other_runner.cleanup()
        await stop_cluster(cluster)
