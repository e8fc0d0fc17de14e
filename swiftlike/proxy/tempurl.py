"""Temporary URLs: time-limited, HMAC-signed access to one object (or a prefix).

A user sets ``X-Account-Meta-Temp-URL-Key`` (or ``-Key-2``, or the container's
``X-Container-Meta-Temp-URL-Key[-2]``) and hands out a URL carrying
``temp_url_sig`` and ``temp_url_expires``. The signature is an HMAC of
``"<method>\\n<expires>\\n<path>"`` (optionally prefixed by ``ip=<range>\\n`` and with
the path ``prefix:/v1/a/c/<prefix>`` for prefix URLs), hex or ``<digest>:<base64>``.
A valid URL authorizes the request by itself (``swift.authorize_override``) for that
account, or only that container when a container key signed it; anything else
answers 401 "Temp URL invalid". This sits before the auth middleware, as in Swift.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import hmac
import ipaddress
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from swiftlike.common.timestamp import http_date
from swiftlike.proxy.info_generations import info_generations
from swiftlike.proxy.mw_util import (
    InfoCache,
    conf_list,
    conf_section,
    mark_authorized,
    split_v1,
)
from swiftlike.proxy.pipeline import (
    FIRST_QUERY_VALUES,
    Handler,
    SwiftRequest,
    SwiftResponse,
    error_response,
    info_registry,
)

DEFAULT_METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE"]
DEFAULT_INCOMING_REMOVE = ["x-timestamp", "x-open-expired"]
DEFAULT_OUTGOING_REMOVE = ["x-object-meta-*"]
DEFAULT_OUTGOING_ALLOW = ["x-object-meta-public-*"]
SUPPORTED_DIGESTS = ("sha1", "sha256", "sha512")
#: Swift's default: sha1 still allowed (and listed as deprecated in /info), because
#: the clients users hold sign with it (openstacksdk's generate_temp_url and
#: generate_form_signature know no other); an operator may drop it (allowed_digests).
DEFAULT_DIGESTS = ["sha1", "sha256", "sha512"]
DEPRECATED_DIGESTS = ("sha1",)
HEX_LENGTHS = {40: "sha1", 64: "sha256", 128: "sha512"}
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
CONTAINER_KEY_HEADERS = ("X-Container-Meta-Temp-URL-Key", "X-Container-Meta-Temp-URL-Key-2")


def parse_signature(sig: str) -> tuple[str, str]:
    """``(digest name, hex signature)`` of a hex or ``<digest>:<base64>`` signature.

    Raises ValueError for anything else (unknown digest, bad base64, odd length).
    """
    if ":" in sig:
        algo, _, encoded = sig.partition(":")
        algo = algo.lower()
        if algo not in SUPPORTED_DIGESTS:
            raise ValueError("unsupported digest")
        encoded = encoded.replace("-", "+").replace("_", "/")
        encoded += "=" * (-len(encoded) % 4)
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("bad base64 signature") from exc
        if len(raw) != hashlib.new(algo).digest_size:
            raise ValueError("signature has the wrong length")
        return algo, raw.hex()
    algo = HEX_LENGTHS.get(len(sig))
    if algo is None:
        raise ValueError("signature has an unknown length")
    try:
        int(sig, 16)
    except ValueError as exc:
        raise ValueError("signature is not hex") from exc
    return algo, sig.lower()


def parse_expires(value: str) -> int:
    """Unix seconds from an integer or an ISO 8601 ``YYYY-MM-DDTHH:MM:SSZ`` time.

    Returns 0 (always expired) for anything unparsable, like Swift.
    """
    try:
        expires = int(value)
    except ValueError:
        try:
            expires = calendar.timegm(time.strptime(value, ISO_FORMAT))
        except ValueError:
            return 0
    return max(expires, 0)


def sign(key: str, method: str, expires: str, path: str, digest: str = "sha256",
         ip_range: str | None = None) -> str:
    """The hex HMAC a temp URL must carry (also used by tests and tools)."""
    message = f"{method}\n{expires}\n{path}"
    if ip_range:
        message = f"ip={ip_range}\n{message}"
    return hmac.new(key.encode(), message.encode(), digest).hexdigest()


def disposition(filename: str | None, inline: bool, existing: str | None, path: str
                ) -> str:
    """The Content-Disposition a GET through a temp URL answers with."""
    def with_name(kind: str, name: str) -> str:
        ascii_name = name.replace('"', '\\"')
        return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"

    if inline:
        return with_name("inline", filename) if filename else "inline"
    if filename:
        return with_name("attachment", filename)
    if existing:
        return existing
    return with_name("attachment", path.rstrip("/").rsplit("/", 1)[-1])


def _header_matcher(patterns: list[str]) -> Callable[[str], bool]:
    exact = {p.lower() for p in patterns if not p.endswith("*")}
    prefixes = tuple(p[:-1].lower() for p in patterns if p.endswith("*"))

    def matches(name: str) -> bool:
        lower = name.lower()
        return lower in exact or (bool(prefixes) and lower.startswith(prefixes))

    return matches


def passes_through(req: SwiftRequest) -> bool:
    """An object read without temp URL parameters is not ours (see pipeline.Bypass).

    Container reads are entered: their key headers may have to be hidden.
    """
    return (req.method in ("GET", "HEAD") and "temp_url_sig" not in req.query
            and "temp_url_expires" not in req.query and split_v1(req.path)[2] is not None)


#: Headers a temp URL that writes may not carry (Swift's DISALLOWED_INCOMING_HEADERS).
_DISALLOWED_INCOMING = ("X-Object-Manifest", "X-Symlink-Target")


def _first(req: SwiftRequest, name: str) -> str | None:
    """A temp URL parameter's first value when the client repeated it, as Swift's tempurl
    reads them (every other parameter takes its last value)."""
    if name not in req.query:  # a subrequest inherits the environ, not the query
        return None
    first = req.environ.get(FIRST_QUERY_VALUES, {}).get(name)
    return first if first is not None else req.query[name]


class TempURL:
    """The middleware; one per proxy app."""

    def __init__(self, app: Handler, conf: dict) -> None:
        section = conf_section(conf, "tempurl")
        self.app = app
        self.methods = [m.upper() for m in conf_list(section.get("methods"), DEFAULT_METHODS)]
        self.incoming_remove = conf_list(
            section.get("incoming_remove_headers"), DEFAULT_INCOMING_REMOVE)
        self.incoming_allow = conf_list(section.get("incoming_allow_headers"), [])
        self.outgoing_remove = conf_list(
            section.get("outgoing_remove_headers"), DEFAULT_OUTGOING_REMOVE)
        self.outgoing_allow = conf_list(
            section.get("outgoing_allow_headers"), DEFAULT_OUTGOING_ALLOW)
        digests = [d.lower() for d in conf_list(section.get("allowed_digests"),
                                                DEFAULT_DIGESTS)]
        self.allowed_digests = [d for d in SUPPORTED_DIGESTS if d in digests]
        self._in_remove = _header_matcher(self.incoming_remove)
        self._in_allow = _header_matcher(self.incoming_allow)
        self._out_remove = _header_matcher(self.outgoing_remove)
        self._out_allow = _header_matcher(self.outgoing_allow)
        self.info = InfoCache(app, float(section.get("key_cache_seconds", 5.0)), "TU",
                               info_generations(conf))
        info: dict[str, Any] = {
            "methods": self.methods,
            "incoming_remove_headers": self.incoming_remove,
            "incoming_allow_headers": self.incoming_allow,
            "outgoing_remove_headers": self.outgoing_remove,
            "outgoing_allow_headers": self.outgoing_allow,
            "allowed_digests": self.allowed_digests,
        }
        deprecated = [d for d in self.allowed_digests if d in DEPRECATED_DIGESTS]
        if deprecated:
            info["deprecated_digests"] = deprecated
        info_registry(conf).register_info("tempurl", info)

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await self.app(req)
        self.info.observe(req)
        if req.method == "OPTIONS":
            return await self.app(req)
        sig = _first(req, "temp_url_sig")
        expires_text = _first(req, "temp_url_expires")
        if sig is None and expires_text is None:
            resp = await self.app(req)
            self._hide_container_keys(req, resp)
            return resp
        if not sig or not expires_text:
            return self._invalid(req)
        try:
            digest, hex_sig = parse_signature(sig)
        except ValueError:
            return self._invalid(req)
        if digest not in self.allowed_digests:
            return self._invalid(req)
        expires = parse_expires(expires_text)
        if expires < time.time():
            return self._invalid(req)
        if req.method not in self.methods:
            return self._invalid(req)
        account, container, obj = split_v1(req.path)
        if account is None or container is None or obj is None or not obj.strip("/"):
            return self._invalid(req)
        prefix = _first(req, "temp_url_prefix")
        if prefix is not None:
            if not obj.startswith(prefix):
                return self._invalid(req)
            signed_path = f"prefix:/v1/{account}/{container}/{prefix}"
        else:
            signed_path = req.path
        ip_range = _first(req, "temp_url_ip_range")
        if ip_range and not _ip_in_range(req.remote, ip_range):
            return self._invalid(req)
        # the HMAC covers the expiry as unix seconds, even when the URL carries ISO 8601
        scope = await self._match(req, account, container, digest, hex_sig,
                                  str(expires), signed_path, ip_range)
        if scope is None:
            return self._invalid(req)
        if req.method not in ("GET", "HEAD", "OPTIONS"):
            # as Swift: a write through a temp URL may not point the object elsewhere,
            # or a GET temp URL for one's own upload would read what it points at
            for name in _DISALLOWED_INCOMING:
                if name in req.headers:
                    return error_response(400, f"The header {name!r} is not allowed in "
                                               "this tempurl")
        return await self._forward(req, account, container if scope == "container" else None,
                                   expires)

    async def _match(self, req: SwiftRequest, account: str, container: str, digest: str,
                     hex_sig: str, expires: str, path: str, ip_range: str | None
                     ) -> str | None:
        """``"account"``/``"container"``: which key signed the URL, None if none did."""
        keys: list[tuple[str, str]] = []
        acc = await self.info.account(req, account)
        if acc["status"] // 100 == 2:
            for name in ("temp-url-key", "temp-url-key-2"):
                if acc["meta"].get(name):
                    keys.append((acc["meta"][name], "account"))
        cont = await self.info.container(req, account, container)
        if cont["status"] // 100 == 2:
            for name in ("temp-url-key", "temp-url-key-2"):
                if cont["meta"].get(name):
                    keys.append((cont["meta"][name], "container"))
        methods = [req.method]
        if req.method == "HEAD":
            methods += ["GET", "POST", "PUT"]
        found = None
        for key, scope in keys:
            for method in methods:
                expected = sign(key, method, expires, path, digest, ip_range)
                # compare every candidate in constant time; no early exit on a match
                if hmac.compare_digest(expected, hex_sig) and found is None:
                    found = scope
        return found

    async def _forward(self, req: SwiftRequest, account: str, container: str | None,
                       expires: int) -> SwiftResponse:
        for name in list(req.headers.keys()):
            if self._in_remove(name) and not self._in_allow(name):
                req.headers.popall(name, None)

        def authorize(sub: SwiftRequest) -> SwiftResponse | None:
            sub_account, sub_container, _ = split_v1(sub.path)
            if sub_account != account or (container is not None
                                           and sub_container != container):
                return error_response(401)
            return None

        mark_authorized(req.environ, authorize)
        req.environ["swift.tempurl"] = True
        req.environ["REMOTE_USER"] = ".wsgi.tempurl"
        filename = _first(req, "filename")
        inline = "inline" in req.query
        for name in ("temp_url_sig", "temp_url_expires", "temp_url_prefix",
                     "temp_url_ip_range", "filename", "inline"):
            req.query.pop(name, None)
        resp = await self.app(req)
        for name in list(resp.headers.keys()):
            if self._out_remove(name) and not self._out_allow(name):
                resp.headers.popall(name, None)
        if req.method in ("GET", "HEAD") and resp.is_success:
            resp.headers["Content-Disposition"] = disposition(
                filename, inline, resp.headers.get("Content-Disposition"), req.path)
            # as Swift's: caches keep what a temp URL served no longer than it is valid
            resp.headers["Expires"] = http_date(expires)
        return resp

    @staticmethod
    def _hide_container_keys(req: SwiftRequest, resp: SwiftResponse) -> None:
        """Container keys are secrets of the owner: users with only an ACL never see them."""
        if req.method in ("GET", "HEAD") and req.environ.get("swift.owner") is False:
            _account, container, obj = split_v1(req.path)
            if container is not None and obj is None:
                for name in CONTAINER_KEY_HEADERS:
                    resp.headers.popall(name, None)

    @staticmethod
    def _invalid(req: SwiftRequest) -> SwiftResponse:
        """Swift 2.38.3's answer, byte for byte but the ids: realm "unknown", a
        one-line body (none, and a length of 0, for a HEAD)."""
        body = b"" if req.method == "HEAD" else b"401 Unauthorized: Temp URL invalid\n"
        resp = SwiftResponse(401, {"Content-Type": "text/html; charset=UTF-8"}, body)
        resp.headers["Www-Authenticate"] = 'Swift realm="unknown"'
        return resp


def _ip_in_range(remote: str | None, ip_range: str) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
        return address in ipaddress.ip_network(ip_range, strict=False)
    except ValueError:
        return False


def make_middleware(app: Handler, conf: dict) -> Handler:
    return TempURL(app, conf)
