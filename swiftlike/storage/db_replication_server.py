"""The receiving side of account/container database replication.

``REPLICATE /<dev>/<part>/<hash>`` with ``X-Backend-Server-Type: account|container`` and
a msgpack body ``{"op": ..., ...}``:

* ``sync``: ``{"info": {account, container?, put_timestamp, delete_timestamp,
  metadata}, "sender_id"}`` -> merges the put/delete timestamps and metadata (newest
  wins key by key); creates the database first when this node has none (the sender then
  ships every row: the whole database). Answers ``{"created", "file_id", "point"}``:
  ``point`` is the highest ROWID of the sender's database merged here, as this file
  records it, so a file restored from a backup or short of commits is refilled from
  where it really is. (``file_id`` serves senders of older releases.)
  With ``"create": false`` a node that has no such database creates none and answers
  ``{"missing": true}``: the sender, whose database is big, ships the file instead.
  ``"clone_of": [id, row]`` from a sender whose file was shipped in: see
  :func:`apply_sync`.
* ``merge_items``: ``{"rows": [...], "sender_id", "point"}`` -> rows applied by timestamp
  (``merge_items``) and ``point`` recorded in the same transaction; answers
  ``{"changed": n}`` after the SQLite commit (synchronous=FULL).
* a whole database file (:mod:`swiftlike.storage.db_ship`): the body is the file,
  ``X-Backend-Db-Ship: <sender_id> <point>`` says whose snapshot it is and its highest
  ROWID. Answers ``{"installed", "file_id", "point"}``; ``installed`` is false when a
  database appeared at the path meanwhile (the sender then ships rows). 400 for a file
  that is not a sound database of the name in the path.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from aiohttp import web

from swiftlike.storage import replication_wire as wire
from swiftlike.storage.account_db import AccountBroker
from swiftlike.storage.container_db import ContainerBroker
from swiftlike.storage.db import DatabaseBroker, DatabaseNotFound
from swiftlike.storage.db_files import remove_if_present
from swiftlike.storage.db_server_common import quarantining_damage
from swiftlike.storage.db_ship import ShipRefused, install_shipped
from swiftlike.storage.node import StorageNode, error_response

KIND_DIRS = {"account": "accounts", "container": "containers"}
SHIP_HEADER = "X-Backend-Db-Ship"
SHIP_WRITE = 1024 * 1024  # bytes of a shipped file written per thread hop


def db_file_path(device_path: str, server_type: str, partition: str, db_hash: str) -> str:
    return os.path.join(device_path, KIND_DIRS[server_type], partition, db_hash[-3:], db_hash,
                        f"{db_hash}.db")


def broker_class(server_type: str) -> type[DatabaseBroker]:
    return AccountBroker if server_type == "account" else ContainerBroker


def open_broker(server_type: str, path: str, fsync: bool) -> DatabaseBroker:
    return broker_class(server_type)(path, fsync=fsync)


def file_id(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def apply_sync(device_path: str, server_type: str, partition: str, db_hash: str,
               info: dict[str, Any], fsync: bool, sender_id: str | None = None,
               create: bool = True, clone: tuple[str, int] | None = None
               ) -> dict[str, Any]:
    """Create the database if missing, then merge timestamps and metadata (blocking).

    With ``sender_id`` the answer carries ``point``: how far that sender's rows are
    merged here, by this file's own record (see ``DatabaseBroker.record_incoming``).
    ``create=False``: a missing database stays missing (``{"missing": True}``).
    ``clone``: the sender's file is a shipped copy of database ``clone[0]`` up to ROWID
    ``clone[1]``, so rows of that one merged here count for it too.
    """
    path = db_file_path(device_path, server_type, partition, db_hash)
    broker = open_broker(server_type, path, fsync)
    try:
        created = False
        if not broker.exists():
            if not create:
                return {"missing": True}
            tmp_dir = os.path.join(device_path, "tmp")
            put = str(info.get("put_timestamp") or "0")
            if server_type == "account":
                created = broker.create(tmp_dir, info["account"], put)  # type: ignore[attr-defined]
            else:
                created = broker.create(tmp_dir, info["account"],  # type: ignore[attr-defined]
                                        info["container"], put)
        broker.merge_timestamps(info.get("put_timestamp"), info.get("delete_timestamp"))
        metadata = info.get("metadata") or {}
        broker.update_metadata({key: (value[0], value[1]) for key, value in metadata.items()
                                if isinstance(value, (list, tuple)) and len(value) == 2})
        answer = {"created": created, "file_id": file_id(path)}
        if sender_id:
            point = broker.incoming_point(sender_id)
            if clone is not None:
                # the origin itself holds all of its own rows
                held = clone[1] if clone[0] == broker.sync_id() else \
                    broker.incoming_point(clone[0])
                point = max(point, min(held, clone[1]))
            answer["point"] = point
        return answer
    finally:
        broker.close()


def apply_rows(device_path: str, server_type: str, partition: str, db_hash: str,
               rows: list[dict[str, Any]], fsync: bool,
               incoming: tuple[str, int] | None = None) -> dict[str, Any] | None:
    """Merge a sender's rows; ``incoming`` (its database id, the last ROWID sent) is
    recorded in the same transaction."""
    path = db_file_path(device_path, server_type, partition, db_hash)
    if not os.path.exists(path):
        return None
    broker = open_broker(server_type, path, fsync)
    try:
        for row in rows:
            row.pop("ROWID", None)
        try:
            changed = broker.merge_items(rows, incoming=incoming)  # type: ignore[attr-defined]
            return {"changed": changed, "file_id": file_id(path)}
        except (DatabaseNotFound, FileNotFoundError):  # removed by this node's replicator
            return None
    finally:
        broker.close()


async def handle_db_replicate(request: web.Request, node: StorageNode, device_path: str,
                              server_type: str, partition: str, rest: list[str],
                              verb: str = "REPLICATE") -> web.Response:
    if verb != "REPLICATE":
        return error_response(405, "databases replicate with REPLICATE only")
    if len(rest) != 1 or not rest[0] or not all(c in "0123456789abcdef" for c in rest[0]):
        return error_response(400, "database REPLICATE path is /<device>/<partition>/<hash>")
    db_hash = rest[0]
    if SHIP_HEADER in request.headers:
        return await _receive_ship(request, node, device_path, server_type, partition,
                                   db_hash)
    try:
        body = wire.unpack(await request.read())
        if not isinstance(body, dict):
            raise ValueError("body must be a map")
        op = body.get("op")
        answer = await quarantining_damage(
            node, db_file_path(device_path, server_type, partition, db_hash),
            lambda: _apply(node, device_path, server_type, partition, db_hash, op, body))
        if isinstance(answer, web.Response):
            return answer
    except (ValueError, KeyError, TypeError) as err:
        return error_response(400, f"bad database REPLICATE: {err}")
    except DatabaseNotFound:  # removed by this node's replicator meanwhile: next pass
        return error_response(404, "no such database")
    return web.Response(body=wire.pack(answer), content_type=wire.MSGPACK_TYPE)


async def _apply(node: StorageNode, device_path: str, server_type: str, partition: str,
                 db_hash: str, op: Any, body: dict[str, Any]
                 ) -> dict[str, Any] | web.Response:
    """One REPLICATE op on the local database; ValueError for a malformed request."""
    if op == "sync":
        info = body.get("info")
        if not isinstance(info, dict) or "account" not in info or (
                server_type == "container" and "container" not in info):
            raise ValueError("sync needs info with account (and container)")
        return await node.run_db(apply_sync, device_path, server_type, partition,  # type: ignore[no-any-return]
                                 db_hash, info, node.fsync, _sender_id(body),
                                 body.get("create", True) is not False, _clone(body))
    if op != "merge_items":
        raise ValueError(f"unknown op {op!r}")
    rows = body.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r
                                             for r in rows):
        raise ValueError("merge_items needs a list of rows with names")
    sender_id, point = _sender_id(body), body.get("point")
    incoming = (sender_id, point) if sender_id and isinstance(point, int) \
        and not isinstance(point, bool) and point >= 0 else None
    answer = await node.run_db(apply_rows, device_path, server_type, partition,
                               db_hash, rows, node.fsync, incoming)
    if answer is None:
        return error_response(404, "no such database")
    if node.group_commit:
        # rows the node's own row batches committed may be visible here before their
        # device flush (deferred sync, see RowBatcher): the sender must not count them as
        # stored until a flush has covered them
        await node.flusher(device_path).barrier()
    return answer  # type: ignore[no-any-return]


def _clone(body: dict[str, Any]) -> tuple[str, int] | None:
    """What the sender's file is a shipped copy of: (database id, ROWID), or None."""
    value = body.get("clone_of")
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("clone_of must be [database id, row]")
    origin, point = _sender_id({"sender_id": value[0]}), value[1]
    if origin is None or not isinstance(point, int) or isinstance(point, bool) or point < 0:
        raise ValueError("clone_of must be [database id, row]")
    return origin, point


