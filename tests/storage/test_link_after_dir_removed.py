"""A write whose new, still empty directories are removed before its link still lands.

A handoff partition's removal takes empty hash and suffix directories with rmdir (see
swiftlike.storage.partition_removal). A write that made them a moment earlier and has
not linked its file yet must make them again, not fail with ENOENT.
"""

from __future__ import annotations

import os

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage import diskfile


def _paths(tmp_path):
    device = str(tmp_path / "sda")
    object_dir = os.path.join(device, "objects", "7", "abc", "f" * 29 + "abc")
    os.makedirs(os.path.join(device, "tmp"))
    return device, object_dir


def _taken_right_after(real):
    """``real`` (a directory maker), then the new directories removed, once."""
    calls = []

    def make_then_lose(object_dir):
        made = real(object_dir)
        if not calls:
            calls.append(object_dir)
            os.rmdir(object_dir)
            os.rmdir(os.path.dirname(object_dir))
        return made

    return make_then_lose


def _meta(timestamp: Timestamp, body: bytes) -> dict[str, str]:
    return {"name": "/a/c/o", "X-Timestamp": timestamp.internal,
            "Content-Length": str(len(body)), "ETag": "x"}


def test_a_staged_small_write_links_after_its_directories_went(tmp_path, monkeypatch):
    device, object_dir = _paths(tmp_path)
    timestamp = Timestamp.now()
    writer = diskfile.stage_whole_object(device, object_dir, b"body", timestamp, ".data",
                                         _meta(timestamp, b"body"))
    monkeypatch.setattr(diskfile, "make_object_dir",
                        _taken_right_after(diskfile.make_object_dir))
    writer.publish()
    assert timestamp.internal + ".data" in os.listdir(object_dir)
    with open(os.path.join(object_dir, timestamp.internal + ".data"), "rb") as handle:
        assert handle.read() == b"body"


def test_a_streamed_write_commits_after_its_directories_went(tmp_path, monkeypatch):
    device, object_dir = _paths(tmp_path)
    timestamp = Timestamp.now()
    monkeypatch.setattr(diskfile, "makedirs_deferred",
                        _taken_right_after(diskfile.makedirs_deferred))
    writer = diskfile.ObjectWriter(device, object_dir, fsync=True)
    writer.open()
    writer.write(b"streamed")
    writer.commit(timestamp, ".data", _meta(timestamp, b"streamed"))
    assert writer.made_dir
    with open(os.path.join(object_dir, timestamp.internal + ".data"), "rb") as handle:
        assert handle.read() == b"streamed"
