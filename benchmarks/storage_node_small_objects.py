"""One storage node, straight to its HTTP API: its own server against aiohttp's, same run.

Usage: python benchmarks/storage_node_small_objects.py [--count 2000] [--large-count 8]
         [--concurrency 32] [--rounds 3] [--servers lean,aiohttp] [--no-fsync] [--json]

Each round starts a fresh node process per server kind (``[node] http_server``; a kind
ending in ``-buffered``, e.g. ``lean-buffered``, also sets ``[node] direct_io = false``), on a
free 127.0.0.1 port with a temp device, and drives it with aiohttp's client: PUT, GET
and HEAD of ``--count`` 4 KiB objects, then PUT of ``--large-count`` 16 MiB objects.
Kinds alternate within a round so drift on a noisy machine hits both. Per phase it
prints the median over rounds of requests/s and of the node's CPU ms per request
(utime+stime from /proc, via load_stats), and the ratio of the first kind to the second. Bounded by
the counts; no timing assertions (this is a measurement, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_stats import ServerCpu
from swiftlike.common.config import dump_toml
from swiftlike.common.ports import free_port

PHASES = ("small-put", "small-get", "small-head", "large-put")
SMALL = 4096
LARGE = 16 * 1024 * 1024


class NodeProcess:
    """``swiftlike node`` in its own process, with one device in a temp directory."""

    def __init__(self, kind: str, fsync: bool, root: str) -> None:
        self.port = free_port()
        devices = os.path.join(root, kind)
        os.makedirs(os.path.join(devices, "sda"))
        conf = os.path.join(root, f"{kind}.toml")
        with open(conf, "w") as fh:
            fh.write(dump_toml({
                "cluster": {"hash_path_prefix": "p", "hash_path_suffix": "s"},
                "node": {"devices": devices, "bind_ip": "127.0.0.1", "bind_port": self.port,
                         "fsync": fsync, "mount_check": False,
                         "http_server": kind.split("-")[0],
                         "direct_io": not kind.endswith("-buffered"),
                         "log_level": "WARNING"}}))
        self.proc = subprocess.Popen([sys.executable, "-m", "swiftlike", "node",
                                      "--config", conf])
        self.cpu = ServerCpu([self.proc.pid])

    async def ready(self, session: aiohttp.ClientSession, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/healthcheck") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}")
            await asyncio.sleep(0.1)
        raise TimeoutError("node did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _phase(session: aiohttp.ClientSession, node: NodeProcess, verb: str, names: list[str],
                 body: bytes | None, concurrency: int) -> dict[str, float]:
    base = f"http://127.0.0.1:{node.port}/sda/7/AUTH_b/c/"
    queue = list(reversed(names))
    expected = {"PUT": 201, "GET": 200, "HEAD": 200}[verb]

    async def worker() -> None:
        while queue:
            name = queue.pop()
            headers = {"X-Timestamp": f"{time.time():.5f}",
                       "Content-Type": "application/octet-stream"}
            async with session.request(verb, base + name, headers=headers, data=body) as r:
                data = await r.read()
                if r.status != expected or (verb == "GET" and len(data) != SMALL):
                    raise RuntimeError(f"{verb} {name}: {r.status}")

    cpu_before = node.cpu.sample()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = node.cpu.delta(cpu_before) or 0.0
    return {"per_s": len(names) / elapsed, "cpu_ms": 1000 * cpu / len(names)}


async def run_kind(kind: str, args: argparse.Namespace, root: str) -> dict[str, dict]:
    node = NodeProcess(kind, not args.no_fsync, root)
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await node.ready(session)
            small = [f"s{i}" for i in range(args.count)]
            large = [f"l{i}" for i in range(args.large_count)]
            body = os.urandom(SMALL)
            return {
                "small-put": await _phase(session, node, "PUT", small, body, args.concurrency),
                "small-get": await _phase(session, node, "GET", small, None, args.concurrency),
                "small-head": await _phase(session, node, "HEAD", small, None,
                                           args.concurrency),
                "large-put": await _phase(session, node, "PUT", large, os.urandom(LARGE),
                                          min(args.concurrency, 8)),
            }
    finally:
        node.stop()


def summarize(rounds: list[dict[str, dict]], kinds: list[str]) -> list[dict[str, Any]]:
    """Per phase and kind: medians over rounds; the ratio is of the first kind's rate to
    the second's (the median of per-round ratios)."""
    rows = []
    for phase in PHASES:
        row: dict[str, Any] = {"phase": phase}
        for kind in kinds:
            row[kind] = {
                "per_s": statistics.median(r[kind][phase]["per_s"] for r in rounds),
                "cpu_ms": statistics.median(r[kind][phase]["cpu_ms"] for r in rounds)}
        if len(kinds) == 2:
            row["ratio"] = statistics.median(
                r[kinds[0]][phase]["per_s"] / r[kinds[1]][phase]["per_s"] for r in rounds)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], kinds: list[str]) -> str:
    head = "phase       " + "".join(f" | {k + ' req/s':>14} | {k + ' cpu ms':>15}" for k in kinds)
    if len(kinds) == 2:
        head += f" | {kinds[0] + '/' + kinds[1]:>12}"
    lines = [head, "-" * len(head)]
    for row in rows:
        line = f"{row['phase']:<12}" + "".join(
            f" | {row[k]['per_s']:>14.1f} | {row[k]['cpu_ms']:>15.3f}" for k in kinds)
        if "ratio" in row:
            line += f" | {row['ratio']:>11.2f}x"
        lines.append(line)
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    rounds = []
    with tempfile.TemporaryDirectory() as root:
        for number in range(args.rounds):
            order = kinds if number % 2 == 0 else list(reversed(kinds))
            result = {}
            for kind in order:
                result[kind] = await run_kind(kind, args, os.path.join(root, f"r{number}"))
            rounds.append(result)
    return {"kinds": kinds, "rounds": rounds, "summary": summarize(rounds, kinds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="4 KiB objects per phase")
    parser.add_argument("--large-count", type=int, default=8, help="16 MiB PUTs per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default="lean,aiohttp",
                        help="[node] http_server kinds to compare, comma-separated; "
                             "a '-buffered' suffix turns [node] direct_io off")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"one storage node, {args.rounds} rounds, medians; fsync={not args.no_fsync}")
        print(format_table(result["summary"], result["kinds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
