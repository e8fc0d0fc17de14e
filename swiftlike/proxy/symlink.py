"""Symlinks: a zero-byte object whose GET/HEAD serves another object.

``PUT`` with ``X-Symlink-Target: <container>/<object>`` (and optionally
``X-Symlink-Target-Account``) stores the target in object sysmeta. A GET or HEAD
follows the chain up to ``symloop_max`` links (then 409) and names the object it
served in ``Content-Location``; ``?symlink=get`` returns the link itself. A static
link (``X-Symlink-Target-Etag``) is pinned to the target's ETag at PUT time: the PUT
fails with 409 when the target does not match, and so does a GET once it changes.
A POST to a link updates the link's own metadata and answers 307 with the target's
path in ``Location``.
"""

from __future__ import annotations

from urllib.parse import quote

from multidict import CIMultiDict

from swiftlike.common.listing import etag_with_slo_etag
from swiftlike.proxy.pipeline import (
    Handler,
    SwiftRequest,
    SwiftResponse,
    error_response,
    info_registry,
)
from swiftlike.proxy.subrequest import (
    discard,
    internal_subrequest,
    is_conditional,
    split_container_object,
    strip_etag,
    true_value,
    whole_if_present,
)
from swiftlike.proxy.symlink_listing import (
    OVERRIDE_TYPE,
    list_with_links,
    listed_content_type,
)

SOURCE = "SYM"
TARGET = "X-Object-Sysmeta-Symlink-Target"
TARGET_ACCOUNT = "X-Object-Sysmeta-Symlink-Target-Account"
TARGET_ETAG = "X-Object-Sysmeta-Symlink-Target-Etag"
TARGET_BYTES = "X-Object-Sysmeta-Symlink-Target-Bytes"
FORM_ERROR = "X-Symlink-Target header must be of the form <container name>/<object name>"
DEFAULT_TYPE = "application/symlink"
#: the etag a link's container row keeps (slo's name for it): a static link to a large
#: object lists the link's own md5 (of no bytes) and, as a parameter, the SLO's etag
LISTED_ETAG = "X-Object-Sysmeta-Container-Update-Override-Etag"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def _target_of(headers: CIMultiDict[str] | object, account: str) -> tuple[str, str] | None:
    """(account, "container/object") a stored symlink points at, or None."""
    target = headers.get(TARGET)  # type: ignore[attr-defined]
    if not target:
        return None
    return headers.get(TARGET_ACCOUNT) or account, target  # type: ignore[attr-defined]


