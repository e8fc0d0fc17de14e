"""What waits for a device flush under group commit, counted where it matters.

A small write's name goes into its hash directory only after the flush of its bytes,
and is durable only after the next one (see ``swiftlike.storage.diskfile``). In
between it is visible: anything that judges by it and tells someone who may act on
the verdict (a 409 the proxy turns into "superseded", a streamed PUT's cleanup, a
replication answer on which a sender deletes its handoff copy) must answer after a
flush that began after it looked.
"""

from __future__ import annotations

import glob
import hashlib
import os

import aiohttp

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage import diskfile
from swiftlike.storage import replication_wire as wire
from tests.storage.test_parked_rows import node  # noqa: F401  (fixture)

OBJ = "/sda/4/AUTH_t/c/o"


def _record_flushes(running) -> list[list[str]]:
    """Make the node's flusher note the .data names under partition 4 at each flush."""
    flusher = running.flusher
    real_sync = flusher.sync_func
    seen: list[list[str]] = []

    def recording_sync(fd: int) -> None:
        seen.append(sorted(os.path.basename(path) for path in glob.glob(
            os.path.join(running.sda, "objects", "4", "*", "*", "*.data"))))
        real_sync(fd)

    flusher.sync_func = recording_sync
    return seen


async def _put(session: aiohttp.ClientSession, running, body: bytes, stamp: str) -> int:
    async with session.put(f"{running.base}{OBJ}", data=body,
                           headers={"X-Timestamp": stamp}) as resp:
        return resp.status


async def _replication(session: aiohttp.ClientSession, running, phase: str | None,
                       body: bytes) -> dict:
    headers = {wire.VERB_HEADER: "SSYNC" if phase else "REPLICATE",
               "X-Backend-Server-Type": "object"}
    if phase:
        headers[wire.PHASE_HEADER] = phase
    async with session.post(f"{running.base}/sda", data=body, headers=headers) as resp:
        assert resp.status == 200
        return wire.unpack(await resp.read())


async def test_a_small_writes_name_appears_only_after_its_bytes_were_flushed(node, ts):  # noqa: F811
    """A named file that a crash could tear would let others drop or clean up
    acknowledged versions in its favour; a brand-new object is no exception."""
    seen = _record_flushes(node)
    first, second = ts(), ts()
    async with aiohttp.ClientSession() as session:
        assert await _put(session, node, b"old", first) == 201
        assert seen == [[], [f"{first}.data"]]
        seen.clear()
        assert await _put(session, node, b"newer", second) == 201
    assert seen == [[f"{first}.data"], [f"{second}.data"]]


async def test_a_verdict_against_an_existing_file_waits_for_a_flush(node, ts):  # noqa: F811
    older, newer = ts(), ts()
    async with aiohttp.ClientSession() as session:
        assert await _put(session, node, b"object", newer) == 201
        flushes = node.flusher.flushes
        assert await _put(session, node, b"late", older) == 409
        assert node.flusher.flushes > flushes
        flushes = node.flusher.flushes
        async with session.put(f"{node.base}{OBJ}", data=b"x", headers={
                "X-Timestamp": ts(), "If-None-Match": "*"}) as resp:
            assert resp.status == 412
        assert node.flusher.flushes > flushes
        for method in ("POST", "DELETE"):
            flushes = node.flusher.flushes
            async with session.request(method, f"{node.base}{OBJ}",
                                       headers={"X-Timestamp": older}) as resp:
                assert resp.status == 409
            assert node.flusher.flushes > flushes


async def test_a_streamed_put_into_an_existing_directory_answers_after_a_flush(node, ts):  # noqa: F811
    """Its commit's cleanup may remove its own file in favour of a newer name that is
    not durable yet (a race not reproducible here; the rule is what is checked)."""
    big = os.urandom(200 * 1024)  # over small_object_limit: streamed, fsynced on its own
    async with aiohttp.ClientSession() as session:
        assert await _put(session, node, b"small", ts()) == 201
        flushes = node.flusher.flushes
        assert await _put(session, node, big, ts()) == 201
        assert node.flusher.flushes > flushes
        async with session.get(f"{node.base}{OBJ}") as resp:
            assert await resp.read() == big
        # a streamed PUT that creates the directory itself needs no shared flush
        flushes = node.flusher.flushes
        async with session.put(f"{node.base}/sda/4/AUTH_t/c/fresh", data=big,
                               headers={"X-Timestamp": ts()}) as resp:
            assert resp.status == 201
        assert node.flusher.flushes == flushes


