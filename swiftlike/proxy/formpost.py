"""Form POST: browsers upload files straight into a container with an HTML form.

The form (``multipart/form-data``, POSTed to ``/v1/<a>/<c>[/<prefix>]``) carries
``redirect``, ``max_file_size``, ``max_file_count``, ``expires`` and ``signature``
fields before its files; the signature is an HMAC (sha1, sha256 or sha512, as
``allowed_digests`` says; hex or ``<digest>:<base64>``) of
``"<path>\\n<redirect>\\n<max_file_size>\\n<max_file_count>\\n<expires>"`` with the
account's or container's Temp-URL key. Each file part becomes an object PUT named
``<path>/<filename>``, streamed chunk by chunk (never buffered) and cut off past
``max_file_size``. Optional ``x_delete_at``/``x_delete_after`` fields make the
objects expire.

The answer is a 303 to ``redirect?status=<code>&message=<text>`` or, without a
redirect, the status and a small HTML page, as Swift does. Invalid fields are
400 ``FormPost: <reason>``; a bad signature or an expired form is 401.
"""

from __future__ import annotations

import hmac
import html
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

from swiftlike.proxy.info_generations import info_generations
from swiftlike.proxy.mw_util import (
    InfoCache,
    conf_list,
    conf_section,
    privileged_subrequest,
    split_v1,
    status_line,
)
from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse, info_registry
from swiftlike.proxy.tempurl import (
    DEFAULT_DIGESTS,
    DEPRECATED_DIGESTS,
    SUPPORTED_DIGESTS,
    parse_signature,
)

MAX_VALUE_LENGTH = 4096
MAX_HEADER_BYTES = 8192
READ_CHUNK = 64 * 1024


class FormInvalid(Exception):
    """400 ``FormPost: <message>``."""


class FormUnauthorized(Exception):
    """401 ``FormPost: <Message>``."""


class FileTooLarge(Exception):
    """Raised from inside a file part's body stream to abort its PUT."""


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="a"; filename="b"`` -> ("form-data", {name: a, filename: b})."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    while rest:
        item, rest = _next_param(rest)
        key, sep, val = item.partition("=")
        if sep:
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            params[key.strip().lower()] = val
    return main.strip().lower(), params


def _next_param(text: str) -> tuple[str, str]:
    quoted = False
    for index, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            return text[:index], text[index + 1:]
    return text, ""


class MultipartReader:
    """An incremental ``multipart/form-data`` parser over an async body stream."""

    def __init__(self, body: AsyncIterator[bytes] | None, boundary: str) -> None:
        self.body = body
        self.delimiter = b"\r\n--" + boundary.encode("latin-1")
        self.buffer = b""
        self.eof = False
        self.done = False
        self.part_open = False

    async def _fill(self) -> bool:
        if self.eof or self.body is None:
            self.eof = True
            return False
        try:
            chunk = await self.body.__anext__()
        except StopAsyncIteration:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    async def start(self) -> None:
        """Skip the preamble up to the first boundary."""
        first = self.delimiter[2:]
        while True:
            if self.buffer.startswith(first):
                self.buffer = b"\r\n" + self.buffer
                break
            index = self.buffer.find(self.delimiter)
            if index >= 0:
                self.buffer = self.buffer[index:]
                break
            if len(self.buffer) > MAX_HEADER_BYTES or not await self._fill():
                raise FormInvalid("invalid starting boundary")
        await self._after_delimiter()

    async def _after_delimiter(self) -> None:
        while len(self.buffer) < len(self.delimiter) + 2:
            if not await self._fill():
                raise FormInvalid("unexpected end of form")
        rest = self.buffer[len(self.delimiter):]
        if rest.startswith(b"--"):
            self.done = True
            self.buffer = b""
            return
        # tolerate transport padding, then CRLF
        rest = rest.lstrip(b" \t")
        if not rest.startswith(b"\r\n"):
            raise FormInvalid("invalid boundary")
        self.buffer = rest[2:]

    async def next_headers(self) -> dict[str, str] | None:
        """The next part's headers (lower-cased names), None after the last part."""
        if self.done:
            return None
        while b"\r\n\r\n" not in self.buffer:
            if self.buffer.startswith(b"\r\n"):
                self.buffer = self.buffer[2:]
                self.part_open = True
                return {}
            if len(self.buffer) > MAX_HEADER_BYTES or not await self._fill():
                raise FormInvalid("invalid part headers")
        raw, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.part_open = True
        headers = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return headers

    async def part_body(self) -> AsyncIterator[bytes]:
        """The current part's bytes, up to the next boundary."""
        keep = len(self.delimiter)
        while self.part_open:
            index = self.buffer.find(self.delimiter)
            if index >= 0:
                data, self.buffer = self.buffer[:index], self.buffer[index:]
                self.part_open = False
                await self._after_delimiter()
                if data:
                    yield data
                return
            if len(self.buffer) > keep:
                data, self.buffer = self.buffer[:-keep], self.buffer[-keep:]
                yield data
            if not await self._fill():
                raise FormInvalid("unexpected end of form")

    async def skip_part(self) -> None:
        async for _ in self.part_body():
            pass


