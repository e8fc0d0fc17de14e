"""Start a real `swiftlike serve` cluster in a subprocess for end-to-end tests.

Tests talk to it exactly as users do: over loopback sockets, with python-swiftclient,
boto3, openstacksdk or raw aiohttp. The harness only picks free ports and a temp dir,
and starts stand-in servers for tests that script a node's answers.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from swiftlike.common.ports import free_port as _pick_port
from swiftlike.common.ports import free_ports as _pick_ports


def free_port() -> int:
    """A loopback port free right now, below the ephemeral range (see common.ports)."""
    return _pick_port("127.0.0.1")


def free_ports(count: int) -> list[int]:
    """``count`` different loopback ports (one cluster's servers must never share one)."""
    return _pick_ports(count, "127.0.0.1")


async def serve_handler(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> tuple[web.AppRunner, int]:
    """A stand-in server answering every path with ``handler`` on a free loopback port:
    for tests that script what a node answers. Clean up with ``runner.cleanup()``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@dataclass
class ServedCluster:
    """A running all-in-one cluster and how to reach it."""

    data_dir: Path
    port: int
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"{self.proxy_url}/auth/v1.0"

    @property
    def image_url(self) -> str:
        return f"{self.proxy_url}/image"

    user: str = "test:tester"
    key: str = "testing"

    def storage_url(self, account: str = "test") -> str:
        return f"{self.proxy_url}/v1/AUTH_{account}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def start_served_cluster(
    data_dir: Path, *, nodes: int = 4, workers: int = 1, extra_args: list[str] | None = None,
    ready_within: float = 90.0,
) -> ServedCluster:
    """Run `swiftlike serve` on a free port and wait for its ready line."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "swiftlike", "serve", "--data-dir", str(data_dir),
        "--port", str(port), "--nodes", str(nodes), "--workers", str(workers),
        *(extra_args or []),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    cluster = ServedCluster(data_dir=data_dir, port=port, process=proc)
    deadline = time.monotonic() + ready_within
    assert proc.stdout is not None
    # read the pipe itself, not through proc.stdout: a readline there may take several
    # lines into its buffer, where select() no longer sees them, and the ready line could
    # wait in it unread until the deadline
    fd = proc.stdout.fileno()
    partial = b""
    seen_ready = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            rest = partial.decode(errors="replace") + proc.stdout.read()
            raise RuntimeError(
                f"swiftlike serve exited with {proc.returncode}:\n"
                + "".join(cluster.output) + rest
            )
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        partial += os.read(fd, 65536)
        *lines, partial = partial.split(b"\n")
        for line in lines:
            cluster.output.append(line.decode(errors="replace") + "\n")
            if seen_ready:
                # the line after the ready line: the swift command to try (the server
                # writes both at once)
                if partial:
                    cluster.output.append(partial.decode(errors="replace"))
                _drain_in_background(proc, cluster.output)
                return cluster
            seen_ready = line.startswith(b"swiftlike ready")
    cluster.stop()
    raise RuntimeError("swiftlike serve did not become ready:\n" + "".join(cluster.output))


def _drain_in_background(proc: subprocess.Popen[str], sink: list[str]) -> None:
    """Keep reading the server's output so a full pipe never blocks it."""
    import threading

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.append(line)
            if len(sink) > 5000:
                del sink[:1000]

    threading.Thread(target=drain, daemon=True).start()
