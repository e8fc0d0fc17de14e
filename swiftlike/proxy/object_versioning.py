"""Object versioning (``X-Versions-Enabled: true``): every write kept, addressable by id.

Each version of an object lives in a hidden archive container (one per versioned
container) under ``<3 hex digits of len(name)><name>/<inverted version id>`` so that a
prefix listing returns an object's versions newest first. A PUT stores the new bytes
in the archive and then copies them over the live object, so the user container
always holds a plain copy of the latest version (listings, ranges and large objects
work unchanged); DELETE writes a delete marker. The version id is the PUT's
timestamp, kept in sysmeta and returned as ``X-Object-Version-Id``; ``?version-id=``
reads, HEADs or deletes one version, and an empty ``PUT`` with it makes that version
current again. As in Swift, deleting the current version (or a delete marker) never
brings an older one back: the object then has no current version until a ``PUT``.
``GET <container>?versions`` lists them all with ``version_id`` and ``is_latest``.
Objects stored before versioning was enabled are the ``null`` version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from swiftlike.common.listing import accepts_json, render_rows
from swiftlike.common.timestamp import Timestamp
from swiftlike.proxy.info_generations import info_generations
from swiftlike.proxy.mw_util import InfoCache, conf_section
from swiftlike.proxy.pipeline import (
    Handler,
    SwiftRequest,
    SwiftResponse,
    error_response,
    info_registry,
)
from swiftlike.proxy.subrequest import (
    container_headers,
    copy_object,
    delete_object,
    discard,
    forget_container_headers,
    internal_subrequest,
    list_container,
    object_path,
    true_value,
)

SOURCE = "OV"
ENABLED = "X-Container-Sysmeta-Versions-Enabled"
VERSION_ID = "X-Object-Sysmeta-Versions-Id"
DELETE_MARKER_TYPE = "application/x-deleted;swift_versions_deleted=1"
NULL = "null"
MAX_TS = 9999999999.99999
LEGACY_ERROR = ("Cannot enable object versioning on a container that is already using "
                "the legacy versioned writes feature.")


RESERVED = "\x01"
"""Hidden container names start with this byte (Swift uses NUL, which our storage
nodes reject in paths); clients cannot address such containers through this API."""


def archive_container(container: str) -> str:
    """The hidden container holding a versioned container's versions."""
    return f"{RESERVED}versions{RESERVED}{container}"


def version_prefix(obj: str) -> str:
    return f"{len(obj.encode('utf-8', 'surrogateescape')):03x}{obj}/"


def version_name(obj: str, version_id: str, *, null: bool = False) -> str:
    inverted = f"{MAX_TS - float(version_id):016.5f}"
    return version_prefix(obj) + inverted + ("n" if null else "")


def parse_version_name(name: str) -> tuple[str, str, bool] | None:
    """(object, version id, is-null) of an archive row name."""
    try:
        length = int(name[:3], 16)
    except ValueError:
        return None
    encoded = name[3:].encode("utf-8", "surrogateescape")
    obj = encoded[:length].decode("utf-8", "surrogateescape")
    rest = encoded[length + 1:].decode()
    null = rest.endswith("n")
    try:
        stamp = Timestamp(MAX_TS - float(rest.rstrip("n")))
    except ValueError:
        return None
    return obj, NULL if null else stamp.normal, null


def valid_version_id(value: str) -> bool:
    if value == NULL:
        return True
    try:
        Timestamp(value)
    except ValueError:
        return False
    return True


