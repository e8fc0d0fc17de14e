"""Rate limiting of writes, per account and per container, as Swift's ratelimit.

Settings (``[ratelimit]``):

* ``account_ratelimit``: container PUT/DELETE per second in one account (0 = off);
* ``container_ratelimit_<size> = <rate>``: object PUT/POST/DELETE/COPY per second in
  a container holding at least ``<size>`` objects, interpolated linearly between the
  configured sizes (constant past the largest);
* ``container_listing_ratelimit_<size> = <rate>``: container GETs, likewise;
* ``max_sleep_time_seconds`` (60): a request that would have to wait longer is
  refused with ``498 Rate Limited`` / "Slow down" instead of being delayed;
* ``rate_buffer_seconds`` (5): how much unused rate may be saved up for a burst;
* ``ratelimit_whitelist`` / ``ratelimit_blacklist``: accounts never limited /
  always refused (``497``).

Requests that may go are delayed (``asyncio.sleep``) until their slot. By default
the running clock per key lives in this proxy worker's memory (Swift keeps it in
memcache): the limit is then enforced **per worker process**, so N workers allow up
to N times the configured rate in total. With ``shared_state_dir`` set, the clocks
live in small flock-protected files in that directory, shared by every worker of
the host (one limit per host).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from swiftlike.proxy.info_generations import info_generations
from swiftlike.proxy.mw_util import InfoCache, conf_list, conf_section, split_v1
from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse, info_registry

WRITE_METHODS = ("PUT", "DELETE", "POST", "COPY")
CLOCK_ACCURACY = 1000  # milliseconds


def interpret_limits(section: dict, prefix: str
                     ) -> tuple[list[tuple[int, float, Callable[[int], float]]],
                                list[list[float]]]:
    """``<prefix><size> = rate`` settings -> piecewise-linear rate functions + /info."""
    points = sorted(
        (int(key[len(prefix):]), float(value)) for key, value in section.items()
        if key.startswith(prefix) and key[len(prefix):].isdigit()
    )
    functions: list[tuple[int, float, Callable[[int], float]]] = []
    for index, (size, rate) in enumerate(points):
        if index + 1 < len(points):
            next_size, next_rate = points[index + 1]
            slope = (next_rate - rate) / (next_size - size)

            def line(x: int, size: int = size, rate: float = rate, slope: float = slope
                     ) -> float:
                return (x - size) * slope + rate
        else:
            def line(x: int, rate: float = rate) -> float:
                return rate
        functions.append((size, rate, line))
    return functions, [[size, rate] for size, rate in points]


def max_rate(functions: list[tuple[int, float, Callable[[int], float]]], size: int
             ) -> float | None:
    """The rate for a container of ``size`` objects; None below the smallest size."""
    chosen = None
    if size:
        for threshold, _rate, func in functions:
            if size < threshold:
                break
            chosen = func
    return chosen(size) if chosen else None


def passes_through(req: SwiftRequest) -> bool:
    """Object reads are never limited, HEADs neither (see pipeline.Bypass)."""
    return req.method == "HEAD" or (
        req.method == "GET" and split_v1(req.path)[2] is not None)


class RateLimit:
    def __init__(self, app: Handler, conf: dict,
                 clock: Callable[[], float] = time.time) -> None:
        section = conf_section(conf, "ratelimit")
        self.app = app
        self.clock = clock
        self.account_rate = float(section.get("account_ratelimit", 0))
        self.max_sleep = float(section.get("max_sleep_time_seconds", 60))
        self.rate_buffer = float(section.get("rate_buffer_seconds", 5))
        self.whitelist = set(conf_list(section.get("ratelimit_whitelist"), []))
        self.blacklist = set(conf_list(section.get("ratelimit_blacklist"), []))
        self.container_limits, container_info = interpret_limits(
            section, "container_ratelimit_")
        self.listing_limits, listing_info = interpret_limits(
            section, "container_listing_ratelimit_")
        self.info = InfoCache(app, float(section.get("info_cache_seconds", 5.0)), "RL",
                               info_generations(conf))
        self.running: dict[str, int] = {}
        shared = section.get("shared_state_dir")
        self.clocks = SharedClocks(Path(str(shared))) if shared else None
        info_registry(conf).register_info("ratelimit", {
            "account_ratelimit": self.account_rate,
            "max_sleep_time_seconds": self.max_sleep,
            "container_ratelimits": container_info,
            "container_listing_ratelimits": listing_info,
        })

    async def keys_for(self, req: SwiftRequest) -> list[tuple[str, float]]:
        """The (clock key, rate) pairs this request counts against."""
        account, container, obj = split_v1(req.path)
        keys: list[tuple[str, float]] = []
        if account is None or container is None:
            return keys
        if self.account_rate and obj is None and req.method in ("PUT", "DELETE"):
            keys.append((f"ratelimit/{account}", self.account_rate))
        if obj is not None and req.method in WRITE_METHODS and self.container_limits:
            info = await self.info.container(req, account, container)
            rate = max_rate(self.container_limits, info.get("object_count", 0))
            if rate:
                keys.append((f"ratelimit/{account}/{container}", rate))
        if obj is None and req.method == "GET" and self.listing_limits:
            info = await self.info.container(req, account, container)
            rate = max_rate(self.listing_limits, info.get("object_count", 0))
            if rate:
                keys.append((f"ratelimit_listing/{account}/{container}", rate))
        return keys

    def sleep_time(self, key: str, rate: float) -> float | None:
        """Seconds to wait for this key's next slot; None when over max_sleep (refuse).

        The key's value is the time (ms) its last granted slot ends; each request
        books the next ``1/rate`` seconds. Unused time older than rate_buffer_seconds
        is forgotten, so bursts are bounded.
        """
        if self.clocks is not None:
            return self.clocks.update(key, lambda running: self._book(running, rate))
        new_running, wait = self._book(self.running.get(key, 0), rate)
        if new_running is not None:
            self.running[key] = new_running
            if len(self.running) > 100000:
                cutoff = round(self.clock() * CLOCK_ACCURACY) - int(
                    self.rate_buffer * CLOCK_ACCURACY)
                self.running = {k: v for k, v in self.running.items() if v > cutoff}
        return wait

    def _book(self, previous: int, rate: float) -> tuple[int | None, float | None]:
        """(new running time or None to leave it, seconds to wait or None to refuse)."""
        now = round(self.clock() * CLOCK_ACCURACY)
        per_request = max(1, round(CLOCK_ACCURACY / rate))
        running = previous + per_request
        need = 0
        if now - running > self.rate_buffer * CLOCK_ACCURACY:
            running = now + per_request
        else:
            need = max(running - now - per_request, 0)
        if self.max_sleep * CLOCK_ACCURACY - need <= CLOCK_ACCURACY * 0.01:
            return None, None
        return running, need / CLOCK_ACCURACY

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await self.app(req)
        self.info.observe(req)
        account, _container, _obj = split_v1(req.path)
        if account is None or req.method not in (*WRITE_METHODS, "GET"):
            return await self.app(req)
        if account in self.blacklist and req.method in WRITE_METHODS:
            return SwiftResponse(497, {"Content-Type": "text/plain"},
                                 b"Your account has been blacklisted")
        if account in self.whitelist:
            return await self.app(req)
        for key, rate in await self.keys_for(req):
            wait = self.sleep_time(key, rate)
            if wait is None:
                return SwiftResponse(498, {"Content-Type": "text/plain"}, b"Slow down")
            if wait > 0:
                await asyncio.sleep(wait)
        return await self.app(req)


class SharedClocks:
    """Per-key running times in small files, so every worker on a host shares a limit.

    Each key is one 8-byte file under ``shared_state_dir`` (e.g. on tmpfs), updated
    under an exclusive ``flock``: read, book the slot, write, unlock. The critical
    section is a few microseconds of local file I/O, done inline.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def update(self, key: str,
               book: Callable[[int], tuple[int | None, float | None]]) -> float | None:
        name = hashlib.sha256(key.encode()).hexdigest()
        fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 8, 0)
            previous = struct.unpack("<q", raw)[0] if len(raw) == 8 else 0
            new_running, wait = book(previous)
            if new_running is not None:
                os.pwrite(fd, struct.pack("<q", new_running), 0)
            return wait
        finally:
            os.close(fd)  # closing releases the lock


def make_middleware(app: Handler, conf: dict) -> Handler:
    return RateLimit(app, conf)
