"""Streamed object PUT: client body -> md5 once -> fan-out to the replicas -> footer.

A PUT body is read from the client chunk by chunk and handed to one bounded queue per
node connection, so a slow node slows the upload (backpressure) instead of growing
memory; a 5 GiB upload holds at most ``put_queue_depth`` + 1 groups of received pieces
of about :data:`FANOUT_CHUNK` (1 MiB, so each md5 thread hop and queue hop moves a lot)
per node, plus socket buffers: a few MiB per replica. The pieces are grouped, never
joined: a join would copy every byte once more.

The proxy computes the body's md5 once, in a worker thread beside the fan-out, and
sends it to every node after the last body byte as a footer
(:mod:`swiftlike.common.body_footer`). The nodes then skip md5 (their xxh3 stamp is
cheap), which saves two of the three md5 passes a 3-replica write used to cost. A
client ``ETag`` that disagrees with the md5 gets 422 and no footer is ever sent, so no
node commits anything. A node's 2xx whose ETag differs from ours does not count
toward the quorum.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
from collections.abc import AsyncIterator, Callable

import aiohttp
from multidict import CIMultiDict

from swiftlike.common.body_footer import FOOTER_HEADER, FOOTER_LEN, FOOTER_VERSION, make_footer
from swiftlike.common.node_client import NODE_ERRORS
from swiftlike.proxy.base_controller import BackendResponse, ProxyContext, quorum_size
from swiftlike.proxy.node_pool import iter_nodes
from swiftlike.proxy.pipeline import SwiftRequest, SwiftResponse, error_response

LOG = logging.getLogger(__name__)
FANOUT_CHUNK = 1024 * 1024  # bytes per send to each node in a streamed PUT


class _Md5InThread:
    """md5 of a stream, fed in order, each update in a worker thread.

    hashlib drops the GIL for big buffers, so hashing one piece overlaps the event
    loop's sending of it; at most one update runs at a time, which keeps the order.
    """

    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self._pending: asyncio.Future | None = None

    async def update(self, pieces: list[bytes]) -> None:
        if self._pending is not None:
            await self._pending
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._hash, pieces)

    def _hash(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.md5.update(piece)

    async def hexdigest(self) -> str:
        if self._pending is not None:
            await self._pending
            self._pending = None
        return self.md5.hexdigest()


async def stream_put(ctx: ProxyContext, req: SwiftRequest, part: int, primaries: list[dict],
                     path_for: Callable[[dict], str],
                     headers_for: Callable[[int], CIMultiDict[str]], length: int | None,
                     client_etag: str | None
                     ) -> list[BackendResponse | None] | SwiftResponse:
    """Stream ``req``'s body to the primaries (handoffs for failed ones), with a footer.

    Returns the node answers for the quorum rules, or a finished error response (408,
    413, 422, 499, 503) when the upload cannot succeed.
    """
    quorum = quorum_size(len(primaries))
    nodes = iter_nodes(ctx.ring, part, primaries, ctx.limiter)

    def footer_headers(slot: int) -> CIMultiDict[str]:
        headers = headers_for(slot)
        headers[FOOTER_HEADER] = FOOTER_VERSION
        if length is not None:
            headers["Content-Length"] = str(length + FOOTER_LEN)
        return headers

    async def connect(slot: int) -> _Putter | None:
        for node in nodes:
            putter = _Putter(ctx, node, path_for(node), footer_headers(slot))
            if await putter.connected():
                return putter
        return None

    putters = [p for p in await asyncio.gather(*(connect(i) for i in range(len(primaries))))
               if p is not None]
    live = [p for p in putters if p.final is None]
    if len(live) < quorum:
        return _too_few(putters, "Not enough storage nodes available")
    max_size = ctx.limits.max_file_size
    total = 0
    md5 = _Md5InThread()

    async def fan_out(pieces: list[bytes]
                      ) -> list[BackendResponse | None] | SwiftResponse | None:
        nonlocal live
        for p in live:
            await p.send(pieces)
        if any(p.failed for p in live):
            live = [p for p in live if not p.failed]
            if len(live) < quorum:
                return _too_few(putters, "Too many storage nodes failed")
        return None

    try:
        if req.body is not None:
            # Client reads come in pieces of a few hundred KiB; group them so each md5
            # thread hop and queue hop moves FANOUT_CHUNK bytes. Grouped, not joined:
            # a join would copy every byte once more.
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in req.body:
                total += len(chunk)
                if total > max_size or (length is not None and total > length):
                    _abort_all(putters)
                    return error_response(413)
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size < FANOUT_CHUNK:
                    continue
                batch, pending = pending, []
                pending_size = 0
                await md5.update(batch)
                problem = await fan_out(batch)
                if problem is not None:
                    return problem
            if pending:
                await md5.update(pending)
                problem = await fan_out(pending)
                if problem is not None:
                    return problem
        if length is not None and total != length:
            _abort_all(putters)
            return error_response(499)
        etag = await md5.hexdigest()
    except TimeoutError:
        _abort_all(putters)
        return error_response(408, "Timed out reading the request body")
    except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError, OSError):
        _abort_all(putters)
        return error_response(499)
    except BaseException:
        _abort_all(putters)
        raise
    if client_etag is not None and client_etag != etag:
        _abort_all(putters)  # no footer was sent: no node commits
        return error_response(422, "Unprocessable Entity: the ETag does not match the "
                                   "md5 of the body")
    problem = await fan_out([make_footer(etag, total)])
    if problem is not None:
        return problem
    for p in live:
        p.finish()
    # every answer, not a quorum plus post_quorum_timeout: a streamed body left to finish
    # in the background on a slow node lets the client start the next one at once, the
    # slow node's backlog grows until its writes time out and it is error-limited (a
    # vs_swift run saw a 503, "Not enough storage nodes", that way); a node that never
    # answers already costs a streamed PUT node_timeout before its body is taken
    answers = await asyncio.gather(*(p.result() for p in putters))
    return [_etag_checked(answer, etag) for answer in answers]


def _etag_checked(answer: BackendResponse | None, etag: str) -> BackendResponse | None:
    """A node's 2xx must carry our md5: anything else stored other bytes, so it is
    no success (a node that ignored the footer header would store it as body)."""
    if answer is None or answer.status // 100 != 2:
        return answer
    if answer.headers.get("ETag", "").strip('"') == etag:
        return answer
    return BackendResponse(502, answer.headers, b"ETag from node disagrees", answer.node)


def _abort_all(putters: list[_Putter]) -> None:
    for p in putters:
        p.abort()


def _too_few(putters: list[_Putter], why: str
             ) -> list[BackendResponse | None] | SwiftResponse:
    """Below quorum: stop every upload; what nodes already answered (409, 412 ...)
    decides the status if any answered below 5xx, else 503 with ``why``."""
    _abort_all(putters)
    early = _early_answers(putters)
    if early is not None:
        return early
    return error_response(503, why)


class _Putter:
    """One streamed PUT to one node, fed through a bounded queue (backpressure)."""

    def __init__(self, ctx: ProxyContext, node: dict, path: str,
                 headers: CIMultiDict[str]) -> None:
        self.ctx = ctx
        self.node = node
        self.queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue(ctx.put_queue_depth)
        self.started = asyncio.Event()
        self.failed = False
        self.final: BackendResponse | None = None
        self.task = asyncio.ensure_future(self._run(path, headers))

    async def _body(self) -> AsyncIterator[bytes]:
        self.started.set()
        while True:
            pieces = await self.queue.get()
            if pieces is None:
                return
            for piece in pieces:
                yield piece

    async def _run(self, path: str, headers: CIMultiDict[str]) -> BackendResponse | None:
        ctx = self.ctx
        for attempt in (1, 2):
            try:
                async with ctx.client.request(self.node, "PUT", path, headers=headers,
                                              body=self._body()) as resp:
                    data = await resp.read()
                    result = BackendResponse(resp.status, resp.headers, data, self.node)
                break
            except aiohttp.ServerDisconnectedError:
                # a stale pooled connection: retry once if no body byte was taken yet
                if attempt == 1 and not self.started.is_set():
                    continue
                return self._failed(path)
            except NODE_ERRORS:
                return self._failed(path)
        if result.status >= 500:
            ctx.limiter.error(self.node)
        return result

    def _failed(self, path: str) -> None:
        """The node broke off (connect, send or answer): error-limit it, say why."""
        self.ctx.limiter.error(self.node)
        self.failed = True
        LOG.warning("streamed PUT to %s:%s%s failed: %r", self.node["ip"], self.node["port"],
                    path, sys.exc_info()[1])

    async def connected(self) -> bool:
        """Wait until the node takes the body, or fails; a 4xx answer counts as final."""
        waiter = asyncio.ensure_future(self.started.wait())
        await asyncio.wait([waiter, self.task], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self.task.done():
            result = self.task.result()
            if result is None or result.status >= 500:
                return False
            self.final = result
            self.failed = True
            return True
        return True

    async def send(self, pieces: list[bytes]) -> None:
        if self.failed:
            return
        if self.task.done():
            self.failed = True
            return
        try:
            self.queue.put_nowait(pieces)
            return
        except asyncio.QueueFull:
            pass
        put = asyncio.ensure_future(self.queue.put(pieces))
        done, _ = await asyncio.wait([put, self.task], timeout=self.ctx.client.node_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if put not in done:
            put.cancel()
            self.failed = True
            self.abort()

    def finish(self) -> None:
        if not self.task.done():
            self.queue.put_nowait(None) if not self.queue.full() else asyncio.ensure_future(
                self.queue.put(None))

    def abort(self) -> None:
        if not self.task.done():
            self.task.cancel()

    async def result(self) -> BackendResponse | None:
        if self.final is not None:
            return self.final
        try:
            return await self.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return None


def _early_answers(putters: list[_Putter]) -> list[BackendResponse | None] | None:
    """Answers nodes gave before taking the whole body (409 newer version, 412
    If-None-Match ...), or None when no node answered with less than a 5xx.

    With them the quorum rules decide the status, as for a buffered PUT.
    """
    answers: list[BackendResponse | None] = []
    for p in putters:
        answer = p.final
        task = p.task
        if answer is None and task.done() and not task.cancelled() and \
                task.exception() is None:
            answer = task.result()
        answers.append(answer)
    if any(a is not None and a.status < 500 for a in answers):
        return answers
    return None
