"""Small-object (4 KiB) PUT/GET throughput of one storage node, straight to its HTTP API.

Usage: python benchmarks/storage_node_small_objects.py [--count 2000] [--concurrency 32]
         [--no-fsync]
Starts a node on a free 127.0.0.1 port with a temp device and reports requests/s.
Bounded by --count; no timing assertions (this is a measurement, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

import aiohttp
from aiohttp import web

from swiftlike.storage.server import make_app


async def run(count: int, concurrency: int, fsync: bool) -> None:
    with tempfile.TemporaryDirectory() as devices:
        os.makedirs(os.path.join(devices, "sda"))
        app = make_app({"cluster": {"hash_path_prefix": "p", "hash_path_suffix": "s"},
                        "node": {"devices": devices, "fsync": fsync}})
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}/sda/7/AUTH_b/c/"
        body = os.urandom(4096)
        queue: asyncio.Queue[int] = asyncio.Queue()
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            for verb in ("PUT", "GET"):
                for index in range(count):
                    queue.put_nowait(index)

                async def worker(verb: str = verb) -> None:
                    while not queue.empty():
                        index = queue.get_nowait()
                        headers = {"X-Timestamp": f"{time.time():.5f}",
                                   "Content-Type": "application/octet-stream"}
                        async with session.request(verb, f"{base}o{index}", headers=headers,
                                                   data=body if verb == "PUT" else None) as r:
                            await r.read()
                            assert r.status in (200, 201), r.status

                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                elapsed = time.perf_counter() - started
                print(f"{verb}: {count / elapsed:8.1f} req/s ({count} x 4 KiB, "
                      f"concurrency {concurrency}, fsync={fsync})")
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args.count, args.concurrency, not args.no_fsync))


if __name__ == "__main__":
    main()
