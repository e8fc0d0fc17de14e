"""Load generator for any Swift-API endpoint (ours or OpenStack Swift), v1 auth.

Why it is built this way: on a small machine the client easily becomes the bottleneck,
so the load runs in several client processes (``--procs``), each with its own uvloop
event loop and ``--concurrency`` requests in flight.  The processes live for the whole
run and receive one phase at a time, so process start-up never lands inside a measured
phase.  Every phase is bounded by a count and, optionally, by a time limit.

The same code measures every server, which is the whole point: ``vs_swift.py`` imports
:func:`run_load` and runs it against OpenStack Swift and against swiftlike in turn.

Run ``python benchmarks/load.py --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_client import CLIENTS, swift_auth, swift_request
from benchmarks.load_stats import (
    ServerCpu,
    format_table,
    summarize_phase,
)

KIB = 1024
MIB = 1024 * 1024

SMALL_PHASES = ("small-put", "small-get", "small-head", "small-list", "mixed", "small-delete")
LARGE_PHASES = ("large-put", "large-get", "large-delete")
ALL_PHASES = SMALL_PHASES + LARGE_PHASES
#: phases that only read the small objects: any number of them can run over the objects
#: the PUT phase stored, so their length is set apart (read_count, read_seconds)
READ_PHASES = ("small-get", "small-head")


@dataclasses.dataclass
class LoadConfig:
    """Everything one load run needs; plain data so it pickles to the client processes."""

    auth_url: str
    user: str = "test:tester"
    key: str = "testing"
    procs: int = 2
    concurrency: int = 16
    count: int = 400
    large_count: int = 8
    duration: float | None = None
    #: small GET and HEAD phases: their own op count and time limit when set (see
    #: READ_PHASES), so a fast server's read phases last long enough to average over
    #: the machine's moods instead of sampling one moment
    read_count: int | None = None
    read_seconds: float | None = None
    small_size: int = 4 * KIB
    large_size: int = 16 * MIB
    phases: tuple[str, ...] = ALL_PHASES
    server_pids: tuple[int, ...] = ()
    list_limit: int = 1000
    timeout: float = 120.0
    cleanup: bool = True
    #: HTTP client of the measured requests: "raw" (benchmarks/raw_http.py) or "aiohttp"
    client: str = "raw"

    def __post_init__(self) -> None:
        unknown = [p for p in self.phases if p not in ALL_PHASES]
        if unknown:
            raise ValueError(f"unknown phases {unknown}; known: {', '.join(ALL_PHASES)}")
        if self.procs < 1 or self.concurrency < 1:
            raise ValueError("procs and concurrency must be at least 1")
        if self.count < 1 or self.large_count < 1:
            raise ValueError("count and large_count must be at least 1")
        if self.read_count is not None and self.read_count < 1:
            raise ValueError("read_count must be at least 1")
        if self.read_seconds is not None and self.read_seconds <= 0:
            raise ValueError("read_seconds must be positive")
        if self.client not in CLIENTS:
            raise ValueError(f"unknown client {self.client!r}; known: {', '.join(CLIENTS)}")


@dataclasses.dataclass
class PhaseSpec:
    """What one client process does in one phase (sent over a pipe)."""

    name: str
    op: str                       # put | get | head | delete | list | mixed
    container: str
    size: int
    count: int                    # total ops of the phase over all processes
    duration: float | None
    names: list[str]              # objects the phase reads or deletes
    name_prefix: str              # prefix for objects the phase creates


def _share(count: int, procs: int, index: int) -> range:
    """Indices of a phase's operations that process ``index`` runs."""
    return range(index, count, procs)


def _client_main(
    conn: multiprocessing.connection.Connection, index: int, procs: int,
    storage_url: str, token: str, concurrency: int, timeout: float, client: str,
) -> None:
    """Entry point of one client process: run phases sent by the parent until told to stop."""
    import asyncio

    import uvloop

    from benchmarks.load_client import ClientPhaseRunner

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    runner = ClientPhaseRunner(storage_url, token, concurrency, timeout, index, client)
    loop.run_until_complete(runner.open())
    try:
        while True:
            message = conn.recv()
            if message is None:
                break
            spec: PhaseSpec = message
            ops = list(_share(spec.count, procs, index))
            result = loop.run_until_complete(runner.run_phase(spec, ops))
            conn.send(result)
    finally:
        loop.run_until_complete(runner.close())
        loop.close()
        conn.close()


