"""Building blocks shared by the tempurl, formpost, bulk, quota, CORS, staticweb and
ratelimit middlewares.

Those middlewares decide things from account and container metadata (keys, quotas,
CORS rules, web settings) and act through subrequests to the handler below them.
The helpers here read that metadata with privileged HEAD subrequests (like Swift's
``get_account_info``/``get_container_info``, which bypass the user's auth because the
middleware itself decides what the user may do), cache it briefly per middleware
instance, and forget it as soon as a write to that account/container passes through.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from swiftlike.proxy.info_generations import InfoGenerations
from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse

STATUS_LINES = {
    200: "200 OK", 201: "201 Created", 202: "202 Accepted", 204: "204 No Content",
    400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
    404: "404 Not Found", 405: "405 Method Not Allowed", 406: "406 Not Acceptable",
    408: "408 Request Timeout", 409: "409 Conflict", 411: "411 Length Required",
    412: "412 Precondition Failed", 413: "413 Request Entity Too Large",
    422: "422 Unprocessable Entity", 498: "498 Rate Limited", 499: "499 Client Disconnect",
    500: "500 Internal Error", 502: "502 Bad Gateway", 503: "503 Service Unavailable",
    507: "507 Insufficient Storage",
}


def status_line(status: int) -> str:
    """``"404 Not Found"``: how Swift's bulk bodies and form redirects name a status."""
    return STATUS_LINES.get(status, f"{status} Error")


def allow_all(_req: SwiftRequest) -> None:
    """A ``swift.authorize`` that allows everything (the middleware already decided)."""
    return None


def mark_authorized(environ: dict, authorize: Any = allow_all) -> None:
    """Tell the auth middleware below that this request is already authorized.

    Same contract as Swift: ``swift.authorize_override`` makes tempauth leave
    ``swift.authorize`` alone, and the controllers call ``swift.authorize``.
    """
    environ["swift.authorize"] = authorize
    environ["swift.authorize_override"] = True


def privileged_subrequest(
    req: SwiftRequest,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: AsyncIterator[bytes] | None = None,
    query: Mapping[str, str] | None = None,
    source: str = "",
) -> SwiftRequest:
    """A subrequest that bypasses the user's authorization (metadata lookups only)."""
    sub = req.make_subrequest(method, path, headers=headers, body=body, query=query)
    sub.headers.pop("X-Auth-Token", None)
    mark_authorized(sub.environ)
    if source:
        sub.environ["swift.source"] = source
    return sub


def split_v1(path: str) -> tuple[str | None, str | None, str | None]:
    """``(account, container, object)`` of a ``/v1/...`` path, or Nones if not one."""
    parts = path.split("/", 4)
    if len(parts) < 3 or parts[0] != "" or parts[1] != "v1" or not parts[2]:
        return None, None, None
    account = parts[2]
    container = parts[3] if len(parts) > 3 and parts[3] else None
    obj = parts[4] if len(parts) > 4 and parts[4] and container else None
    return account, container, obj


def _parse_info(resp: SwiftResponse, kind: str) -> dict[str, Any]:
    info: dict[str, Any] = {"status": resp.status, "meta": {}, "sysmeta": {}}
    if not resp.is_success:
        return info
    prefix = f"x-{kind}-"
    for key, value in resp.headers.items():
        lower = key.lower()
        if lower.startswith(prefix + "meta-"):
            info["meta"][lower[len(prefix) + 5:]] = value
        elif lower.startswith(prefix + "sysmeta-"):
            info["sysmeta"][lower[len(prefix) + 8:]] = value
    def count(name: str) -> int:
        try:
            return int(resp.headers.get(name, "0") or 0)
        except ValueError:
            return 0
    info["object_count"] = count(f"X-{kind.title()}-Object-Count")
    info["bytes"] = count(f"X-{kind.title()}-Bytes-Used")
    if kind == "container":
        info["read_acl"] = resp.headers.get("X-Container-Read", "")
        info["write_acl"] = resp.headers.get("X-Container-Write", "")
        # legacy versioning (versioned_writes); object versioning is sysmeta
        info["versions_location"] = resp.headers.get("X-Versions-Location", "")
        info["history_location"] = resp.headers.get("X-History-Location", "")
        meta = info["meta"]
        info["cors"] = {
            "allow_origin": meta.get("access-control-allow-origin"),
            "max_age": meta.get("access-control-max-age"),
            "expose_headers": meta.get("access-control-expose-headers"),
        }
    else:
        info["container_count"] = count("X-Account-Container-Count")
    return info


