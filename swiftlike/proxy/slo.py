"""Static Large Objects: a JSON manifest listing segments that GET streams as one object.

``PUT ?multipart-manifest=put`` takes a JSON list of ``{"path", "etag", "size_bytes",
"range"}``; every segment is HEADed and checked (a 400 lists each bad segment, like
Swift's bulk responses). The stored manifest carries ``X-Static-Large-Object: True``
and sysmeta with the large object's ETag (md5 of the segment etags) and size, so a
HEAD needs no manifest read. GET streams the segments in order (ranges too), one
segment request at a time and chunk by chunk; ``?multipart-manifest=get`` returns
the manifest and ``?multipart-manifest=delete`` removes the segments and manifest.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import mimetypes
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from multidict import CIMultiDict

from swiftlike.common.http_util import evaluate_conditions, parse_http_date, quote_etag
from swiftlike.common.listing import etag_with_slo_etag
from swiftlike.proxy.pipeline import (
    Handler,
    SwiftRequest,
    SwiftResponse,
    error_response,
    info_registry,
)
from swiftlike.proxy.subrequest import (
    SegmentError,
    bulk_body,
    discard,
    internal_subrequest,
    is_conditional,
    pick_output_format,
    prepend_chunk,
    ranged_response,
    status_line,
    stream_object_range,
    strip_etag,
    true_value,
    whole_if_present,
)

SOURCE = "SLO"
SYSMETA_ETAG = "X-Object-Sysmeta-Slo-Etag"
SYSMETA_SIZE = "X-Object-Sysmeta-Slo-Size"
#: the object server lists the object with this size instead of the manifest's own
LISTED_SIZE = "X-Object-Sysmeta-Container-Update-Override-Size"
#: the etag container rows keep: the manifest's md5 and, as a parameter, the SLO's etag
#: (listed as ``hash`` and ``slo_etag``, see common.listing)
LISTED_ETAG = "X-Object-Sysmeta-Container-Update-Override-Etag"
ALLOWED_KEYS = {"path", "etag", "size_bytes", "range"}
MAX_NESTING = 10


def _settings(conf: dict) -> dict[str, int]:
    section = conf.get("slo", {}) if isinstance(conf.get("slo"), dict) else {}
    return {
        "max_manifest_segments": int(section.get("max_manifest_segments", 1000)),
        "max_manifest_size": int(section.get("max_manifest_size", 8 * 1024 * 1024)),
        "yield_frequency": int(section.get("yield_frequency", 10)),
        "min_segment_size": int(section.get("min_segment_size", 1)),
    }


def is_slo(headers: Any) -> bool:
    return true_value(headers.get("X-Static-Large-Object"))


def parse_segment_range(text: str, size: int) -> tuple[int, int] | str:
    """A manifest ``range`` resolved on a segment: (start, stop) or an error text."""
    if "," in text:
        return "Multiple Ranges"
    first, dash, last = text.strip().partition("-")
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        return "Invalid Range"
    if not first and not last:
        return "Invalid Range"
    if not first:
        start, stop = max(0, size - int(last)), size
    else:
        start = int(first)
        stop = size if not last else min(int(last) + 1, size)
    if start >= size or stop <= start:
        return "Unsatisfiable Range"
    return start, stop


def manifest_etag(rows: list[dict[str, Any]]) -> str:
    """Swift's large-object ETag: md5 over the segment etags (ranges included)."""
    digest = hashlib.md5()
    for row in rows:
        if row.get("range"):
            digest.update(f"{row['hash']}:{row['range']};".encode())
        else:
            digest.update(row["hash"].encode())
    return digest.hexdigest()


def row_length(row: dict[str, Any]) -> int:
    if row.get("range"):
        start, _, stop = row["range"].partition("-")
        return int(stop) - int(start) + 1
    return int(row["bytes"])


