"""Server-side copy: ``COPY`` with ``Destination`` and ``PUT`` with ``X-Copy-From``.

Implemented as a subrequest pair: a GET of the source (authorized as the caller, so
copying needs read access to the source) whose body streams straight into a PUT of
the destination. Unless ``X-Fresh-Metadata: true``, the source's user metadata and
content headers and its ``X-Delete-At`` travel along (so a copy of an object that
expires expires with it, as in Swift); headers in the request override them. A
``Range`` (and any ``If-*``) in the request applies to the source, as in Swift: ``PUT``
with ``X-Copy-From`` and ``Range`` makes a partial copy. With
``?multipart-manifest=get`` a large object's manifest is copied instead of its data.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse, error_response
from swiftlike.proxy.subrequest import true_value

COPIED_HEADERS = ("Content-Type", "Content-Encoding", "Content-Disposition",
                  "Content-Language", "Cache-Control", "Expires")


def _split_target(value: str) -> tuple[str, str] | None:
    text = unquote(value).lstrip("/")
    container, sep, obj = text.partition("/")
    if not sep or not container or not obj:
        return None
    return container, obj


def _source_metadata(headers) -> dict[str, str]:
    out = {}
    for key, value in headers.items():
        lower = key.lower()
        if lower.startswith("x-object-meta-") or key.title() in COPIED_HEADERS or \
                lower in (h.lower() for h in COPIED_HEADERS) or lower == "x-delete-at":
            out[key] = value
    return out


def passes_through(req: SwiftRequest) -> bool:
    """Only COPY and PUT can copy (see pipeline.Bypass)."""
    return req.method not in ("COPY", "PUT")


def make_middleware(app: Handler, conf: dict) -> Handler:
    async def copy(req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await app(req)
        version, account, container, obj = req.split_path()
        if version != "v1" or not account or not container or not obj:
            return await app(req)
        if req.method == "COPY":
            destination = req.headers.get("Destination")
            if not destination:
                return error_response(412, "You must provide a Destination header")
            target = _split_target(destination)
            if target is None:
                return error_response(412, "Destination header must be of the form "
                                           "<container name>/<object name>")
            dest_account = req.headers.get("Destination-Account", account)
            dest_account = unquote(dest_account)
            src = (account, container, obj)
            dest = (dest_account, *target)
        elif "X-Copy-From" in req.headers:
            source = _split_target(req.headers["X-Copy-From"])
            if source is None:
                return error_response(412, "X-Copy-From header must be of the form "
                                           "<container name>/<object name>")
            src_account = unquote(req.headers.get("X-Copy-From-Account", account))
            src = (src_account, *source)
            dest = (account, container, obj)
            length = req.headers.get("Content-Length")
            if length not in (None, "0"):
                return error_response(400, "Copy requests require a zero byte body")
        else:
            return await app(req)
        if "X-Static-Large-Object" in req.headers:
            # the copy's PUT is a subrequest, which slo lets carry the flag (from the
            # source's metadata); from the client it is as reserved as on a PUT
            return error_response(400, "X-Static-Large-Object is a reserved header. To "
                                  "create a static large object add query param "
                                  "multipart-manifest=put.")
        return await _do_copy(app, req, src, dest)

    return copy


_CONDITIONS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
               "range")
_NOT_COPIED = ("x-copy-from", "x-copy-from-account", "destination", "destination-account",
               "content-length", "transfer-encoding", "x-fresh-metadata", *_CONDITIONS,
               "x-auth-token")


#: What makes the copy of a link a link again (its PUT goes through symlink, which
#: checks a static link's target once more)
_LINK_HEADERS = ("X-Symlink-Target", "X-Symlink-Target-Account", "X-Symlink-Target-Etag")


def _version_query(req: SwiftRequest) -> dict[str, str]:
    """A COPY's ``?version-id`` names the source version (restoring an old version is a
    COPY of it onto its own name); on a PUT the query belongs to the destination."""
    if req.method == "COPY" and "version-id" in req.query:
        return {"version-id": req.query["version-id"]}
    return {}


def _dest_headers(req: SwiftRequest, source_headers) -> dict[str, str]:
    """The destination PUT's headers: the source's metadata (unless X-Fresh-Metadata),
    overridden by the request's own."""
    headers: dict[str, str] = {}
    fresh = req.headers.get("X-Fresh-Metadata", "").lower() in ("true", "1", "yes")
    if not fresh:
        headers.update(_source_metadata(source_headers))
    elif "Content-Type" in source_headers:
        headers["Content-Type"] = source_headers["Content-Type"]
    if "X-Delete-After" in req.headers or "X-Delete-At" in req.headers:
        headers.pop("X-Delete-At", None)  # the request's own expiry, whichever it names
    for key, value in req.headers.items():
        if key.lower() not in _NOT_COPIED:
            headers[key] = value
    return headers


