"""Account quotas: ``X-Account-Meta-Quota-Bytes``, set only by a reseller admin.

The quota limits what an account's users may store, so the account's own admins
may not change it: a POST/PUT carrying the header (or its ``X-Remove-`` form)
from anyone but a reseller admin (``environ["swift.reseller_request"]``, set by the auth
middleware) is 403. An object PUT or copy that would take the account's bytes
past the quota answers 413 "Upload exceeds quota."
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

QUOTA_HEADER = "X-Account-Meta-Quota-Bytes"
REMOVE_HEADER = "X-Remove-Account-Meta-Quota-Bytes"


def passes_through(req: SwiftRequest) -> bool:
    """Quotas bound writes only (see pipeline.Bypass)."""
    return req.method in ("GET", "HEAD")


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
        if req.method not in ("PUT", "POST", "COPY"):
            return await self.app(req)
        account, container, _obj = split_v1(req.path)
        if account is None:
            return await self.app(req)
        if container is None:
            new_quota = req.headers.get(QUOTA_HEADER)
            remove = req.headers.get(REMOVE_HEADER)
            if remove:
                new_quota = "0"
            if req.environ.get("swift.reseller_request") is True:
                if remove:
                    # X-Remove- dominates: an empty value deletes the metadata item
                    req.headers.popall(REMOVE_HEADER, None)
                    req.headers[QUOTA_HEADER] = ""
                elif new_quota and not new_quota.strip().isdigit():
                    return error_response(400, "Invalid quota.")
                return await self.app(req)
            if new_quota is not None:
                return error_response(403)
            return await self.app(req)
        target = write_target(req)
        if target is None:
            return await self.app(req)
        info = await self.info.account(req, target[0])
        quota = _quota_of(info)
        if quota.isdigit():
            info = await self.info.account(req, target[0], fresh=True)
            quota = _quota_of(info)
        if quota.isdigit():
            size = await write_size(self.app, req)
            if size is not None and info["bytes"] + size > int(quota):
                return quota_response(req)
            if cap_chunked_body(req, int(quota) - info["bytes"]):
                try:
                    return await self.app(req)
                except QuotaExceededInStream:
                    return quota_response(req)
        return await self.app(req)


def _quota_of(info: dict) -> str:
    return info["meta"].get("quota-bytes", "").strip() if info["status"] // 100 == 2 else ""


def make_middleware(app: Handler, conf: dict) -> Handler:
    return AccountQuotas(app, conf)
