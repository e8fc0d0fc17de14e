"""A small keep-alive HTTP/1.1 client for the replicator's batch verbs, on asyncio streams.

Why not :class:`~swiftlike.common.node_client.NodeClient`: importing aiohttp's client
(and the TLS contexts it builds at import time) costs a ``swiftlike replicate --once``
process about a third of a CPU second before it does any work, and a rebuild runs one
such process per node per pass. The replicator only ever sends ``POST`` to our own
storage nodes and reads small msgpack answers, so this client is deliberately narrow:

* one pool of idle connections per peer (``ip:port``), reused across requests;
* request bodies as bytes (``Content-Length``) or an async iterator (chunked);
* answers with ``Content-Length`` or chunked bodies, or read to EOF;
* ``conn_timeout`` to connect, ``node_timeout`` for every read and write;
* a request that fails on a *reused* connection before any answer byte arrived (the
  peer closed it while idle) is retried once on a fresh connection, if its body is bytes.

Errors surface as :data:`HTTP_ERRORS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

#: exceptions meaning "this peer did not answer properly"
HTTP_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, EOFError, ValueError)
MAX_HEADER_LINE = 65536


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 reused: bool = False) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = reused

    def close(self) -> None:
        self.writer.close()


class StaleConnection(ConnectionError):
    """A pooled connection turned out closed before the peer answered anything."""


class ReplicationHTTP:
    """Pooled ``POST`` requests to storage nodes; :meth:`close` when done."""

    def __init__(self, conn_timeout: float = 1.0, node_timeout: float = 20.0,
                 idle_per_peer: int = 16) -> None:
        self.conn_timeout = conn_timeout
        self.node_timeout = node_timeout
        self.idle_per_peer = idle_per_peer
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def post(self, node: Mapping[str, Any], path: str, headers: Mapping[str, str],
                   body: bytes | AsyncIterator[bytes]) -> tuple[int, bytes]:
        """Send ``POST path`` to ``node``; returns (status, whole answer body)."""
        address = (str(node["ip"]), int(node["port"]))
        while True:
            conn = await self._connection(address)
            try:
                status, answer, keep = await self._exchange(conn, address, path, headers,
                                                            body)
            except StaleConnection:
                conn.close()
                if isinstance(body, bytes):
                    continue  # the peer closed an idle connection: retry on a new one
                raise
            except BaseException:
                conn.close()
                raise
            if keep:
                idle = self._idle.setdefault(address, [])
                if len(idle) < self.idle_per_peer:
                    conn.reused = True
                    idle.append(conn)
                else:
                    conn.close()
            else:
                conn.close()
            return status, answer

    async def _connection(self, address: tuple[str, int]) -> _Connection:
        idle = self._idle.get(address, [])
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address[0], address[1], limit=MAX_HEADER_LINE),
            self.conn_timeout)
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, address: tuple[str, int], path: str,
                        headers: Mapping[str, str], body: bytes | AsyncIterator[bytes]
                        ) -> tuple[int, bytes, bool]:
        head = [f"POST {path} HTTP/1.1", f"Host: {address[0]}:{address[1]}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        streamed = not isinstance(body, bytes)
        head.append("Transfer-Encoding: chunked" if streamed else f"Content-Length: {len(body)}")
        writer = conn.writer
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        try:
            if isinstance(body, bytes):
                writer.write(body)
                await asyncio.wait_for(writer.drain(), self.node_timeout)
            else:
                async for chunk in body:
                    if chunk:
                        writer.write(b"%x\r\n" % len(chunk))
                        writer.write(chunk)
                        writer.write(b"\r\n")
                        await asyncio.wait_for(writer.drain(), self.node_timeout)
                writer.write(b"0\r\n\r\n")
                await asyncio.wait_for(writer.drain(), self.node_timeout)
        except ConnectionError as write_error:
            # the peer may have answered early (a 507 before reading the body): read it
            try:
                status, answer, _ = await self._read_answer(conn)
            except HTTP_ERRORS:
                raise write_error from None
            return status, answer, False
        return await self._read_answer(conn)

    async def _read_answer(self, conn: _Connection) -> tuple[int, bytes, bool]:
        reader = conn.reader
        try:
            line = await asyncio.wait_for(reader.readline(), self.node_timeout)
        except ConnectionError as err:
            if conn.reused:
                raise StaleConnection(str(err)) from err
            raise
        if not line:
            if conn.reused:
                raise StaleConnection("connection closed before the answer")
            raise EOFError("connection closed before the answer")
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"bad status line {line[:100]!r}")
        status = int(parts[1])
        keep = parts[0] == "HTTP/1.1"
        length: int | None = None
        chunked = False
        while True:
            line = await asyncio.wait_for(reader.readline(), self.node_timeout)
            if not line:
                raise EOFError("connection closed in the answer's headers")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                keep = keep and value.lower() != "close"
        if chunked:
            answer = await self._read_chunked(reader)
        elif length is not None:
            answer = await asyncio.wait_for(reader.readexactly(length), self.node_timeout)
        else:
            answer = await asyncio.wait_for(reader.read(), self.node_timeout)
            keep = False
        return status, answer, keep

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while True:
            line = await asyncio.wait_for(reader.readline(), self.node_timeout)
            size = int(line.split(b";")[0].strip() or b"x", 16)
            if size == 0:
                while (await asyncio.wait_for(reader.readline(), self.node_timeout)
                       ) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += await asyncio.wait_for(reader.readexactly(size + 2), self.node_timeout)
            del out[-2:]

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
