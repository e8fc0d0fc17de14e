"""Dynamic Large Objects: a manifest whose X-Object-Manifest names ``container/prefix``.

A GET or HEAD of the manifest lists the segment container by prefix and serves the
segments concatenated in listing order. The ETag is the quoted md5 of the segment
etags and Content-Length their total, so clients can check a download. Ranges index
into the concatenation. ``?multipart-manifest=get`` returns the manifest object itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from multidict import CIMultiDict

from swiftlike.common.http_util import evaluate_conditions, parse_http_date, quote_etag
from swiftlike.proxy.pipeline import (
    Handler,
    SwiftRequest,
    SwiftResponse,
    error_response,
    info_registry,
)
from swiftlike.proxy.subrequest import (
    SegmentError,
    discard,
    is_conditional,
    list_container,
    prepend_chunk,
    ranged_response,
    stream_object_range,
    whole_if_present,
)

SOURCE = "DLO"
FORMAT_ERROR = "X-Object-Manifest must be in the format container/prefix"


def parse_manifest_header(value: str) -> tuple[str, str] | None:
    """A stored ``container/prefix`` (url-quoted, like Swift) -> (container, prefix), or
    None. Lenient, like Swift's read side: a manifest stored with an empty prefix still
    reads (every object of the container)."""
    container, sep, prefix = unquote(value.strip()).lstrip("/").partition("/")
    if not sep or not container:
        return None
    return container, prefix


def valid_manifest_header(value: str) -> bool:
    """What a PUT or POST may set, by Swift's rules: container and prefix both
    non-empty, the prefix not starting with ``/``, and no ``?`` or ``&`` anywhere (a
    query in the value is a mistake, not part of a prefix)."""
    if "?" in value or "&" in value:
        return False
    container, sep, prefix = unquote(value.strip()).partition("/")
    return bool(sep and container and prefix) and not prefix.startswith("/")


def make_middleware(app: Handler, conf: dict) -> Handler:
    info_registry(conf)  # Swift's dlo registers no /info section either

    async def dlo(req: SwiftRequest) -> SwiftResponse:
        version, account, container, obj = req.split_path()
        if version != "v1" or not account or not container or not obj:
            return await app(req)
        if req.method in ("PUT", "POST") and "X-Object-Manifest" in req.headers:
            if not valid_manifest_header(req.headers["X-Object-Manifest"]):
                return error_response(400, FORMAT_ERROR)
            return await app(req)
        if req.method not in ("GET", "HEAD") or req.query.get("multipart-manifest") == "get":
            return await app(req)
        if is_conditional(req):
            # Range/If-* apply to the concatenation, not to the manifest object
            whole_if_present(req, "X-Object-Manifest")
        resp = await app(req)
        value = resp.headers.get("X-Object-Manifest")
        if not resp.is_success or value is None:
            return resp
        discard(resp)
        target = parse_manifest_header(value)
        if target is None:
            return error_response(500, FORMAT_ERROR)
        seg_container, prefix = target
        status, rows = await list_container(app, req, account, seg_container, prefix=prefix,
                                            source=SOURCE)
        if status in (401, 403):
            return error_response(status)
        if status != 200 and status != 404:
            return error_response(503, "Unable to list the segments of a large object")
        rows = [row for row in rows if "name" in row]
        digest = hashlib.md5()
        for row in rows:
            digest.update(row["hash"].strip('"').encode())
        etag = digest.hexdigest()
        total = sum(int(row["bytes"]) for row in rows)
        headers = CIMultiDict(resp.headers)
        for key in ("Content-Length", "Content-Range", "ETag"):
            headers.popall(key, None)
        headers["ETag"] = quote_etag(etag)
        headers["Accept-Ranges"] = "bytes"
        cond = evaluate_conditions(req.headers, etag,
                                   parse_http_date(resp.headers.get("Last-Modified")))
        if cond == 412:
            return error_response(412, headers={"ETag": headers["ETag"]})
        if cond == 304:
            return SwiftResponse(304, headers, b"")

        def body_for(start: int, stop: int) -> AsyncIterator[bytes]:
            return stream_rows(req, account, seg_container, rows, start, stop)

        # as Swift's DLO: several ranges get the whole object
        out = ranged_response(req, total, headers, body_for, one_range_only=True)
        if req.method == "GET" and out.body is not None and not isinstance(out.body, bytes):
            stream = out.body
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                first = b""
            except SegmentError as exc:
                return error_response(409, str(exc))
            out.body = prepend_chunk(first, stream)
        return out

    async def stream_rows(req: SwiftRequest, account: str, container: str,
                          rows: list[dict[str, Any]], start: int,
                          stop: int) -> AsyncIterator[bytes]:
        offset = 0
        for row in rows:
            size = int(row["bytes"])
            a, b = max(start - offset, 0), min(stop - offset, size)
            offset += size
            if b > a:
                async for chunk in stream_object_range(
                        app, req, f"/v1/{account}/{container}/{row['name']}", a, b,
                        source=SOURCE):
                    yield chunk
            if offset >= stop:
                return

    return dlo

