"""An in-memory stand-in for the proxy core, for fast unit tests of middleware logic.

It answers the subset of the Swift API the large-object, versioning and symlink
middlewares rely on (objects with metadata and ranges, container listings with
prefix/marker/limit/reverse, container metadata). The end-to-end tests run the same
features against a real ``swiftlike serve`` cluster; this one only lets the logic be
checked in milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

from swiftlike.common.http_util import parse_range_header, ranges_for_length, wants_whole
from swiftlike.common.timestamp import Timestamp
from swiftlike.proxy.pipeline import SwiftRequest, SwiftResponse, error_response

KEEP = ("content-type", "x-object-meta-", "x-object-sysmeta-", "x-static-large-object",
        "x-object-manifest", "x-symlink-")
CONTAINER_KEEP = ("x-container-meta-", "x-container-sysmeta-", "x-versions-location",
                  "x-history-location")


class MemoryStore:
    """Objects and containers in dicts; ``__call__`` is a pipeline Handler."""

    def __init__(self) -> None:
        self.containers: dict[tuple[str, str], dict[str, str]] = {}
        self.objects: dict[tuple[str, str, str], tuple[bytes, dict[str, str]]] = {}
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        self.requests.append((req.method, req.path))
        _, account, container, obj = req.split_path()
        if container is None:
            return error_response(501)
        if obj is None:
            return await self.container(req, account, container)
        return await self.object(req, account, container, obj)

    async def container(self, req: SwiftRequest, account: str, container: str) -> SwiftResponse:
        key = (account, container)
        if req.method in ("PUT", "POST"):
            if req.method == "POST" and key not in self.containers:
                return error_response(404)
            created = key not in self.containers
            meta = self.containers.setdefault(key, {})
            for name, value in req.headers.items():
                if name.lower().startswith(CONTAINER_KEEP):
                    if value:
                        meta[name.title()] = value
                    else:
                        meta.pop(name.title(), None)
            return SwiftResponse(201 if created else 202 if req.method == "PUT" else 204)
        if key not in self.containers:
            return error_response(404)
        names = sorted(o for (a, c, o) in self.objects if (a, c) == key)
        if req.method == "DELETE":
            if names:
                return error_response(409)
            del self.containers[key]
            return SwiftResponse(204)
        headers = dict(self.containers[key])
        headers["X-Container-Object-Count"] = str(len(names))
        if req.method == "HEAD":
            return SwiftResponse(204, headers)
        prefix = req.query.get("prefix", "")
        marker = req.query.get("marker", "")
        names = [n for n in names if n.startswith(prefix) and n > marker]
        if req.query.get("reverse") in ("on", "true", "1"):
            names.reverse()
        names = names[: int(req.query.get("limit", "10000"))]
        rows = []
        for name in names:
            data, meta = self.objects[(account, container, name)]
            rows.append({"name": name, "hash": hashlib.md5(data).hexdigest(),
                         "bytes": len(data), "content_type": meta.get("Content-Type", ""),
                         "last_modified": "2024-01-01T00:00:00.000000"})
        if req.query.get("format") == "json":
            return SwiftResponse(200, {**headers, "Content-Type": "application/json"},
                                 json.dumps(rows).encode())
        if not rows:
            return SwiftResponse(204, headers)
        return SwiftResponse(200, headers, "".join(r["name"] + "\n" for r in rows).encode())

    async def object(self, req: SwiftRequest, account: str, container: str,
                     obj: str) -> SwiftResponse:
        key = (account, container, obj)
        if (account, container) not in self.containers:
            return error_response(404)
        if req.method == "PUT":
            data = await req.read_body()
            etag = hashlib.md5(data).hexdigest()
            if req.headers.get("ETag") and req.headers["ETag"].strip('"') != etag:
                return error_response(422)
            meta = {k.title(): v for k, v in req.headers.items()
                    if k.lower().startswith(KEEP)}
            meta.setdefault("Content-Type", "application/octet-stream")
            stamp = Timestamp.now()
            meta["X-Timestamp"] = stamp.internal
            meta["Last-Modified"] = stamp.http_date
            self.objects[key] = (data, meta)
            await asyncio.sleep(0.0001)
            return SwiftResponse(201, {"ETag": etag, "Last-Modified": stamp.http_date}, b"")
        if key not in self.objects:
            return error_response(404)
        if req.method == "DELETE":
            del self.objects[key]
            return SwiftResponse(204)
        if req.method == "POST":
            return SwiftResponse(202)
        data, meta = self.objects[key]
        headers = {**meta, "ETag": hashlib.md5(data).hexdigest()}
        whole = wants_whole(req.headers, meta)  # as the object server decides
        ranges = None if whole else parse_range_header(req.headers.get("Range"))
        status, body = 200, data
        spans = ranges_for_length(ranges, len(data)) if ranges else None
        if spans:
            start, stop = spans[0]
            status, body = 206, data[start:stop]
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        if req.method == "HEAD":
            return SwiftResponse(status, headers, None, content_length=len(body))

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 3):
                yield body[i:i + 3]

        return SwiftResponse(status, headers, chunks(), content_length=len(body))
