"""Stream a large image up and down through the image API of a real cluster, with flat memory.

Usage: python benchmarks/image_bench.py [--size-mib 2048] [--rss-limit-mib 200]
           [--segment-mib 200] [--keep-data]
   or: python benchmarks/image_bench.py --image-url URL --auth-url URL --pid PID [...]

By default it starts its own `swiftlike serve` (4 nodes, 3 replicas, 1 proxy worker)
in a temp dir, via tests.cluster_harness. The image API runs inside the proxy worker
processes, so those are the processes whose RSS is sampled (every 50 ms) while the
image streams up (chunked: the service does not know the size in advance, so it
segments) and back down; the run fails if any proxy worker grows by more than the
limit over its RSS after a small warm-up image. It also checks the downloaded bytes'
md5 and that deleting the image leaves no manifest or segment in the service account.
Storage-node RSS is reported too, for information.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
MIB = 1024 * 1024
BLOCK = os.urandom(MIB)


class RssSampler(threading.Thread):
    """Peak RSS of a set of processes, sampled in the background."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.base = {pid: p.memory_info().rss for pid, p in self.procs.items()}
        self.peak = dict(self.base)
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for pid, proc in self.procs.items():
                try:
                    self.peak[pid] = max(self.peak[pid], proc.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[int, float]:
        """Each process's growth in MiB (peak minus the RSS when sampling started)."""
        self._stop_event.set()
        self.join(5)
        return {pid: (self.peak[pid] - self.base[pid]) / MIB for pid in self.procs}


@dataclass
class BenchResult:
    size_mib: int
    upload_s: float
    download_s: float
    proxy_growth_mib: float  # the largest growth of any proxy worker
    node_growth_mib: float  # the largest growth of any storage node (information only)
    segments: int

    def summary(self) -> str:
        mib = self.size_mib
        return (f"upload {mib} MiB: {self.upload_s:.1f}s ({mib / self.upload_s:.0f} MiB/s); "
                f"download: {self.download_s:.1f}s ({mib / self.download_s:.0f} MiB/s); "
                f"{self.segments} segments; proxy worker RSS growth "
                f"{self.proxy_growth_mib:.0f} MiB; storage node RSS growth "
                f"{self.node_growth_mib:.0f} MiB")


def cluster_pids(serve_pid: int) -> tuple[list[int], list[int]]:
    """(proxy worker pids, storage node pids) among the children of `swiftlike serve`."""
    proxies, nodes = [], []
    for child in psutil.Process(serve_pid).children(recursive=True):
        cmd = child.cmdline()
        if "swiftlike" in cmd and "proxy" in cmd:
            proxies.append(child.pid)
        elif "swiftlike" in cmd and "node" in cmd:
            nodes.append(child.pid)
    return proxies, nodes


def _token(auth_url: str, user: str, key: str) -> tuple[str, str]:
    resp = requests.get(auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key}, timeout=30)
    resp.raise_for_status()
    return resp.headers["X-Auth-Token"], resp.headers["X-Storage-Url"]


def _stream_image(image_url: str, headers: dict[str, str], size_mib: int
                  ) -> tuple[str, float, float, str]:
    """Create, upload (chunked) and download one raw image; returns id, times, md5 match."""
    image = requests.post(f"{image_url}/v2/images", headers=headers, timeout=30, json={
        "name": "bench", "disk_format": "raw", "container_format": "bare"})
    assert image.status_code == 201, image.text
    image_id = image.json()["id"]
    sent = hashlib.md5()

    def body() -> Iterator[bytes]:
        for _ in range(size_mib):
            sent.update(BLOCK)
            yield BLOCK

    t0 = time.monotonic()
    resp = requests.put(f"{image_url}/v2/images/{image_id}/file", data=body(), timeout=600,
                        headers={**headers, "Content-Type": "application/octet-stream"})
    upload_s = time.monotonic() - t0
    assert resp.status_code == 204, resp.text
    got = hashlib.md5()
    t0 = time.monotonic()
    with requests.get(f"{image_url}/v2/images/{image_id}/file", headers=headers, stream=True,
                      timeout=600) as down:
        assert down.status_code == 200, down.text
        for chunk in down.iter_content(MIB):
            got.update(chunk)
    download_s = time.monotonic() - t0
    assert got.hexdigest() == sent.hexdigest(), "downloaded bytes differ from the upload"
    return image_id, upload_s, download_s, got.hexdigest()


