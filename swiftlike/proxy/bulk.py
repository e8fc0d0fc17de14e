"""Bulk operations: ``?bulk-delete`` and ``?extract-archive=tar|tar.gz|tar.bz2``.

Both answer ``200`` at once and stream a report at the end (Swift sends spaces while
it works so clients and load balancers do not time out; so do we). The report says
what happened per file in the ``Accept`` format (text/plain, JSON or XML), with
Swift's keys: ``Number Deleted``/``Number Not Found`` or ``Number Files Created``,
``Response Status``, ``Response Body`` and ``Errors``.

An archive is never held in memory or on disk: python's ``tarfile`` reads it in
stream mode (``r|*``) in a worker thread, pulling request body chunks from the event
loop, and hands each member's bytes back chunk by chunk to an object PUT.
"""

from __future__ import annotations

import asyncio
import tarfile
import threading
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, unquote

from swiftlike.proxy.mw_util import best_accept, conf_section, status_line
from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse, info_registry
from swiftlike.proxy.subrequest import bulk_json

ACCEPTABLE_FORMATS = ["text/plain", "application/json", "application/xml", "text/xml"]
ARCHIVE_TYPES = {"tar": "", "tar.gz": "gz", "tar.bz2": "bz2"}
MAX_PATH_LENGTH = 1024 + 256 + 2
CHUNK = 64 * 1024
META_PASS = ("x-object-meta-",)


class BulkAbort(Exception):
    """Stop the whole bulk request with this status and message."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def report_body(out_type: str, fields: dict[str, Any], errors: list[list[str]],
                root_tag: str) -> bytes:
    """Swift's bulk report in the negotiated format."""
    if out_type == "application/json":
        return bulk_json(fields, errors)
    if out_type.endswith("/xml"):
        out = [f"<{root_tag}>\n"]
        for key in sorted(fields):
            tag = key.replace(" ", "_").lower()
            out.append(f"<{tag}>{_xml(str(fields[key]))}</{tag}>\n")
        out.append("<errors>\n")
        for name, status in errors:
            out.append(f"<object><name>{_xml(name)}</name><status>{_xml(status)}"
                       "</status></object>\n")
        out.append(f"</errors>\n</{root_tag}>\n")
        return "".join(out).encode()
    lines = [f"{key}: {fields[key]}\n" for key in sorted(fields)]
    lines.append("Errors:\n")
    lines.extend(f"{name}, {status}\n" for name, status in errors)
    return "".join(lines).encode()


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def passes_through(req: SwiftRequest) -> bool:
    """Bulk work comes as PUT, POST or DELETE only (see pipeline.Bypass)."""
    return req.method in ("GET", "HEAD")


