"""What names a storage node device in logs, error limits and per-peer state.

Kept apart from the HTTP client so that daemons which never load aiohttp (the
object replicator speaks its own keep-alive HTTP) share the one spelling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def node_key(node: Mapping[str, Any]) -> str:
    """A stable identity of a node device: ``ip:port/device``."""
    return f"{node['ip']}:{node['port']}/{node['device']}"


def host_port(ip: str, port: int | str) -> str:
    """``ip:port`` as an HTTP Host or an update target names it (IPv6 in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def update_target_headers(prefix: str, partition: int | str,
                          nodes: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``X-<prefix>-Host/-Device/-Partition``: the database replicas (``prefix``
    "Container" or "Account") a backend write must update after it succeeds."""
    return {
        f"X-{prefix}-Host": ",".join(f"{n['ip']}:{n['port']}" for n in nodes),
        f"X-{prefix}-Device": ",".join(n["device"] for n in nodes),
        f"X-{prefix}-Partition": str(partition),
    }