def passes_through(req: SwiftRequest) -> bool:
    """Forms are POSTed (see pipeline.Bypass)."""
    return req.method in ("GET", "HEAD")


class FormPost:
    def __init__(self, app: Handler, conf: dict) -> None:
        section = conf_section(conf, "formpost")
        tempurl = conf_section(conf, "tempurl")
        self.app = app
        digests = conf_list(section.get("allowed_digests",
                                        tempurl.get("allowed_digests")), DEFAULT_DIGESTS)
        self.allowed_digests = [d for d in SUPPORTED_DIGESTS if d in digests]
        self.info = InfoCache(app, float(section.get("key_cache_seconds", 5.0)), "FP",
                               info_generations(conf))
        # as Swift's /info: the digests a form's signature may use (clients pick one)
        info: dict[str, list[str]] = {"allowed_digests": self.allowed_digests}
        deprecated = [d for d in self.allowed_digests if d in DEPRECATED_DIGESTS]
        if deprecated:
            info["deprecated_digests"] = deprecated
        info_registry(conf).register_info("formpost", info)

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await self.app(req)
        self.info.observe(req)
        if req.method != "POST" or req.environ.get("swift.subrequest"):
            return await self.app(req)
        ctype, params = parse_header_params(req.headers.get("Content-Type", ""))
        if ctype != "multipart/form-data" or not params.get("boundary"):
            return await self.app(req)
        account, container, _obj = split_v1(req.path)
        if account is None or container is None:
            return await self.app(req)
        try:
            return await self._translate(req, account, container, params["boundary"])
        except FormInvalid as err:
            return _plain(400, f"FormPost: {err}")
        except FormUnauthorized as err:
            return _plain(401, f"FormPost: {str(err).title()}")

    async def _keys(self, req: SwiftRequest, account: str, container: str) -> list[str]:
        keys = []
        for info in (await self.info.account(req, account),
                     await self.info.container(req, account, container)):
            if info["status"] // 100 == 2:
                keys.extend(info["meta"][name] for name in ("temp-url-key", "temp-url-key-2")
                            if info["meta"].get(name))
        return keys

    async def _translate(self, req: SwiftRequest, account: str, container: str,
                         boundary: str) -> SwiftResponse:
        reader = MultipartReader(req.body, boundary)
        await reader.start()
        attributes: dict[str, str] = {}
        file_count = 0
        status: int | None = None
        message = ""
        keys: list[str] | None = None
        while True:
            headers = await reader.next_headers()
            if headers is None:
                break
            disposition, attrs = parse_header_params(headers.get("content-disposition", ""))
            if disposition == "form-data" and attrs.get("filename"):
                file_count += 1
                try:
                    max_count = int(attributes.get("max_file_count") or 0)
                except ValueError as exc:
                    raise FormInvalid("max_file_count not an integer") from exc
                if file_count > max_count:
                    status, message = 400, "max file count exceeded"
                    break
                if keys is None:
                    keys = await self._keys(req, account, container)
                file_attributes = dict(attributes)
                file_attributes["filename"] = attrs["filename"]
                if "content-type" not in attributes and "content-type" in headers:
                    file_attributes["content-type"] = (headers["content-type"]
                                                       or "application/octet-stream")
                if "content-encoding" not in attributes and "content-encoding" in headers:
                    file_attributes["content-encoding"] = headers["content-encoding"]
                status = await self._store(req, file_attributes, reader, keys)
                if status // 100 != 2:
                    break
            else:
                data = b""
                async for chunk in reader.part_body():
                    if len(data) < MAX_VALUE_LENGTH:
                        data += chunk[:MAX_VALUE_LENGTH - len(data)]
                if "name" in attrs:
                    attributes[attrs["name"].lower()] = data.decode("utf-8", "replace"
                                                                    ).rstrip("\r\n-")
        if status is None:
            status, message = 400, "no files to process"
        redirect = attributes.get("redirect")
        if not redirect:
            text = status_line(status)
            if message:
                text = (f"<html><body><p><h1>{status_line(status)}</h1>FormPost: "
                        f"{html.escape(message)}</p></body></html>")
            return SwiftResponse(status, {"Content-Type": "text/html"}, text.encode())
        redirect += "&" if "?" in redirect else "?"
        redirect += f"status={status}&message={quote(message)}"
        body = (f'<html><body><p><a href="{html.escape(redirect)}">Click to continue...'
                "</a></p></body></html>")
        return SwiftResponse(303, {"Location": redirect, "Content-Type": "text/html"},
                             body.encode())

    async def _store(self, req: SwiftRequest, attributes: dict[str, str],
                     reader: MultipartReader, keys: list[str]) -> int:
        """PUT one file part; its status. Raises FormInvalid/FormUnauthorized."""
        if not keys:
            raise FormUnauthorized("invalid signature")
        try:
            max_file_size = int(attributes.get("max_file_size") or 0)
        except ValueError as exc:
            raise FormInvalid("max_file_size not an integer") from exc
        headers = {"Transfer-Encoding": "chunked"}
        for field, what in (("x_delete_at", "Unix timestamp required."),
                            ("x_delete_after", "Number of seconds required.")):
            if field in attributes:
                try:
                    value = int(attributes[field])
                except ValueError as exc:
                    raise FormInvalid(f"{field} not an integer: {what}") from exc
                # x_delete_after becomes an absolute time here, so it does not depend
                # on the proxy core understanding X-Delete-After
                headers["X-Delete-At"] = str(
                    value if field == "x_delete_at" else int(time.time()) + value)
        if "content-type" in attributes:
            headers["Content-Type"] = attributes["content-type"] or "application/octet-stream"
        if "content-encoding" in attributes:
            headers["Content-Encoding"] = attributes["content-encoding"]
        try:
            if int(attributes.get("expires") or 0) < time.time():
                raise FormUnauthorized("form expired")
        except ValueError as exc:
            raise FormInvalid("expired not an integer") from exc
        message = "\n".join([
            req.path, attributes.get("redirect") or "",
            attributes.get("max_file_size") or "0", attributes.get("max_file_count") or "0",
            attributes.get("expires") or "0"]).encode()
        try:
            digest, signature = parse_signature(attributes.get("signature", ""))
        except ValueError as exc:
            raise FormUnauthorized("invalid signature") from exc
        if digest not in self.allowed_digests:
            raise FormUnauthorized("invalid signature")
        valid = False
        for key in keys:
            expected = hmac.new(key.encode(), message, digest).hexdigest()
            if hmac.compare_digest(expected, signature):
                valid = True
        if not valid:
            raise FormUnauthorized("invalid signature")
        path = req.path
        if not path.endswith("/") and path.count("/") < 4:
            path += "/"
        path += attributes["filename"]
        sent = 0

        async def capped() -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in reader.part_body():
                sent += len(chunk)
                if sent > max_file_size:
                    raise FileTooLarge
                yield chunk

        sub = privileged_subrequest(req, "PUT", path, headers=headers, body=capped(),
                                    source="FP")
        try:
            resp = await self.app(sub)
        except FileTooLarge as exc:
            raise FormInvalid("max_file_size exceeded") from exc
        await resp.read()
        if sent > max_file_size:
            raise FormInvalid("max_file_size exceeded")
        await reader.skip_part()
        return resp.status


def _plain(status: int, text: str) -> SwiftResponse:
    return SwiftResponse(status, {"Content-Type": "text/plain"}, text.encode())


def make_middleware(app: Handler, conf: dict) -> Handler:
    return FormPost(app, conf)
