"""Picking a TCP port to listen on, for servers whose ports nobody configured.

``bind(0)`` hands out ports from the kernel's ephemeral range: the pool every outgoing
connection also takes its source port from. Between picking such a port and a server
binding it, a client connection on the same host can take it (seen as EADDRINUSE when a
cluster started beside a busy test run). Ports below that range are only ever taken by
explicit binds, so they are picked from there.
"""

from __future__ import annotations

import contextlib
import random
import socket


def ephemeral_range_start() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    return 32768


def free_port(host: str = "127.0.0.1", avoid: set[int] | None = None) -> int:
    """A port on ``host`` that was free a moment ago, below the ephemeral range."""
    avoid = avoid or set()
    low = ephemeral_range_start()
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.randrange(min(10000, low - 1000), low)
        if port not in avoid and port_is_free(host, port):
            return port
    for _ in range(100):  # nothing free below the range: let the kernel pick
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise RuntimeError("could not find a free port")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different ports, each free a moment ago: for the servers of one cluster,
    where two picks landing on the same port would leave one server unable to bind (and
    its clients talking to the other)."""
    picked: list[int] = []
    for _ in range(count):
        picked.append(free_port(host, set(picked)))
    return picked


def port_is_free(host: str, port: int) -> bool:
    """True if a listener could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket | None:
    """A listening TCP socket on ``host:port``; None when the port is taken.

    A supervisor holds it and hands it to the server process that accepts on it: a port
    checked free and bound later by another process can be taken in between (two
    clusters created at the same moment both chose 6201), and then one cluster's
    clients talk to the other's server. Inheritable, so ``pass_fds`` can pass it on.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        return None
    sock.set_inheritable(True)
    return sock
