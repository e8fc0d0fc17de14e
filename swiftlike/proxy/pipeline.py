"""The proxy's middleware pipeline: requests, responses and how features plug in.

Every optional API feature (auth, large objects, temp URLs, versioning, quotas ...)
is one module in ``swiftlike/proxy/`` with a factory::

    def make_middleware(app: Handler, conf: dict) -> Handler

``Handler`` is any ``async (SwiftRequest) -> SwiftResponse`` callable. A middleware
wraps the handler below it; it may answer by itself, change the request, issue
subrequests to ``app`` (with a body streamed from any async iterator) and wrap or
replace the response body. Example, a middleware that counts the bytes it sends::

    from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse, info_registry

    def make_middleware(app: Handler, conf: dict) -> Handler:
        info_registry(conf).register_info("byte_counter", {})

        async def byte_counter(req: SwiftRequest) -> SwiftResponse:
            if req.path == "/counted" and req.method == "PUT":
                # a subrequest with a streamed body from an async generator
                async def body():
                    yield b"hello "
                    yield b"world"
                sub = req.make_subrequest("PUT", "/v1/AUTH_a/c/o", body=body(),
                                          headers={"Content-Length": "11"})
                return await app(sub)
            resp = await app(req)
            total = 0

            async def counted(stream):
                nonlocal total
                async for chunk in stream:
                    total += len(chunk)
                    yield chunk
            resp.body = counted(resp.iter_body())   # wrap the body stream
            resp.content_length = resp.content_length  # unchanged length
            return resp
        return byte_counter

The pipeline order comes from ``[proxy] pipeline`` (a list of module names, the
outermost first); the core proxy app is always last. A name without a dot is a module
of this package (``"tempauth"`` -> ``swiftlike.proxy.tempauth``).

``environ`` keys the core and tempauth use (other auth middlewares may provide the
same): ``swift.trans_id`` (set by catch_errors), ``swift.identity`` (the
authenticated user: ``user``, ``account``, ``groups``, ``reseller_admin``),
``swift.authorize`` (a callable ``(req) -> SwiftResponse | None``; the controllers
call it, first without and then with ``swift.acl`` = ``{"read": ..., "write": ...}``
of the container), ``swift.owner`` (set by ``swift.authorize``: may see ACLs and
temp-URL keys), ``swift.subrequest`` (set on requests made by middlewares),
``swift.arrival`` (``time.monotonic()`` when the client's request reached the proxy;
subrequests inherit it, and an account/container HEAD that started later may answer them).

A middleware that leaves most requests alone may say so: a module-level
``passes_through(req) -> bool`` promises that, whenever it is True, the middleware
would hand ``req`` unchanged to the handler below and return that handler's response
unchanged, with no side effect. The pipeline then goes past it without entering it
(see :class:`Bypass`); its handler should start with the same test, so the two cannot
drift apart. A module without one is always entered.

Shared per-app state (the ``/info`` registry) is reached through ``conf`` with
:func:`info_registry`: the server puts one :class:`InfoRegistry` there before the
factories run, so there are no module globals.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from multidict import CIMultiDict

DEFAULT_PIPELINE = [
    "catch_errors", "gatekeeper", "healthcheck",
    # Swift's order: CORS preflights before auth (Swift does CORS in its proxy app),
    # then bulk tempurl ratelimit formpost tempauth staticweb container/account quotas
    "cors", "bulk", "tempurl", "ratelimit", "formpost", "tempauth", "recon_cluster",
    "staticweb",
    "copy", "container_quotas", "account_quotas",
    # Swift's order: large objects, then legacy versioning, symlinks, object versioning
    "slo", "dlo", "versioned_writes", "symlink", "object_versioning",
]
INFO_REGISTRY_KEY = "_info_registry"

BodyType = bytes | AsyncIterator[bytes] | None


#: Auth state that holds for one request path only; never inherited by a subrequest.
_PATH_AUTH_KEYS = frozenset({"swift.acl", "swift.account_acl", "swift.owner"})


#: environ key: {name: first value} of the query parameters the client repeated (the
#: query itself keeps the last value; Swift's tempurl reads the first)
FIRST_QUERY_VALUES = "swiftlike.first_query_values"


class SwiftRequest:
    """One request as the middlewares see it.

    ``path`` is percent-decoded text (undecodable bytes kept as surrogates, so the
    controllers can answer 412); ``query`` maps each parameter to its first value;
    ``body`` is an async iterator of chunks (or None when there is no body);
    ``environ`` carries per-request state such as the auth identity
    (``swift.authorize``, ``swift.identity``) and the transaction id.
    """

    __slots__ = (
        "_parts",
        "_parts_of",
        "body",
        "content_length",
        "environ",
        "headers",
        "host",
        "method",
        "path",
        "query",
        "remote",
        "scheme",
    )

    def __init__(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: AsyncIterator[bytes] | None = None,
        environ: dict[str, Any] | None = None,
        host: str = "localhost",
        scheme: str = "http",
        remote: str | None = None,
    ) -> None:
        self.method = method.upper()
        self.path = path
        self.query: dict[str, str] = dict(query or {})
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self.body = body
        self.environ: dict[str, Any] = environ if environ is not None else {}
        self.host = host
        self.scheme = scheme
        self.remote = remote
        self.content_length: int | None = None
        self._parts_of: str | None = None
        self._parts: tuple[str, str | None, str | None, str | None] = ("", None, None, None)
        length = self.headers.get("Content-Length")
        if length is not None and length.strip().isdigit():
            self.content_length = int(length)

    def split_path(self) -> tuple[str, str | None, str | None, str | None]:
        """``(version, account, container, object)`` of ``/v1/a/c/o`` (missing parts None).

        The object keeps its slashes. Empty components stay ``""`` so callers can
        answer 400/412 for them rather than silently routing elsewhere. Half a dozen
        middlewares ask for every request: the answer is kept until ``path`` changes.
        """
        path = self.path
        if path is self._parts_of:
            return self._parts
        parts = path.split("/", 4)
        parts += [None] * (5 - len(parts))  # type: ignore[list-item]
        _, version, account, container, obj = parts
        self._parts = (version or "", account, container, obj)
        self._parts_of = path
        return self._parts

    @property
    def quoted_path(self) -> str:
        return quote(self.path.encode("utf-8", "surrogateescape"), safe="/")

    def make_subrequest(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: AsyncIterator[bytes] | None = None,
        query: Mapping[str, str] | None = None,
        keep_auth: bool = True,
    ) -> SwiftRequest:
        """A new request for the handler below, sharing this request's identity.

        The environ is copied shallowly with ``swift.subrequest`` set, so the caller's
        identity, its authorizer (``swift.authorize``) and the transaction id carry
        over. What was decided *about this request's path* does not: the container ACL
        (``swift.acl``), the account ACL (``swift.account_acl``) and ownership
        (``swift.owner``) belong to the link, manifest or listing being read, and a
        symlink target, SLO/DLO segment or other subrequest path is authorized afresh
        against its own container and account. Carrying them over let a public link
        serve a private object of any account.
        """
        environ = {key: value for key, value in self.environ.items()
                   if key not in _PATH_AUTH_KEYS}
        environ["swift.subrequest"] = True
        if not keep_auth:
            environ.pop("swift.authorize", None)
            environ.pop("swift.identity", None)
        sub = SwiftRequest(
            method,
            path,
            query=query,
            headers=headers,
            body=body,
            environ=environ,
            host=self.host,
            scheme=self.scheme,
            remote=self.remote,
        )
        if "X-Auth-Token" in self.headers and "X-Auth-Token" not in sub.headers:
            sub.headers["X-Auth-Token"] = self.headers["X-Auth-Token"]
        return sub

    async def read_body(self, limit: int | None = None) -> bytes:
        """The whole body (for small control payloads only); ValueError past ``limit``."""
        if self.body is None:
            return b""
        chunks = []
        size = 0
        async for chunk in self.body:
            size += len(chunk)
            if limit is not None and size > limit:
                raise ValueError("request body too large")
            chunks.append(chunk)
        self.body = None
        return b"".join(chunks)


class SwiftResponse:
    """A response travelling back up the pipeline.

    ``body`` is bytes, an async iterator of chunks, or None. ``content_length`` is
    the number of bytes the body will yield when known (for HEAD: the size of what a
    GET would return). ``on_close`` callbacks release node connections when the
    response is dropped without being streamed.
    """

    __slots__ = ("_closers", "body", "content_length", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: BodyType = None,
        content_length: int | None = None,
    ) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self.body: BodyType = body
        if content_length is None and isinstance(body, bytes):
            content_length = len(body)
        self.content_length = content_length
        self._closers: list[Callable[[], None]] = []

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def on_close(self, callback: Callable[[], None]) -> None:
        self._closers.append(callback)

    def close(self) -> None:
        """Release resources behind an unconsumed body (idempotent)."""
        closers, self._closers = self._closers, []
        for callback in closers:
            callback()

    def iter_body(self) -> AsyncIterator[bytes]:
        """The body as chunks, whatever form it has.

        The current body is captured now, so ``resp.body = wrap(resp.iter_body())``
        wraps the old stream rather than itself.
        """
        return self._iter(self.body)

    async def _iter(self, body: BodyType) -> AsyncIterator[bytes]:
        if body is None:
            return
        if isinstance(body, bytes):
            if body:
                yield body
            return
        try:
            async for chunk in body:
                yield chunk
        finally:
            self.close()

    async def read(self) -> bytes:
        body = self.body
        if body is None or isinstance(body, bytes):
            return body or b""
        data = b"".join([chunk async for chunk in self.iter_body()])
        self.body = data
        return data


Handler = Callable[[SwiftRequest], Awaitable[SwiftResponse]]
MiddlewareFactory = Callable[[Handler, dict], Handler]
PassesThrough = Callable[[SwiftRequest], bool]

STATUS_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    416: "Requested Range Not Satisfiable",
    422: "Unprocessable Entity",
    499: "Client Disconnect",
    500: "Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


def error_response(
    status: int, message: str | None = None, headers: Mapping[str, str] | None = None
) -> SwiftResponse:
    """A Swift-style error: ``<html><h1>Title</h1><p>message</p></html>``."""
    title = STATUS_TITLES.get(status, "Error")
    text = message or _DEFAULT_MESSAGES.get(status, title)
    body = f"<html><h1>{title}</h1><p>{_escape(text)}</p></html>".encode()
    resp = SwiftResponse(status, headers, body)
    resp.headers["Content-Type"] = "text/html; charset=UTF-8"
    return resp


_DEFAULT_MESSAGES = {
    401: "This server could not verify that you are authorized to access the document "
    "you requested.",
    403: "Access was denied to this resource.",
    404: "The resource could not be found.",
    405: "The method is not allowed for this resource.",
    406: "None of the formats your Accept header allows can be served here.",
    411: "Missing Content-Length or Transfer-Encoding: chunked.",
    413: "The body of your request was too large for this server.",
    416: "The Range requested is not available.",
    422: "The request body or ETag could not be processed.",
    503: "The server is currently unavailable. Please try again at a later time.",
}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class InfoRegistry:
    """What ``GET /info`` answers: one section per feature, registered at build time."""

    def __init__(self) -> None:
        self._sections: dict[str, dict[str, Any]] = {}
        self._admin_sections: dict[str, dict[str, Any]] = {}

    def register_info(self, name: str, info: dict[str, Any], *, admin: bool = False) -> None:
        target = self._admin_sections if admin else self._sections
        target.setdefault(name, {}).update(info)

    def sections(self) -> dict[str, dict[str, Any]]:
        return {name: dict(section) for name, section in self._sections.items()}

    def __contains__(self, name: str) -> bool:
        return name in self._sections


def info_registry(conf: dict) -> InfoRegistry:
    """The per-app registry stored in ``conf`` (created on first use)."""
    registry = conf.get(INFO_REGISTRY_KEY)
    if registry is None:
        registry = conf[INFO_REGISTRY_KEY] = InfoRegistry()
    return registry


def _load_module(name: str) -> Any:
    return importlib.import_module(name if "." in name else f"swiftlike.proxy.{name}")


def load_factory(name: str) -> MiddlewareFactory:
    module = _load_module(name)
    factory = getattr(module, "make_middleware", None)
    if factory is None:
        raise ValueError(f"pipeline module {module.__name__} has no make_middleware")
    return factory


class Bypass:
    """A run of middlewares that declare ``passes_through``, entered only when needed.

    Entering a middleware costs a coroutine and its own checks, and a plain object
    GET concerns only seven of the default pipeline's nineteen; a predicate call is
    a fraction of entering. ``steps`` are the run's
    ``(passes_through, handler)`` pairs, outermost first; each handler's own ``app``
    is the Bypass of the steps after it, so a middleware that is entered still skips
    the rest of the run where it may.
    """

    __slots__ = ("after", "steps")

    def __init__(self, steps: list[tuple[PassesThrough, Handler]], after: Handler) -> None:
        self.steps = steps
        self.after = after

    def __call__(self, req: SwiftRequest) -> Awaitable[SwiftResponse]:
        for passes, handler in self.steps:
            if not passes(req):
                return handler(req)
        return self.after(req)


def build_pipeline(core: Handler, conf: dict, names: list[str] | None = None) -> Handler:
    """Wrap ``core`` in the configured middlewares; the first name is outermost."""
    if names is None:
        names = list(conf.get("proxy", {}).get("pipeline", DEFAULT_PIPELINE))
    below = core
    for name in reversed(names):
        handler = load_factory(name)(below, conf)
        passes: PassesThrough | None = getattr(_load_module(name), "passes_through", None)
        if passes is None:
            below = handler
        elif isinstance(below, Bypass):
            below = Bypass([(passes, handler), *below.steps], below.after)
        else:
            below = Bypass([(passes, handler)], below)
    return below
