"""The HTTP side of the load generator: v1 auth and the per-process phase runner.

Auth and container set-up are plain synchronous urllib calls made once by the parent,
outside any measured phase.  The measured requests go over keep-alive connections, like
a real Swift client's: by default through :mod:`benchmarks.raw_http` (one connection
per worker; see there why), or through one aiohttp session per client process
(``client="aiohttp"``).
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp

from benchmarks.raw_http import KEPT_BODY, RawClient, RawLane, RawResponse, ResponseError

MAX_ERROR_SAMPLES = 5
CLIENTS = ("raw", "aiohttp")


def swift_request(method: str, url: str, token: str | None, timeout: float,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One blocking request; returns (status, headers, body) and never raises on HTTP errors."""
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def swift_auth(auth_url: str, user: str, key: str, timeout: float = 30.0) -> tuple[str, str]:
    """v1 auth: return (storage URL, token) or raise RuntimeError with the server's answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, headers, body = swift_request(
                "GET", auth_url, None, timeout, {"X-Auth-User": user, "X-Auth-Key": key})
        except (urllib.error.URLError, OSError) as exc:
            status, headers, body = 0, {}, str(exc).encode()
        # A 5xx or refused connection may be a worker restarting: retry, within limits.
        if (status == 0 or status >= 500) and time.monotonic() < deadline:
            time.sleep(1.0)
            continue
        break
    lowered = {k.lower(): v for k, v in headers.items()}
    if status // 100 != 2 or "x-storage-url" not in lowered or "x-auth-token" not in lowered:
        raise RuntimeError(f"v1 auth at {auth_url} failed: HTTP {status} {body[:200]!r}")
    return lowered["x-storage-url"].rstrip("/"), lowered["x-auth-token"]


class ClientPhaseRunner:
    """Runs the share of one phase that belongs to one client process."""

    def __init__(self, storage_url: str, token: str, concurrency: int, timeout: float,
                 index: int, client: str = "raw") -> None:
        if client not in CLIENTS:
            raise ValueError(f"unknown client {client!r}; known: {', '.join(CLIENTS)}")
        self.storage_url = storage_url
        self.token = token
        self.concurrency = concurrency
        self.timeout = timeout
        self.index = index
        self.client = client
        self._session: aiohttp.ClientSession | None = None
        self._raw: RawClient | None = None
        self._lanes: list[RawLane] = []
        self._bodies: dict[int, bytes] = {}

    async def open(self) -> None:
        if self.client == "raw":
            self._raw = RawClient(self.storage_url, self.token, self.timeout)
            self._lanes = [self._raw.lane() for _ in range(self.concurrency)]
            return
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency,
                                         force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                        sock_read=self.timeout)
        # no cookie jar: the Swift API sets no cookies, and a jar still inspects every
        # response (about 6% of this client's CPU per small GET, measured here)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(), headers={"X-Auth-Token": self.token})

    async def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
        if self._session is not None:
            await self._session.close()

    def _body(self, size: int) -> bytes:
        if size not in self._bodies:
            self._bodies[size] = random.Random(size).randbytes(size)
        return self._bodies[size]

    async def run_phase(self, spec: Any, ops: list[int]) -> dict[str, Any]:
        """Run ``ops`` (operation indices) with ``concurrency`` workers; return raw stats."""
        state = _PhaseState(spec, ops)
        deadline = None if spec.duration is None else time.monotonic() + spec.duration
        state.start = time.monotonic()
        workers = [asyncio.create_task(self._worker(state, deadline, lane))
                   for lane in range(min(self.concurrency, max(1, len(ops))))]
        await asyncio.gather(*workers)
        state.end = time.monotonic()
        return state.result()

    async def _worker(self, state: _PhaseState, deadline: float | None, lane: int) -> None:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            op_index = state.next_op()
            if op_index is None:
                return
            op, name = state.plan(op_index)
            t0 = time.perf_counter()
            try:
                ok, nbytes, detail = await self._do(lane, op, state.spec, name)
            except (TimeoutError, aiohttp.ClientError, ResponseError, OSError) as exc:
                ok, nbytes, detail = False, 0, f"{op} {name}: {type(exc).__name__}: {exc}"
            state.record(op, name, ok, nbytes, time.perf_counter() - t0, detail)

    async def _do(self, lane: int, op: str, spec: Any, name: str) -> tuple[bool, int, str]:
        """One operation of a worker (``lane`` is its index) and whether it succeeded."""
        path = f"/{spec.container}"
        if op == "list":
            resp = await self._send(lane, "GET", f"{path}?format=json&limit=1000")
            return (resp.status == 200, resp.body_length,
                    f"list: HTTP {resp.status} {resp.body_start[:80]!r}")
        path = f"{path}/{name}"
        if op == "put":
            body = self._body(spec.size)
            resp = await self._send(lane, "PUT", path, body,
                                    {"Content-Type": "application/octet-stream"})
            return (resp.status == 201, len(body),
                    f"PUT {name}: HTTP {resp.status} {resp.body_start[:80]!r}")
        if op == "get":
            resp = await self._send(lane, "GET", path)
            got = resp.body_length
            ok = resp.status == 200 and got == spec.size
            return ok, got, f"GET {name}: HTTP {resp.status}, {got} of {spec.size} bytes"
        if op == "head":
            resp = await self._send(lane, "HEAD", path)
            length = int(resp.headers.get("content-length", "-1"))
            ok = resp.status == 200 and length == spec.size
            return ok, 0, f"HEAD {name}: HTTP {resp.status}, length {length}"
        if op == "delete":
            resp = await self._send(lane, "DELETE", path)
            return resp.status == 204, 0, f"DELETE {name}: HTTP {resp.status}"
        raise ValueError(f"unknown op {op}")

    async def _send(self, lane: int, method: str, path: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> RawResponse:
        """One request below the storage URL through the chosen client; the answer's
        body is counted (its first bytes kept), never joined."""
        if self._raw is not None:
            return await self._lanes[lane].request(method, path, body=body, headers=headers)
        assert self._session is not None
        async with self._session.request(method, self.storage_url + path, data=body,
                                          headers=headers) as resp:
            answer = RawResponse(resp.status, {})
            length = resp.headers.get("Content-Length")
            if length is not None:
                answer.headers["content-length"] = length
            kept = bytearray()
            content = resp.content
            # each received piece as it is: iter_chunked(n) would join pieces into new
            # bytes, CPU the client takes from the servers on a small machine. Not
            # iter_chunks(): on a bodiless answer (HEAD, 204) it never ends
            while not content.at_eof():
                chunk, end_of_http_chunk = await content.readchunk()
                if not chunk and not end_of_http_chunk:
                    break
                answer.body_length += len(chunk)
                if len(kept) < KEPT_BODY:
                    kept += chunk[:KEPT_BODY - len(kept)]
            answer.body_start = bytes(kept)
            return answer


class _PhaseState:
    """Bookkeeping of one phase in one process: the op queue, latencies and errors."""

    def __init__(self, spec: Any, ops: list[int]) -> None:
        self.spec = spec
        self.ops = ops
        self.position = 0
        self.latencies: list[float] = []
        self.op_counts: dict[str, int] = {}
        self.errors = 0
        self.error_samples: list[str] = []
        self.bytes = 0
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.mixed_own: list[str] = []   # objects this process created in the mixed phase
        self.start = 0.0
        self.end = 0.0

    def next_op(self) -> int | None:
        if self.position >= len(self.ops):
            return None
        op_index = self.ops[self.position]
        self.position += 1
        return op_index

    def plan(self, op_index: int) -> tuple[str, str]:
        """Which request op ``op_index`` makes, and on which object."""
        spec = self.spec
        names = spec.names
        if spec.op == "put":
            return "put", f"{spec.name_prefix}{op_index:09d}"
        if spec.op in ("get", "head"):
            return spec.op, names[op_index % len(names)]
        if spec.op == "delete":
            return "delete", names[op_index]
        if spec.op == "list":
            return "list", ""
        # mixed: 60% GET, 20% PUT, 10% HEAD, 10% DELETE of an object this phase created.
        roll = random.Random(op_index).random()
        if roll < 0.2:
            return "put", f"{spec.name_prefix}{op_index:09d}"
        if roll < 0.3 and self.mixed_own:
            return "delete", self.mixed_own.pop(0)
        if roll < 0.4:
            return "head", names[op_index % len(names)]
        return "get", names[op_index % len(names)]

    def record(self, op: str, name: str, ok: bool, nbytes: int, seconds: float,
               detail: str) -> None:
        self.op_counts[op] = self.op_counts.get(op, 0) + 1
        if ok:
            self.latencies.append(seconds)
            self.bytes += nbytes
            if op == "put":
                self.created.append(name)
                if self.spec.op == "mixed":
                    self.mixed_own.append(name)
            elif op == "delete":
                self.deleted.append(name)
        else:
            self.errors += 1
            if len(self.error_samples) < MAX_ERROR_SAMPLES:
                self.error_samples.append(detail)

    def result(self) -> dict[str, Any]:
        return {
            "ok": len(self.latencies), "errors": self.errors, "latencies": self.latencies,
            "bytes": self.bytes, "start": self.start, "end": self.end,
            "created": self.created, "deleted": self.deleted, "op_counts": self.op_counts,
            "error_samples": self.error_samples,
        }