def make_middleware(app: Handler, conf: dict) -> Handler:
    info_registry(conf).register_info("object_versioning", {})
    # Every object write asks whether its container keeps versions: cached, and
    # invalidated across workers when the container changes (info_generations.py).
    container_info = InfoCache(app, float(conf_section(conf, "object_versioning").get(
        "info_cache_seconds", 5.0)), SOURCE, info_generations(conf))

    async def object_versioning(req: SwiftRequest) -> SwiftResponse:
        container_info.observe(req)
        version, account, container, obj = req.split_path()
        if version != "v1" or not account:
            return await app(req)
        if not container:
            resp = await app(req)
            if req.method == "GET" and resp.is_success:
                await hide_archives(resp)
            return resp
        if container.startswith(RESERVED):
            return error_response(400, "Container names starting with \\x01 are reserved")
        if obj is None:
            return await container_request(req, account, container)
        version_id = req.query.get("version-id")
        if version_id is not None:
            if not valid_version_id(version_id):
                return error_response(400, "Invalid version-id")
            if req.method not in ("GET", "HEAD", "DELETE", "PUT"):
                return error_response(400, f"{req.method} to a specific version is not "
                                      "allowed")
            if version_id != NULL:
                info = await container_info.container(req, account, container)
                if info["status"] // 100 == 2 and info["sysmeta"].get(
                        "versions-enabled") is None:
                    return error_response(400, "version-aware operations require that "
                                          "the container is versioned")
            if req.method == "PUT":
                return await make_version_current(req, account, container, obj, version_id)
            return await version_request(req, account, container, obj, version_id)
        if req.method in ("PUT", "DELETE"):
            info = await container_info.container(req, account, container)
            if info["status"] // 100 == 2 and true_value(
                    info["sysmeta"].get("versions-enabled")):
                if req.method == "PUT":
                    return await versioned_put(req, account, container, obj)
                return await versioned_delete(req, account, container, obj)
        resp = await app(req)
        if req.method in ("GET", "HEAD"):
            version_id = resp.headers.get(VERSION_ID)
            if version_id:
                # as Swift: where this version can be read again, whatever comes later
                resp.headers["X-Object-Version-Id"] = version_id
                resp.headers["Content-Location"] = \
                    f"{quote(req.path.encode('utf-8', 'surrogateescape'))}" \
                    f"?version-id={version_id}"
            elif resp.status == 404:
                # as Swift: a versioned container's missing object (a delete marker,
                # never written) is "null"; only looked up for a miss, not every read
                info = await container_info.container(req, account, container)
                if info["status"] // 100 == 2 and true_value(
                        info["sysmeta"].get("versions-enabled")):
                    resp.headers["X-Object-Version-Id"] = NULL
        return resp

    # ---------------------------------------------------------------- containers

    async def container_request(req: SwiftRequest, account: str,
                                container: str) -> SwiftResponse:
        if req.method in ("PUT", "POST") and "X-Versions-Enabled" in req.headers:
            enable = true_value(req.headers.popone("X-Versions-Enabled"))
            if enable and len(archive_container(container).encode()) > 256:
                return error_response(400, "Container name too long for object versioning")
            if enable:
                if any(req.headers.get(h) for h in ("X-Versions-Location",
                                                    "X-History-Location")):
                    return error_response(400, LEGACY_ERROR)
                info = await container_headers(app, req, account, container, source=SOURCE)
                if info.is_success and (info.headers.get("X-Versions-Location")
                                        or info.headers.get("X-History-Location")):
                    return error_response(400, LEGACY_ERROR)
                archive = await app(internal_subrequest(
                    req, "PUT", object_path(account, archive_container(container)),
                    source=SOURCE))
                discard(archive)
                if not archive.is_success:
                    return error_response(503, "Unable to create the versions container")
            req.headers[ENABLED] = "True" if enable else "False"
            forget_container_headers(req, account, container)
            return await app(req)
        if req.method == "GET" and "versions" in req.query:
            return await list_versions(req, account, container)
        if req.method == "DELETE":
            status, rows = await list_container(
                app, req, account, archive_container(container), limit=1, source=SOURCE)
            if status == 200 and rows:
                return error_response(409, "There are versions of objects left in this "
                                      "container; delete them first.")
            resp = await app(req)
            if resp.is_success and status == 200:
                await delete_object(app, req, object_path(account, archive_container(
                    container)), source=SOURCE)
            return resp
        resp = await app(req)
        if req.method in ("GET", "HEAD") and resp.headers.get(ENABLED) is not None:
            resp.headers["X-Versions-Enabled"] = str(true_value(resp.headers[ENABLED]))
        return resp

    async def hide_archives(resp: SwiftResponse) -> None:
        """Account listings never show the hidden archive containers."""
        ctype = resp.headers.get("Content-Type", "")
        body = await resp.read()
        if b"\\u0001" not in body and RESERVED.encode() not in body:
            return
        if "json" in ctype:
            rows = [r for r in json.loads(body)
                    if not r.get("name", "").startswith(RESERVED)]
            data = json.dumps(rows).encode()
        elif "text/plain" in ctype:
            data = b"".join(line + b"\n" for line in body.splitlines()
                            if not line.startswith(RESERVED.encode()))
        else:
            return
        resp.body = data
        resp.content_length = len(data)

    async def list_versions(req: SwiftRequest, account: str,
                            container: str) -> SwiftResponse:
        version_marker = req.query.get("version_marker", "")
        if version_marker and not req.query.get("marker"):
            return error_response(400, "version_marker param requires marker")
        if version_marker and not valid_version_id(version_marker):
            return error_response(400, "invalid version_marker param")
        raw_limit = req.query.get("limit", "")
        limit = int(raw_limit) if raw_limit.isdigit() else 10000  # else ignored, as Swift
        if limit > 10000:
            return error_response(412, "Maximum limit is 10000")
        head = await container_headers(app, req, account, container, source=SOURCE)
        if not head.is_success:
            return error_response(head.status)
        # as Swift's: versions are listed in JSON alone, anything else asked for is 406
        # (once the container is known to be there and readable: 404 and 401 first)
        try:
            if not accepts_json(req.query, req.headers.get("Accept")):
                return error_response(406)
        except ValueError:
            return error_response(400, "Invalid Accept header")
        status, archived = await list_container(
            app, req, account, archive_container(container), source=SOURCE)
        if status not in (200, 404):
            return error_response(503)
        status, current = await list_container(app, req, account, container, source=SOURCE)
        if status != 200:
            return error_response(status if status in (401, 403, 404) else 503)
        entries: list[tuple[str, float, dict[str, Any]]] = []
        by_name: dict[str, list[tuple[float, dict[str, Any]]]] = {}  # archived, per name
        for row in archived:
            parsed = parse_version_name(row["name"])
            if parsed is None:
                continue
            obj, vid, _null = parsed
            entry = {k: row[k] for k in ("hash", "bytes", "content_type", "last_modified",
                                         "slo_etag") if k in row}
            entry.update(name=obj, version_id=vid)
            stamp = _inverted(row["name"])
            entries.append((obj, stamp, entry))
            by_name.setdefault(obj, []).append((stamp, entry))
        current_of: dict[str, dict[str, Any]] = {}  # the entry the live object is
        for row in current:
            if "name" not in row:
                continue
            name = row["name"]
            archived_rows = sorted(by_name.get(name, []), key=lambda pair: pair[0])
            if not archived_rows:  # written before versioning was ever on
                current_of[name] = {**row, "version_id": NULL}
                entries.append((name, MAX_TS, current_of[name]))
                continue
            # the live object is a copy of a version: the newest with its bytes (the
            # newest of all after a PUT, an older one after PUT ?version-id= made it
            # current again)
            match = next((entry for _, entry in archived_rows
                          if entry.get("content_type") != DELETE_MARKER_TYPE
                          and entry.get("hash") == row.get("hash")
                          and entry.get("bytes") == row.get("bytes")), None)
            if match is None:
                # written while versioning was suspended: the null version, and the
                # newest of all
                match = {**row, "version_id": NULL}
                entries.append((name, -1.0, match))
            current_of[name] = match
        entries.sort(key=lambda e: (e[0], e[1]))
        last = None
        for name, _stamp, entry in entries:
            # as Swift's: the version the live object is, or, when there is none, a
            # delete marker that is the newest entry; with neither (its current version
            # deleted by id) no entry is latest
            if name in current_of:
                entry["is_latest"] = entry is current_of[name]
            else:
                entry["is_latest"] = name != last and \
                    entry.get("content_type") == DELETE_MARKER_TYPE
            last = name
        rows = _select_versions(entries, req.query, version_marker, limit)
        body, ctype = render_rows("container", container, [_swift_order(row) for row in rows],
                                  "json")
        resp = SwiftResponse(200, dict(head.headers), body)  # an empty one too: []
        resp.headers["Content-Type"] = ctype
        resp.headers.popall("Content-Length", None)
        resp.headers["X-Versions-Enabled"] = str(true_value(head.headers.get(ENABLED)))
        return resp

    # ------------------------------------------------------------------- objects

    async def keep_null_version(req: SwiftRequest, account: str, container: str,
                                obj: str) -> SwiftResponse | None:
        """Archive an object written before versioning was on, as the null version."""
        path = object_path(account, container, obj)
        head = await app(internal_subrequest(req, "HEAD", path, source=SOURCE))
        discard(head)
        if head.status == 404 or head.headers.get(VERSION_ID):
            return None
        if not head.is_success:
            return error_response(head.status if head.status in (401, 403) else 503)
        stamp = head.headers.get("X-Timestamp") or Timestamp.now().normal
        name = version_name(obj, Timestamp(stamp).normal, null=True)
        status, put = await copy_object(app, req, path, object_path(
            account, archive_container(container), name), extra_headers={VERSION_ID: NULL},
            source=SOURCE)
        if status // 100 != 2 and not (status == 404 and put is None):
            return error_response(503, "Unable to keep the unversioned object")
        return None

    async def versioned_put(req: SwiftRequest, account: str, container: str,
                            obj: str) -> SwiftResponse:
        failure = await keep_null_version(req, account, container, obj)
        if failure is not None:
            return failure
        version_id = Timestamp.now().normal
        archive_path = object_path(account, archive_container(container),
                                   version_name(obj, version_id))
        headers = dict(req.headers)
        headers[VERSION_ID] = version_id
        put = req.make_subrequest("PUT", archive_path, headers=headers, body=req.body)
        put.environ["swift.source"] = SOURCE
        req.body = None
        resp = await app(put)
        if not resp.is_success:
            return resp
        status, _ = await copy_object(app, req, archive_path,
                                      object_path(account, container, obj), source=SOURCE)
        if status // 100 != 2:
            await delete_object(app, req, archive_path, source=SOURCE)
            return error_response(status if status in (401, 403, 412) else 503,
                                  "Unable to make the new version current")
        resp.headers["X-Object-Version-Id"] = version_id
        return resp

    async def versioned_delete(req: SwiftRequest, account: str, container: str,
                               obj: str) -> SwiftResponse:
        failure = await keep_null_version(req, account, container, obj)
        if failure is not None:
            return failure
        version_id = Timestamp.now().normal
        marker = internal_subrequest(
            req, "PUT", object_path(account, archive_container(container),
                                    version_name(obj, version_id)),
            headers={"Content-Type": DELETE_MARKER_TYPE, "Content-Length": "0",
                     VERSION_ID: version_id}, source=SOURCE)
        resp = await app(marker)
        discard(resp)
        if not resp.is_success:
            return error_response(503, "Unable to write a delete marker")
        status = await delete_object(app, req, object_path(account, container, obj),
                                     source=SOURCE)
        if status // 100 != 2 and status != 404:
            return error_response(503)
        return SwiftResponse(204, {"X-Object-Version-Id": version_id}, b"")

    async def find_version(req: SwiftRequest, account: str, container: str, obj: str,
                           version_id: str) -> tuple[int, list[dict[str, Any]], int | None]:
        status, rows = await list_container(
            app, req, account, archive_container(container), prefix=version_prefix(obj),
            source=SOURCE)
        if status != 200:
            return status, [], None
        for index, row in enumerate(rows):
            parsed = parse_version_name(row["name"])
            if parsed is not None and parsed[1] == version_id:
                return 200, rows, index
        return 200, rows, None

    async def version_request(req: SwiftRequest, account: str, container: str, obj: str,
                              version_id: str) -> SwiftResponse:
        status, rows, index = await find_version(req, account, container, obj, version_id)
        if status not in (200, 404):
            return error_response(status if status in (401, 403) else 503)
        if index is None:
            if version_id == NULL:
                return await live_null_version(req, account, container, obj)
            return error_response(404)
        row = rows[index]
        path = object_path(account, archive_container(container), row["name"])
        if req.method in ("GET", "HEAD"):
            if row.get("content_type", "").startswith("application/x-deleted"):
                return error_response(404, headers={"X-Object-Version-Id": version_id})
            resp = await app(internal_subrequest(req, req.method, path, source=SOURCE,
                                                 headers=dict(req.headers)))
            if resp.status // 100 in (2, 3, 4) and resp.status != 404:
                resp.headers["X-Object-Version-Id"] = version_id
            return resp
        # the current version goes with its live copy (Swift deletes the link first):
        # the object then has no current version, and the older ones stay as they are
        live = object_path(account, container, obj)
        head = await app(internal_subrequest(req, "HEAD", live, source=SOURCE))
        discard(head)
        current = head.headers.get(VERSION_ID) if head.is_success else None
        if current == version_id:
            status = await delete_object(app, req, live, source=SOURCE)
            if status // 100 != 2 and status != 404:
                return error_response(503)
            current = None
        status = await delete_object(app, req, path, source=SOURCE)
        if status // 100 != 2 and status != 404:
            return error_response(503)
        return SwiftResponse(204, {"X-Object-Version-Id": version_id,
                                   "X-Object-Current-Version-Id": current or NULL}, b"")

    async def make_version_current(req: SwiftRequest, account: str, container: str,
                                   obj: str, version_id: str) -> SwiftResponse:
        """``PUT ?version-id=`` with an empty body: that version becomes the object's
        current one again (a copy of it over the live object, as Swift's link to it)."""
        if version_id == NULL:
            return error_response(400, "Invalid version-id: the null version cannot be "
                                  "made current")
        if req.content_length is None and \
                "chunked" not in req.headers.get("Transfer-Encoding", "").lower():
            return error_response(411, "Missing Content-Length")
        try:
            body = await req.read_body(limit=0)
        except ValueError:
            body = b"x"
        if body:
            return error_response(400, "PUT version-id requests require a zero byte body")
        status, rows, index = await find_version(req, account, container, obj, version_id)
        if status not in (200, 404):
            return error_response(status if status in (401, 403) else 503)
        if index is None or rows[index].get("content_type") == DELETE_MARKER_TYPE:
            return error_response(404, "The specified version does not exist")
        source_path = object_path(account, archive_container(container), rows[index]["name"])
        status, put = await copy_object(app, req, source_path,
                                        object_path(account, container, obj), source=SOURCE)
        if status // 100 != 2:
            return error_response(status if status in (401, 403, 412, 413) else 503)
        headers = {"X-Object-Version-Id": version_id}
        if put is not None and put.headers.get("ETag"):
            headers["ETag"] = put.headers["ETag"]
        return SwiftResponse(201, headers, b"")

    async def live_null_version(req: SwiftRequest, account: str, container: str, obj: str
                                ) -> SwiftResponse:
        """GET/HEAD/DELETE of the null version when none is archived: the object in the
        container itself, if it carries no version id (written while versioning was off,
        or in a container that never had it). ``swift delete --versions`` deletes every
        listed object this way, unversioned containers included. As in Swift, deleting
        it leaves the object with no current version."""
        live = object_path(account, container, obj)
        probe = "HEAD" if req.method == "DELETE" else req.method
        resp = await app(internal_subrequest(req, probe, live, source=SOURCE,
                                             headers=dict(req.headers)))
        if resp.is_success and resp.headers.get(VERSION_ID):
            discard(resp)  # the current object is a numbered version: no null one
            if req.method == "DELETE":
                return SwiftResponse(204, {"X-Object-Version-Id": NULL}, b"")
            return error_response(404)
        if req.method == "DELETE":
            if not resp.is_success:
                discard(resp)
                if resp.status == 404:
                    return SwiftResponse(204, {"X-Object-Version-Id": NULL}, b"")
                return error_response(resp.status if resp.status in (401, 403) else 503)
            discard(resp)
            resp = await app(internal_subrequest(req, "DELETE", live, source=SOURCE,
                                                 headers=dict(req.headers)))
        if resp.is_success:
            resp.headers["X-Object-Version-Id"] = NULL
        return resp

    return object_versioning


