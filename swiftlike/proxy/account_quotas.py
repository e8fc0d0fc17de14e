"""Account quotas: ``X-Account-Quota-Bytes`` and ``X-Account-Quota-Count``, set only by
a reseller admin (and the older ``X-Account-Meta-Quota-Bytes``, which counts as the
first when the first is absent).

The quota limits what an account's users may store, so the account's own admins
may not change it: a POST/PUT carrying one of the headers (or its ``X-Remove-`` form)
from anyone but a reseller admin (``environ["swift.reseller_request"]``, set by the auth
middleware) is 403. As Swift's, the values are kept as account sysmeta
(``X-Account-Sysmeta-Quota-Bytes`` / ``-Count``), which no user header can write, and
shown as ``X-Account-Quota-Bytes`` / ``-Count`` on the account's HEAD and GET. An
object PUT or copy that would take the account's bytes (or its object count) past the
quota answers 413 "Upload exceeds quota."
"""

from __future__ import annotations

from swiftlike.proxy.info_generations import info_generations
from swiftlike.proxy.mw_util import InfoCache, conf_section, split_v1
from swiftlike.proxy.pipeline import (
    Handler,
    SwiftRequest,
    SwiftResponse,
    error_response,
    info_registry,
)
from swiftlike.proxy.quota_util import (
    QuotaExceededInStream,
    cap_chunked_body,
    quota_response,
    write_size,
    write_target,
)

LEGACY_HEADER = "X-Account-Meta-Quota-Bytes"
LEGACY_REMOVE = "X-Remove-Account-Meta-Quota-Bytes"
QUOTA_TYPES = ("Quota-Bytes", "Quota-Count")


def passes_through(req: SwiftRequest) -> bool:
    """Quotas bound writes, and show on the account's own reads (see pipeline.Bypass)."""
    if req.method not in ("GET", "HEAD"):
        return False
    account, container, _obj = split_v1(req.path)
    return account is None or container is not None


class AccountQuotas:
    def __init__(self, app: Handler, conf: dict) -> None:
        self.app = app
        # cached: whether the account has a quota; fresh: its usage (as container_quotas)
        self.info = InfoCache(app, float(conf_section(conf, "account_quotas").get(
            "info_cache_seconds", 5.0)), "AQ", info_generations(conf))
        info_registry(conf).register_info("account_quotas", {})

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await self.app(req)
        self.info.observe(req)
        account, container, _obj = split_v1(req.path)
        if account is None:
            return await self.app(req)
        if container is None:
            return await self.account_request(req)
        if req.method not in ("PUT", "COPY"):
            return await self.app(req)
        target = write_target(req)
        if target is None:
            return await self.app(req)
        info = await self.info.account(req, target[0])
        if _quota_of(info, "quota-bytes") is None and _quota_of(info, "quota-count") is None:
            return await self.app(req)
        info = await self.info.account(req, target[0], fresh=True)
        count_quota = _quota_of(info, "quota-count")
        if count_quota is not None and info["object_count"] + 1 > count_quota:
            return quota_response(req)
        quota = _quota_of(info, "quota-bytes")
        if quota is not None:
            size = await write_size(self.app, req)
            if size is not None and info["bytes"] + size > quota:
                return quota_response(req)
            if cap_chunked_body(req, quota - info["bytes"]):
                try:
                    return await self.app(req)
                except QuotaExceededInStream:
                    return quota_response(req)
        return await self.app(req)

    async def account_request(self, req: SwiftRequest) -> SwiftResponse:
        """Setting quotas (reseller admins only) and showing them."""
        if req.method in ("PUT", "POST"):
            if LEGACY_HEADER in req.headers and not req.headers.get("X-Account-Quota-Bytes"):
                req.headers["X-Account-Quota-Bytes"] = req.headers[LEGACY_HEADER]
            if req.headers.get(LEGACY_REMOVE):
                req.headers["X-Remove-Account-Quota-Bytes"] = req.headers[LEGACY_REMOVE]
            changes = {}
            for kind in QUOTA_TYPES:
                value = req.headers.popone(f"X-Account-{kind}", None)
                if req.headers.popone(f"X-Remove-Account-{kind}", None):
                    value = ""  # X-Remove- dominates
                if value is not None:
                    changes[kind] = value.strip()
            if changes and req.environ.get("swift.reseller_request") is not True:
                return error_response(403)
            if any(value and not value.isdigit() for value in changes.values()):
                return error_response(400, "Invalid quota.")
            if req.headers.get(LEGACY_REMOVE):
                # X-Remove- dominates: an empty value deletes the metadata item
                req.headers.popall(LEGACY_REMOVE, None)
                req.headers[LEGACY_HEADER] = ""
            for kind, value in changes.items():
                req.headers[f"X-Account-Sysmeta-{kind}"] = value
        resp = await self.app(req)
        for kind in QUOTA_TYPES:
            value = resp.headers.get(f"X-Account-Sysmeta-{kind}")
            if value:
                resp.headers[f"X-Account-{kind}"] = value
        return resp


def _quota_of(info: dict, name: str) -> int | None:
    """The account's quota ``name`` (``quota-bytes``, ``quota-count``), if it has one:
    the sysmeta a reseller set, else (bytes only) the older user-metadata form."""
    if info["status"] // 100 != 2:
        return None
    value = info["sysmeta"].get(name)
    if value is None and name == "quota-bytes":
        value = info["meta"].get(name)
    value = (value or "").strip()
    return int(value) if value.isdigit() else None


def make_middleware(app: Handler, conf: dict) -> Handler:
    return AccountQuotas(app, conf)
