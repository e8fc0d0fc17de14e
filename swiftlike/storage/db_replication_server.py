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
* ``merge_items``: ``{"rows": [...], "sender_id", "point"}`` -> rows applied by timestamp
  (``merge_items``) and ``point`` recorded in the same transaction; answers
  ``{"changed": n}`` after the SQLite commit (synchronous=FULL).
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from swiftlike.storage import replication_wire as wire
from swiftlike.storage.account_db import AccountBroker
from swiftlike.storage.container_db import ContainerBroker
from swiftlike.storage.db import DatabaseBroker, DatabaseNotFound
from swiftlike.storage.db_server_common import quarantining_damage
from swiftlike.storage.node import StorageNode, error_response

KIND_DIRS = {"account": "accounts", "container": "containers"}


def db_file_path(device_path: str, server_type: str, partition: str, db_hash: str) -> str:
    return os.path.join(device_path, KIND_DIRS[server_type], partition, db_hash[-3:], db_hash,
                        f"{db_hash}.db")


def open_broker(server_type: str, path: str, fsync: bool) -> DatabaseBroker:
    return (AccountBroker if server_type == "account" else ContainerBroker)(path, fsync=fsync)


def file_id(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def apply_sync(device_path: str, server_type: str, partition: str, db_hash: str,
               info: dict[str, Any], fsync: bool, sender_id: str | None = None
               ) -> dict[str, Any]:
    """Create the database if missing, then merge timestamps and metadata (blocking).

    With ``sender_id`` the answer carries ``point``: how far that sender's rows are
    merged here, by this file's own record (see ``DatabaseBroker.record_incoming``).
    """
    path = db_file_path(device_path, server_type, partition, db_hash)
    broker = open_broker(server_type, path, fsync)
    try:
        created = False
        if not broker.exists():
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
            answer["point"] = broker.incoming_point(sender_id)
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
                                 db_hash, info, node.fsync, _sender_id(body))
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


def _sender_id(body: dict[str, Any]) -> str | None:
    """The sending database's id (older senders send none)."""
    value = body.get("sender_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ValueError("sender_id must be a short string")
    return value