def _copied(resp: SwiftResponse, src: tuple[str, str, str], source_headers,
            sent: dict[str, str]) -> SwiftResponse:
    """The destination PUT's answer, with where it came from and, as Swift's, the
    metadata and expiry the copy was given (``sent``)."""
    if resp.is_success:
        for key, value in sent.items():
            if key.lower().startswith("x-object-meta-") or key.lower() == "x-delete-at":
                resp.headers[key] = value
        resp.headers["X-Copied-From"] = quote(f"{src[1]}/{src[2]}".encode(
            "utf-8", "surrogateescape"))
        resp.headers["X-Copied-From-Account"] = quote(src[0].encode("utf-8",
                                                                    "surrogateescape"))
        if "Last-Modified" in source_headers:
            resp.headers["X-Copied-From-Last-Modified"] = source_headers["Last-Modified"]
    return resp


async def _do_copy(app: Handler, req: SwiftRequest, src: tuple[str, str, str],
                   dest: tuple[str, str, str]) -> SwiftResponse:
    src_path = "/v1/" + "/".join(src)
    get_headers = {k: v for k, v in req.headers.items() if k.lower() in _CONDITIONS}
    if req.query.get("multipart-manifest") == "get":
        copied = await _copy_manifest(app, req, src_path, src, dest, get_headers)
        if copied is not None:
            return copied
    # ?symlink=get: the link itself is the source (Swift's API: copies the symlink,
    # not its target); symlink answers it with the public X-Symlink-* headers
    copies_link = req.query.get("symlink") == "get"
    source_query = _version_query(req)
    if copies_link:
        source_query["symlink"] = "get"
    source = await app(req.make_subrequest("GET", src_path, headers=get_headers,
                                           query=source_query or None))
    if source.status not in (200, 206):
        source.close()
        if source.status == 304:
            return error_response(412)
        return source
    headers = _dest_headers(req, source.headers)
    if copies_link and "X-Symlink-Target" in source.headers:
        for key in _LINK_HEADERS:
            if source.headers.get(key):
                headers.setdefault(key, source.headers[key])
    length = source.content_length
    if length is None:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(length)
    etag = source.headers.get("ETag", "").strip('"')
    if etag and source.status == 200 and "X-Object-Manifest" not in source.headers and \
            "X-Static-Large-Object" not in source.headers:
        headers["ETag"] = etag  # not for a part of it (206), nor a large object's
    put = req.make_subrequest("PUT", "/v1/" + "/".join(dest), headers=headers,
                              body=source.iter_body())
    resp = await app(put)
    source.close()
    return _copied(resp, src, source.headers, headers)


async def _copy_manifest(app: Handler, req: SwiftRequest, src_path: str,
                         src: tuple[str, str, str], dest: tuple[str, str, str],
                         get_headers: dict[str, str]) -> SwiftResponse | None:
    """``?multipart-manifest=get``: copy a large object's manifest, not its data.

    Swift's API reference: the manifest is copied, so a large object can be duplicated
    (or renamed) without reading its segments, whatever its size. An SLO's manifest is
    read in the PUT format (``format=raw``) and stored again through slo, which checks
    the segments; a DLO's manifest is its ``X-Object-Manifest`` header. The source's
    HEAD gives the metadata (a manifest GET answers as JSON). None for a plain object,
    whose manifest is itself: the caller copies it as any other.
    """
    head = await app(req.make_subrequest(
        "HEAD", src_path, query=_version_query(req) or None,
        headers={k: v for k, v in get_headers.items() if k.lower() != "range"}))
    head.close()
    if head.status != 200:
        return error_response(412) if head.status == 304 else error_response(head.status)
    query = None
    kept: dict[str, str] = {}
    if true_value(head.headers.get("X-Static-Large-Object")):  # what slo calls an SLO
        source = await app(req.make_subrequest(
            "GET", src_path, query={"multipart-manifest": "get", "format": "raw",
                                    **_version_query(req)}))
        if source.status != 200:
            source.close()
            return error_response(source.status)
        manifest = await source.read()
        query = {"multipart-manifest": "put"}
    elif "X-Object-Manifest" in head.headers:
        manifest = b""
        kept["X-Object-Manifest"] = head.headers["X-Object-Manifest"]
    else:
        return None
    headers = {**_dest_headers(req, head.headers), **kept,
               "Content-Length": str(len(manifest))}

    async def body():
        yield manifest

    put = req.make_subrequest("PUT", "/v1/" + "/".join(dest), headers=headers, body=body(),
                              query=query)
    return _copied(await app(put), src, head.headers, headers)