class InfoCache:
    """Account/container metadata fetched with privileged HEADs, kept ``ttl`` seconds.

    One instance per middleware (no module globals). Only successful lookups are
    cached; :meth:`observe` drops entries when a write to them goes through the
    middleware, so this worker sees its own changes at once. With ``generations``
    (the app's :class:`~swiftlike.proxy.info_generations.InfoGenerations`) an entry
    also dies as soon as any proxy worker of this host finishes a write to that
    account or container; without, other workers' writes show after ``ttl`` seconds.
    """

    MAX_ENTRIES = 4096

    def __init__(self, app: Handler, ttl: float = 5.0, source: str = "",
                 generations: InfoGenerations | None = None) -> None:
        self.app = app
        self.ttl = ttl
        self.source = source
        self.generations = generations
        # (account, container) -> (expires at, generation when fetched, info)
        self._entries: dict[tuple[str, str | None], tuple[float, int, dict[str, Any]]] = {}

    def observe(self, req: SwiftRequest) -> None:
        """Forget cached metadata that this request may change."""
        if req.method in ("GET", "HEAD", "OPTIONS"):
            return
        account, container, obj = split_v1(req.path)
        if account is None:
            return
        if obj is None:
            self._entries.pop((account, container), None)
            self._entries.pop((account, None), None)

    def forget(self, account: str, container: str | None = None) -> None:
        self._entries.pop((account, container), None)

    async def _fetch(self, req: SwiftRequest, account: str, container: str | None,
                     use_cache: bool) -> dict[str, Any]:
        key = (account, container)
        now = time.monotonic()
        generation = self.generations.current(account, container) if self.generations else 0
        if use_cache and self.ttl > 0:
            hit = self._entries.get(key)
            if hit is not None and hit[0] > now and hit[1] == generation:
                return hit[2]
        path = f"/v1/{account}" if container is None else f"/v1/{account}/{container}"
        resp = await self.app(privileged_subrequest(req, "HEAD", path, source=self.source))
        await resp.read()
        info = _parse_info(resp, "account" if container is None else "container")
        if resp.is_success and self.ttl > 0:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (now + self.ttl, generation, info)
        return info

    async def account(self, req: SwiftRequest, account: str, *, fresh: bool = False
                      ) -> dict[str, Any]:
        return await self._fetch(req, account, None, not fresh)

    async def container(self, req: SwiftRequest, account: str, container: str, *,
                        fresh: bool = False) -> dict[str, Any]:
        return await self._fetch(req, account, container, not fresh)


def conf_section(conf: dict, name: str) -> dict[str, Any]:
    """The middleware's own config section (``[tempurl]`` ...), empty when absent."""
    section = conf.get(name)
    return section if isinstance(section, dict) else {}


def conf_list(value: Any, default: Iterable[str]) -> list[str]:
    """A list setting given as a TOML list or a space/comma separated string."""
    if value is None:
        return list(default)
    if isinstance(value, str):
        return [item for item in value.replace(",", " ").split() if item]
    return [str(item) for item in value]


def conf_bool(value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "on", "t", "y")


def text_response(status: int, text: str, headers: Mapping[str, str] | None = None,
                  content_type: str = "text/plain; charset=UTF-8") -> SwiftResponse:
    resp = SwiftResponse(status, headers, text.encode())
    resp.headers["Content-Type"] = content_type
    return resp


def best_accept(accept: str | None, offers: list[str]) -> str | None:
    """The offer an ``Accept`` header prefers (q-values honoured), None if none fits.

    Without an Accept header the first offer wins, as in Swift's bulk middleware.
    """
    if not accept or not accept.strip():
        return offers[0]
    best: tuple[float, int, str] | None = None
    for rank, item in enumerate(accept.split(",")):
        fields = [f.strip() for f in item.split(";")]
        media = fields[0].lower()
        quality = 1.0
        for param in fields[1:]:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality <= 0 or not media:
            continue
        for order, offer in enumerate(offers):
            major, _, minor = media.partition("/")
            if media == offer or media == "*/*" or (
                minor == "*" and offer.startswith(major + "/")
            ):
                candidate = (quality, -(rank * 100 + order), offer)
                if best is None or candidate > best:
                    best = candidate
                break
    return best[2] if best else None