#: a versions listing row's keys in Swift's order (the rest, symlink fields, after)
_VERSION_ROW_KEYS = ("bytes", "hash", "name", "content_type", "last_modified", "is_latest",
                     "version_id")


def _swift_order(row: dict[str, Any]) -> dict[str, Any]:
    if "subdir" in row:
        return row
    ordered = {key: row[key] for key in _VERSION_ROW_KEYS if key in row}
    ordered.update((key, value) for key, value in row.items() if key not in ordered)
    return ordered


def _select_versions(entries: list[tuple[str, float, dict[str, Any]]],
                     query: Mapping[str, str], version_marker: str, limit: int
                     ) -> list[dict[str, Any]]:
    """The page of a ``?versions`` listing, by the plain listing's rules: prefix,
    marker (with version_marker), end_marker, reverse, then delimiter roll-ups."""
    prefix = query.get("prefix", "")
    end_marker = query.get("end_marker", "")
    delimiter = query.get("delimiter", "")
    reverse = true_value(query.get("reverse"))
    marker = query.get("marker", "")
    start = _start_after(entries, marker, version_marker)
    if reverse:
        entries = entries[::-1]
        if marker and not version_marker:
            start = (marker, float("-inf"))  # backwards, past every version of it
    rows: list[dict[str, Any]] = []
    for name, stamp, entry in entries:
        if prefix and not name.startswith(prefix):
            continue
        if start is not None and ((name, stamp) >= start if reverse
                                  else (name, stamp) <= start):
            continue
        if end_marker and (name <= end_marker if reverse else name >= end_marker):
            continue
        cut = name.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            subdir = name[:cut + len(delimiter)]
            if not rows or rows[-1].get("subdir") != subdir:
                rows.append({"subdir": subdir})
        else:
            rows.append(entry)
        if len(rows) >= limit:
            break
    return rows


def _start_after(entries: list[tuple[str, float, dict[str, Any]]], marker: str,
                 version_marker: str) -> tuple[str, float] | None:
    """The (name, inverted stamp) a listing resumes after, or None for no marker.

    A plain ``marker`` skips every version of that name; with ``version_marker`` the
    listing resumes right after that version, i.e. with the marker's older versions.
    """
    if not marker:
        return None
    if not version_marker:
        return marker, float("inf")
    if version_marker != NULL:
        return marker, float(f"{MAX_TS - float(version_marker):016.5f}")
    for name, stamp, entry in entries:
        if name == marker and entry.get("version_id") == NULL:
            return marker, stamp
    return marker, float("inf")


def _inverted(name: str) -> float:
    """The inverted timestamp of an archive row: smaller is newer."""
    tail = name.rsplit("/", 1)[-1].rstrip("n")
    try:
        return float(tail)
    except ValueError:
        return MAX_TS
