"""A small write's cleanup of what it made obsolete: small files on the loop, big ones not.

A DELETE's tombstone (or a POST's .meta, a small overwrite) is published on the node's
event loop; unlinking a big .data there held the loop for milliseconds per file.
"""

from __future__ import annotations

import glob
import os
import threading

import aiohttp

from swiftlike.storage import object_server, obsolete_files
from swiftlike.storage.hashes import get_suffix_hashes, hash_suffix_dir
from swiftlike.storage.obsolete_files import remove_small_obsolete
from tests.storage.test_parked_rows import node  # noqa: F401  (fixture)

OBJ = "/sda/4/AUTH_t/c/o"


def _write(path: str, size: int) -> None:
    with open(path, "wb") as handle:
        handle.write(os.urandom(size))


def test_small_obsolete_files_go_at_once_and_big_ones_are_named(tmp_path):
    object_dir = tmp_path / "hash"
    object_dir.mkdir()
    _write(str(object_dir / "1000000001.00000.data"), 1 << 20)
    _write(str(object_dir / "1000000001.00000.data.msgpack"), 10)  # its sidecar
    _write(str(object_dir / "1000000002.00000.meta"), 10)
    _write(str(object_dir / "1000000003.00000.ts"), 0)
    big = remove_small_obsolete(str(object_dir), inline_bytes=64 * 1024)
    assert big == ["1000000001.00000.data"]
    assert sorted(os.listdir(object_dir)) == [
        "1000000001.00000.data", "1000000001.00000.data.msgpack", "1000000003.00000.ts"]
    obsolete_files.remove_files(str(object_dir), big)
    obsolete_files.remove_files(str(object_dir), big)  # gone already: fine
    assert os.listdir(object_dir) == ["1000000003.00000.ts"]
    # with a higher bar the same file goes at once
    _write(str(object_dir / "1000000001.00000.data"), 1 << 20)
    assert remove_small_obsolete(str(object_dir), inline_bytes=4 << 20) == []
    assert os.listdir(object_dir) == ["1000000003.00000.ts"]


async def _put_then_delete(session: aiohttp.ClientSession, node, body: bytes,  # noqa: F811
                           ts) -> tuple[str, list[str]]:
    """PUT ``body``, DELETE it; the tombstone's timestamp and the files left."""
    put_at, delete_at = ts(), ts()
    async with session.put(f"{node.base}{OBJ}", data=body,
                           headers={"X-Timestamp": put_at}) as resp:
        assert resp.status == 201
    async with session.delete(f"{node.base}{OBJ}",
                              headers={"X-Timestamp": delete_at}) as resp:
        assert resp.status == 204
    return delete_at, [os.path.basename(p) for p in glob.glob(
        os.path.join(node.sda, "objects", "4", "*", "*", "*"))]


async def test_a_delete_unlinks_a_big_object_off_the_event_loop(node, ts, monkeypatch):  # noqa: F811
    """The DELETE still answers after the old .data is gone, as before; only the
    thread that unlinks it changed."""
    threads: list[bool] = []
    real = obsolete_files.remove_files

    def noting_thread(object_dir: str, names: list[str]) -> None:
        threads.append(threading.current_thread() is threading.main_thread())
        real(object_dir, names)

    monkeypatch.setattr(object_server, "remove_files", noting_thread)
    async with aiohttp.ClientSession() as session:
        delete_at, files = await _put_then_delete(session, node, os.urandom(2 << 20), ts)
        assert files == [f"{delete_at}.ts"]
        assert threads == [False]  # one big file, unlinked by a worker thread
        # a small object's cleanup stays on the loop (no thread hop)
        delete_at, files = await _put_then_delete(session, node, b"small", ts)
        assert files == [f"{delete_at}.ts"]
        assert threads == [False]


async def test_the_suffix_is_invalidated_after_the_old_file_is_gone(node, ts,  # noqa: F811
                                                                   monkeypatch):
    """A rehash (a peer's REPLICATE, in the io pool) landing between the publish and the
    deferred unlink counts the old file; the suffix must be marked changed after the
    unlink, or the cached hash would name a file that is gone."""
    real = obsolete_files.remove_files

    def rehash_first(object_dir: str, names: list[str]) -> None:
        get_suffix_hashes(node.sda, "4")
        real(object_dir, names)

    monkeypatch.setattr(object_server, "remove_files", rehash_first)
    async with aiohttp.ClientSession() as session:
        await _put_then_delete(session, node, os.urandom(2 << 20), ts)
    cached = get_suffix_hashes(node.sda, "4")
    suffix = next(iter(cached))
    assert cached[suffix] == hash_suffix_dir(os.path.join(node.sda, "objects", "4", suffix))
