"""The rebuild fast paths of the replication receiver and the hash cache.

A wiped device is rebuilt with one fresh hash directory per file, so the receiver skips
the listings a fresh directory cannot need and records a batch's suffixes in one journal
append per partition; the replicator learns which suffixes a read rehashed, so it does
not recompute them again in the same pass. These tests pin that the shortcuts keep the
old outcomes: newest file wins, obsolete files go, every written suffix is invalidated.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from swiftlike.storage import replication_store as store
from swiftlike.storage import replication_wire as wire
from swiftlike.storage.diskfile import gather_ondisk_files, make_object_dir
from swiftlike.storage.hashes import INVALID_FILE, get_suffix_hashes, invalidate_suffixes
from swiftlike.storage.replication_server import _BufferedBody


def _meta(body: bytes) -> dict[str, str]:
    return {"ETag": hashlib.md5(body).hexdigest(), "Content-Length": str(len(body))}


def _stage(device: str, part: str, object_hash: str, stamp: str, body: bytes
           ) -> store.StagedFile:
    staged = store.stage_received(device, part, object_hash, f"{stamp}.data", _meta(body),
                                  body, True)
    assert isinstance(staged, store.StagedFile)
    return staged


def test_publish_into_an_existing_directory_still_drops_the_older_file(tmp_path) -> None:
    device = str(tmp_path)
    object_hash = "a" * 29 + "abc"
    old = _stage(device, "3", object_hash, "1700000001.00000", b"old")
    assert store.publish_received(old) == "written"
    new = _stage(device, "3", object_hash, "1700000009.00000", b"new")
    assert store.publish_received(new, invalidate=False) == "written"
    assert sorted(os.listdir(new.object_dir)) == ["1700000009.00000.data"]


def test_batch_invalidation_records_every_written_suffix(tmp_path) -> None:
    device = str(tmp_path)
    hashes = {"3": ["1" * 29 + "a01", "2" * 29 + "a02", "3" * 29 + "a02"],
              "4": ["4" * 29 + "b01"]}
    for part in hashes:  # cached and empty before the batch
        os.makedirs(os.path.join(device, "objects", part))
        assert get_suffix_hashes(device, part) == {}
    written = []
    for part, names in hashes.items():
        for object_hash in names:
            staged = _stage(device, part, object_hash, "1700000001.00000", b"x")
            assert store.publish_received(staged, invalidate=False) == "written"
            written.append(staged.object_dir)
    store.invalidate_written(written)
    with open(os.path.join(device, "objects", "3", INVALID_FILE)) as handle:
        assert handle.read() == "a01\na02\n"  # one append, each suffix once
    rehashed: set[str] = set()
    assert set(get_suffix_hashes(device, "3", rehashed=rehashed)) == {"a01", "a02"}
    assert rehashed == {"a01", "a02"}
    assert set(get_suffix_hashes(device, "4")) == {"b01"}
    again: set[str] = set()
    get_suffix_hashes(device, "3", rehashed=again)
    assert again == set()  # the cache answers now
    invalidate_suffixes(os.path.join(device, "objects", "3"), [])  # nothing: no record
    assert os.path.getsize(os.path.join(device, "objects", "3", INVALID_FILE)) == 0


def test_make_object_dir_says_whether_it_created_the_directory(tmp_path) -> None:
    object_dir = os.path.join(str(tmp_path), "objects", "9", "fff", "f" * 32)
    assert make_object_dir(object_dir) is True  # whole chain missing
    assert make_object_dir(object_dir) is False
    sibling = os.path.join(str(tmp_path), "objects", "9", "fff", "e" * 29 + "fff")
    assert make_object_dir(sibling) is True
    assert gather_ondisk_files(sibling).data_file is None


async def test_buffered_body_reads_frames_across_any_chunking() -> None:
    frames = b"".join(wire.frame_header("5", "c" * 32, f"170000000{i}.00000.data", {}, 3)
                      + b"abc" for i in range(5)) + wire.END_OF_STREAM

    class Chunked:
        def __init__(self, data: bytes, size: int) -> None:
            self.pieces = [data[i:i + size] for i in range(0, len(data), size)]

        async def readany(self) -> bytes:
            return self.pieces.pop(0) if self.pieces else b""

    for size in (1, 3, 7, len(frames)):
        body = _BufferedBody(Chunked(frames, size))
        names = []
        while True:
            (length,) = wire.FRAME_HEADER.unpack(await body.readexactly(4))
            if not length:
                break
            header = wire.parse_frame_header(await body.readexactly(length))
            assert await body.readexactly(header["size"]) == b"abc"
            names.append(header["name"])
        assert len(names) == 5
    short = _BufferedBody(Chunked(frames[:10], 4))
    await short.readexactly(4)
    with pytest.raises(asyncio.IncompleteReadError):
        await short.readexactly(100)
