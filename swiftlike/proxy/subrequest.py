"""Helpers shared by the large-object, versioning and symlink middlewares.

These middlewares all build their features out of ordinary Swift requests sent to
the handler below them (HEAD a segment, list a container, copy an object by
streaming a GET into a PUT). Keeping those building blocks here means each
middleware module only says *what* it does, and every one of them streams bodies
the same way: chunk by chunk, never a whole object in memory.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, unquote

from multidict import CIMultiDict

from swiftlike.common.http_util import (
    WHOLE_IF_PRESENT,
    RangeNotSatisfiable,
    content_range,
    multipart_closing,
    multipart_length,
    multipart_part_header,
    new_boundary,
    parse_range_header,
    ranges_for_length,
)
from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse, error_response

LISTING_PAGE = 10000

#: Headers describing an object's content that a copy carries over.
COPY_HEADER_PREFIXES = ("x-object-meta-", "x-object-sysmeta-", "x-symlink-")
COPY_HEADERS = frozenset(
    (
        "content-type",
        "content-encoding",
        "content-disposition",
        "x-delete-at",
        "x-static-large-object",
        "x-object-manifest",
    )
)

STATUS_LINES = {
    200: "200 OK", 201: "201 Created", 202: "202 Accepted", 204: "204 No Content",
    400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
    404: "404 Not Found", 409: "409 Conflict", 412: "412 Precondition Failed",
    413: "413 Request Entity Too Large", 416: "416 Requested Range Not Satisfiable",
    422: "422 Unprocessable Entity", 499: "499 Client Disconnect",
    500: "500 Internal Error", 503: "503 Service Unavailable",
}


class SegmentError(Exception):
    """A segment vanished or changed while a large object was being read."""


#: Headers that make a read partial or conditional. On a large object or a symlink they
#: are for what it stands for, not for the stored manifest or link.
CONDITIONAL = ("Range", "If-Match", "If-None-Match", "If-Modified-Since",
               "If-Unmodified-Since")


def is_conditional(req: SwiftRequest) -> bool:
    """Whether ``req`` has one of :data:`CONDITIONAL` (asked of every object read)."""
    return any(map(req.headers.__contains__, CONDITIONAL))


def whole_if_present(req: SwiftRequest, name: str) -> None:
    """Have a conditional read answered whole when the object has metadata ``name``.

    A manifest or a link answers for what it stands for: its middleware needs the
    stored manifest or link itself, then applies the client's Range and If-* to the
    result. Asking it of the object server in the same request saves the HEAD each
    of slo, dlo and symlink would otherwise send first; any other object gets the
    client's Range and If-* applied by the object server as usual.
    """
    current = req.headers.get(WHOLE_IF_PRESENT)
    req.headers[WHOLE_IF_PRESENT] = f"{current}, {name}" if current else name


def status_line(status: int) -> str:
    return STATUS_LINES.get(status, f"{status} Error")


def object_path(account: str, container: str, obj: str | None = None) -> str:
    """The (decoded) ``/v1/<a>/<c>[/<o>]`` path of an object or container."""
    path = f"/v1/{account}/{container}"
    return path if obj is None else f"{path}/{obj}"


def split_container_object(value: str, *, unquote_value: bool = True) -> tuple[str, str] | None:
    """``container/object`` (optionally url-quoted, optionally with a leading ``/``)."""
    text = unquote(value) if unquote_value else value
    text = text.lstrip("/")
    container, sep, obj = text.partition("/")
    if not sep or not container or not obj:
        return None
    return container, obj


def true_value(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes", "on", "t", "y")


def strip_etag(value: str | None) -> str:
    return (value or "").strip().strip('"')


def copy_object_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The content-describing headers of a GET/HEAD response, ready for a PUT."""
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        lower = key.lower()
        if lower in COPY_HEADERS or lower.startswith(COPY_HEADER_PREFIXES):
            out.add(key, value)
    return out


def internal_subrequest(
    req: SwiftRequest,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: AsyncIterator[bytes] | None = None,
    query: Mapping[str, str] | None = None,
    source: str = "",
) -> SwiftRequest:
    """A subrequest below this middleware, tagged with who sent it (for logs and loops)."""
    sub = req.make_subrequest(method, path, headers=headers, body=body, query=query)
    if source:
        sub.environ["swift.source"] = source
    return sub


async def drain(resp: SwiftResponse) -> bytes:
    """Read a (small) response body fully; used for listings and error bodies only."""
    return await resp.read()


def discard(resp: SwiftResponse) -> None:
    """Release a response whose body we do not need (frees its node connection)."""
    resp.close()
    resp.body = None


