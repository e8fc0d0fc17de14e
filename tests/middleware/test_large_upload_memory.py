"""A 1 GiB segmented upload and download keep the proxy's memory flat (slow test).

Segments stream through the proxy chunk by chunk on upload, and the SLO and DLO
middlewares stream them back one segment request at a time, so the proxy worker's
peak RSS (VmHWM) must not grow with the object size. Run with
``SWIFTLIKE_SLOW_TESTS=1 pytest -m slow tests/middleware/test_large_upload_memory.py``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

GIB = 1024**3
MAX_GROWTH = 300 * 1024 * 1024


def proxy_pids(root_pid: int) -> list[int]:
    """The `swiftlike proxy` worker processes below the serve process."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"proxy" in cmd:
                found.append(child)
    return found


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def write_file(path: Path, size: int) -> str:
    digest = hashlib.md5()
    block = os.urandom(4 * 1024 * 1024)
    with path.open("wb") as out:
        for i in range(size // len(block)):
            chunk = block[:8] + i.to_bytes(8, "big") + block[16:]  # no two blocks alike
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as src:
        while chunk := src.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SWIFTLIKE_SLOW_TESTS"),
                    reason="1 GiB transfer: set SWIFTLIKE_SLOW_TESTS=1 to run")
@pytest.mark.parametrize("use_slo", [True, False], ids=["slo", "dlo"])
def test_one_gib_upload_download_flat_memory(swift_cluster, unique_name, tmp_path, use_slo):
    pids = proxy_pids(swift_cluster.process.pid)
    assert pids, "no proxy worker found"
    before = {pid: peak_rss(pid) for pid in pids}
    src = tmp_path / "big.bin"
    expected = write_file(src, GIB)
    auth = ["swift", "-A", swift_cluster.auth_url, "-U", swift_cluster.user,
            "-K", swift_cluster.key]
    upload = [*auth, "upload", "--segment-size", "100M", "--object-name", "big.bin"]
    if use_slo:
        upload.append("--use-slo")
    subprocess.run([*upload, unique_name, str(src)], check=True, timeout=900,
                   capture_output=True)
    src.unlink()
    out = tmp_path / "back.bin"
    subprocess.run([*auth, "download", unique_name, "big.bin", "-o", str(out)], check=True,
                   timeout=900, capture_output=True)
    assert out.stat().st_size == GIB
    assert file_md5(out) == expected
    for pid in pids:
        growth = peak_rss(pid) - before[pid]
        assert growth < MAX_GROWTH, f"proxy {pid} peak RSS grew by {growth >> 20} MiB"
