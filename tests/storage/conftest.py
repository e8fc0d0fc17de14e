"""Fixtures: a real storage node (its own HTTP server) on a free 127.0.0.1 port, with temp
device dirs. ``SWIFTLIKE_NODE_HTTP=aiohttp`` serves the same node with aiohttp's server."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from swiftlike.storage.server import make_app, start_node_server


@dataclass
class RunningNode:
    base: str
    port: int
    devices: str
    session: aiohttp.ClientSession
    conf: dict

    def url(self, path: str) -> str:
        return self.base + path


def make_conf(devices: str, **node: object) -> dict:
    return {"cluster": {"hash_path_prefix": "pre", "hash_path_suffix": "suf"},
            "node": {"devices": devices, "fsync": True, "container_update_timeout": 1.0,
                     "account_update_interval": 0.2, **node}}


async def start_node(conf: dict) -> tuple[web.AppRunner, int]:
    if os.environ.get("SWIFTLIKE_NODE_HTTP", "lean") == "lean":
        running = await start_node_server(conf, "127.0.0.1", 0)
        return running, running.port  # type: ignore[return-value]
    runner = web.AppRunner(make_app(conf))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest.fixture
async def node_factory(tmp_path) -> AsyncIterator[Callable]:
    """Start nodes on demand; every runner and session is closed after the test."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def factory(name: str = "node", **node_conf: object) -> RunningNode:
        devices = tmp_path / name
        for device in ("sda", "sdb"):
            os.makedirs(devices / device, exist_ok=True)
        conf = make_conf(str(devices), **node_conf)
        runner, port = await start_node(conf)
        runners.append(runner)
        session = aiohttp.ClientSession(auto_decompress=False)
        sessions.append(session)
        return RunningNode(f"http://127.0.0.1:{port}", port, str(devices), session, conf)

    yield factory
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def node(node_factory) -> RunningNode:
    return await node_factory()


class Clock:
    """Strictly increasing X-Timestamps (10 us apart), as a proxy would issue them."""

    def __init__(self) -> None:
        self.last = time.time()

    def __call__(self) -> str:
        self.last = max(self.last + 0.00001, time.time())
        return f"{self.last:.5f}"


@pytest.fixture
def ts() -> Clock:
    return Clock()
