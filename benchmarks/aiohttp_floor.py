"""How fast small GETs could be on this machine with aiohttp alone, next to swiftlike's.

Why: the small-GET target is a ratio against Swift, and on a 2-core machine the
rate is bounded by CPU per GET. This runs the smallest possible version of our
architecture (an aiohttp "proxy" that forwards each GET with one ClientSession
request to one of ``--nodes`` aiohttp "nodes" answering 4 KiB from memory, as many
proxy processes as swiftlike has workers) and then ``swiftlike serve --no-daemons``
on the same machine, drives both with the same keep-alive aiohttp client, alternating,
and prints GETs/s and swiftlike's share of the bare stack. What is left above
swiftlike's share is all the headroom that trimming our own code can buy.

    python benchmarks/aiohttp_floor.py                 # 2 rounds of 5 s each
    python benchmarks/aiohttp_floor.py --seconds 10 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_client import swift_auth
from swiftlike.common.ports import free_port, free_ports

BODY = os.urandom(4096)


async def _node(port: int) -> None:
    async def get(_request: web.Request) -> web.Response:
        return web.Response(body=BODY, headers={"ETag": "bare", "X-Timestamp": "1"})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", get)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def _proxy(port: int, *node_ports: int) -> None:
    session = aiohttp.ClientSession(auto_decompress=False)
    urls = [f"http://127.0.0.1:{node_port}/d1/1/a/c/o" for node_port in node_ports]
    pick = random.Random().choice

    async def get(_request: web.Request) -> web.Response:
        # a random node per GET, as swiftlike's shuffled reads over the replicas
        async with session.get(pick(urls)) as resp:
            body = await resp.read()
            return web.Response(body=body, headers={"ETag": resp.headers["ETag"]})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", get)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
    await asyncio.Event().wait()


def _serve_forever(role: str, *ports: int) -> None:
    uvloop.run(_node(*ports) if role == "node" else _proxy(*ports))


async def _client(url: str, token: str | None, seconds: float, concurrency: int) -> int:
    headers = {"X-Auth-Token": token} if token else {}
    done = 0
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(headers=headers) as session:
        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                async with session.get(url) as resp:
                    body = await resp.read()
                    if resp.status != 200 or len(body) != len(BODY):
                        raise RuntimeError(f"GET {url}: {resp.status}, {len(body)} bytes")
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def _client_process(url: str, token: str | None, seconds: float, concurrency: int,
                    out: multiprocessing.Queue) -> None:
    out.put(uvloop.run(_client(url, token, seconds, concurrency)))


def measure(url: str, token: str | None, seconds: float, procs: int,
            concurrency: int) -> float:
    """GETs per second of ``url`` from ``procs`` client processes."""
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    clients = [ctx.Process(target=_client_process, args=(url, token, seconds, concurrency,
                                                         out)) for _ in range(procs)]
    for proc in clients:
        proc.start()
    # each client counts over its own ``seconds`` (process start-up is not measured)
    total = sum(out.get(timeout=seconds + 120) for _ in clients)
    for proc in clients:
        proc.join(30)
    return total / seconds


def _wait_port(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class BareStack:
    def __init__(self, workers: int, nodes: int) -> None:
        self.workers = workers
        self.port, *self.node_ports = free_ports(1 + nodes)
        self.procs: list[multiprocessing.process.BaseProcess] = []

    def __enter__(self) -> BareStack:
        ctx = multiprocessing.get_context("spawn")
        self.procs += [ctx.Process(target=_serve_forever, args=("node", node_port))
                       for node_port in self.node_ports]
        self.procs += [ctx.Process(target=_serve_forever,
                                   args=("proxy", self.port, *self.node_ports))
                       for _ in range(self.workers)]
        for proc in self.procs:
            proc.start()
        for node_port in self.node_ports:
            _wait_port(node_port)
        _wait_port(self.port)
        time.sleep(0.5)  # let every worker bind its reuse_port socket
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.join(10)


class Swiftlike:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="swiftlike-floor-")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Swiftlike:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swiftlike", "serve", "--data-dir", f"{self.dir}/data",
             "--port", str(self.port), "--workers", str(self.workers), "--no-daemons"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        storage, token = swift_auth(f"http://127.0.0.1:{self.port}/auth/v1.0",
                                    "test:tester", "testing", timeout=60)
        for method, path in (("PUT", "/floor"), ("PUT", "/floor/o")):
            req = urllib.request.Request(f"{storage}{path}", method=method,
                                         data=BODY if path.endswith("/o") else None,
                                         headers={"X-Auth-Token": token})
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
        self.url, self.token = f"{storage}/floor/o", token
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="bare/swiftlike alternations")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=16, help="GETs in flight/proc")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="proxy processes on both sides")
    parser.add_argument("--nodes", type=int, default=4,
                        help="bare node processes (swiftlike serve runs 4)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    bare: list[float] = []
    ours: list[float] = []
    for _ in range(args.rounds):
        with BareStack(args.workers, args.nodes) as stack:
            bare.append(measure(f"http://127.0.0.1:{stack.port}/v1/AUTH_test/floor/o", None,
                                args.seconds, args.procs, args.concurrency))
        with Swiftlike(args.workers) as cluster:
            ours.append(measure(cluster.url, cluster.token, args.seconds, args.procs,
                                args.concurrency))
    result = {"bare_get_per_s": bare, "swiftlike_get_per_s": ours,
              "share_of_bare": [o / b for o, b in zip(ours, bare, strict=True)],
              "settings": vars(args)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'round':>5}  {'bare aiohttp GET/s':>18}  {'swiftlike GET/s':>15}  share")
    for i, (b, o) in enumerate(zip(bare, ours, strict=True), 1):
        print(f"{i:>5}  {b:>18.0f}  {o:>15.0f}  {o / b:5.0%}")
    print(f"{'median':>5}  {statistics.median(bare):>18.0f}  {statistics.median(ours):>15.0f}"
          f"  {statistics.median(result['share_of_bare']):5.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