def _sender_id(body: dict[str, Any]) -> str | None:
    """The sending database's id (older senders send none)."""
    value = body.get("sender_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ValueError("sender_id must be a short string")
    return value


async def _receive_ship(request: web.Request, node: StorageNode, device_path: str,
                        server_type: str, partition: str, db_hash: str) -> web.Response:
    """A whole database file: to the device's tmp/, checked, then linked into place."""
    try:
        sender, _, point_text = request.headers[SHIP_HEADER].partition(" ")
        sender_id = _sender_id({"sender_id": sender})
        point = int(point_text)
        if sender_id is None or point < 0:
            raise ValueError("needs a sender id and a point")
    except ValueError as err:
        return error_response(400, f"bad {SHIP_HEADER}: {err}")
    length = request.content_length
    if length is None:
        return error_response(411, "a shipped database needs a Content-Length")
    if not node.has_space_for(device_path, 2 * length):  # the file, then its WAL
        return error_response(507, "Not enough free space on device")
    tmp_dir = os.path.join(device_path, "tmp")
    tmp_path = os.path.join(tmp_dir, f"shipped-{uuid.uuid4().hex}.db")
    await node.run_io(os.makedirs, tmp_dir, exist_ok=True)
    handle = await node.run_io(open, tmp_path, "wb")
    received = 0
    try:
        pending: list[bytes] = []
        size = 0
        while True:
            piece = bytes(await request.content.readany())
            if piece:
                pending.append(piece)
                size += len(piece)
                received += len(piece)
            if size >= SHIP_WRITE or (not piece and pending):
                await node.run_io(handle.write, b"".join(pending))
                pending, size = [], 0
            if not piece:
                break
    except BaseException:
        await node.run_io(handle.close)
        await node.run_io(remove_if_present, tmp_path)
        raise
    await node.run_io(handle.close)
    if received != length:
        await node.run_io(remove_if_present, tmp_path)
        return error_response(499, f"got {received} of {length} bytes of the database")
    target = db_file_path(device_path, server_type, partition, db_hash)
    try:
        answer = await node.run_db(
            install_shipped, tmp_path, target, server_type, db_hash,
            broker_class(server_type), node.hash_prefix, node.hash_suffix, sender_id, point,
            node.fsync)
    except ShipRefused as err:
        return error_response(400, str(err))
    if answer["installed"]:
        answer["file_id"] = await node.run_io(file_id, target)
    return web.Response(body=wire.pack(answer), content_type=wire.MSGPACK_TYPE)