def test_a_commit_claims_only_a_directory_it_created_itself(tmp_path, monkeypatch):
    """Another writer creating the hash directory between the parents and the directory
    itself (its name may not be durable yet) leaves made_dir False."""
    device = str(tmp_path / "sda")
    object_dir = os.path.join(device, "objects", "1", "abc", "0" * 29 + "abc")
    real_mkdir = os.mkdir

    def racing(path, *args, **kwargs):
        if path == object_dir:
            real_mkdir(path)  # the other writer, just before ours
        return real_mkdir(path, *args, **kwargs)

    stamp = Timestamp("1700000000.00000")
    meta = {"X-Timestamp": stamp.internal, "Content-Length": "1"}
    writer = diskfile.ObjectWriter(device, object_dir, fsync=False)
    writer.open()
    writer.write(b"x")
    monkeypatch.setattr(os, "mkdir", racing)
    writer.commit(stamp, ".data", meta)
    assert writer.made_dir is False
    monkeypatch.undo()
    other = os.path.join(device, "objects", "1", "abd", "0" * 29 + "abd")
    writer = diskfile.ObjectWriter(device, other, fsync=False)
    writer.open()
    writer.write(b"x")
    writer.commit(stamp, ".data", meta)
    assert writer.made_dir is True


async def test_the_replication_receiver_flushes_before_answering_a_big_push(node, ts):  # noqa: F811
    body = os.urandom(300 * 1024)  # over SMALL_FILE: committed alone, not in a batch
    stamp = ts()
    meta = {"X-Timestamp": stamp, "Content-Length": str(len(body)),
            "ETag": hashlib.md5(body).hexdigest(), "name": "/AUTH_t/c/pushed",
            "Content-Type": "application/octet-stream"}
    stream = (wire.frame_header("4", "0" * 29 + "abc", f"{stamp}.data", meta, len(body))
              + body + wire.END_OF_STREAM)
    flushes = node.flusher.flushes
    async with aiohttp.ClientSession() as session:
        answer = await _replication(session, node, wire.PHASE_UPDATES, stream)
    assert answer["written"] == 1
    assert node.flusher.flushes > flushes


async def test_replication_verdicts_are_answered_after_a_flush(node, ts):  # noqa: F811
    """"Not wanted" and equal suffix hashes let a sender delete its handoff copy."""
    async with aiohttp.ClientSession() as session:
        assert await _put(session, node, b"newer", ts()) == 201
        object_dir = glob.glob(os.path.join(node.sda, "objects", "4", "*", "*"))[0]
        object_hash = os.path.basename(object_dir)
        older = Timestamp(float(ts()) - 100).internal
        flushes = node.flusher.flushes
        answer = await _replication(session, node, wire.PHASE_MISSING, wire.pack(
            {"4": {object_hash: [f"{older}.data", None]}}))
        assert answer["wanted"] == {}  # something newer is here
        assert node.flusher.flushes > flushes
        flushes = node.flusher.flushes
        answer = await _replication(session, node, None, wire.pack(
            {"4": [object_hash[-3:]]}))
        assert object_hash[-3:] in answer["hashes"]["4"]
        assert node.flusher.flushes > flushes


async def test_an_if_delete_at_mismatch_waits_for_a_flush(node, ts):  # noqa: F811
    """The expirer drops its queue entry on this 412."""
    async with aiohttp.ClientSession() as session:
        assert await _put(session, node, b"object", ts()) == 201
        flushes = node.flusher.flushes
        async with session.delete(f"{node.base}{OBJ}", headers={
                "X-Timestamp": ts(), "X-If-Delete-At": "1700000000"}) as resp:
            assert resp.status == 412
        assert node.flusher.flushes > flushes
