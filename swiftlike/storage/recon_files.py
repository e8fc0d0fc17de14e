"""The per-device daemon stats files behind recon: ``<device>/.recon/<daemon>.json``.

Kept apart from :mod:`swiftlike.storage.recon` (the HTTP side, which needs aiohttp) so a
short-lived daemon process can save its pass stats without importing a web framework.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

RECON_DIR = ".recon"


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
