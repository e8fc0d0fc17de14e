"""A minimal in-memory Swift endpoint for the load generator's own unit tests.

Only for testing benchmarks/load.py's bookkeeping (counts, errors, clean-up): the
real servers are measured by vs_swift.py.  It runs in a thread with its own loop
because run_load is synchronous and forks its client processes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

from aiohttp import web

TOKEN = "AUTH_tk_fake"


class FakeSwift:
    def __init__(self, fail_every_nth_get: int = 0) -> None:
        self.containers: dict[str, dict[str, bytes]] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.fail_every_nth_get = fail_every_nth_get
        self._gets = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth/v1.0"

    async def _auth(self, request: web.Request) -> web.Response:
        if (request.headers.get("X-Auth-User"), request.headers.get("X-Auth-Key")) != (
                "test:tester", "testing"):
            return web.Response(status=401)
        return web.Response(status=200, headers={
            "X-Storage-Url": f"http://127.0.0.1:{self.port}/v1/AUTH_test",
            "X-Auth-Token": TOKEN})

    async def _swift(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-Auth-Token") != TOKEN:
            return web.Response(status=401)
        parts = request.match_info["path"].split("/", 1)
        container = parts[0]
        obj = parts[1] if len(parts) > 1 else None
        kind = "object" if obj else "container"
        self.requests[(request.method, kind)] += 1
        if obj is None:
            return await self._container(request, container)
        store = self.containers.get(container)
        if store is None:
            return web.Response(status=404)
        if request.method == "PUT":
            store[obj] = await request.read()
            return web.Response(status=201)
        if obj not in store:
            return web.Response(status=404)
        if request.method == "GET":
            self._gets += 1
            if self.fail_every_nth_get and self._gets % self.fail_every_nth_get == 0:
                return web.Response(status=503)
            return web.Response(body=store[obj])
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(store[obj]))})
        if request.method == "DELETE":
            del store[obj]
            return web.Response(status=204)
        return web.Response(status=405)

    async def _container(self, request: web.Request, container: str) -> web.Response:
        if request.method == "PUT":
            created = container not in self.containers
            self.containers.setdefault(container, {})
            return web.Response(status=201 if created else 202)
        if container not in self.containers:
            return web.Response(status=404)
        if request.method == "GET":
            limit = int(request.query.get("limit", "10000"))
            rows = [{"name": n, "bytes": len(b)}
                    for n, b in sorted(self.containers[container].items())][:limit]
            return web.Response(body=json.dumps(rows), content_type="application/json")
        if request.method == "DELETE":
            if self.containers[container]:
                return web.Response(status=409)
            del self.containers[container]
            return web.Response(status=204)
        return web.Response(status=405)

    def start(self) -> None:
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_get("/auth/v1.0", self._auth)
            app.router.add_route("*", "/v1/AUTH_test/{path:.+}", self._swift)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            self._ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake swift did not start")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