class ClientPool:
    """A fixed set of client processes, each fed one phase at a time."""

    def __init__(self, procs: int, storage_url: str, token: str, concurrency: int,
                 timeout: float, client: str = "raw") -> None:
        # fork: importers need no __main__ guard, and the parent holds no event loop here.
        ctx = multiprocessing.get_context("fork")
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[Any] = []
        for index in range(procs):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_client_main,
                args=(child_end, index, procs, storage_url, token, concurrency, timeout,
                      client),
                daemon=True,
            )
            proc.start()
            child_end.close()
            self._conns.append(parent_end)
            self._procs.append(proc)

    def run(self, spec: PhaseSpec) -> list[dict[str, Any]]:
        for conn in self._conns:
            conn.send(spec)
        results = []
        for conn, proc in zip(self._conns, self._procs, strict=True):
            try:
                results.append(conn.recv())
            except EOFError as exc:
                raise RuntimeError(f"client process {proc.pid} died "
                                   f"(exit code {proc.exitcode})") from exc
        return results

    def pids(self) -> list[int]:
        """PIDs of the client processes (their CPU per op is reported too)."""
        return [proc.pid for proc in self._procs]

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _phase_specs(config: LoadConfig, run_id: str) -> dict[str, tuple[str, str, int, int]]:
    """(op, container, object size, op count) for every phase name."""
    small_c = f"bench-small-{run_id}"
    large_c = f"bench-large-{run_id}"
    reads = config.read_count or config.count
    return {
        "small-put": ("put", small_c, config.small_size, config.count),
        "small-get": ("get", small_c, config.small_size, reads),
        "small-head": ("head", small_c, config.small_size, reads),
        "small-list": ("list", small_c, 0, max(1, config.count // 10)),
        "mixed": ("mixed", small_c, config.small_size, config.count),
        "small-delete": ("delete", small_c, config.small_size, config.count),
        "large-put": ("put", large_c, config.large_size, config.large_count),
        "large-get": ("get", large_c, config.large_size, config.large_count),
        "large-delete": ("delete", large_c, config.large_size, config.large_count),
    }


def _phase_duration(config: LoadConfig, name: str) -> float | None:
    """The time limit of one phase: read_seconds for the read phases when set."""
    if name in READ_PHASES and config.read_seconds is not None:
        return config.read_seconds
    return config.duration


def _ordered_phases(config: LoadConfig) -> list[str]:
    """Selected phases in run order, plus the PUT phase that reads and deletes need.

    A PUT phase added only to provide objects runs but is not reported.
    """
    wanted = set(config.phases)
    if wanted & (set(SMALL_PHASES) - {"small-put"}):
        wanted.add("small-put")
    if wanted & (set(LARGE_PHASES) - {"large-put"}):
        wanted.add("large-put")
    return [p for p in ALL_PHASES if p in wanted]


def _nothing_stored(count: int) -> dict[str, Any]:
    """Raw result of a phase that could not run because the PUT phase stored nothing."""
    now = time.monotonic()
    return {"ok": 0, "errors": count, "latencies": [], "bytes": 0, "start": now, "end": now,
            "created": [], "deleted": [], "op_counts": {},
            "error_samples": ["not run: every PUT of the preceding PUT phase failed"]}


def run_load(config: LoadConfig, progress: Any = None) -> dict[str, Any]:
    """Run every selected phase against ``config.auth_url`` and return the results.

    The result is plain JSON-able data: ``{"config": ..., "phases": [...]}`` with one
    entry per phase (ops, errors, ops/s, MiB/s, latency percentiles in ms, server CPU).
    ``progress``, when given, is called with a line of text after each phase.
    """
    storage_url, token = swift_auth(config.auth_url, config.user, config.key, config.timeout)
    run_id = uuid.uuid4().hex[:10]
    specs = _phase_specs(config, run_id)
    order = _ordered_phases(config)
    containers = sorted({specs[p][1] for p in order})
    for container in containers:
        status, _, _ = swift_request("PUT", f"{storage_url}/{container}", token, config.timeout)
        if status not in (201, 202):
            raise RuntimeError(f"cannot create container {container}: HTTP {status}")
    cpu = ServerCpu(config.server_pids)
    pool = ClientPool(config.procs, storage_url, token, config.concurrency, config.timeout,
                      config.client)
    # The load client's own CPU per op: on a small shared machine it competes with the
    # server for the same cores, so it is reported beside the server's.
    client_cpu = ServerCpu(pool.pids())
    phases: list[dict[str, Any]] = []
    live: dict[str, list[str]] = {c: [] for c in containers}
    try:
        for name in order:
            op, container, size, count = specs[name]
            spec = PhaseSpec(
                name=name, op=op, container=container, size=size, count=count,
                duration=_phase_duration(config, name), names=list(live[container]),
                name_prefix=f"{name}-",
            )
            if op in ("get", "head", "delete", "mixed") and not spec.names:
                # Every PUT failed: this phase cannot run, and counts as all errors.
                summary = summarize_phase(name, size, [_nothing_stored(spec.count)], None)
                if name in config.phases:
                    phases.append(summary)
                continue
            if op == "delete":
                # Each delete takes a distinct object: never more deletes than objects.
                spec.count = min(count, len(spec.names))
            before = cpu.sample()
            client_before = client_cpu.sample()
            parts = pool.run(spec)
            cpu_seconds = cpu.delta(before)
            client_seconds = client_cpu.delta(client_before)
            summary = summarize_phase(name, size, parts, cpu_seconds)
            summary["client_cpu_s"] = client_seconds
            summary["client_cpu_ms_per_op"] = (
                None if client_seconds is None or not summary["ops"]
                else client_seconds * 1000.0 / summary["ops"])
            for part in parts:
                live[container].extend(part["created"])
                removed = set(part["deleted"])
                if removed:
                    live[container] = [n for n in live[container] if n not in removed]
            if name in config.phases:
                phases.append(summary)
                if progress is not None:
                    progress(f"{name}: {summary['ops']} ops, {summary['ops_per_s']:.1f} ops/s, "
                             f"{summary['errors']} errors")
        if config.cleanup:
            for container, names in live.items():
                leftovers = PhaseSpec(
                    name="cleanup", op="delete", container=container, size=0,
                    count=len(names), duration=None, names=list(names), name_prefix="",
                )
                if names:
                    pool.run(leftovers)
                swift_request("DELETE", f"{storage_url}/{container}", token, config.timeout)
    finally:
        pool.close()
    return {"config": dataclasses.asdict(config), "storage_url": storage_url,
            "phases": phases}


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Swift-API load generator (v1 auth): PUT/GET/HEAD/DELETE/listing of "
                    "small and large objects plus a mixed workload.")
    parser.add_argument("--auth", default="http://127.0.0.1:8080/auth/v1.0",
                        help="v1 auth URL (default %(default)s)")
    parser.add_argument("--user", default="test:tester")
    parser.add_argument("--key", default="testing")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight per client process")
    parser.add_argument("--count", type=int, default=400, help="ops per small-object phase")
    parser.add_argument("--large-count", type=int, default=8, help="ops per large-object phase")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop each phase after this many seconds (count still bounds it)")
    parser.add_argument("--read-count", type=int, default=None,
                        help="ops per small GET and HEAD phase (default: --count); they "
                             "cycle over the objects the PUT phase stored")
    parser.add_argument("--read-seconds", type=float, default=None,
                        help="stop the small GET and HEAD phases after this many seconds "
                             "(instead of --duration)")
    parser.add_argument("--small-size", type=int, default=4 * KIB)
    parser.add_argument("--large-size", type=int, default=16 * MIB)
    parser.add_argument("--phases", default=",".join(ALL_PHASES),
                        help="comma-separated subset of: " + ",".join(ALL_PHASES))
    parser.add_argument("--server-pids", default="",
                        help="comma-separated server PIDs; their CPU (with all descendants) "
                             "is measured per phase")
    parser.add_argument("--client", choices=CLIENTS, default="raw",
                        help="HTTP client of the measured requests: raw (a minimal keep-alive "
                             "client, benchmarks/raw_http.py) or aiohttp (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    pids = tuple(int(p) for p in args.server_pids.split(",") if p.strip())
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    return LoadConfig(
        auth_url=args.auth, user=args.user, key=args.key, procs=args.procs,
        concurrency=args.concurrency, count=args.count, large_count=args.large_count,
        duration=args.duration, read_count=args.read_count, read_seconds=args.read_seconds,
        small_size=args.small_size, large_size=args.large_size,
        phases=phases, server_pids=pids, client=args.client,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"load.py: {exc}", file=sys.stderr)
        return 2
    log = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    results = run_load(config, progress=log)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        print(format_table(results["phases"], title=f"load against {config.auth_url}"))
        print("load client cpu ms/op: " + ", ".join(
            f"{p['phase']} {p['client_cpu_ms_per_op']:.2f}" for p in results["phases"]
            if p.get("client_cpu_ms_per_op") is not None))
    return 1 if any(p["errors"] for p in results["phases"]) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
