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

    def make_then_lose(object_dir, *args):
        made = real(object_dir, *args)
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


def test_a_write_whose_directory_came_back_with_an_older_file_cleans_it(tmp_path,
                                                                        monkeypatch):
    """Another writer made the directory again, with an older version in it: ours is
    linked and the older file goes, as in any directory this write did not make."""
    device, object_dir = _paths(tmp_path)
    older, newer = Timestamp(1_700_000_000.0), Timestamp.now()
    writer = diskfile.stage_whole_object(device, object_dir, b"new", newer, ".data",
                                         _meta(newer, b"new"))
    real = diskfile.make_object_dir
    calls = []

    def made_again_by_another_writer(path):
        calls.append(path)
        if len(calls) == 1:  # ours, then taken before the link
            made = real(path)
            os.rmdir(path)
            os.rmdir(os.path.dirname(path))
            return made
        # the retry's: another writer was quicker
        diskfile.write_whole_object(device, path, b"old", older, ".data",
                                    _meta(older, b"old"), fsync=False)
        return real(path)

    monkeypatch.setattr(diskfile, "make_object_dir", made_again_by_another_writer)
    writer.publish()
    assert sorted(os.listdir(object_dir)) == [newer.internal + ".data"]


def test_a_pushed_file_lands_after_its_directories_went(tmp_path, monkeypatch):
    from swiftlike.storage import replication_store

    device, object_dir = _paths(tmp_path)
    timestamp = Timestamp.now()
    received = replication_store.ReceivedFile(
        device, "7", os.path.basename(object_dir), timestamp.internal + ".data",
        {**_meta(timestamp, b"pushed"), "ETag": ""}, fsync=False, use_xattr=True)
    received.write(b"pushed")
    monkeypatch.setattr(replication_store, "makedirs_durable",
                        _taken_right_after(replication_store.makedirs_durable))
    assert received.commit() == "written"
    with open(os.path.join(object_dir, timestamp.internal + ".data"), "rb") as handle:
        assert handle.read() == b"pushed"


def _parent_taken_once(monkeypatch, victim: str) -> None:
    """os.mkdir, but the first time ``victim`` is made it is removed again at once (a
    removal rmdir-ing it while it is still empty, between a writer's two levels)."""
    real_mkdir = os.mkdir
    taken = []

    def mkdir(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        if path == victim and not taken:
            taken.append(path)
            os.rmdir(path)

    monkeypatch.setattr(os, "mkdir", mkdir)


def test_making_directories_survives_a_parent_removed_between_levels(tmp_path,
                                                                     monkeypatch):
    from swiftlike.storage.durable_io import make_object_dir, makedirs_deferred

    device, object_dir = _paths(tmp_path)
    suffix_dir = os.path.dirname(object_dir)
    os.makedirs(os.path.dirname(suffix_dir))  # the partition is there, the suffix not
    _parent_taken_once(monkeypatch, suffix_dir)
    assert make_object_dir(object_dir)  # fast path: the suffix made, then taken
    assert os.path.isdir(object_dir)

    deeper = os.path.join(device, "objects", "8", "def", "e" * 29 + "def")
    _parent_taken_once(monkeypatch, os.path.dirname(os.path.dirname(deeper)))
    created = makedirs_deferred(deeper)
    assert os.path.isdir(deeper) and created[0] == deeper
    assert all(os.path.isdir(path) for path in created)


def test_a_level_an_attempt_made_before_its_child_vanished_is_still_reported(
        tmp_path, monkeypatch):
    """The first attempt makes the partition and the suffix, the suffix is taken before
    the hash directory is made; the second makes suffix and hash. The partition is
    this call's too: the caller must fsync its parent, or a crash can lose it."""
    from swiftlike.storage.durable_io import makedirs_deferred

    _, object_dir = _paths(tmp_path)
    suffix_dir = os.path.dirname(object_dir)
    partition_dir = os.path.dirname(suffix_dir)
    os.makedirs(os.path.dirname(partition_dir))
    real_mkdir = os.mkdir
    taken = []

    def mkdir(path, *args, **kwargs):
        if path == object_dir and not taken:
            taken.append(path)
            os.rmdir(suffix_dir)  # the removal, between the writer's two levels
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert makedirs_deferred(object_dir) == [object_dir, suffix_dir, partition_dir]


def test_an_aborted_write_takes_its_sidecar_with_it(tmp_path):
    """Without xattrs the metadata is written beside the final name before the link;
    a write that never links (its flush failed) must not leave it there, where it
    would keep a handoff's directory for a day (see partition_removal)."""
    device, object_dir = _paths(tmp_path)
    stamp = Timestamp.now()
    writer = diskfile.stage_whole_object(device, object_dir, b"x", stamp, ".data",
                                         _meta(stamp, b"x"), use_xattr=False)
    assert os.listdir(object_dir) == [stamp.internal + ".data.msgpack"]
    writer.abort()
    assert os.listdir(object_dir) == []

    # a file of that very name is already there (a push of the same version): the
    # sidecar describes it too, and stays
    diskfile.write_whole_object(device, object_dir, b"x", stamp, ".data",
                                _meta(stamp, b"x"), fsync=False, use_xattr=False)
    writer = diskfile.stage_whole_object(device, object_dir, b"x", stamp, ".data",
                                         _meta(stamp, b"x"), use_xattr=False)
    writer.abort()
    assert sorted(os.listdir(object_dir)) == [stamp.internal + ".data",
                                              stamp.internal + ".data.msgpack"]
