"""Upload and download a large image through the image API and assert flat memory.

Usage: python benchmarks/image_bench.py [--size-mib 2048] [--rss-limit-mib 200]

The image service runs in a child process (in front of the test Swift stand-in, or
pass --image-url/--auth-url/--pid to measure a running `swiftlike serve`); we sample
the child's RSS while 2 GiB stream up and back down, and fail if it grows by more than
the limit: proof that no layer holds an image in memory.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
BLOCK = os.urandom(1024 * 1024)


def _serve(data_dir: str, queue: multiprocessing.Queue) -> None:
    from tests.image.conftest import start_fake_image_service

    service, _loop = start_fake_image_service(Path(data_dir), segment_size=200 * 1024**2)
    queue.put((service.image_url, service.auth_url))
    threading.Event().wait()


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--rss-limit-mib", type=int, default=200)
    parser.add_argument("--image-url")
    parser.add_argument("--auth-url")
    parser.add_argument("--pid", type=int)
    args = parser.parse_args()
    child = None
    tmp = None
    if args.image_url:
        image_url, auth_url, pid = args.image_url, args.auth_url, args.pid
    else:
        tmp = tempfile.mkdtemp(prefix="image-bench-")
        queue: multiprocessing.Queue = multiprocessing.Queue()
        child = multiprocessing.Process(target=_serve, args=(tmp, queue), daemon=True)
        child.start()
        image_url, auth_url = queue.get(timeout=60)
        pid = child.pid
    try:
        token = requests.get(auth_url, headers={"X-Auth-User": "test:tester",
                                                "X-Auth-Key": "testing"}).headers["X-Auth-Token"]
        headers = {"X-Auth-Token": token}
        image = requests.post(f"{image_url}/v2/images", headers=headers, json={
            "name": "bench", "disk_format": "raw", "container_format": "bare"}).json()
        sampler = RssSampler(pid)
        sampler.start()
        sent = hashlib.md5()

        def body():
            for _ in range(args.size_mib):
                sent.update(BLOCK)
                yield BLOCK

        t0 = time.monotonic()
        resp = requests.put(f"{image_url}/v2/images/{image['id']}/file", data=body(),
                            headers={**headers, "Content-Type": "application/octet-stream"})
        up = time.monotonic() - t0
        assert resp.status_code == 204, resp.text
        got = hashlib.md5()
        t0 = time.monotonic()
        with requests.get(f"{image_url}/v2/images/{image['id']}/file", headers=headers,
                          stream=True) as down:
            for chunk in down.iter_content(1024 * 1024):
                got.update(chunk)
        dl = time.monotonic() - t0
        sampler.running = False
        requests.delete(f"{image_url}/v2/images/{image['id']}", headers=headers)
        growth = (sampler.peak - sampler.base) / 1024**2
        mib = args.size_mib
        print(f"upload {mib} MiB: {up:.1f}s ({mib / up:.0f} MiB/s); "
              f"download: {dl:.1f}s ({mib / dl:.0f} MiB/s); service RSS growth {growth:.0f} MiB")
        assert got.hexdigest() == sent.hexdigest(), "downloaded bytes differ"
        assert growth < args.rss_limit_mib, f"RSS grew {growth:.0f} MiB"
        return 0
    finally:
        if child is not None:
            child.kill()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
