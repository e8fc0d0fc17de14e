"""Group-commit staging of pushed files: corrupt and stale files never get a name."""

from __future__ import annotations

import hashlib
import os

from swiftlike.storage import replication_store as store
from swiftlike.storage.diskfile import gather_ondisk_files, read_metadata

HASH = "0123456789abcdef0123456789abcdef"


def _meta(body: bytes) -> dict[str, str]:
    return {"ETag": hashlib.md5(body).hexdigest(), "Content-Length": str(len(body))}


def test_staged_file_is_unnamed_until_published(tmp_path) -> None:
    body = b"x" * 1000
    staged = store.stage_received(str(tmp_path), "7", HASH, "1700000001.00000.data",
                                  _meta(body), body, True)
    assert isinstance(staged, store.StagedFile)
    assert gather_ondisk_files(staged.object_dir).data_file is None
    assert store.publish_received(staged) == "written"
    path = os.path.join(staged.object_dir, "1700000001.00000.data")
    with open(path, "rb") as handle:
        assert handle.read() == body
    assert read_metadata(path)["ETag"] == hashlib.md5(body).hexdigest()


def test_corrupt_and_stale_are_dropped(tmp_path) -> None:
    body = b"y" * 10
    assert store.stage_received(str(tmp_path), "7", HASH, "1700000001.00000.data",
                                {"ETag": "0" * 32}, body, True) == "corrupt"
    newer = store.stage_received(str(tmp_path), "7", HASH, "1700000005.00000.data",
                                 _meta(body), body, True)
    older = store.stage_received(str(tmp_path), "7", HASH, "1700000002.00000.data",
                                 _meta(body), body, True)
    assert isinstance(newer, store.StagedFile) and isinstance(older, store.StagedFile)
    assert store.publish_received(newer) == "written"
    assert store.publish_received(older) == "stale"  # a newer file arrived meanwhile
    assert sorted(os.listdir(newer.object_dir)) == ["1700000005.00000.data"]
    assert store.stage_received(str(tmp_path), "7", HASH, "1700000003.00000.data",
                                _meta(body), body, True) == "stale"
