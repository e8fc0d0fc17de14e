"""What every controller shares: node calls, quorum, best response, cached db info.

A controller turns one public request into backend requests through the ring.
Writes go to all primaries at once (a failed primary is replaced by the next
handoff) and succeed on a majority; reads ask one node at a time, primaries first.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from swiftlike.common.constraints import Limits
from swiftlike.common.node_client import NODE_ERRORS, NodeClient, node_path
from swiftlike.common.nodes import update_target_headers
from swiftlike.common.timestamp import Timestamp
from swiftlike.proxy.info_generations import InfoGenerations
from swiftlike.proxy.node_pool import ErrorLimiter, PrimaryNotFound, ReadOrder, iter_nodes
from swiftlike.proxy.pipeline import SwiftRequest, SwiftResponse, error_response
from swiftlike.proxy.quorum_wait import gather_quorum

#: Client headers never forwarded to storage nodes.
DROP_REQUEST_HEADERS = frozenset(
    h.lower()
    for h in (
        "Host", "Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "TE",
        "Upgrade", "Expect", "X-Auth-Token", "X-Storage-Token", "Authorization", "Cookie",
        "Proxy-Authorization", "X-Timestamp", "Trailer",
        # where a write's node sends its container/account update: the proxy's to say,
        # per node; a client's value reaching a node without one would make it send
        # updates to any address the client names
        "X-Container-Host", "X-Container-Partition", "X-Container-Device",
        "X-Account-Host", "X-Account-Partition", "X-Account-Device",
    )
)
#: Backend response headers never returned to clients as they are.
DROP_RESPONSE_HEADERS = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Server",
              "Date")
)

INFO_CACHE_MAX = 10000


@dataclass
class ProxyContext:
    """Per-app state shared by all controllers (no module globals)."""

    ring: Any
    client: NodeClient
    limiter: ErrorLimiter
    limits: Limits
    account_autocreate: bool = True
    info_ttl: float = 3.0
    put_queue_depth: int = 4
    #: seconds a write waits for its other answers once a quorum agrees (quorum_wait)
    post_quorum_timeout: float = 0.5
    buffered_put_limit: int = 256 * 1024
    #: the order reads ask the primaries in (node_pool.ReadOrder)
    read_order: ReadOrder = field(default_factory=ReadOrder)
    #: change counters shared with this host's other proxy workers (info_generations.py)
    generations: InfoGenerations = field(default_factory=InfoGenerations)
    #: ("a"|"c", account, container) -> (expires at, generation when fetched, info)
    info_cache: dict[tuple, tuple[float, int, dict]] = field(default_factory=dict)
    inflight_info: dict[tuple, asyncio.Future] = field(default_factory=dict)
    inflight_heads: dict[tuple, asyncio.Future] = field(default_factory=dict)
    #: the last finished shared HEAD per key: (monotonic time it started, answer)
    recent_heads: dict[tuple, tuple[float, Any]] = field(default_factory=dict)


class BackendResponse:
    """A fully read backend response (status, headers, body) and the node it came from."""

    __slots__ = ("body", "headers", "node", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, node: dict) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.node = node

    def timestamp(self) -> Timestamp | None:
        for key in ("X-Backend-Timestamp", "X-Put-Timestamp", "X-Timestamp"):
            value = self.headers.get(key)
            if value:
                try:
                    return Timestamp(value)
                except ValueError:
                    continue
        return None


def forward_headers(req: SwiftRequest) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in req.headers.items():
        if key.lower() not in DROP_REQUEST_HEADERS:
            headers.add(key, value)
    trans_id = req.environ.get("swift.trans_id")
    if trans_id:
        headers["X-Trans-Id"] = trans_id
    return headers


#: ``X-Remove-*`` headers (beside ``X-Remove-<kind>-Meta-*``) that clear one setting.
REMOVABLE_SETTINGS = {
    "container": ("X-Container-Read", "X-Container-Write", "X-Container-Sync-Key",
                  "X-Container-Sync-To", "X-Versions-Location", "X-History-Location"),
    "account": ("X-Account-Access-Control",),
}


def translate_remove_headers(headers: CIMultiDict[str], kind: str) -> None:
    """Turn Swift's ``X-Remove-*`` headers into the empty values that delete metadata.

    ``X-Remove-Container-Meta-Color: x`` becomes ``X-Container-Meta-Color:`` (an empty
    value is a deletion on the node). Like Swift, an explicit value for the same key
    in the same request wins over its removal.
    """
    meta_prefix = f"x-remove-{kind}-meta-"
    settings = {"x-remove-" + name[2:].lower(): name
                for name in REMOVABLE_SETTINGS.get(kind, ())}
    removals = []
    for key in headers:
        lower = key.lower()
        if lower.startswith(meta_prefix) and len(lower) > len(meta_prefix):
            removals.append((key, f"X-{kind.title()}-Meta-{key[len(meta_prefix):]}"))
        elif lower in settings:
            removals.append((key, settings[lower]))
    for remove_key, target in removals:
        headers.popall(remove_key, None)
        if target not in headers:
            headers[target] = ""


def client_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        lower = key.lower()
        if lower not in DROP_RESPONSE_HEADERS:
            if lower == "etag":
                value = value.strip('"')  # Swift answers unquoted ETags by default
            out.add(key, value)
    return out


def update_headers(writers: list[dict], targets: list[dict], partition: int,
                   prefix: str) -> list[dict[str, str]]:
    """``X-<prefix>-Host/-Device/-Partition`` per write slot: which database replicas
    each of the ``writers`` (the nodes a write goes to, by slot) must update.

    Every target goes to exactly one writer, as evenly as the counts allow. A writer
    that is itself a target's node is given that target first: its update then stays
    on the node (the object server hands it to its own container server without an
    HTTP round trip, see ``swiftlike.storage.updates``), and a node that updates
    fewer different databases gathers more rows per batch. The rest keep ring order.
    """
    slots = max(len(writers), 1)
    groups: list[list[dict]] = [[] for _ in range(slots)]
    where = {(w.get("ip"), w.get("port")): slot for slot, w in enumerate(writers)}
    rest = []
    for target in targets:
        slot = where.pop((target.get("ip"), target.get("port")), None)
        if slot is None:
            rest.append(target)
        else:
            groups[slot].append(target)
    for target in rest:
        groups[min(range(slots), key=lambda slot: len(groups[slot]))].append(target)
    return [update_target_headers(prefix, partition, group) if group else {}
            for group in groups]


def answer_status(answer: BackendResponse | None) -> int | None:
    return answer.status if answer is not None else None


def quorum_size(replicas: int) -> int:
    return replicas // 2 + 1


def best_status(statuses: list[int], quorum: int) -> int:
    """Swift's rule: the first status class (2xx, 3xx, 4xx) a quorum agrees on, else 503."""
    for cls in (2, 3, 4):
        group = [s for s in statuses if s // 100 == cls]
        if len(group) >= quorum:
            return Counter(group).most_common(1)[0][0]
    return 503


class Controller:
    """Base class: backend plumbing used by the account/container/object controllers."""

    server_type = ""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx

    # -- single node calls -------------------------------------------------------------
    async def backend(
        self,
        node: dict,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        query: Mapping[str, str] | None = None,
    ) -> BackendResponse | None:
        """One request to one node, body read; None (and an error mark) when it failed."""
        ctx = self.ctx
        try:
            # a bytes body or none: the node client itself sends again, once, a request
            # whose pooled connection the node had closed (see common.backend_http)
            async with ctx.client.request(
                node, method, path, headers=headers, body=body, query=query
            ) as resp:
                data = await resp.read()
                result = BackendResponse(resp.status, resp.headers, data, node)
        except NODE_ERRORS:
            ctx.limiter.error(node)
            return None
        if result.status == 507:
            ctx.limiter.limit_now(node)
        elif result.status >= 500:
            ctx.limiter.error(node)
        return result

    # -- writes to every replica -------------------------------------------------------
    async def make_requests(
        self,
        part: int,
        primaries: list[dict],
        method: str,
        path_for: Callable[[dict], str],
        headers_for: Callable[[int], Mapping[str, str]],
        body: bytes | None = None,
    ) -> list[BackendResponse | None]:
        """Send to every primary concurrently; a slot whose node fails takes the next handoff."""
        nodes = iter_nodes(self.ctx.ring, part, primaries, self.ctx.limiter)

        async def fill_slot(slot: int) -> BackendResponse | None:
            headers = headers_for(slot)
            for node in nodes:
                resp = await self.backend(node, method, path_for(node), headers, body)
                if resp is not None and resp.status < 500:
                    return resp
            return None

        return await gather_quorum([fill_slot(i) for i in range(len(primaries))],
                                   quorum_size(len(primaries)), self.ctx.post_quorum_timeout,
                                   answer_status)

    def quorum_response(
        self,
        responses: list[BackendResponse | None],
        replicas: int,
        ok_headers: Mapping[str, str] | None = None,
    ) -> SwiftResponse:
        statuses = [r.status if r is not None else 503 for r in responses]
        status = best_status(statuses, quorum_size(replicas))
        if status >= 300:
            for r in responses:
                if r is not None and r.status == status and r.body and status != 404:
                    text = r.body.decode("utf-8", "replace")
                    if text.startswith("<html>"):
                        resp = SwiftResponse(status, {"Content-Type": "text/html; charset=UTF-8"},
                                             r.body)
                        return resp
            return error_response(status)
        return SwiftResponse(status, ok_headers or {}, b"")

    # -- reads from one replica at a time ----------------------------------------------
    async def get_first(
        self,
        part: int,
        primaries: list[dict],
        method: str,
        path_for: Callable[[dict], str],
        headers: Mapping[str, str],
        query: Mapping[str, str] | None = None,
    ) -> BackendResponse | None:
        """The first authoritative answer: a 2xx/3xx/4xx other than 404 wins at once.

        404s are collected, and the newest one is returned when the read gives up (see
        :class:`PrimaryNotFound`: a 404 that knows of no deletion also asks handoffs).
        """
        if headers.get("X-Newest", "").lower() in ("true", "1", "yes", "on"):
            return await self._get_newest(part, primaries, method, path_for, headers, query)
        not_found: BackendResponse | None = None
        primary_404s = PrimaryNotFound(primaries)
        ordered = self.ctx.read_order(primaries)
        for node in iter_nodes(self.ctx.ring, part, ordered, self.ctx.limiter):
            resp = await self.backend(node, method, path_for(node), headers, query=query)
            if resp is None or resp.status >= 500:
                continue
            if resp.status == 404:
                if not_found is None or _newer(resp, not_found):
                    not_found = resp
                if primary_404s.record(node, "X-Backend-Timestamp" in resp.headers):
                    break
                continue
            return resp
        return not_found

    async def head_shared(
        self,
        key: tuple,
        part: int,
        primaries: list[dict],
        path_for: Callable[[dict], str],
        headers: Mapping[str, str],
        since: float | None = None,
    ) -> BackendResponse | None:
        """An account/container HEAD that joins an identical HEAD already in flight.

        Under load many requests of one worker ask for the same container's metadata
        at once (quota and versioning middlewares HEAD it on every object write); they
        share one backend round trip. The answer is at least as fresh as one fetched
        at the moment the shared HEAD started.

        ``since`` is when the client's request arrived (``swift.arrival``): a finished
        HEAD that *started* at or after that moment is reused as it is, since a HEAD of
        the caller's own would not be any fresher (the quota, versioning and controller
        HEADs of one object PUT then cost one round trip, and concurrent requests share
        theirs). A metadata write through this worker forgets it (invalidate_info).
        """
        ctx = self.ctx
        if since is not None:
            recent = ctx.recent_heads.get(key)
            if recent is not None and recent[0] >= since:
                return recent[1]
        inflight = ctx.inflight_heads
        waiting = inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        inflight[key] = future
        resp: BackendResponse | None = None
        started = time.monotonic()
        try:
            resp = await self.get_first(part, primaries, "HEAD", path_for, headers)
        finally:
            if inflight.get(key) is future:
                del inflight[key]
                if resp is not None and resp.status < 500:
                    if len(ctx.recent_heads) >= INFO_CACHE_MAX:
                        ctx.recent_heads.clear()
                    ctx.recent_heads[key] = (started, resp)
            future.set_result(resp)  # on failure the joiners see None (-> 503)
        return resp

    async def _get_newest(
        self,
        part: int,
        primaries: list[dict],
        method: str,
        path_for: Callable[[dict], str],
        headers: Mapping[str, str],
        query: Mapping[str, str] | None,
    ) -> BackendResponse | None:
        """``X-Newest: true``: ask every primary at once, answer with the newest copy."""
        responses = await asyncio.gather(*(
            self.backend(n, method, path_for(n), headers, query=query) for n in primaries
            if not self.ctx.limiter.is_limited(n)))
        best: BackendResponse | None = None
        for resp in responses:
            if resp is None or resp.status >= 500:
                continue
            if best is None or (resp.status // 100 == 2 and best.status // 100 != 2) or (
                    (resp.status // 100 == 2) == (best.status // 100 == 2)
                    and _newer(resp, best)):
                best = resp
        return best

    # -- cached account / container info -----------------------------------------------
    def invalidate_info(self, account: str, container: str | None = None) -> None:
        """Forget cached info after a metadata write; later HEADs start a fresh flight."""
        ctx = self.ctx
        ctx.info_cache.pop(("a", account, None), None)
        ctx.generations.bump(account)
        if container is not None:
            ctx.info_cache.pop(("c", account, container), None)
            ctx.generations.bump(account, container)
        for table in (ctx.inflight_heads, ctx.recent_heads):
            if table:
                for key in [k for k in table
                            if k[1] == account and (k[0] == "a" or k[2] == container)]:
                    del table[key]

    async def _cached_info(self, key: tuple, fetch: Callable[[], Any]) -> dict:
        ctx = self.ctx
        now = time.monotonic()
        generation = ctx.generations.current(key[1], key[2])
        cached = ctx.info_cache.get(key)
        if cached is not None and cached[0] > now and cached[1] == generation:
            return cached[2]
        waiting = ctx.inflight_info.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        ctx.inflight_info[key] = future
        try:
            info = await fetch()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved
            raise
        finally:
            ctx.inflight_info.pop(key, None)
        if not future.done():
            future.set_result(info)
        if info["status"] < 500:
            if len(ctx.info_cache) >= INFO_CACHE_MAX:
                ctx.info_cache.clear()
            ctx.info_cache[key] = (now + ctx.info_ttl, generation, info)
        return info

    async def account_info(self, account: str) -> dict:
        async def fetch() -> dict:
            part, nodes = self.ctx.ring.get_nodes(account)
            resp = await self.get_first(
                part, nodes, "HEAD", lambda n: node_path(n, part, account),
                {"X-Backend-Server-Type": "account"},
            )
            return _info_from(resp, "account")

        return await self._cached_info(("a", account, None), fetch)

    async def account_deleted(self, account: str) -> bool:
        """A reseller deleted the account (its servers say so; a missing one is not)."""
        return bool((await self.account_info(account)).get("deleted"))

    async def container_info(self, account: str, container: str) -> dict:
        if await self.account_deleted(account):
            # as Swift: nothing in a deleted account is there for the API, so no object
            # is written into a container the reaper is emptying. Asked on every call
            # (a cached lookup): the container's own entry may predate the deletion.
            return {"status": 404}

        async def fetch() -> dict:
            part, nodes = self.ctx.ring.get_nodes(account, container)
            resp = await self.get_first(
                part, nodes, "HEAD", lambda n: node_path(n, part, account, container),
                {"X-Backend-Server-Type": "container"},
            )
            info = _info_from(resp, "container")
            info["partition"] = part
            info["nodes"] = nodes
            return info

        return await self._cached_info(("c", account, container), fetch)

    async def authorize(self, req: SwiftRequest, acl_loader: Callable[[], Any] | None = None
                        ) -> SwiftResponse | None:
        """Ask the auth middleware (``swift.authorize``); load the container ACL if needed.

        The first call has no ACL so an account owner costs no container lookup; a
        denial is retried once with the container's ACL from ``acl_loader``.
        """
        authorize = req.environ.get("swift.authorize")
        if authorize is None:
            return None
        denial = authorize(req)
        if denial is None:
            return None
        loaded = await self.load_account_acl(req)
        if acl_loader is not None:
            req.environ["swift.acl"] = await acl_loader()
            loaded = True
        return authorize(req) if loaded else denial

    async def load_account_acl(self, req: SwiftRequest) -> bool:
        """Put the account's X-Account-Access-Control into ``swift.account_acl``.

        Only for authenticated callers (account ACLs name users); True when loaded.
        """
        if not req.environ.get("swift.identity") or "swift.account_acl" in req.environ:
            return False
        account = req.split_path()[1]
        if not account:
            return False
        info = await self.account_info(account)
        raw = info.get("headers", {}).get("X-Account-Access-Control", "")
        req.environ["swift.account_acl"] = parse_account_acl(raw) or {}
        return bool(req.environ["swift.account_acl"])


ACCOUNT_ACL_KEYS = ("admin", "read-write", "read-only")


def parse_account_acl(raw: str | None) -> dict[str, list[str]] | None:
    """X-Account-Access-Control JSON -> ``{level: [identities]}``; None when invalid."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or any(k not in ACCOUNT_ACL_KEYS for k in data):
        return None
    for value in data.values():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
    return {k: list(v) for k, v in data.items()}


def _newer(a: BackendResponse, b: BackendResponse) -> bool:
    ta, tb = a.timestamp(), b.timestamp()
    return ta is not None and (tb is None or ta > tb)


def _info_from(resp: BackendResponse | None, kind: str) -> dict:
    if resp is None:
        return {"status": 503}
    headers: CIMultiDictProxy[str] | Mapping[str, str] = resp.headers
    info: dict[str, Any] = {"status": resp.status}
    if resp.status // 100 != 2:
        if kind == "account" and resp.status == 404 and \
                resp.headers.get("X-Account-Status", "").lower() == "deleted":
            info["deleted"] = True
        return info
    prefix = f"x-{kind}-"
    info["meta"] = {}
    info["sysmeta"] = {}
    for key, value in headers.items():
        lower = key.lower()
        if lower.startswith(prefix + "meta-"):
            info["meta"][lower[len(prefix) + 5:]] = value
        elif lower.startswith(prefix + "sysmeta-"):
            info["sysmeta"][lower[len(prefix) + 8:]] = value
    if kind == "container":
        info["read_acl"] = headers.get("X-Container-Read", "")
        info["write_acl"] = headers.get("X-Container-Write", "")
        info["object_count"] = int(headers.get("X-Container-Object-Count", 0) or 0)
        info["bytes"] = int(headers.get("X-Container-Bytes-Used", 0) or 0)
        info["versions"] = headers.get("X-Versions-Location")
        info["history"] = headers.get("X-History-Location")
    else:
        info["container_count"] = int(headers.get("X-Account-Container-Count", 0) or 0)
        info["object_count"] = int(headers.get("X-Account-Object-Count", 0) or 0)
        info["bytes"] = int(headers.get("X-Account-Bytes-Used", 0) or 0)
    info["headers"] = dict(headers)
    return info
