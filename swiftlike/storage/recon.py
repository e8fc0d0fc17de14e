"""Recon: what the node's background daemons did, as JSON on ``GET /recon/<what>``.

Each daemon writes one small stats file per device after every pass
(``<device>/.recon/<daemon>.json``, written atomically), so the numbers survive a restart
and any process on the node (the daemons may run in their own process) can serve them.
``GET /recon/replication|db_replication|auditor|updater|expirer`` merges the devices' files;
``GET /recon/diskusage`` reports each device's space.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any

from aiohttp import web

from swiftlike.storage.node import StorageNode, error_response

RECON_DIR = ".recon"
DAEMON_NAMES = ("replication", "db_replication", "auditor", "updater", "expirer")


def save_device_stats(device_path: str, daemon: str, stats: dict[str, Any]) -> None:
    """Atomically replace one device's stats file for one daemon."""
    directory = os.path.join(device_path, RECON_DIR)
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, f"{daemon}.json")
    tmp = f"{final}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(stats, handle, sort_keys=True)
    os.rename(tmp, final)


def load_device_stats(device_path: str, daemon: str) -> dict[str, Any] | None:
    path = os.path.join(device_path, RECON_DIR, f"{daemon}.json")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