class Bulk:
    def __init__(self, app: Handler, conf: dict) -> None:
        section = conf_section(conf, "bulk")
        self.app = app
        self.max_deletes = int(section.get("max_deletes_per_request", 10000))
        self.max_failed_deletes = int(section.get("max_failed_deletes", 1000))
        self.max_containers = int(section.get("max_containers_per_extraction", 10000))
        self.max_failed_extractions = int(section.get("max_failed_extractions", 1000))
        self.delete_concurrency = max(1, min(int(section.get("delete_concurrency", 2)), 1000))
        self.yield_frequency = float(section.get("yield_frequency", 10))
        self.max_file_size = int(conf.get("proxy", {}).get("max_file_size", 5 * 1024**3 + 2))
        registry = info_registry(conf)
        registry.register_info("bulk_upload", {
            "max_containers_per_extraction": self.max_containers,
            "max_failed_extractions": self.max_failed_extractions,
        })
        registry.register_info("bulk_delete", {
            "max_deletes_per_request": self.max_deletes,
            "max_failed_deletes": self.max_failed_deletes,
        })

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await self.app(req)
        extract = req.query.get("extract-archive")
        if extract is not None and req.method == "PUT":
            archive = ARCHIVE_TYPES.get(extract.lower().strip("."))
            if archive is None:
                resp = SwiftResponse(400, {"Content-Type": "text/plain"},
                                     b"Unsupported archive format")
                return resp
            return self._streamed(req, self._extract(req, archive), "extract")
        if "bulk-delete" in req.query and req.method in ("POST", "DELETE"):
            return self._streamed(req, self._delete(req), "delete")
        return await self.app(req)

    def _streamed(self, req: SwiftRequest, work: Any, root_tag: str) -> SwiftResponse:
        """A 200 whose body is keep-alive spaces while ``work`` runs, then the report."""
        out_type = best_accept(req.headers.get("Accept"), ACCEPTABLE_FORMATS)

        async def body() -> AsyncIterator[bytes]:
            task = asyncio.ensure_future(work(out_type))
            sent_space = False
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=self.yield_frequency)
                    if done:
                        break
                    sent_space = True
                    yield b" "
                fields, errors = task.result()
            finally:
                if not task.done():
                    task.cancel()
            prefix = b"\r\n\r\n" if sent_space else b""
            yield prefix + report_body(out_type or "text/plain", fields, errors, root_tag)

        return SwiftResponse(200, {"Content-Type": out_type or "text/plain"}, body())

    # -- bulk delete --------------------------------------------------------------------
    def _delete(self, req: SwiftRequest) -> Any:
        async def run(out_type: str | None) -> tuple[dict[str, Any], list[list[str]]]:
            fields: dict[str, Any] = {"Number Deleted": 0, "Number Not Found": 0,
                                      "Response Body": "", "Response Status": "200 OK"}
            errors: list[list[str]] = []
            try:
                await self._do_delete(req, out_type, fields, errors)
            except BulkAbort as abort:
                fields["Response Status"] = status_line(abort.status)
                fields["Response Body"] = abort.message
            return fields, errors
        return run

    async def _read_names(self, req: SwiftRequest) -> list[str]:
        limit = MAX_PATH_LENGTH * (self.max_deletes + 1)
        try:
            data = await req.read_body(limit)
        except ValueError as exc:
            raise BulkAbort(413, f"Maximum Bulk Deletes: {self.max_deletes} per request"
                            ) from exc
        names = []
        for line in data.split(b"\n"):
            line = line.strip()
            if not line:
                continue
            if len(line) > MAX_PATH_LENGTH:
                raise BulkAbort(400, "Invalid File Name")
            names.append(unquote(line.decode("utf-8", "surrogateescape")))
            if len(names) > self.max_deletes:
                raise BulkAbort(413, f"Maximum Bulk Deletes: {self.max_deletes} per request")
        return names

    async def _do_delete(self, req: SwiftRequest, out_type: str | None,
                         fields: dict[str, Any], errors: list[list[str]]) -> None:
        if out_type is None:
            raise BulkAbort(406)
        parts = req.path.split("/")
        if len(parts) < 3 or parts[1] != "v1" or not parts[2]:
            raise BulkAbort(404)
        ctype = req.headers.get("Content-Type")
        if ctype and not ctype.startswith("text/plain"):
            raise BulkAbort(406)
        account = parts[2]
        names = [n for n in await self._read_names(req) if n.strip("/")]
        # objects first, then containers (which can only go once empty)
        objects = [n for n in names if "/" in n.strip("/")]
        containers = [n for n in names if "/" not in n.strip("/")]
        failure = {"status": 400}

        async def delete_one(name: str) -> None:
            path = f"/v1/{account}/{name.lstrip('/')}"
            if "\x00" in path or _not_utf8(path):
                errors.append([quote(name.encode("utf-8", "surrogateescape")),
                               status_line(412)])
                return
            sub = req.make_subrequest("DELETE", path)
            sub.environ["swift.source"] = "BD"
            resp = await self.app(sub)
            await resp.read()
            if resp.is_success:
                fields["Number Deleted"] += 1
            elif resp.status == 404:
                fields["Number Not Found"] += 1
            else:
                if resp.status >= 500:
                    failure["status"] = 502
                errors.append([quote(name), status_line(resp.status)])
                if resp.status == 401:  # as Swift: no point going on without auth
                    failure["status"] = 401

        for group in (objects, containers):
            queue = list(reversed(group))

            async def worker(queue: list[str] = queue) -> None:
                while queue and len(errors) < self.max_failed_deletes and \
                        failure["status"] != 401:
                    await delete_one(queue.pop())

            await asyncio.gather(*(worker() for _ in range(self.delete_concurrency)))
            if failure["status"] == 401:
                raise BulkAbort(401)
            if len(errors) >= self.max_failed_deletes:
                raise BulkAbort(400, "Max delete failures exceeded")
        if errors:
            fields["Response Status"] = status_line(failure["status"])
        elif not (fields["Number Deleted"] or fields["Number Not Found"]):
            fields["Response Status"] = status_line(400)
            fields["Response Body"] = "Invalid bulk delete."

    # -- extract archive ----------------------------------------------------------------
    def _extract(self, req: SwiftRequest, compression: str) -> Any:
        async def run(out_type: str | None) -> tuple[dict[str, Any], list[list[str]]]:
            fields: dict[str, Any] = {"Number Files Created": 0, "Response Body": "",
                                      "Response Status": "201 Created"}
            errors: list[list[str]] = []
            try:
                await self._do_extract(req, compression, out_type, fields, errors)
            except BulkAbort as abort:
                fields["Response Status"] = status_line(abort.status)
                fields["Response Body"] = abort.message
            except (tarfile.TarError, zlib.error, OSError, EOFError) as exc:
                fields["Response Status"] = status_line(400)
                fields["Response Body"] = f"Invalid Tar File: {exc}"
            return fields, errors
        return run

    async def _do_extract(self, req: SwiftRequest, compression: str, out_type: str | None,
                          fields: dict[str, Any], errors: list[list[str]]) -> None:
        if out_type is None:
            raise BulkAbort(406)
        chunked = "chunked" in req.headers.get("Transfer-Encoding", "").lower()
        if req.content_length is None and not chunked:
            raise BulkAbort(411)
        parts = req.path.split("/", 3)
        if len(parts) < 3 or parts[1] != "v1" or not parts[2]:
            raise BulkAbort(404)
        account = parts[2]
        base = parts[3].rstrip("/") if len(parts) > 3 else ""
        reader = TarStreamReader(req.body, compression)
        containers_seen: set[str] = set()
        created_containers = 0
        failed_status = 400
        try:
            async for member in reader.members():
                if len(errors) >= self.max_failed_extractions:
                    break
                obj_path = member.name
                if obj_path.startswith("./"):
                    obj_path = obj_path[2:]
                obj_path = obj_path.lstrip("/")
                if base:
                    obj_path = f"{base}/{obj_path}"
                if "/" not in obj_path:
                    continue  # files at the top level have no container
                container = obj_path.split("/", 1)[0]
                quoted = quote(obj_path[:MAX_PATH_LENGTH].encode("utf-8", "surrogateescape"))
                destination = f"/v1/{account}/{obj_path}"
                if _not_utf8(destination) or "\x00" in destination:
                    errors.append([quoted, status_line(412)])
                    continue
                if member.size > self.max_file_size:
                    errors.append([quoted, status_line(413)])
                    continue
                container_failure = None
                if container not in containers_seen:
                    status = await self._ensure_container(req, account, container)
                    if status == 201:
                        created_containers += 1
                        if created_containers > self.max_containers:
                            raise BulkAbort(400, f"More than {self.max_containers} "
                                            "containers to create from tar.")
                    elif status == 401:
                        raise BulkAbort(401)
                    elif status >= 300:
                        container_failure = [quote(f"/v1/{account}/{container}"),
                                             status_line(status)]
                headers = {"Content-Length": str(member.size)}
                for key, value in req.headers.items():
                    lower = key.lower()
                    if lower in ("x-delete-at", "x-delete-after") or lower.startswith(
                            META_PASS):
                        headers[key] = value
                for key, value in member.pax_headers.items():
                    header = _pax_header(key)
                    if header:
                        headers[header] = value
                sub = req.make_subrequest("PUT", destination, headers=headers,
                                          body=reader.member_body())
                sub.environ["swift.source"] = "EA"
                resp = await self.app(sub)
                await resp.read()
                await reader.skip_member()
                containers_seen.add(container)
                if resp.is_success:
                    fields["Number Files Created"] += 1
                    continue
                if container_failure:
                    errors.append(container_failure)
                if resp.status == 401:
                    errors.append([quoted, status_line(401)])
                    raise BulkAbort(401)
                if resp.status >= 500:
                    failed_status = 502
                errors.append([quoted, status_line(resp.status)])
        finally:
            await reader.close()
        if errors:
            fields["Response Status"] = status_line(failed_status)
        elif not fields["Number Files Created"]:
            fields["Response Status"] = status_line(400)
            fields["Response Body"] = "Invalid Tar File: No Valid Files"

    async def _ensure_container(self, req: SwiftRequest, account: str, container: str
                                ) -> int:
        """200 if it exists, 201 if we created it, else the failing status."""
        path = f"/v1/{account}/{container}"
        head = await self.app(req.make_subrequest("HEAD", path))
        await head.read()
        if head.is_success:
            return 200
        if head.status != 404:
            return head.status
        put = await self.app(req.make_subrequest("PUT", path, headers={"Content-Length": "0"}))
        await put.read()
        return 201 if put.is_success else put.status


