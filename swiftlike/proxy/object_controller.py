"""Objects: PUT fan-out with quorum and handoffs, resumable GET, POST, DELETE.

Bodies above ``buffered_put_limit`` (or of unknown length) stream to the nodes with the
proxy's md5 in a footer (:mod:`swiftlike.proxy.object_put`). Small bodies (known length
up to ``buffered_put_limit``) are read first and sent as one buffer: cheaper, and a
failed node can be replaced by a handoff at any point.

A GET that breaks in the middle of the body continues from another replica with
``Range`` from the byte reached and ``If-Match`` on the ETag, so the client never
sees the break.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
from multidict import CIMultiDict

from swiftlike.common.body_footer import FOOTER_HEADER
from swiftlike.common.constraints import (
    check_delete_headers,
    check_metadata,
    check_object_name,
    parse_content_length,
)
from swiftlike.common.http_util import WHOLE_IF_PRESENT
from swiftlike.common.node_client import NODE_ERRORS, node_path
from swiftlike.common.timestamp import Timestamp, header_timestamp
from swiftlike.proxy.base_controller import (
    BackendResponse,
    Controller,
    client_headers,
    forward_headers,
    quorum_size,
    update_headers,
)
from swiftlike.proxy.node_pool import PrimaryNotFound, iter_nodes
from swiftlike.proxy.object_put import stream_put
from swiftlike.proxy.pipeline import SwiftRequest, SwiftResponse, error_response

SMALL_GET = 65536
_CONDITIONAL = ("If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Match")


class ObjectController(Controller):
    server_type = "object"

    async def handle(self, req: SwiftRequest, account: str, container: str, obj: str
                     ) -> SwiftResponse:
        method = req.method
        if method in ("GET", "HEAD"):
            return await self.get_or_head(req, account, container, obj)
        if method == "PUT":
            return await self.put(req, account, container, obj)
        if method == "DELETE":
            return await self.delete(req, account, container, obj)
        if method == "POST":
            return await self.post(req, account, container, obj)
        return error_response(405, headers={"Allow": "GET, HEAD, PUT, POST, DELETE"})

    async def _acl(self, account: str, container: str) -> dict | None:
        info = await self.container_info(account, container)
        if info["status"] // 100 != 2:
            return None
        return {"read": info["read_acl"], "write": info["write_acl"]}

    # -- GET / HEAD --------------------------------------------------------------------
    async def get_or_head(self, req: SwiftRequest, account: str, container: str, obj: str
                          ) -> SwiftResponse:
        denial = await self.authorize(req, lambda: self._acl(account, container))
        if denial is not None:
            return denial
        ctx = self.ctx
        part, primaries = ctx.ring.get_nodes(account, container, obj)
        headers = forward_headers(req)
        headers["X-Backend-Server-Type"] = "object"

        def path_for(node: dict) -> str:
            return node_path(node, part, account, container, obj)

        nodes = iter_nodes(ctx.ring, part, ctx.read_order(primaries), ctx.limiter)
        if _is_true(req.headers.get("X-Newest")):
            newest = await self._get_newest_object(req, primaries, nodes, path_for, headers)
            if newest is not None:
                return newest
        newest_404: Timestamp | None = None
        saw_404 = False
        primary_404s = PrimaryNotFound(primaries)
        for node in nodes:
            try:
                resp = await self._open(node, req.method, path_for(node), headers)
            except NODE_ERRORS:
                ctx.limiter.error(node)
                continue
            status = resp.status
            if status >= 500 or status == 404:
                ts = header_timestamp(resp.headers, "X-Backend-Timestamp")
                await _drain(resp)
                if status >= 500:
                    if status == 507:
                        ctx.limiter.limit_now(node)
                    else:
                        ctx.limiter.error(node)
                    continue
                saw_404 = True
                if ts is not None and (newest_404 is None or ts > newest_404):
                    newest_404 = ts
                if primary_404s.record(node, ts is not None):
                    break
                continue
            if status // 100 == 2 and newest_404 is not None:
                found = header_timestamp(resp.headers, "X-Backend-Timestamp") or header_timestamp(
                    resp.headers, "X-Timestamp")
                if found is not None and found < newest_404:
                    await _drain(resp)  # a newer tombstone elsewhere: deleted
                    continue
            result = await self._client_response(req, resp, node, nodes, path_for, headers)
            if result is not None:
                ctx.limiter.success(node)
                return result
        if saw_404:
            return error_response(404)
        return error_response(503)

    async def _get_newest_object(self, req: SwiftRequest, primaries: list[dict],
                                 nodes: Iterator[dict], path_for: Callable[[dict], str],
                                 headers: CIMultiDict[str]) -> SwiftResponse | None:
        """``X-Newest: true``: ask every primary at once and serve the newest copy.

        The newest live copy wins unless a newer tombstone (404 with
        X-Backend-Timestamp) says the object was deleted after it. None when no
        primary answered at all (the caller then tries handoffs one by one).
        """
        ctx = self.ctx
        asked = [n for n in primaries if not ctx.limiter.is_limited(n)]

        async def ask(node: dict) -> Any:
            try:
                return await self._open(node, req.method, path_for(node), headers)
            except NODE_ERRORS:
                ctx.limiter.error(node)
                return None

        answers = await asyncio.gather(*(ask(n) for n in asked))
        best: tuple[Timestamp, Any, dict] | None = None
        newest_404: Timestamp | None = None
        saw_404 = False
        losers = []
        for node, resp in zip(asked, answers, strict=True):
            if resp is None:
                continue
            status = resp.status
            stamp = header_timestamp(resp.headers, "X-Backend-Timestamp") or header_timestamp(
                resp.headers, "X-Timestamp")
            if status == 404:
                saw_404 = True
                if stamp is not None and (newest_404 is None or stamp > newest_404):
                    newest_404 = stamp
            elif status >= 500:
                if status == 507:
                    ctx.limiter.limit_now(node)
                else:
                    ctx.limiter.error(node)
            else:  # 2xx, or 304 / 412 / 416 where the copy's conditions decided
                stamp = stamp or Timestamp(0)
                if best is None or stamp > best[0]:
                    if best is not None:
                        losers.append(best[1])
                    best = (stamp, resp, node)
                    continue
            losers.append(resp)
        for resp in losers:
            await _drain(resp)
        if best is None:
            return error_response(404) if saw_404 else None
        stamp, resp, node = best
        if newest_404 is not None and stamp < newest_404 and resp.status // 100 == 2:
            await _drain(resp)
            return error_response(404)
        result = await self._client_response(req, resp, node, nodes, path_for, headers)
        if result is not None:
            ctx.limiter.success(node)
        return result

    async def _open(self, node: dict, method: str, path: str, headers: CIMultiDict[str]
                    ) -> Any:
        """Start a streamed read; the node client retries a stale pooled connection."""
        return await self.ctx.client.request(node, method, path, headers=headers)

    async def _client_response(self, req: SwiftRequest, resp: Any, node: dict,
                               nodes: Iterator[dict], path_for: Callable[[dict], str],
                               headers: CIMultiDict[str]) -> SwiftResponse | None:
        out = client_headers(resp.headers)
        length = resp.content_length
        if req.method == "HEAD" or resp.status in (204, 304):
            resp.release()
            return SwiftResponse(resp.status, out, None, content_length=length)
        if length is not None and length <= SMALL_GET:
            try:
                data = await resp.read()
            except NODE_ERRORS:
                self.ctx.limiter.error(node)
                resp.close()
                return None
            return SwiftResponse(resp.status, out, data)
        start, end = 0, None
        resumable = resp.status == 200 and bool(resp.headers.get("ETag"))
        if resp.status == 206:
            rng = _parse_content_range(resp.headers.get("Content-Range"))
            resumable = rng is not None and bool(resp.headers.get("ETag"))
            if rng is not None:
                start, end = rng
        body = self._resumable_body(resp, node, nodes, path_for, headers, start, end,
                                    length, resp.headers.get("ETag", ""), resumable)
        sresp = SwiftResponse(resp.status, out, body, content_length=length)
        sresp.on_close(resp.close)
        return sresp

    async def _resumable_body(self, resp: Any, node: dict, nodes: Iterator[dict],
                              path_for: Callable[[dict], str], headers: CIMultiDict[str],
                              start: int, end: int | None, length: int | None, etag: str,
                              resumable: bool) -> AsyncIterator[bytes]:
        ctx = self.ctx
        sent = 0
        try:
            while True:
                try:
                    # one buffered read at a time: iter_any() would join whatever piled
                    # up into a new bytes object, a copy of every byte of a large body
                    async for chunk, _ in resp.content.iter_chunks():
                        if chunk:
                            sent += len(chunk)
                            yield chunk
                    if length is None or sent >= length:
                        resp.release()
                        return
                    raise aiohttp.ClientPayloadError("node sent a short body")
                except NODE_ERRORS:
                    ctx.limiter.error(node)
                    resp.close()
                    if not resumable:
                        raise
                    last = "" if end is None else str(end)
                    retry_headers = CIMultiDict(headers)
                    # the rest of these very bytes, whatever they are (a manifest
                    # read whole for its middleware too): no Range-ignoring either
                    for key in (*_CONDITIONAL, WHOLE_IF_PRESENT):
                        retry_headers.popall(key, None)
                    retry_headers["Range"] = f"bytes={start + sent}-{last}"
                    retry_headers["If-Match"] = etag
                    found = await self._resume(nodes, path_for, retry_headers)
                    if found is None:
                        raise
                    node, resp = found
        finally:
            resp.close()

    async def _resume(self, nodes: Iterator[dict], path_for: Callable[[dict], str],
                      headers: CIMultiDict[str]) -> tuple[dict, Any] | None:
        ctx = self.ctx
        for node in nodes:
            try:
                resp = await self._open(node, "GET", path_for(node), headers)
            except NODE_ERRORS:
                ctx.limiter.error(node)
                continue
            if resp.status == 206:
                return node, resp
            await _drain(resp)
            if resp.status >= 500:
                ctx.limiter.error(node)
        return None

    # -- PUT ---------------------------------------------------------------------------
    def _check_put(self, req: SwiftRequest, obj: str) -> tuple[SwiftResponse | None, int | None]:
        limits = self.ctx.limits
        message = check_object_name(obj, limits)
        if message:
            return error_response(400, message), None
        length = parse_content_length(req.headers.get("Content-Length"))
        chunked = "chunked" in req.headers.get("Transfer-Encoding", "").lower()
        if length == -1:
            return error_response(400, "Invalid Content-Length"), None
        if length is None and not chunked:
            return error_response(411), None
        if length is not None and length > limits.max_file_size:
            return error_response(413, f"Your request is too large: max object size is "
                                       f"{limits.max_file_size} bytes"), None
        return self._check_meta(req), length

    def _check_meta(self, req: SwiftRequest) -> SwiftResponse | None:
        message = check_metadata(req.headers, "object", self.ctx.limits)
        if message:
            return error_response(400, message)
        message, delete_at = check_delete_headers(req.headers)
        if message:
            return error_response(400, message)
        req.headers.popall("X-Delete-After", None)
        if delete_at is not None:
            req.headers["X-Delete-At"] = delete_at
        content_type = req.headers.get("Content-Type")
        if content_type is not None and "swift_bytes=" in content_type:
            return error_response(400, "Invalid Content-Type")
        return None

    def _update_headers(self, account: str, container: str, writers: list[dict]
                        ) -> list[dict[str, str]]:
        """Spread the container's replicas over the object writes (X-Container-*)."""
        cpart, cnodes = self.ctx.ring.get_nodes(account, container)
        return update_headers(writers, cnodes, cpart, "Container")

    async def _container_gate(self, req: SwiftRequest, account: str, container: str
                              ) -> SwiftResponse | None:
        """Authorize a write and require the container to exist (404 otherwise)."""
        info = await self.container_info(account, container)
        if info["status"] // 100 == 2:
            req.environ["swift.acl"] = {"read": info["read_acl"], "write": info["write_acl"]}
        else:
            req.environ["swift.acl"] = None
        authorize = req.environ.get("swift.authorize")
        if authorize is not None:
            denial = authorize(req)
            if denial is not None and await self.load_account_acl(req):
                denial = authorize(req)
            if denial is not None:
                return denial
        if info["status"] == 404:
            return error_response(404, "Container not found")
        if info["status"] // 100 != 2:
            return error_response(503)
        return None

    async def put(self, req: SwiftRequest, account: str, container: str, obj: str
                  ) -> SwiftResponse:
        problem, length = self._check_put(req, obj)
        if problem is not None:
            return problem
        gate = await self._container_gate(req, account, container)
        if gate is not None:
            return gate
        ctx = self.ctx
        part, primaries = ctx.ring.get_nodes(account, container, obj)
        replicas = len(primaries)
        timestamp = Timestamp.now()
        base = forward_headers(req)
        base.popall("Transfer-Encoding", None)
        base.popall(FOOTER_HEADER, None)  # only stream_put frames a body with a footer
        base["X-Backend-Server-Type"] = "object"
        base["X-Timestamp"] = timestamp.internal
        detect = req.headers.get("X-Detect-Content-Type", "").lower() in ("true", "1", "yes")
        base.popall("X-Detect-Content-Type", None)
        if detect or not req.headers.get("Content-Type"):
            base["Content-Type"] = mimetypes.guess_type(obj)[0] or "application/octet-stream"
        if length is not None:
            base["Content-Length"] = str(length)
        if "ETag" in base:
            base["ETag"] = base["ETag"].strip().strip('"').lower()
        updates = self._update_headers(account, container, primaries)

        def headers_for(slot: int) -> CIMultiDict[str]:
            headers = CIMultiDict(base)
            headers.update(updates[slot])
            return headers

        def path_for(node: dict) -> str:
            return node_path(node, part, account, container, obj)

        if length is not None and length <= ctx.buffered_put_limit:
            try:
                body = await req.read_body(limit=length)
            except ValueError:
                return error_response(400, "Body longer than Content-Length")
            except TimeoutError:
                return error_response(408, "Timed out reading the request body")
            except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError):
                return error_response(499)
            if len(body) != length:
                return error_response(499)
            responses = await self.make_requests(part, primaries, "PUT", path_for, headers_for,
                                                 body)
        else:
            outcome = await stream_put(ctx, req, part, primaries, path_for, headers_for,
                                       length, base.get("ETag"))
            if isinstance(outcome, SwiftResponse):
                return outcome
            responses = outcome
        return self._put_response(responses, replicas, timestamp)

    def _put_response(self, responses: list[BackendResponse | None], replicas: int,
                      timestamp: Timestamp) -> SwiftResponse:
        ok = [r for r in responses if r is not None and r.status // 100 == 2]
        if len(ok) >= quorum_size(replicas):
            etag = ok[0].headers.get("ETag", "").strip('"')
            return SwiftResponse(201, {
                "ETag": etag,
                "Last-Modified": timestamp.http_date,
                "Content-Type": "text/html; charset=UTF-8",
            }, b"")
        resp = self.quorum_response(responses, replicas)
        if resp.status == 409:
            # Swift's rule: the nodes already hold a newer-or-equal version (e.g. a
            # retried request or a racing writer with a later timestamp), so this write
            # is accepted and superseded, not an error.
            return SwiftResponse(202, {"Content-Type": "text/html; charset=UTF-8"}, b"")
        return resp

    # -- DELETE / POST -----------------------------------------------------------------
    async def delete(self, req: SwiftRequest, account: str, container: str, obj: str
                     ) -> SwiftResponse:
        gate = await self._container_gate(req, account, container)
        if gate is not None:
            return gate
        part, primaries = self.ctx.ring.get_nodes(account, container, obj)
        base = forward_headers(req)
        base["X-Backend-Server-Type"] = "object"
        base["X-Timestamp"] = Timestamp.now().internal
        updates = self._update_headers(account, container, primaries)
        responses = await self.make_requests(
            part, primaries, "DELETE",
            lambda n: node_path(n, part, account, container, obj),
            lambda slot: {**base, **updates[slot]},
        )
        return self.quorum_response(responses, len(primaries))

    async def post(self, req: SwiftRequest, account: str, container: str, obj: str
                   ) -> SwiftResponse:
        # As Swift: a POST's empty Content-Type changes nothing, and a swift_bytes
        # parameter (internal: a large object's size in listings) is dropped, not refused
        content_type = req.headers.get("Content-Type")
        if content_type is not None:
            kept = ";".join(p for p in content_type.split(";")
                            if not p.strip().lower().startswith("swift_bytes=")).strip()
            req.headers.popall("Content-Type")
            if kept:
                req.headers["Content-Type"] = kept
        problem = self._check_meta(req)
        if problem is not None:
            return problem
        gate = await self._container_gate(req, account, container)
        if gate is not None:
            return gate
        part, primaries = self.ctx.ring.get_nodes(account, container, obj)
        base = forward_headers(req)
        base["X-Backend-Server-Type"] = "object"
        base["X-Timestamp"] = Timestamp.now().internal
        if req.headers.get("X-Detect-Content-Type", "").lower() in ("true", "1", "yes"):
            base["Content-Type"] = mimetypes.guess_type(obj)[0] or "application/octet-stream"
        base.popall("X-Detect-Content-Type", None)
        # a POST that sets Content-Type changes the container listing's type too
        updates = self._update_headers(account, container, primaries) \
            if "Content-Type" in base else None
        responses = await self.make_requests(
            part, primaries, "POST",
            lambda n: node_path(n, part, account, container, obj),
            lambda slot: base if updates is None else {**base, **updates[slot]},
        )
        resp = self.quorum_response(responses, len(primaries))
        if resp.status == 202:
            resp.headers["Content-Type"] = "text/html; charset=UTF-8"
        return resp


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes", "on", "t", "y")


def _parse_content_range(value: str | None) -> tuple[int, int] | None:
    if not value or not value.startswith("bytes "):
        return None
    span = value[6:].split("/", 1)[0]
    first, _, last = span.partition("-")
    if not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last)


async def _drain(resp: Any) -> None:
    """Read a small error body so the keep-alive connection can be reused."""
    try:
        if resp.content_length is None or resp.content_length <= SMALL_GET:
            await resp.read()
            resp.release()
        else:
            resp.close()
    except NODE_ERRORS:
        resp.close()
