"""``GET /recon/cluster[/<what>]`` on the proxy: every node's daemon stats in one answer.

The proxy asks each storage node of the ring (``GET /recon/<what>`` over HTTP; the proxy
never reads a node's disk) concurrently, and sums the numeric counters. ``<what>`` is
replication (default), db_replication, auditor, updater, expirer or reaper. Unreachable nodes are
listed under ``unreachable``, so an operator sees them instead of silently low totals.
It sits after tempauth in the default pipeline and answers only reseller admins (401
without a valid token, 403 for anyone else): node addresses and error counts are
operator information.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from ring import Ring
from swiftlike.common.config import hash_salts
from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse

WHATS = ("replication", "db_replication", "auditor", "updater", "expirer", "reaper")


async def gather_cluster_recon(ring: Ring, session: aiohttp.ClientSession, what: str,
                               per_node_timeout: float = 5.0) -> dict[str, Any]:
    """Ask every node of the ring for ``/recon/<what>`` and merge the answers."""
    hosts = sorted({(d["ip"], int(d["port"])) for d in ring.devs if d})

    async def one(ip: str, port: int) -> tuple[str, Any]:
        key = f"{ip}:{port}"
        try:
            async with session.get(f"http://{ip}:{port}/recon/{what}",
                                   timeout=aiohttp.ClientTimeout(total=per_node_timeout)) as resp:
                if resp.status != 200:
                    return key, None
                return key, await resp.json()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return key, None

    answers = await asyncio.gather(*(one(ip, port) for ip, port in hosts))
    totals: dict[str, float] = {}
    nodes, unreachable = {}, []
    for key, body in answers:
        if not isinstance(body, dict):
            unreachable.append(key)
            continue
        nodes[key] = body
        for name, value in (body.get("totals") or {}).items():
            if isinstance(value, (int, float)):
                totals[name] = totals.get(name, 0) + value
    return {"what": what, "totals": totals, "nodes": nodes, "unreachable": unreachable}


def passes_through(req: SwiftRequest) -> bool:
    """Only ``/recon/cluster`` reads are answered here (see pipeline.Bypass)."""
    return not req.path.startswith("/recon/cluster") or req.method not in ("GET", "HEAD")


def make_middleware(app: Handler, conf: dict) -> Handler:
    ring_path = conf.get("cluster", {}).get("ring")
    prefix, suffix = hash_salts(conf)
    state: dict[str, Any] = {}

    async def recon_cluster(req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await app(req)
        identity = req.environ.get("swift.identity")
        if not identity:
            return SwiftResponse(401, {"Content-Type": "text/plain"},
                                 b"Unauthorized: a reseller admin token is required\n")
        if not identity.get("reseller_admin"):
            return SwiftResponse(403, {"Content-Type": "text/plain"},
                                 b"Forbidden: only reseller admins may read cluster recon\n")
        what = req.path[len("/recon/cluster"):].strip("/") or "replication"
        if what not in WHATS:
            return SwiftResponse(404, {"Content-Type": "text/plain"},
                                 f"unknown recon item {what!r}\n".encode())
        if not ring_path:
            return SwiftResponse(503, {"Content-Type": "text/plain"}, b"no ring configured\n")
        if "ring" not in state:
            state["ring"] = Ring(ring_path, hash_prefix=prefix, hash_suffix=suffix)
        session = state.get("session")
        if session is None or session.closed:
            session = state["session"] = aiohttp.ClientSession()
        body = json.dumps(await gather_cluster_recon(state["ring"], session, what)).encode()
        return SwiftResponse(200, {"Content-Type": "application/json"}, body)

    return recon_cluster
