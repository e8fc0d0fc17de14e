"""An async client of the object store's Swift HTTP API, for the image service.

Why a client and not a library call: the image service may run on other hosts than the
proxy, and the layer rules forbid touching storage code. Bytes always stream: a PUT sends
a chunked body from an async iterator, a GET yields chunks, nothing holds a whole image.

Large images are written as segments (``segment_size`` bytes each) in a separate
container, then described by a manifest object: an SLO manifest
(``?multipart-manifest=put``) when the cluster's ``/info`` advertises ``slo``, else a
DLO manifest (``X-Object-Manifest``). The image service itself never depends on that
middleware for reads: it records the segment list and reads the segments in order, so
images stay readable even on a cluster without large-object middleware.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

DEFAULT_SEGMENT_SIZE = 200 * 1024 * 1024
READ_CHUNK = 256 * 1024


class StoreError(Exception):
    """The object store failed or refused a request."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(StoreError):
    """The object (or container) is not there."""


@dataclass
class Segment:
    """One stored segment of a large image."""

    container: str
    name: str
    size: int
    etag: str


@dataclass
class Location:
    """Where an image's bytes are: one object, or a manifest plus its segments."""

    container: str
    name: str
    size: int = 0
    segments: list[Segment] = field(default_factory=list)
    manifest: str | None = None  # "slo" | "dlo" | None

    def to_json(self) -> str:
        return json.dumps(
            {
                "container": self.container,
                "name": self.name,
                "size": self.size,
                "manifest": self.manifest,
                "segments": [s.__dict__ for s in self.segments],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Location:
        raw = json.loads(text)
        return cls(
            raw["container"],
            raw["name"],
            raw.get("size", 0),
            [Segment(**s) for s in raw.get("segments", [])],
            raw.get("manifest"),
        )


def _q(part: str) -> str:
    return quote(part, safe="")


class SwiftStore:
    """A Swift API client holding the image service's own credentials (v1 auth).

    Tokens are fetched lazily and refreshed once on a 401.
    """

    def __init__(
        self,
        auth_url: str,
        user: str,
        key: str,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        large_object_mode: str = "auto",
        timeout: float = 60.0,
    ) -> None:
        if large_object_mode not in ("auto", "slo", "dlo"):
            raise ValueError("large_object_mode must be auto, slo or dlo")
        self.auth_url = auth_url
        self.user = user
        self.key = key
        self.segment_size = segment_size
        self.large_object_mode = large_object_mode
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout,
                                              sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._storage_url: str | None = None
        self._auth_lock = asyncio.Lock()
        self._known_containers: set[str] = set()
        self._resolved_mode: str | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self._session

    async def _authenticate(self, stale: str | None = None) -> tuple[str, str]:
        async with self._auth_lock:
            if self._token is None or self._token == stale:
                headers = {"X-Auth-User": self.user, "X-Auth-Key": self.key}
                async with self.session.get(self.auth_url, headers=headers) as resp:
                    if resp.status // 100 != 2:
                        raise StoreError(f"object store auth failed: {resp.status}", resp.status)
                    self._token = resp.headers["X-Auth-Token"]
                    self._storage_url = resp.headers["X-Storage-Url"].rstrip("/")
            assert self._storage_url is not None
            return self._token, self._storage_url

    async def _request(
        self,
        method: str,
        container: str,
        name: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        data: Any = None,
        retry_auth: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send one request; the caller must release the response."""
        token, base = await self._authenticate()
        url = f"{base}/{_q(container)}" + (f"/{_q(name)}" if name is not None else "")
        hdrs = dict(headers or {})
        hdrs["X-Auth-Token"] = token
        resp = await self.session.request(method, url, headers=hdrs, params=params, data=data)
        if resp.status == 401 and retry_auth and not callable(getattr(data, "__aiter__", None)):
            resp.release()
            await self._authenticate(stale=token)
            return await self._request(method, container, name, headers=headers,
                                       params=params, data=data, retry_auth=False)
        return resp

    async def info(self) -> dict[str, Any]:
        """The cluster's ``/info`` document (empty if the cluster has none)."""
        _token, base = await self._authenticate()
        root = base.split("/v1/", 1)[0]
        try:
            async with self.session.get(f"{root}/info") as resp:
                if resp.status != 200:
                    return {}
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, ValueError):
            return {}

    async def manifest_mode(self) -> str:
        """``slo`` or ``dlo``: the configured mode, or for ``auto`` what /info offers."""
        if self._resolved_mode is None:
            if self.large_object_mode != "auto":
                self._resolved_mode = self.large_object_mode
            else:
                self._resolved_mode = "slo" if "slo" in await self.info() else "dlo"
        return self._resolved_mode

    async def ensure_container(self, container: str) -> None:
        if container in self._known_containers:
            return
        resp = await self._request("PUT", container)
        resp.release()
        if resp.status not in (201, 202, 204):
            raise StoreError(f"cannot create container {container}: {resp.status}", resp.status)
        self._known_containers.add(container)

    async def put_object(
        self,
        container: str,
        name: str,
        body: AsyncIterator[bytes] | bytes,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> str:
        """Stream ``body`` into an object; returns the store's ETag."""
        resp = await self._request("PUT", container, name, headers=headers, params=params,
                                   data=body)
        try:
            if resp.status != 201:
                text = (await resp.read())[:200].decode(errors="replace")
                raise StoreError(f"PUT {container}/{name} failed: {resp.status} {text}",
                                 resp.status)
            return resp.headers.get("ETag", "").strip('"')
        finally:
            resp.release()

    async def list_objects(self, container: str, prefix: str = "") -> list[str]:
        """Names in a container under ``prefix`` (all pages); empty if no container."""
        names: list[str] = []
        marker = ""
        while True:
            params = {"format": "json", "prefix": prefix, "marker": marker}
            resp = await self._request("GET", container, params=params)
            try:
                if resp.status == 404 or resp.status == 204:
                    return names
                if resp.status != 200:
                    raise StoreError(f"listing {container} failed: {resp.status}", resp.status)
                rows = await resp.json(content_type=None)
            finally:
                resp.release()
            if not rows:
                return names
            names.extend(row["name"] for row in rows if "name" in row)
            marker = names[-1]

    async def head_object(self, container: str, name: str) -> dict[str, str]:
        resp = await self._request("HEAD", container, name)
        resp.release()
        if resp.status == 404:
            raise NotFound(f"{container}/{name} not found", 404)
        if resp.status // 100 != 2:
            raise StoreError(f"HEAD {container}/{name} failed: {resp.status}", resp.status)
        return dict(resp.headers)

    async def delete_object(self, container: str, name: str, *, manifest: bool = False) -> bool:
        """Delete one object; True if it existed. A missing object is not an error."""
        params = {"multipart-manifest": "delete"} if manifest else None
        resp = await self._request("DELETE", container, name, params=params)
        resp.release()
        if resp.status == 404:
            return False
        if resp.status // 100 != 2:
            raise StoreError(f"DELETE {container}/{name} failed: {resp.status}", resp.status)
        return True

    async def iter_object(
        self, container: str, name: str, start: int = 0, end: int | None = None,
        expect: tuple[int, str] | None = None,
    ) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` of one object in chunks.

        ``expect`` = (size, md5) of the whole object: the last chunk is held back until
        the bytes are checked against it, and a mismatch raises StoreError instead, so
        a reader never sees a complete-looking image made of other bytes (a segment
        overwritten behind the image service's back, or corrupt on every replica).
        Without it the number of bytes is still checked.
        """
        headers = {}
        if start or end is not None:
            last = "" if end is None else str(end - 1)
            headers["Range"] = f"bytes={start}-{last}"
        resp = await self._request("GET", container, name, headers=headers)
        try:
            if resp.status == 404:
                raise NotFound(f"{container}/{name} not found", 404)
            if resp.status not in (200, 206):
                raise StoreError(f"GET {container}/{name} failed: {resp.status}", resp.status)
            wanted = expect[0] if expect is not None else (
                None if end is None else end - start)
            digest = hashlib.md5(usedforsecurity=False) if expect is not None else None
            got = 0
            held: bytes | None = None
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                got += len(chunk)
                if wanted is not None and got > wanted:
                    # before the held chunk goes out: a reader whose answer has a
                    # Content-Length would otherwise get that many of these bytes,
                    # complete-looking, and never see the error
                    raise StoreError(f"GET {container}/{name}: more than the {wanted} "
                                     "bytes expected")
                if digest is not None:
                    digest.update(chunk)
                if held is not None:
                    yield held
                held = chunk
            if wanted is not None and got != wanted:
                raise StoreError(f"GET {container}/{name}: {got} bytes, {wanted} expected")
            if digest is not None and expect is not None and expect[1] and \
                    digest.hexdigest() != expect[1].strip('"').lower():
                raise StoreError(f"GET {container}/{name}: md5 {digest.hexdigest()}, "
                                 f"{expect[1]} expected")
            if held is not None:
                yield held
        finally:
            resp.release()

    async def iter_location(
        self, loc: Location, start: int = 0, end: int | None = None,
        md5: str | None = None,
    ) -> AsyncIterator[bytes]:
        """Yield bytes ``[start, end)`` of an image, reading its segments in order.

        ``md5``: the image's recorded checksum; a whole read of a one-object image is
        checked against it (and its size) as a segment is against its own.
        """
        end = loc.size if end is None else min(end, loc.size)
        if not loc.segments:
            if end > start:
                whole = start == 0 and end == loc.size and bool(md5)
                async for chunk in self.iter_object(
                        loc.container, loc.name, start, None if whole else end,
                        (loc.size, md5) if whole and md5 else None):
                    yield chunk
            return
        offset = 0
        for seg in loc.segments:
            seg_start, seg_end = offset, offset + seg.size
            offset = seg_end
            if seg_end <= start or seg_start >= end:
                continue
            lo = max(start, seg_start) - seg_start
            hi = min(end, seg_end) - seg_start
            whole = lo == 0 and hi >= seg.size
            async for chunk in self.iter_object(
                    seg.container, seg.name, lo, None if whole else hi,
                    (seg.size, seg.etag) if whole else None):
                yield chunk

    async def delete_location(self, loc: Location) -> None:
        """Delete a manifest (plainly, we delete the segments ourselves) and its segments."""
        await self.delete_object(loc.container, loc.name)
        for seg in loc.segments:
            await self.delete_object(seg.container, seg.name)

    async def write_manifest(self, loc: Location) -> None:
        """Describe the already written segments by an SLO or DLO manifest object."""
        mode = await self.manifest_mode()
        if mode == "slo":
            body = json.dumps(
                [
                    {"path": f"/{s.container}/{s.name}", "etag": s.etag, "size_bytes": s.size}
                    for s in loc.segments
                ]
            ).encode()
            try:
                await self.put_object(loc.container, loc.name, body,
                                      params={"multipart-manifest": "put"})
                loc.manifest = "slo"
                return
            except StoreError as exc:
                if exc.status not in (400, 412, 501):
                    raise
                self._resolved_mode = "dlo"  # the cluster cannot take SLO after all
        prefix = loc.segments[0].name.rsplit("/", 1)[0] + "/"
        await self.put_object(
            loc.container, loc.name, b"",
            headers={"X-Object-Manifest": f"{loc.segments[0].container}/{prefix}"},
        )
        loc.manifest = "dlo"


async def write_segmented(
    store: SwiftStore,
    container: str,
    name: str,
    source: AsyncIterator[bytes],
    on_segment: Any = None,
) -> Location:
    """Write ``source`` as segments of ``store.segment_size`` plus a manifest.

    Segments go to ``<container>_segments`` as ``<name>/<seq>``. ``on_segment(segment)``
    is called after each one is stored so a caller can record them for cleanup. If the
    source fails midway, the exception propagates; the caller deletes what was written.
    """
    seg_container = f"{container}_segments"
    await store.ensure_container(container)
    await store.ensure_container(seg_container)
    loc = Location(container, name)
    pending: list[bytes] = []
    source_iter = source.__aiter__()
    exhausted = False

    async def one_segment() -> AsyncIterator[bytes]:
        nonlocal exhausted
        sent = 0
        while sent < store.segment_size:
            if pending:
                chunk = pending.pop()
            else:
                try:
                    chunk = await source_iter.__anext__()
                except StopAsyncIteration:
                    exhausted = True
                    return
            room = store.segment_size - sent
            if len(chunk) > room:
                pending.append(chunk[room:])
                chunk = chunk[:room]
            sent += len(chunk)
            counter[0] += len(chunk)
            yield chunk

    seq = 0
    while not exhausted:
        # Peek so an image ending exactly at a segment boundary gets no empty segment.
        if not pending:
            try:
                pending.append(await source_iter.__anext__())
            except StopAsyncIteration:
                break
        seq += 1
        counter = [0]
        seg_name = f"{name}/{seq:08d}"
        etag = await store.put_object(seg_container, seg_name, one_segment())
        seg = Segment(seg_container, seg_name, counter[0], etag)
        loc.segments.append(seg)
        loc.size += seg.size
        if on_segment is not None:
            on_segment(seg)
    if not loc.segments:  # an empty image still needs one (empty) object
        etag = await store.put_object(seg_container, f"{name}/{1:08d}", b"")
        loc.segments.append(Segment(seg_container, f"{name}/{1:08d}", 0, etag))
    await store.write_manifest(loc)
    return loc