def _pax_header(key: str) -> str | None:
    """Swift maps ``SCHILY.xattr.user.meta.<name>`` pax records to object metadata."""
    lower = key.lower()
    for prefix in ("schily.xattr.user.meta.", "libarchive.xattr.user.meta."):
        if lower.startswith(prefix):
            return "X-Object-Meta-" + key[len(prefix):]
    if lower in ("schily.xattr.user.mime_type", "libarchive.xattr.user.mime_type"):
        return "Content-Type"
    return None


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_DONE = object()


class TarStreamReader:
    """Read a tar stream in a thread; hand members and their bytes to the event loop.

    The thread owns the ``tarfile`` (stream mode, so it never seeks) and reads the
    request body through :class:`_BodyFile`, which fetches chunks from the loop. It
    posts ``("member", TarInfo)``, then the member's data chunks, then ``("end",)``
    onto an asyncio queue; a semaphore bounds how far it may run ahead, so memory
    stays at a few chunks whatever the archive size.
    """

    AHEAD = 8

    def __init__(self, body: AsyncIterator[bytes] | None, compression: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.room = threading.Semaphore(self.AHEAD)
        self.stopping = threading.Event()
        self.body = body
        self.compression = compression
        self.in_member = False
        self.thread = threading.Thread(target=self._run, name="bulk-untar", daemon=True)
        self.thread.start()

    # thread side --------------------------------------------------------------------
    def _post(self, item: Any) -> None:
        while not self.room.acquire(timeout=0.5):
            if self.stopping.is_set():
                raise _Stopped
        if self.stopping.is_set():
            raise _Stopped
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _run(self) -> None:
        try:
            fileobj = _BodyFile(self)
            with tarfile.open(mode="r|" + self.compression, fileobj=fileobj) as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    self._post(("member", info))
                    extracted = tar.extractfile(info)
                    assert extracted is not None
                    while True:
                        chunk = extracted.read(CHUNK)
                        if not chunk:
                            break
                        self._post(("data", chunk))
                    self._post(("end",))
            self._post(_DONE)
        except _Stopped:
            pass
        except BaseException as exc:  # reported to the loop, raised there
            try:
                self._post(("error", exc))
            except _Stopped:
                pass

    async def _next_body_chunk(self) -> bytes:
        if self.body is None:
            return b""
        try:
            return await self.body.__anext__()
        except StopAsyncIteration:
            return b""

    # loop side ------------------------------------------------------------------------
    async def _get(self) -> Any:
        item = await self.queue.get()
        self.room.release()
        if isinstance(item, tuple) and item[0] == "error":
            raise item[1]
        return item

    async def members(self) -> AsyncIterator[tarfile.TarInfo]:
        while True:
            item = await self._get()
            if item is _DONE:
                return
            assert item[0] == "member", item
            self.in_member = True
            yield item[1]
            await self.skip_member()

    async def member_body(self) -> AsyncIterator[bytes]:
        while self.in_member:
            item = await self._get()
            if item[0] == "end":
                self.in_member = False
                return
            yield item[1]

    async def skip_member(self) -> None:
        """Consume what the PUT left of the current member (e.g. it failed early)."""
        while self.in_member:
            item = await self._get()
            if item[0] == "end":
                self.in_member = False

    async def close(self) -> None:
        self.stopping.set()
        for _ in range(self.AHEAD):
            self.room.release()
        await asyncio.to_thread(self.thread.join, 5.0)


class _Stopped(Exception):
    pass


class _BodyFile:
    """A blocking file object over the request body, for the tar thread."""

    def __init__(self, reader: TarStreamReader) -> None:
        self.reader = reader
        self.buffer = b""
        self.eof = False

    def read(self, size: int = -1) -> bytes:
        while not self.eof and (size < 0 or len(self.buffer) < size):
            if self.reader.stopping.is_set():
                raise _Stopped
            future = asyncio.run_coroutine_threadsafe(
                self.reader._next_body_chunk(), self.reader.loop)
            while True:
                try:
                    chunk = future.result(timeout=0.5)
                    break
                except TimeoutError:
                    if self.reader.stopping.is_set():
                        future.cancel()
                        raise _Stopped from None
            if not chunk:
                self.eof = True
            self.buffer += chunk
        if size < 0:
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def make_middleware(app: Handler, conf: dict) -> Handler:
    return Bulk(app, conf)