async def list_container(
    app: Handler,
    req: SwiftRequest,
    account: str,
    container: str,
    *,
    prefix: str = "",
    marker: str = "",
    reverse: bool = False,
    limit: int | None = None,
    source: str = "",
) -> tuple[int, list[dict[str, Any]]]:
    """Every listing row of a container (paging through), or (status, []) on failure.

    ``limit`` caps how many rows are fetched in all.
    """
    rows: list[dict[str, Any]] = []
    while True:
        page_limit = LISTING_PAGE if limit is None else min(LISTING_PAGE, limit - len(rows))
        query = {"format": "json", "limit": str(page_limit)}
        if prefix:
            query["prefix"] = prefix
        if marker:
            query["marker"] = marker
        if reverse:
            query["reverse"] = "on"
        sub = internal_subrequest(
            req, "GET", object_path(account, container), query=query, source=source
        )
        resp = await app(sub)
        body = await drain(resp)
        if resp.status == 204:
            return 200, rows
        if not resp.is_success:
            return resp.status, []
        try:
            page = json.loads(body or b"[]")
        except ValueError:
            return 503, []
        rows.extend(page)
        if len(page) < page_limit or (limit is not None and len(rows) >= limit):
            return 200, rows
        marker = page[-1].get("name") or page[-1].get("subdir") or ""


async def container_headers(
    app: Handler, req: SwiftRequest, account: str, container: str, *, source: str = ""
) -> SwiftResponse:
    """HEAD a container (cached in the request's environ for the request's lifetime)."""
    key = f"swiftlike.container_head/{account}/{container}"
    cached = req.environ.get(key)
    if cached is not None:
        return cached
    sub = internal_subrequest(req, "HEAD", object_path(account, container), source=source)
    resp = await app(sub)
    discard(resp)
    req.environ[key] = resp
    return resp


def forget_container_headers(req: SwiftRequest, account: str, container: str) -> None:
    req.environ.pop(f"swiftlike.container_head/{account}/{container}", None)


async def copy_object(
    app: Handler,
    req: SwiftRequest,
    src_path: str,
    dst_path: str,
    *,
    extra_headers: Mapping[str, str] | None = None,
    source: str = "",
) -> tuple[int, SwiftResponse | None]:
    """Server-side copy: stream a GET of ``src_path`` into a PUT of ``dst_path``.

    The GET goes to the handler below, so a manifest or symlink is copied as itself
    (the copy of a large object is its manifest, as with Swift's versioning).
    Returns (status, PUT response) where status is the GET's failure or the PUT's.
    """
    # symlink=get / multipart-manifest=get: a link or manifest is copied as itself
    get = internal_subrequest(req, "GET", src_path, source=source,
                              query={"symlink": "get", "multipart-manifest": "get"})
    src = await app(get)
    if not src.is_success:
        discard(src)
        return src.status, None
    headers = copy_object_headers(src.headers)
    if extra_headers:
        for key, value in extra_headers.items():
            headers[key] = value
    if src.content_length is not None:
        headers["Content-Length"] = str(src.content_length)
    etag = strip_etag(src.headers.get("ETag"))
    if etag and "x-static-large-object" not in {k.lower() for k in src.headers}:
        headers["ETag"] = etag
    put = internal_subrequest(
        req, "PUT", dst_path, headers=headers, body=src.iter_body(), source=source
    )
    resp = await app(put)
    discard(resp)
    src.close()
    return resp.status, resp


async def delete_object(
    app: Handler, req: SwiftRequest, path: str, *, query: Mapping[str, str] | None = None,
    source: str = "",
) -> int:
    sub = internal_subrequest(req, "DELETE", path, query=query, source=source)
    resp = await app(sub)
    discard(resp)
    return resp.status


def pick_output_format(accept: str | None, query_format: str | None = None) -> str:
    """``application/json``, ``application/xml`` or ``text/plain`` for bulk-style bodies."""
    wanted = (query_format or "").lower()
    if wanted in ("json", "xml", "plain"):
        return {"json": "application/json", "xml": "application/xml",
                "plain": "text/plain"}[wanted]
    accept = (accept or "").lower()
    for candidate in ("application/json", "application/xml", "text/xml", "text/plain"):
        if candidate in accept:
            return "application/xml" if candidate == "text/xml" else candidate
    return "text/plain"


def bulk_json(fields: dict[str, Any], errors: list[list[str]]) -> bytes:
    """A bulk report in JSON with Swift's key order: the status and body, the counts,
    then the errors."""
    data = {key: fields[key] for key in ("Response Status", "Response Body")
            if key in fields}
    data.update((key, value) for key, value in sorted(fields.items()) if key not in data)
    data["Errors"] = errors
    return json.dumps(data).encode()


