"""Recon: what the node's background daemons did, as JSON on ``GET /recon/<what>``.

Each daemon writes one small stats file per device after every pass
(``<device>/.recon/<daemon>.json``, written atomically), so the numbers survive a restart
and any process on the node (the daemons may run in their own process) can serve them.
``GET /recon/replication|db_replication|auditor|updater|expirer|reaper`` merges the devices' files;
``GET /recon/diskusage`` reports each device's space.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from aiohttp import web

from swiftlike.storage.node import StorageNode, error_response
from swiftlike.storage.recon_files import RECON_DIR, load_device_stats, save_device_stats

__all__ = ["RECON_DIR", "handle_recon", "load_device_stats", "node_daemon_stats",
           "save_device_stats"]

DAEMON_NAMES = ("replication", "db_replication", "auditor", "updater", "expirer", "reaper")


def node_daemon_stats(devices_root: str, daemon: str) -> dict[str, Any]:
    """Per-device stats plus totals of the numeric counters across devices."""
    devices: dict[str, Any] = {}
    totals: dict[str, float] = {}
    last_pass = 0.0
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(devices_root)):
            stats = load_device_stats(os.path.join(devices_root, name), daemon)
            if stats is None:
                continue
            devices[name] = stats
            for key, value in stats.get("counts", {}).items():
                if isinstance(value, (int, float)):
                    totals[key] = totals.get(key, 0) + value
            last_pass = max(last_pass, float(stats.get("finished", 0) or 0))
    return {"daemon": daemon, "devices": devices, "totals": totals,
            "last_pass_finished": last_pass or None}


def disk_usage(devices_root: str) -> list[dict[str, Any]]:
    usage = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(devices_root)):
            path = os.path.join(devices_root, name)
            if not os.path.isdir(path):
                continue
            st = os.statvfs(path)
            size = st.f_blocks * st.f_frsize
            avail = st.f_bavail * st.f_frsize
            usage.append({"device": name, "mounted": True, "size": size,
                          "avail": avail, "used": size - st.f_bfree * st.f_frsize})
    return usage


async def handle_recon(request: web.Request, node: StorageNode) -> web.Response:
    """``GET /recon/<what>`` for the node's dispatcher."""
    what = request.path.rstrip("/").rsplit("/", 1)[-1]
    if request.method not in ("GET", "HEAD"):
        return error_response(405, "recon is read-only")
    if what in DAEMON_NAMES:
        body = await node.run_io(node_daemon_stats, node.devices, what)
    elif what == "diskusage":
        body = await node.run_io(disk_usage, node.devices)
    else:
        return error_response(404, f"unknown recon item {what!r}; try one of "
                                   f"{', '.join((*DAEMON_NAMES, 'diskusage'))}")
    return web.json_response(body)