def _service_objects(auth_url: str, conf: dict, image_id: str) -> list[str]:
    """Objects of ``image_id`` anywhere in the image service's account."""
    token, url = _token(auth_url, conf["store_user"], conf["store_key"])
    hdrs = {"X-Auth-Token": token}
    found = []
    for container in requests.get(url, headers=hdrs, params={"format": "json"},
                                  timeout=30).json():
        listing = requests.get(f"{url}/{container['name']}", headers=hdrs, timeout=30,
                               params={"format": "json", "prefix": image_id})
        found += [f"{container['name']}/{o['name']}" for o in listing.json()]
    return found


def run_bench(image_url: str, auth_url: str, proxy_pids: list[int], node_pids: list[int],
              size_mib: int, service_conf: dict | None = None) -> BenchResult:
    """Warm up, then stream ``size_mib`` up and down while sampling RSS; then clean up."""
    token, _ = _token(auth_url, "test:tester", "testing")
    headers = {"X-Auth-Token": token}
    warm_id, *_ = _stream_image(image_url, headers, 8)  # sessions, imports, buffers
    requests.delete(f"{image_url}/v2/images/{warm_id}", headers=headers, timeout=60)
    proxies, nodes = RssSampler(proxy_pids), RssSampler(node_pids)
    proxies.start()
    nodes.start()
    try:
        image_id, up, down, _md5 = _stream_image(image_url, headers, size_mib)
    finally:
        proxy_growth, node_growth = proxies.stop(), nodes.stop()
    segments = 0
    if service_conf is not None:
        segments = sum("_segments/" in n for n in _service_objects(auth_url, service_conf,
                                                                    image_id))
    resp = requests.delete(f"{image_url}/v2/images/{image_id}", headers=headers, timeout=600)
    assert resp.status_code == 204, resp.text
    if service_conf is not None:
        left = _service_objects(auth_url, service_conf, image_id)
        assert not left, f"deleting the image left {left}"
    return BenchResult(size_mib, up, down, max(proxy_growth.values(), default=0.0),
                       max(node_growth.values(), default=0.0), segments)


def run_on_new_cluster(size_mib: int, segment_mib: int | None, data_dir: Path,
                       workers: int = 1) -> BenchResult:
    """Start `swiftlike serve` in ``data_dir``, run the bench against it, stop it."""
    from tests.cluster_harness import start_served_cluster

    extra = ["--image-segment-size", str(segment_mib * MIB)] if segment_mib else []
    cluster = start_served_cluster(data_dir, nodes=4, workers=workers, extra_args=extra)
    try:
        with (data_dir / "cluster.toml").open("rb") as fh:
            service_conf = tomllib.load(fh)["image"]
        proxy_pids, node_pids = cluster_pids(cluster.process.pid)
        assert len(proxy_pids) == workers, f"expected {workers} proxy workers: {proxy_pids}"
        return run_bench(cluster.image_url, cluster.auth_url, proxy_pids, node_pids,
                         size_mib, service_conf)
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--rss-limit-mib", type=int, default=200)
    parser.add_argument("--segment-mib", type=int, default=None,
                        help="image segment size of the started cluster (default: serve's)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--keep-data", action="store_true")
    parser.add_argument("--image-url", help="measure a running cluster instead")
    parser.add_argument("--auth-url")
    parser.add_argument("--pid", type=int, help="the running `swiftlike serve` process")
    args = parser.parse_args()
    if args.image_url:
        proxy_pids, node_pids = cluster_pids(args.pid)
        result = run_bench(args.image_url, args.auth_url, proxy_pids, node_pids,
                           args.size_mib)
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="image-bench-"))
        try:
            result = run_on_new_cluster(args.size_mib, args.segment_mib, data_dir,
                                        args.workers)
        finally:
            if not args.keep_data:
                shutil.rmtree(data_dir, ignore_errors=True)
    print(result.summary())
    if result.proxy_growth_mib >= args.rss_limit_mib:
        print(f"FAIL: a proxy worker grew {result.proxy_growth_mib:.0f} MiB "
              f"(limit {args.rss_limit_mib} MiB)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