def make_middleware(app: Handler, conf: dict) -> Handler:
    section = conf.get("symlink", {}) if isinstance(conf.get("symlink"), dict) else {}
    symloop_max = int(section.get("symloop_max", 2))
    info_registry(conf).register_info("symlink", {"symloop_max": symloop_max,
                                                  "static_links": True})

    async def symlink(req: SwiftRequest) -> SwiftResponse:
        version, account, container, obj = req.split_path()
        if version == "v1" and account and container and not obj:
            return await list_with_links(app, req, account, container)
        if version != "v1" or not account or not container or not obj:
            return await app(req)
        if req.method == "PUT" and "X-Symlink-Target" in req.headers:
            return await handle_put(req, account)
        if req.method == "POST":
            if "X-Symlink-Target" in req.headers:
                return error_response(400, "A PUT request is required to set a symlink "
                                      "target")
            return await handle_post(req, account)
        if req.method in ("GET", "HEAD"):
            if req.query.get("symlink") == "get":
                resp = await app(req)
                expose(resp, account)
                return resp
            return await follow(req, account)
        return await app(req)

    def expose(resp: SwiftResponse, account: str) -> None:
        """Show a link's stored target as the public X-Symlink-* headers."""
        target = _target_of(resp.headers, account)
        if target is None:
            return
        resp.headers["X-Symlink-Target"] = quote(target[1])
        if resp.headers.get(TARGET_ACCOUNT):
            resp.headers["X-Symlink-Target-Account"] = resp.headers[TARGET_ACCOUNT]
        if resp.headers.get(TARGET_ETAG):
            resp.headers["X-Symlink-Target-Etag"] = resp.headers[TARGET_ETAG]
            resp.headers["X-Symlink-Target-Bytes"] = resp.headers.get(TARGET_BYTES, "")

    async def handle_put(req: SwiftRequest, account: str) -> SwiftResponse:
        raw_target = req.headers["X-Symlink-Target"]
        parsed = split_container_object(raw_target)
        if parsed is None or raw_target.startswith("/"):
            return error_response(412, FORM_ERROR)
        target_account = req.headers.get("X-Symlink-Target-Account")
        if target_account is not None and (not target_account or "/" in target_account):
            return error_response(412, "Account name cannot contain slashes")
        if req.content_length not in (None, 0):
            return error_response(400, "Symlink requests require a zero byte body")
        if req.content_length is None and not req.environ.get("swift.source") and \
                "chunked" not in req.headers.get("Transfer-Encoding", "").lower():
            return error_response(411)  # as any PUT from a client, as in Swift
        if req.content_length is None and req.body is not None:
            try:
                data = await req.read_body(limit=0)
            except ValueError:
                return error_response(400, "Symlink requests require a zero byte body")
            if data:
                return error_response(400, "Symlink requests require a zero byte body")
        headers = CIMultiDict(req.headers)
        for key in ("X-Symlink-Target", "X-Symlink-Target-Account", "X-Symlink-Target-Etag",
                    "X-Symlink-Target-Bytes", "Transfer-Encoding"):
            headers.popall(key, None)
        target_text = "/".join(parsed)
        headers[TARGET] = target_text
        if target_account:
            headers[TARGET_ACCOUNT] = target_account
        if "X-Symlink-Target-Etag" in req.headers:
            checked = await check_static(req, target_account or account, target_text)
            if isinstance(checked, SwiftResponse):
                return checked
            headers[TARGET_ETAG], headers[TARGET_BYTES], target_type, slo_etag = checked
            if slo_etag:
                # as Swift: a static link to a large object is listed with its slo_etag
                headers[LISTED_ETAG] = etag_with_slo_etag(EMPTY_MD5, slo_etag)
            if not req.headers.get("Content-Type"):
                headers["Content-Type"] = target_type
        if not headers.get("Content-Type"):
            headers["Content-Type"] = DEFAULT_TYPE
        headers[OVERRIDE_TYPE] = listed_content_type(
            headers["Content-Type"], target_text, target_account, headers.get(TARGET_ETAG),
            headers.get(TARGET_BYTES))
        headers["Content-Length"] = "0"
        sub = req.make_subrequest("PUT", req.path, headers=headers, body=None,
                                  query=req.query)
        sub.environ["swift.subrequest"] = req.environ.get("swift.subrequest", False)
        resp = await app(sub)
        if resp.is_success and TARGET_ETAG in headers:
            resp.headers["X-Symlink-Target-Etag"] = headers[TARGET_ETAG]
            resp.headers["X-Symlink-Target-Bytes"] = headers[TARGET_BYTES]
        return resp

    async def handle_post(req: SwiftRequest, account: str) -> SwiftResponse:
        """POST to a link: applied to the link itself, then answered 307 to the target.

        Swift never forwards the POST to the target (a node cannot be sure an object
        is a link while replicas disagree), so the metadata lands on the link and the
        client is told where the target is. Our object servers do not return sysmeta on
        POST, so after a successful POST the link is HEADed to learn its target.
        """
        resp = await app(req)
        if not resp.is_success:
            return resp
        head = await app(internal_subrequest(req, "HEAD", req.path, source=SOURCE))
        discard(head)
        target = _target_of(head.headers, account) if head.is_success else None
        if target is None:
            return resp
        discard(resp)
        headers = {"Location": quote(f"/v1/{target[0]}/{target[1]}")}
        if head.headers.get(TARGET_ETAG):
            headers["X-Symlink-Target-Etag"] = head.headers[TARGET_ETAG]
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        return SwiftResponse(307, headers, b"The requested POST was applied to a symlink. "
                             b"POST directly to the target to apply requested metadata.")

    async def check_static(req: SwiftRequest, account: str,
                           target: str) -> tuple[str, str, str, str] | SwiftResponse:
        """(etag, size, type, SLO etag or "") of a static link's target, or the 409 that
        refuses the link (naming the target in ``Content-Location``, as Swift does)."""
        wanted = strip_etag(req.headers["X-Symlink-Target-Etag"])
        location = {"Content-Location": quote(f"/v1/{account}/{target}")}
        head = await app(internal_subrequest(req, "HEAD", f"/v1/{account}/{target}",
                                             source=SOURCE))
        discard(head)
        if head.status == 404:
            return error_response(409, f"X-Symlink-Target does not exist: {quote(target)}",
                                  headers=location)
        if not head.is_success:
            return error_response(head.status if head.status in (401, 403) else 409,
                                  f"Unable to check the symlink target ({head.status})")
        if head.headers.get(TARGET):
            return error_response(409, "X-Symlink-Target-Etag cannot point at a symlink")
        # as Swift's: the ETag of what is stored at the target, so for a large object
        # its manifest's (X-Manifest-Etag, or the ETag of ?multipart-manifest=get)
        etag = strip_etag(head.headers.get("ETag"))
        if true_value(head.headers.get("X-Static-Large-Object")):
            size = head.headers.get("X-Object-Sysmeta-Slo-Size", "0")
        else:
            size = str(head.content_length if head.content_length is not None
                       else head.headers.get("Content-Length", "0"))
        if etag != wanted:
            return error_response(409, f'Object Etag "{etag}" does not match '
                                  f'X-Symlink-Target-Etag header "{wanted}"', headers=location)
        wanted_bytes = req.headers.get("X-Symlink-Target-Bytes")
        if wanted_bytes is not None and wanted_bytes.strip() != size:
            return error_response(409, f'Object Content-Length "{size}" does not match '
                                  f'X-Symlink-Target-Bytes header "{wanted_bytes}"')
        slo_etag = strip_etag(head.headers.get("X-Object-Sysmeta-Slo-Etag")) \
            if true_value(head.headers.get("X-Static-Large-Object")) else ""
        return etag, size, head.headers.get("Content-Type", DEFAULT_TYPE), slo_etag or ""

    async def follow(req: SwiftRequest, account: str) -> SwiftResponse:
        if is_conditional(req):
            # Range/If-* are for the target, not for the link (the header goes on to
            # the target too, which may be a manifest or another link)
            whole_if_present(req, TARGET)
        resp = await app(req)
        hops = 0
        current_account = account
        while resp.is_success and resp.headers.get(TARGET):
            link = resp.headers
            if hops >= symloop_max:
                discard(resp)
                return error_response(409, "Too many levels of symbolic links, maximum "
                                      f"allowed is {symloop_max}")
            hops += 1
            current_account, target = _target_of(link, current_account)  # type: ignore[misc]
            pinned = strip_etag(link.get(TARGET_ETAG)) or None
            discard(resp)
            path = f"/v1/{current_account}/{target}"
            headers = {k: v for k, v in req.headers.items()}
            sub = internal_subrequest(req, req.method, path, headers=headers, query={
                k: v for k, v in req.query.items() if k != "symlink"}, source=SOURCE)
            resp = await app(sub)
            location = quote(path)
            if resp.status == 404:
                resp.headers["Content-Location"] = location
                return resp
            if pinned is not None and resp.is_success:
                actual = strip_etag(resp.headers.get("ETag"))
                if true_value(resp.headers.get("X-Static-Large-Object")) and pinned == \
                        strip_etag(resp.headers.get("X-Object-Sysmeta-Slo-Etag")):
                    actual = pinned  # pinned to the content's ETag by an older release
                if actual != pinned:
                    discard(resp)
                    return error_response(409, f'Object Etag "{actual}" does not match '
                                          f'X-Symlink-Target-Etag header "{pinned}"',
                                          headers={"Content-Location": location})
            resp.headers["Content-Location"] = location
        return resp

    return symlink
