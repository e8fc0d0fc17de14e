"""Group commit: shared device flushes, and the object verbs in both durability modes."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage import diskfile
from swiftlike.storage.group_commit import DeviceFlusher, group_commit_supported


class GatedSync:
    """A sync function the test opens and closes; records every call."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = threading.Event()
        self.started = threading.Event()
        self.fail_next = False

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.started.set()
        self.gate.wait(5)
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "EIO from the disk")


@pytest.fixture
def pool():
    executor = ThreadPoolExecutor(2)
    yield executor
    executor.shutdown(wait=True)


async def test_concurrent_waiters_share_one_flush(tmp_path, pool):
    sync = GatedSync()
    sync.gate.set()
    flusher = DeviceFlusher(str(tmp_path), pool, sync)
    # the first waiter starts a flush at once; the other 19 arrive while it runs and
    # share the next one: 20 barriers, at most 2 flushes
    await asyncio.gather(*(flusher.barrier() for _ in range(20)))
    assert 1 <= sync.calls <= 2
    assert flusher.flushes == sync.calls
    flusher.close()


async def test_barrier_waits_for_a_flush_started_after_the_call(tmp_path, pool):
    sync = GatedSync()
    flusher = DeviceFlusher(str(tmp_path), pool, sync)
    first = asyncio.ensure_future(flusher.barrier())
    await asyncio.get_running_loop().run_in_executor(None, sync.started.wait, 5)
    # a flush is running; this waiter's writes may have missed it, so it needs the next
    late = asyncio.ensure_future(flusher.barrier())
    await asyncio.sleep(0.01)
    assert sync.calls == 1 and not first.done() and not late.done()
    sync.gate.set()
    await first
    await late
    assert sync.calls == 2
    flusher.close()


async def test_failed_flush_fails_its_waiters_and_the_next_recovers(tmp_path, pool):
    sync = GatedSync()
    sync.fail_next = True
    sync.gate.set()
    flusher = DeviceFlusher(str(tmp_path), pool, sync)
    with pytest.raises(OSError, match="EIO"):
        await flusher.barrier()
    await flusher.barrier()
    assert sync.calls == 2
    flusher.close()


async def test_cancelled_waiter_does_not_cancel_the_batch(tmp_path, pool):
    sync = GatedSync()
    flusher = DeviceFlusher(str(tmp_path), pool, sync)
    running = asyncio.ensure_future(flusher.barrier())
    await asyncio.get_running_loop().run_in_executor(None, sync.started.wait, 5)
    quitter = asyncio.ensure_future(flusher.barrier())
    stayer = asyncio.ensure_future(flusher.barrier())
    await asyncio.sleep(0.01)
    quitter.cancel()
    sync.gate.set()
    await running
    await stayer
    assert sync.calls == 2
    flusher.close()


@pytest.mark.skipif(not group_commit_supported(), reason="needs syncfs (Linux)")
async def test_real_syncfs_on_a_directory(tmp_path, pool):
    flusher = DeviceFlusher(str(tmp_path), pool)
    await flusher.barrier()
    assert flusher.flushes == 1
    flusher.close()


def test_staged_object_is_invisible_until_published(tmp_path):
    device = tmp_path / "sda"
    object_dir = str(device / "objects" / "1" / "abc" / ("0" * 29 + "abc"))
    stamp = Timestamp("1700000000.00000")
    writer = diskfile.stage_whole_object(str(device), object_dir, b"payload", stamp, ".data",
                                         {"X-Timestamp": stamp.internal, "ETag": "x",
                                          "Content-Length": "7"})
    assert not os.path.exists(object_dir)
    # unnamed (O_TMPFILE) where supported, else one named temp file
    assert len(os.listdir(device / "tmp")) == (0 if writer.anonymous else 1)
    writer.publish()
    assert os.listdir(device / "tmp") == []
    data = os.path.join(object_dir, stamp.internal + ".data")
    assert open(data, "rb").read() == b"payload"
    assert diskfile.read_metadata(data)["Content-Length"] == "7"
    # a newer tombstone published the same way removes the older .data
    newer = Timestamp("1700000001.00000")
    diskfile.stage_whole_object(str(device), object_dir, b"", newer, ".ts",
                                {"X-Timestamp": newer.internal}).publish()
    assert os.listdir(object_dir) == [newer.internal + ".ts"]


@pytest.mark.parametrize("durability", ["group", "fsync"])
async def test_object_verbs_in_both_durability_modes(node_factory, ts, durability):
    node = await node_factory(durability=durability)
    path = node.url("/sda/3/AUTH_t/cont/obj")
    bodies = [f"body {i}".encode() * 50 for i in range(12)]
    stamps = [ts() for _ in bodies]

    async def put_one(i: int) -> int:
        async with node.session.put(path.replace("obj", f"obj{i}"), data=bodies[i],
                                    headers={"X-Timestamp": stamps[i]}) as resp:
            return resp.status

    # concurrent small PUTs (they share flushes in group mode)
    assert await asyncio.gather(*(put_one(i) for i in range(12))) == [201] * 12
    for i in range(12):
        async with node.session.get(path.replace("obj", f"obj{i}")) as resp:
            assert resp.status == 200
            assert await resp.read() == bodies[i]
            assert resp.headers["ETag"] == f'"{hashlib.md5(bodies[i]).hexdigest()}"'
    async with node.session.post(path.replace("obj", "obj0"), headers={
            "X-Timestamp": ts(), "X-Object-Meta-Color": "red"}) as resp:
        assert resp.status == 202
    async with node.session.head(path.replace("obj", "obj0")) as resp:
        assert resp.headers["X-Object-Meta-Color"] == "red"
    async with node.session.delete(path.replace("obj", "obj1"),
                                   headers={"X-Timestamp": ts()}) as resp:
        assert resp.status == 204
    async with node.session.get(path.replace("obj", "obj1")) as resp:
        assert resp.status == 404
    tombstones = glob.glob(os.path.join(node.devices, "sda", "objects", "3", "*", "*", "*.ts"))
    assert len(tombstones) == 1
    assert os.listdir(os.path.join(node.devices, "sda", "tmp")) == []


async def test_bad_durability_setting_is_refused(node_factory):
    with pytest.raises(ValueError, match="durability"):
        await node_factory(durability="sometimes")


def test_staged_object_aborted_leaves_nothing_and_replay_replaces(tmp_path):
    device = tmp_path / "sda"
    object_dir = str(device / "objects" / "1" / "abc" / ("1" * 29 + "abc"))
    stamp = Timestamp("1700000000.00000")
    meta = {"X-Timestamp": stamp.internal, "Content-Length": "3"}
    writer = diskfile.stage_whole_object(str(device), object_dir, b"abc", stamp, ".data", meta)
    writer.abort()
    assert os.listdir(device / "tmp") == [] and not os.path.exists(object_dir)
    diskfile.stage_whole_object(str(device), object_dir, b"one", stamp, ".data",
                                meta).publish()
    # the same timestamp again (a retried request) replaces the file atomically
    diskfile.stage_whole_object(str(device), object_dir, b"two", stamp, ".data",
                                meta).publish()
    assert os.listdir(object_dir) == [stamp.internal + ".data"]
    assert open(os.path.join(object_dir, stamp.internal + ".data"), "rb").read() == b"two"