def make_middleware(app: Handler, conf: dict) -> Handler:
    settings = _settings(conf)
    info_registry(conf).register_info("slo", dict(settings))  # no async delete: not offered

    async def slo(req: SwiftRequest) -> SwiftResponse:
        version, account, container, obj = req.split_path()
        if version != "v1" or not account or not container or not obj:
            return await app(req)
        mode = req.query.get("multipart-manifest")
        if req.method == "PUT":
            if mode == "put":
                return await handle_put(req, account)
            if "X-Static-Large-Object" in req.headers and not req.environ.get(
                    "swift.subrequest"):
                return error_response(
                    400, "X-Static-Large-Object is a reserved header. To create a static "
                    "large object add query param multipart-manifest=put.")
            return await app(req)
        if req.method == "POST" and "X-Static-Large-Object" in req.headers:
            # as Swift: whether an object is a manifest is decided by its PUT
            return error_response(
                400, "X-Static-Large-Object is a reserved header. To create a static "
                "large object add query param multipart-manifest=put.")
        if req.method == "DELETE" and mode == "delete":
            return await handle_delete(req, account)
        if req.method in ("GET", "HEAD"):
            if mode == "get":
                return await manifest_get(req)
            return await handle_get(req, account)
        return await app(req)

    # ----------------------------------------------------------------- GET / HEAD

    async def manifest_get(req: SwiftRequest) -> SwiftResponse:
        resp = await app(req)
        if not (resp.is_success and is_slo(resp.headers)):
            return resp
        raw_form = req.query.get("format") == "raw"
        if raw_form:
            # as Swift: the PUT form answers with the object's own type, not JSON's
            resp.headers["Content-Type"] = resp.headers.get(
                "Content-Type") or "application/octet-stream"
        else:
            resp.headers["Content-Type"] = "application/json; charset=utf-8"
        if raw_form and req.method == "GET":
            rows = json.loads(await resp.read())
            raw = json.dumps([_raw_row(row) for row in rows]).encode()
            resp.body = raw
            resp.content_length = len(raw)
            resp.headers["ETag"] = quote_etag(hashlib.md5(raw).hexdigest())
        return resp

    async def handle_get(req: SwiftRequest, account: str) -> SwiftResponse:
        if is_conditional(req):
            # the client's Range/If-* apply to the large object, not the manifest
            whole_if_present(req, "X-Static-Large-Object")
        resp = await app(req)
        if not (resp.is_success and is_slo(resp.headers)):
            return resp
        headers = _client_headers(resp)
        if req.method == "HEAD" and resp.headers.get(SYSMETA_SIZE):
            discard(resp)
            total = int(resp.headers[SYSMETA_SIZE])
            etag = resp.headers.get(SYSMETA_ETAG, "")
            rows: list[dict[str, Any]] | None = None
        else:
            try:
                rows = json.loads(await resp.read())
            except ValueError:
                return error_response(500, "Unable to load SLO manifest")
            total = sum(row_length(row) for row in rows)
            etag = resp.headers.get(SYSMETA_ETAG) or manifest_etag(rows)
        headers["ETag"] = quote_etag(etag)
        status = evaluate_conditions(req.headers, etag, parse_http_date(
            resp.headers.get("Last-Modified")))
        if status == 412:
            return error_response(412, headers={"ETag": headers["ETag"]})
        if status == 304:
            return SwiftResponse(304, headers, b"")

        def body_for(start: int, stop: int) -> AsyncIterator[bytes]:
            assert rows is not None
            return stream_rows(req, account, rows, start, stop, 0)

        if req.method == "HEAD":
            return ranged_response(req, total, headers, body_for)
        out = ranged_response(req, total, headers, body_for)
        if out.body is not None and not isinstance(out.body, bytes):
            # fetch the first bytes now so a missing first segment is a clean 409
            stream = out.body
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                first = b""
            except SegmentError as exc:
                return error_response(409, str(exc))
            out.body = prepend_chunk(first, stream)
        return out

    async def stream_rows(req: SwiftRequest, account: str, rows: list[dict[str, Any]],
                          start: int, stop: int, depth: int) -> AsyncIterator[bytes]:
        """The bytes [start, stop) of the concatenation of ``rows``."""
        if depth > MAX_NESTING:
            raise SegmentError("Max recursion depth exceeded on a nested manifest")
        offset = 0
        for row in rows:
            length = row_length(row)
            seg_start, seg_stop = max(start - offset, 0), min(stop - offset, length)
            offset += length
            if seg_stop <= seg_start:
                if offset >= stop:
                    return
                continue
            base = 0
            if row.get("range"):
                base = int(row["range"].partition("-")[0])
            a, b = base + seg_start, base + seg_stop
            if row.get("sub_slo"):
                sub_rows = await fetch_manifest(req, row["name"])
                async for chunk in stream_rows(req, account, sub_rows, a, b, depth + 1):
                    yield chunk
            else:
                async for chunk in stream_object_range(
                        app, req, f"/v1/{account}{row['name']}", a, b,
                        expected_etag=row["hash"], source=SOURCE):
                    yield chunk
            if offset >= stop:
                return

    async def fetch_manifest(req: SwiftRequest, name: str) -> list[dict[str, Any]]:
        account = req.split_path()[1]
        sub = internal_subrequest(req, "GET", f"/v1/{account}{name}", source=SOURCE)
        resp = await app(sub)
        if not (resp.is_success and is_slo(resp.headers)):
            discard(resp)
            raise SegmentError(f"Nested manifest {name} is no longer valid")
        return json.loads(await resp.read())

    # ----------------------------------------------------------------------- PUT

    async def handle_put(req: SwiftRequest, account: str) -> SwiftResponse:
        limit = settings["max_manifest_size"]
        if req.content_length is not None and req.content_length > limit:
            return error_response(413, f"Manifest File > {limit} bytes")
        try:
            raw = await req.read_body(limit=limit)
        except ValueError:
            return error_response(413, f"Manifest File > {limit} bytes")
        parsed = parse_manifest(raw)
        if isinstance(parsed, SwiftResponse):
            return parsed
        out_type = pick_output_format(req.headers.get("Accept"))
        if not true_value(req.query.get("heartbeat")):
            failure, created, errors = await build_and_store(req, account, parsed)
            if errors:
                return SwiftResponse(400, {"Content-Type": out_type},
                                     bulk_body(out_type, {}, errors, "upload"))
            return failure if failure is not None else created

        async def heartbeat_body() -> AsyncIterator[bytes]:
            task = asyncio.ensure_future(build_and_store(req, account, parsed))
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=settings["yield_frequency"])
                    if done:
                        break
                    yield b" "
                status, result, errors = task.result()
            finally:
                if not task.done():
                    task.cancel()
            fields: dict[str, Any]
            if errors:
                fields = {"Response Status": status_line(400), "Response Body": ""}
            elif status is not None:
                body = await status.read()
                fields = {"Response Status": status_line(status.status),
                          "Response Body": body.decode("utf-8", "replace")}
                errors = []
            else:
                fields = {"Response Status": status_line(201), "Response Body": "",
                          "Etag": result.headers.get("ETag", ""),
                          "Last Modified": result.headers.get("Last-Modified", "")}
            yield bulk_body(out_type, fields, errors, "upload")

        return SwiftResponse(202, {"Content-Type": out_type}, heartbeat_body())

    def parse_manifest(raw: bytes) -> list[dict[str, Any]] | SwiftResponse:
        try:
            data = json.loads(raw)
        except ValueError:
            return error_response(400, "Manifest must be valid JSON.")
        if not isinstance(data, list):
            return error_response(400, "Manifest must be a list.")
        if len(data) > settings["max_manifest_segments"]:
            return error_response(
                413, f"Number of segments must be <= {settings['max_manifest_segments']}")
        problems = []
        for index, item in enumerate(data):
            if not isinstance(item, dict):
                problems.append(f"Index {index}: not a JSON object")
                continue
            extra = set(item) - ALLOWED_KEYS
            if extra:
                problems.append(f"Index {index}: extraneous keys "
                                + ", ".join(f'"{k}"' for k in sorted(extra)))
                continue
            path = item.get("path")
            if not isinstance(path, str) or len(path.lstrip("/").split("/", 1)) < 2 or \
                    not all(path.lstrip("/").split("/", 1)):
                problems.append(f"Index {index}: path does not refer to an object. Path "
                                "must be of the form /container/object.")
                continue
            size = item.get("size_bytes")
            if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                     or size < 0):
                try:
                    size = int(size)
                    if size < 0:
                        raise ValueError
                    item["size_bytes"] = size
                except (TypeError, ValueError):
                    problems.append(f"Index {index}: invalid size_bytes")
                    continue
            etag = item.get("etag")
            if etag is not None and not isinstance(etag, str):
                problems.append(f"Index {index}: invalid etag")
                continue
            rng = item.get("range")
            if rng is not None and not isinstance(rng, str):
                problems.append(f"Index {index}: invalid range")
        if problems:
            return error_response(400, "\n".join(problems))
        return data

    async def build_and_store(
        req: SwiftRequest, account: str, items: list[dict[str, Any]]
    ) -> tuple[SwiftResponse | None, Any, list[list[str]]]:
        """HEAD every segment, check it, and store the manifest.

        Returns (error response or None, success response, per-segment errors).
        """
        semaphore = asyncio.Semaphore(4)

        async def check(index: int, item: dict[str, Any]):
            name = "/" + item["path"].lstrip("/")
            async with semaphore:
                head = await app(internal_subrequest(
                    req, "HEAD", f"/v1/{account}{name}", source=SOURCE))
            discard(head)
            quoted = quote(name)
            if not head.is_success:
                return None, [quoted, status_line(head.status)]
            sub_slo = is_slo(head.headers)
            if sub_slo:
                size = int(head.headers.get(SYSMETA_SIZE) or 0)
                etag = strip_etag(head.headers.get(SYSMETA_ETAG))
            else:
                size = head.content_length or int(head.headers.get("Content-Length") or 0)
                etag = strip_etag(head.headers.get("ETag"))
            if item.get("size_bytes") is not None and item["size_bytes"] != size:
                return None, [quoted, "Size Mismatch"]
            if item.get("etag") and strip_etag(item["etag"]) != etag:
                return None, [quoted, "Etag Mismatch"]
            row: dict[str, Any] = {
                "name": name, "bytes": size, "hash": etag,
                "content_type": head.headers.get("Content-Type", ""),
                "last_modified": _iso_date(head.headers.get("Last-Modified", "")),
            }
            if sub_slo:
                row["sub_slo"] = True
            if item.get("range"):
                span = parse_segment_range(item["range"], size)
                if isinstance(span, str):
                    return None, [quoted, span]
                if span != (0, size):
                    row["range"] = f"{span[0]}-{span[1] - 1}"
            length = row_length(row)
            last = index == len(items) - 1
            if length < 1:
                return None, [quoted, "Too small; each segment must be at least 1 byte."]
            if length < settings["min_segment_size"] and not last:
                return None, [quoted, "Too small; each segment, other than the last, must "
                              f"be at least {settings['min_segment_size']} bytes."]
            return row, None

        results = await asyncio.gather(*(check(i, it) for i, it in enumerate(items)))
        errors = [err for _, err in results if err is not None]
        if errors:
            return None, None, errors
        rows = [row for row, _ in results]
        etag = manifest_etag(rows)
        total = sum(row_length(row) for row in rows)
        wanted = req.headers.get("ETag")
        if wanted and strip_etag(wanted) != etag:
            return error_response(422, "Manifest ETag does not match the segments"), None, []
        manifest = json.dumps(rows).encode()
        headers = CIMultiDict(req.headers)
        for key in ("ETag", "Content-Length", "Transfer-Encoding", "Range"):
            headers.popall(key, None)
        headers["Content-Length"] = str(len(manifest))
        headers["X-Static-Large-Object"] = "True"
        headers[SYSMETA_ETAG] = etag
        headers[SYSMETA_SIZE] = str(total)
        headers[LISTED_SIZE] = str(total)  # listings show the object's size, as Swift's
        headers[LISTED_ETAG] = etag_with_slo_etag(hashlib.md5(manifest).hexdigest(), etag)
        if not headers.get("Content-Type"):
            # as Swift: from the manifest's own name, never from a segment's type
            # (swiftclient's segments are application/swiftclient-segment)
            guessed, _ = mimetypes.guess_type(req.path)
            headers["Content-Type"] = guessed or "application/octet-stream"

        async def body() -> AsyncIterator[bytes]:
            yield manifest

        sub = req.make_subrequest("PUT", req.path, headers=headers, body=body())
        sub.environ["swift.source"] = SOURCE
        resp = await app(sub)
        if not resp.is_success:
            return resp, None, []
        discard(resp)
        resp.headers["ETag"] = quote_etag(etag)
        resp.body = b""
        resp.content_length = 0
        return None, resp, []

    # -------------------------------------------------------------------- DELETE

    async def handle_delete(req: SwiftRequest, account: str) -> SwiftResponse:
        out_type = pick_output_format(req.headers.get("Accept"))
        counts = {"deleted": 0, "not_found": 0}
        errors: list[list[str]] = []

        async def delete_one(name: str) -> None:
            resp = await app(internal_subrequest(
                req, "DELETE", f"/v1/{account}{name}", source=SOURCE))
            discard(resp)
            if resp.status == 404:
                counts["not_found"] += 1
            elif resp.is_success:
                counts["deleted"] += 1
            else:
                errors.append([quote(name), status_line(resp.status)])

        async def delete_tree(name: str, depth: int) -> None:
            get = await app(internal_subrequest(
                req, "GET", f"/v1/{account}{name}", source=SOURCE))
            if get.is_success and is_slo(get.headers) and depth <= MAX_NESTING:
                try:
                    rows = json.loads(await get.read())
                except ValueError:
                    rows = []
                for row in rows:
                    if row.get("sub_slo"):
                        await delete_tree(row["name"], depth + 1)
                    else:
                        await delete_one(row["name"])
            else:
                discard(get)
                if get.status in (401, 403):
                    errors.append([quote(name), status_line(get.status)])
                    return
                if depth == 0 and get.is_success:
                    # as Swift: the request names a manifest; a plain object stays
                    errors.append([quote(name), "Not an SLO manifest"])
                    return
            await delete_one(name)

        _, _, container, obj = req.split_path()
        await delete_tree(f"/{container}/{obj}", 0)
        # as Swift's bulk answers: what was not there counts as not found, not an error
        status = status_line(400 if errors else 200)
        fields = {"Number Deleted": counts["deleted"],
                  "Number Not Found": counts["not_found"],
                  "Response Status": status, "Response Body": ""}
        return SwiftResponse(200, {"Content-Type": out_type},
                             bulk_body(out_type, fields, errors, "delete"))

    return slo


def _raw_row(row: dict[str, Any]) -> dict[str, Any]:
    raw = {"path": row["name"], "etag": row["hash"], "size_bytes": row["bytes"]}
    if row.get("range"):
        raw["range"] = row["range"]
    return raw


def _client_headers(resp: SwiftResponse) -> CIMultiDict[str]:
    headers = CIMultiDict(resp.headers)
    for key in ("Content-Length", "Content-Range", "ETag"):
        headers.popall(key, None)
    manifest_etag_value = strip_etag(resp.headers.get("ETag"))
    if manifest_etag_value:
        headers["X-Manifest-Etag"] = manifest_etag_value
    ctype = headers.get("Content-Type")
    if ctype and "swift_bytes=" in ctype:
        headers["Content-Type"] = ";".join(
            p for p in ctype.split(";") if not p.strip().startswith("swift_bytes="))
    headers["Accept-Ranges"] = "bytes"
    return headers



def _iso_date(http_date: str) -> str:
    """A segment's Last-Modified as Swift's manifests record it:
    ``2026-12-07T19:12:38.000000`` (the HTTP date's second, in ISO 8601)."""
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return http_date
    return when.strftime("%Y-%m-%dT%H:%M:%S.000000")
