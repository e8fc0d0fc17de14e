"""Static web sites served from containers, for anonymous GET/HEAD requests.

A container readable by everyone (``X-Container-Read: .r:*``, plus ``.rlistings`` for
listings) turns into a web site with:

* ``X-Container-Meta-Web-Index``: the object served for ``.../dir/`` (``index.html``);
* ``X-Container-Meta-Web-Listings: true``: an HTML listing when there is no index,
  styled by ``X-Container-Meta-Web-Listings-CSS`` if set and titled with
  ``X-Container-Meta-Web-Listings-Label`` in place of the account and container;
* ``X-Container-Meta-Web-Error``: a suffix; a 404 or 401 shows the object
  ``<status><suffix>`` (``404error.html``) with the original status;
* ``X-Container-Meta-Web-Directory-Type``: the content type of directory markers,
  which count as missing (default ``application/directory``).

Paths to a directory without the trailing slash are redirected (301) to it.
Authenticated users get the plain API unless they send ``X-Web-Mode: true``.
Listings work on the plain ``/v1/AUTH_x/container/`` path: no domain remapping.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

from swiftlike.proxy.info_generations import info_generations
from swiftlike.proxy.mw_util import InfoCache, conf_bool, conf_section, split_v1
from swiftlike.proxy.pipeline import (
    Handler,
    SwiftRequest,
    SwiftResponse,
    error_response,
    info_registry,
)

DEFAULT_CSS = (
    "   h1 {font-size: 1em; font-weight: bold;}\n"
    "   th {text-align: left; padding: 0px 1em 0px 1em;}\n"
    "   td {padding: 0px 1em 0px 1em;}\n"
    "   a {text-decoration: none;}\n"
)
DOCTYPE = ('<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01 Transitional//EN" '
           '"http://www.w3.org/TR/html4/loose.dtd">\n')


def human_size(size: int) -> str:
    value = float(size)
    for suffix in ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if value < 1024 or suffix == "Yi":
            return f"{int(value)}" if not suffix else f"{round(value)}{suffix}"
        value /= 1024
    return str(size)


def passes_through(req: SwiftRequest) -> bool:
    """Reads by an authenticated user outside web mode, and subrequests, are not
    website requests (see pipeline.Bypass)."""
    if req.method not in ("GET", "HEAD"):
        return False
    environ = req.environ
    if environ.get("swift.subrequest"):
        return True
    return bool(environ.get("swift.identity") or environ.get("REMOTE_USER")) and \
        not conf_bool(req.headers.get("X-Web-Mode"), False)


_READ_CONDITIONS = ("range", "if-match", "if-none-match", "if-modified-since",
                    "if-unmodified-since")


class _Site:
    """One request's view of a container's web settings."""

    def __init__(self, info: dict[str, Any]) -> None:
        meta = info.get("meta", {})
        self.index = meta.get("web-index", "").strip()
        self.error = meta.get("web-error", "").strip()
        self.listings = conf_bool(meta.get("web-listings"), False)
        # as Swift's: a container with Web-Listings set at all, even to false, is a web
        # site (an anonymous read of it gets "listing disabled" and the error page,
        # not the plain listing)
        self.is_site = bool(self.index or meta.get("web-listings", "").strip())
        self.listings_css = meta.get("web-listings-css", "").strip()
        # shown in place of /v1/<account>/<container>, so a listing need not name the
        # account (Swift's X-Container-Meta-Web-Listings-Label)
        self.listings_label = meta.get("web-listings-label", "").strip()
        self.dir_type = meta.get("web-directory-type", "").strip() or "application/directory"


class StaticWeb:
    def __init__(self, app: Handler, conf: dict) -> None:
        section = conf_section(conf, "staticweb")
        self.app = app
        self.info = InfoCache(app, float(section.get("info_cache_seconds", 5.0)), "SW",
                               info_generations(conf))
        info_registry(conf).register_info("staticweb", {})

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await self.app(req)
        self.info.observe(req)
        # past passes_through, a read is an anonymous or web-mode client request
        if req.method not in ("GET", "HEAD"):
            return await self.app(req)
        account, container, obj = split_v1(req.path)
        if account is None or container is None:
            return await self.app(req)
        web_mode = conf_bool(req.headers.get("X-Web-Mode"), False)
        info = await self.info.container(req, account, container)
        if info["status"] // 100 != 2:
            return await self.app(req)
        site = _Site(info)
        base = f"/v1/{account}/{container}"
        if obj is None:
            return await self._container(req, site, base, web_mode)
        return await self._object(req, site, base, obj)

    def _sub(self, req: SwiftRequest, method: str, path: str,
             query: dict[str, str] | None = None) -> SwiftRequest:
        # The client's headers go along, as in Swift (its staticweb copies the whole
        # environ): authorization reads them, e.g. Referer for ".r:<host>" ACLs, which
        # an anonymous web read is all about. Range and conditions only apply to a
        # request of the client's own method; a listing's format is the query's.
        sub = req.make_subrequest(method, path, query=query)
        same_method = method == req.method
        for name, value in req.headers.items():
            lowered = name.lower()
            if lowered in _READ_CONDITIONS and not same_method:
                continue
            if lowered in ("content-length", "transfer-encoding"):
                continue  # the subrequest has no body
            if lowered == "accept" and query:
                continue  # a listing's format is the query's
            sub.headers.add(name, value)
        sub.environ["swift.source"] = "SW"
        return sub

    async def _container(self, req: SwiftRequest, site: _Site, base: str, web_mode: bool
                         ) -> SwiftResponse:
        if not site.is_site:
            if web_mode:
                return error_response(404)
            return await self.app(req)
        if not req.path.endswith("/"):
            return _redirect(req.path + "/")
        if not site.index:
            return await self._listing(req, site, base, "")
        resp = await self.app(self._sub(req, req.method, req.path + site.index))
        if resp.status == 404:
            await resp.read()
            return await self._listing(req, site, base, "")
        if not 200 <= resp.status < 400:
            return await self._error(req, site, base, resp)
        return resp

    async def _object(self, req: SwiftRequest, site: _Site, base: str, obj: str
                      ) -> SwiftResponse:
        resp = await self.app(self._sub(req, req.method, req.path))
        if 200 <= resp.status < 400:
            length = resp.content_length or 0
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
            if not (ctype == site.dir_type and length <= 1):
                return resp
        elif resp.status != 404:
            site.error = ""
            return await self._error(req, site, base, resp)
        if not site.is_site:
            return resp
        await resp.read()
        status = 404
        if site.index:
            index_path = req.path if req.path.endswith("/") else req.path + "/"
            index = await self.app(self._sub(req, req.method, index_path + site.index))
            status = index.status
            if 200 <= status < 400:
                if not req.path.endswith("/"):
                    await index.read()
                    return _redirect(req.path + "/")
                return index
            await index.read()
            if status != 404:
                return await self._error(req, site, base, index)
        if not req.path.endswith("/"):
            probe = await self.app(self._sub(req, "GET", base, {
                "limit": "1", "delimiter": "/", "prefix": obj + "/", "format": "json"}))
            body = await probe.read()
            try:
                rows = json.loads(body or b"[]") if probe.is_success else []
            except ValueError:
                rows = []
            if not rows:
                return await self._error(req, site, base, error_response(404))
            return _redirect(req.path + "/")
        return await self._listing(req, site, base, obj)

    async def _error(self, req: SwiftRequest, site: _Site, base: str, resp: SwiftResponse
                     ) -> SwiftResponse:
        """The container's ``<status><suffix>`` page with the original status, if any."""
        if not site.error:
            return resp
        page = await self.app(self._sub(req, "GET", f"{base}/{resp.status}{site.error}"))
        if not page.is_success:
            await page.read()
            return resp
        await resp.read()
        page.status = resp.status
        if req.method == "HEAD":
            await page.read()
            length = page.content_length
            page.body = None
            page.content_length = length
        return page

    async def _listing(self, req: SwiftRequest, site: _Site, base: str, prefix: str
                       ) -> SwiftResponse:
        label = req.path
        if site.listings_label:
            label = site.listings_label + "/" + "/".join(req.path.split("/")[4:])
        label = html.escape(label, quote=False)
        if not site.listings:
            body = (DOCTYPE + f"<html>\n<head>\n<title>Listing of {label}</title>\n"
                    "</head>\n<body>\n<h1>Web Listing Disabled</h1><p>The owner of this web "
                    "site has disabled web listing.<p>If you are the owner of this web site, "
                    "you can enable web listing by setting X-Container-Meta-Web-Listings.</p>")
            if site.index:
                body += ("<h1>Index File Not Found</h1><p>The owner of this web site has set "
                         f"<b>X-Container-Meta-Web-Index: {html.escape(site.index)}</b>. "
                         "However, this file is not found.</p>")
            body += " </body>\n</html>\n"
            resp = SwiftResponse(404, {"Content-Type": "text/html; charset=UTF-8"},
                                 body.encode())
            return await self._error(req, site, base, resp)
        query = {"delimiter": "/", "format": "json"}
        if prefix:
            query["prefix"] = prefix
        listing_resp = await self.app(self._sub(req, "GET", base, query))
        raw = await listing_resp.read()
        if not listing_resp.is_success:
            return await self._error(req, site, base, listing_resp)
        try:
            rows = json.loads(raw or b"[]")
        except ValueError:
            return error_response(503)
        if prefix and not rows:
            return await self._error(req, site, base, error_response(404))
        body = self._listing_html(label, site, prefix, rows).encode()
        resp = SwiftResponse(200, {"Content-Type": "text/html; charset=UTF-8"}, body)
        if req.method == "HEAD":
            resp.body = None
        return resp

    @staticmethod
    def _listing_html(label: str, site: _Site, prefix: str, rows: list[dict]) -> str:
        out = [DOCTYPE, "<html>\n <head>\n", f"  <title>Listing of {label}</title>\n"]
        if site.listings_css:
            css = site.listings_css
            if "://" not in css and not css.startswith("/"):
                css = "../" * prefix.count("/") + css
            out.append(f'  <link rel="stylesheet" type="text/css" href="{quote(css, safe=":/")}'
                       '" />\n')
        else:
            out.append('  <style type="text/css">\n' + DEFAULT_CSS + "  </style>\n")
        out.append(f' </head>\n <body>\n  <h1 id="title">Listing of {label}</h1>\n'
                   '  <table id="listing">\n   <tr id="heading">\n'
                   '    <th class="colname">Name</th>\n    <th class="colsize">Size</th>\n'
                   '    <th class="coldate">Date</th>\n   </tr>\n')
        blank = '    <td class="colsize">&nbsp;</td>\n    <td class="coldate">&nbsp;</td>\n'
        if prefix:
            out.append('   <tr id="parent" class="item">\n'
                       '    <td class="colname"><a href="../">../</a></td>\n' + blank
                       + "   </tr>\n")
        for row in rows:
            if "subdir" in row:
                name = row["subdir"][len(prefix):]
                out.append('   <tr class="item subdir">\n    <td class="colname"><a href="'
                           f'{quote(name)}">{html.escape(name)}</a></td>\n' + blank
                           + "   </tr>\n")
        for row in rows:
            if "name" in row:
                name = row["name"][len(prefix):]
                types = " ".join("type-" + html.escape(t.lower())
                                 for t in row.get("content_type", "").split("/"))
                date = html.escape(row.get("last_modified", "")).split(".")[0]
                out.append(f'   <tr class="item {types}">\n    <td class="colname"><a href="'
                           f'{quote(name)}">{html.escape(name)}</a></td>\n'
                           f'    <td class="colsize">{human_size(int(row.get("bytes", 0)))}'
                           f'</td>\n    <td class="coldate">{date.replace("T", " ")}</td>\n'
                           "   </tr>\n")
        out.append("  </table>\n </body>\n</html>\n")
        return "".join(out)


def _redirect(location: str) -> SwiftResponse:
    body = (f'<html><h1>Moved Permanently</h1><p>The resource has moved to '
            f'<a href="{html.escape(location)}">{html.escape(location)}</a>.</p></html>')
    resp = SwiftResponse(301, {"Content-Type": "text/html; charset=UTF-8"}, body.encode())
    resp.headers["Location"] = quote(location.encode("utf-8", "surrogateescape"), safe="/")
    return resp


def make_middleware(app: Handler, conf: dict) -> Handler:
    return StaticWeb(app, conf)