def bulk_body(out_type: str, fields: dict[str, Any], errors: list[list[str]],
              root_tag: str = "delete") -> bytes:
    """A body shaped like Swift's bulk responses (used by SLO PUT and delete)."""
    if out_type == "application/json":
        return bulk_json(fields, errors)
    if out_type.endswith("/xml"):
        parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<{root_tag}>\n']
        for key in sorted(fields):
            tag = key.lower().replace(" ", "_")
            parts.append(f"<{tag}>{_xml_escape(str(fields[key]))}</{tag}>\n")
        parts.append("<errors>\n")
        for name, status in errors:
            parts.append(
                f"<object><name>{_xml_escape(name)}</name>"
                f"<status>{_xml_escape(status)}</status></object>\n"
            )
        parts.append(f"</errors>\n</{root_tag}>\n")
        return "".join(parts).encode()
    lines = [f"{key}: {fields[key]}\n" for key in sorted(fields)]
    lines.append("Errors:\n")
    lines.extend(f"{name}, {status}\n" for name, status in errors)
    return "".join(lines).encode()


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def ranged_response(
    req: SwiftRequest,
    total: int,
    headers: CIMultiDict[str],
    body_for: Any,
    one_range_only: bool = False,
) -> SwiftResponse:
    """A 200/206/416 response over an entity made of several backend objects.

    ``body_for(start, stop)`` returns an async iterator of the entity's bytes in the
    half-open span; with several ranges the parts are framed as multipart/byteranges.
    ``one_range_only``: a request for several ranges gets the whole entity (Swift's DLO).
    """
    ranges = parse_range_header(req.headers.get("Range"))
    if one_range_only and ranges is not None and len(ranges) > 1:
        ranges = None
    try:
        spans = None if ranges is None else ranges_for_length(ranges, total)
    except RangeNotSatisfiable:
        err = error_response(416)
        err.headers["Content-Range"] = f"bytes */{total}"
        return err
    if spans is None:
        resp = SwiftResponse(200, headers, None, content_length=total)
        if req.method != "HEAD":
            resp.body = body_for(0, total)
        return resp
    spans = _merge_spans(spans)
    if len(spans) == 1:
        start, stop = spans[0]
        headers["Content-Range"] = content_range(start, stop, total)
        resp = SwiftResponse(206, headers, None, content_length=stop - start)
        if req.method != "HEAD":
            resp.body = body_for(start, stop)
        return resp
    boundary = new_boundary()
    ctype = headers.get("Content-Type", "application/octet-stream")
    headers["Content-Type"] = f"multipart/byteranges;boundary={boundary}"
    length = multipart_length(boundary, ctype, spans, total)

    async def multipart() -> AsyncIterator[bytes]:
        for index, (start, stop) in enumerate(spans):
            if index:
                yield b"\r\n"
            yield multipart_part_header(boundary, ctype, start, stop, total)
            async for chunk in body_for(start, stop):
                yield chunk
        yield b"\r\n" + multipart_closing(boundary)

    resp = SwiftResponse(206, headers, None, content_length=length)
    if req.method != "HEAD":
        resp.body = multipart()
    return resp


def _merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Keep spans in request order but collapse exact duplicates."""
    seen: list[tuple[int, int]] = []
    for span in spans:
        if span not in seen:
            seen.append(span)
    return seen


def quote_path(path: str) -> str:
    return quote(path.encode("utf-8", "surrogateescape"), safe="/")


async def stream_object_range(
    app: Handler,
    req: SwiftRequest,
    path: str,
    start: int,
    stop: int,
    *,
    expected_etag: str | None = None,
    source: str = "",
) -> AsyncIterator[bytes]:
    """Bytes [start, stop) of one object, streamed; SegmentError if it is gone or changed."""
    if stop <= start:
        return
    sub = internal_subrequest(req, "GET", path, headers={"Range": f"bytes={start}-{stop - 1}"},
                              source=source)
    resp = await app(sub)
    if not resp.is_success:
        discard(resp)
        raise SegmentError(f"Object segment no longer valid: {path} ({status_line(resp.status)})")
    if expected_etag is not None and strip_etag(resp.headers.get("ETag")) != expected_etag:
        discard(resp)
        raise SegmentError(f"Object segment no longer valid: {path} (etag mismatch)")
    if resp.status == 200:
        skip = start  # the node ignored our Range: skip to the wanted bytes
    else:
        skip = 0
    want = stop - start
    got = 0
    try:
        async for chunk in resp.iter_body():
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            if got + len(chunk) > want:
                chunk = chunk[: want - got]
            got += len(chunk)
            if chunk:
                yield chunk
            if got >= want:
                break
    finally:
        resp.close()
    if got != want:
        raise SegmentError(f"Object segment {path} ended early")


async def prepend_chunk(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A body that yields ``first`` (a chunk already read to check the start of the
    stream) and then the rest, closing the rest however the consumer stops."""
    if first:
        yield first
    try:
        async for chunk in rest:
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            await rest.aclose()  # type: ignore[attr-defined]
