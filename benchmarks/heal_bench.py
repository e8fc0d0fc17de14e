# ruff: noqa: ASYNC230
"""How fast does a wiped device come back? The replicator's rebuild rate in objects/s.

Starts 4 storage nodes (real aiohttp servers on 127.0.0.1, one device each, 3 replicas,
fsync on), fills them with ``--objects`` small objects through the nodes' HTTP PUT
verb, wipes one device, then runs replication passes on the surviving nodes until every
object the ring places on the wiped device is back with the right bytes.

Reference: OpenStack Swift restored a wiped device of 3,737 small objects in 42.7 s here
(87 objects/s); the target is at least 10x that rate.

    python -m benchmarks.heal_bench --objects 4000
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import aiohttp

from swiftlike.common.config import dump_toml
from swiftlike.common.node_client import node_path
from swiftlike.storage.diskfile import gather_ondisk_files, read_metadata
from tests.daemons.mini_cluster import MiniCluster, start_mini_cluster

SWIFT_RATE = 3737 / 42.7


async def fill(cluster: MiniCluster, count: int, size: int) -> list[str]:
    ring = cluster.ring
    names = [f"obj-{i:06d}" for i in range(count)]
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as session:

        async def put(name: str) -> None:
            body = _body_of(name, size)
            part, nodes = ring.get_nodes("AUTH_bench", "c", name)
            stamp = f"{time.time():.5f}"
            async with sem:
                for node in nodes:
                    url = (f"http://{node['ip']}:{node['port']}"
                           f"{node_path(node, part, 'AUTH_bench', 'c', name)}")
                    async with session.put(url, data=body, headers={
                            "X-Timestamp": stamp, "Content-Type": "application/octet-stream",
                            "X-Backend-Server-Type": "object"}) as resp:
                        assert resp.status == 201, (resp.status, await resp.text())

        await asyncio.gather(*(put(n) for n in names))
    return names


def victim_objects(cluster: MiniCluster, victim_index: int, names: list[str]
                   ) -> dict[str, str]:
    """{name: hash directory on the victim} of every object the ring places there.

    Ring lookups, done once before the clock starts: the timed completion check then
    only looks at those directories.
    """
    ring = cluster.ring
    victim = cluster.nodes[victim_index]
    placed = {}
    for name in names:
        _, nodes = ring.get_nodes("AUTH_bench", "c", name)
        if any(n["port"] == victim.port for n in nodes):
            placed[name] = cluster.object_dir(victim, "AUTH_bench", "c", name)
    return placed


def missing_on(placed: dict[str, str]) -> int:
    """How many of the victim's objects have no .data yet."""
    return sum(1 for object_dir in placed.values()
               if gather_ondisk_files(object_dir).data_file is None)


def wrong_bytes(placed: dict[str, str], size: int) -> list[str]:
    """Restored objects whose bytes or md5 metadata differ from what fill() wrote."""
    bad = []
    for name, object_dir in placed.items():
        state = gather_ondisk_files(object_dir)
        if state.data_file is None:
            bad.append(name)
            continue
        path = os.path.join(object_dir, state.data_file)
        with open(path, "rb") as handle:
            body = handle.read()
        meta = read_metadata(path)
        expected = _body_of(name, size)
        if body != expected or meta.get("ETag") != hashlib.md5(expected).hexdigest():
            bad.append(name)
    return bad


def _body_of(name: str, size: int) -> bytes:
    return hashlib.sha256(name.encode()).digest() * (size // 32)


def _cpu_seconds(pid: int) -> float:
    """user + system CPU of a live process so far (from /proc; 0 where unreadable)."""
    user, system = _cpu_split(pid)
    return user + system


def _cpu_split(pid: int) -> tuple[float, float]:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _spawn(args: list[str], profile: str | None = None, tag: str = "",
           spies: list[subprocess.Popen] | None = None) -> subprocess.Popen:
    """A python child; with ``profile``, py-spy records it (collapsed stacks) until it ends.

    ``HEAL_CPROFILE=DIR`` with ``HEAL_CPROFILE_TAGS=node0,replicate1`` runs the children
    whose tag starts with one of those under cProfile instead (stats in DIR/<tag>.prof):
    cheaper than sampling every process, so the others are not distorted.
    """
    cprofile = os.environ.get("HEAL_CPROFILE")
    wanted = tuple(t for t in os.environ.get("HEAL_CPROFILE_TAGS", "").split(",") if t)
    if cprofile and tag and wanted and tag.startswith(wanted):
        args = ["-m", "cProfile", "-o", os.path.join(cprofile, f"{tag}.prof"), *args]
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if profile and spies is not None:
        spies.append(subprocess.Popen(
            ["py-spy", "record", "--format", "raw", "--rate", "250", "--idle", "--pid",
             str(proc.pid), "-o", os.path.join(profile, f"{tag}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return proc


def wipe(device_path: str, mode: str, root: str) -> str | None:
    """Empty a device; returns the path of the old contents still to delete, if any.

    ``replace`` models what an operator does with a dead disk: a new or reformatted one
    takes its place. The old tree is moved out of the device (same filesystem, one
    rename) and deleted after the clock stops. ``rm`` deletes it in place first: on
    ext4 without a journal (this machine's root filesystem) the kernel then avoids, for
    60 s (360 s while their inode table block is unwritten), reusing the thousands of
    inodes just freed, and every file the rebuild creates scans past them
    (``recently_deleted`` in ``find_inode_bit``): up to half the receiving node's CPU
    goes there, a cost a fresh file system does not have.
    """
    if mode == "rm":
        shutil.rmtree(device_path)
        os.makedirs(device_path)
        return None
    pulled = os.path.join(root, "pulled-disk")
    os.rename(device_path, pulled)
    os.makedirs(device_path)
    return pulled


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def run_root() -> str:
    """A fresh directory for one run, in a block group of its own where ext4 allows.

    Runs live under one parent flagged "top of a directory hierarchy" (``chattr +T``),
    so ext4 spreads each run's directory to another block group, as it does for the
    top directories of a disk of its own. Without it, a run's files land in the block
    group where the previous run's clean-up just freed tens of thousands of inodes, and
    on ext4 without a journal every file the rebuild creates then scans past them (see
    :func:`wipe`): the same code measured 570-1,060 objects/s back to back.
    ``HEAL_ROOT`` picks another parent.
    """
    parent = os.environ.get("HEAL_ROOT") or os.path.join(tempfile.gettempdir(),
                                                         "swiftlike-heal-bench")
    os.makedirs(parent, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = bytearray(4)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
        value = int.from_bytes(flags, sys.byteorder) | FS_TOPDIR_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, value.to_bytes(4, sys.byteorder))
    except OSError as err:  # not ext4, or not allowed: measure anyway, and say so
        print(f"note: could not mark {parent} as a top directory ({err.strerror})")
    finally:
        os.close(fd)
    return tempfile.mkdtemp(prefix="run-", dir=parent)


def settle() -> None:
    """Write back what the fill left dirty, so the timed rebuild does not pay for it.

    It also shortens how long ext4 without a journal remembers freed inodes as recently
    deleted (60 s once their inode table block is clean, 360 s while it is dirty); see
    :func:`wipe`. Deletions on this filesystem in the last minute, by anyone (an earlier
    run's clean-up included), still slow the receiver: leave a minute between runs.
    """
    os.sync()


async def main(objects: int, size: int, concurrency: int, profile: str | None = None,
               wipe_mode: str = "replace") -> float:
    """Fill in-process, then rebuild with every node and replicator in its own process."""
    root = run_root()
    cluster = await start_mini_cluster(root, count=4, part_power=8)
    procs: list[subprocess.Popen] = []
    spies: list[subprocess.Popen] = []
    try:
        started = time.monotonic()
        names = await fill(cluster, objects, size)
        print(f"filled {objects} objects x 3 replicas in {time.monotonic() - started:.1f}s")
        for node in cluster.nodes:
            await node.stop()
        victim = 0
        wiped = cluster.nodes[victim].device_path
        old_disk = wipe(wiped, wipe_mode, root)
        placed = victim_objects(cluster, victim, names)
        expected = missing_on(placed)
        print(f"wiped {cluster.nodes[victim].device}: {expected} objects to restore")
        configs = []
        for node in cluster.nodes:
            conf = dict(node.conf)
            conf["node"] = {**conf["node"], "fsync": os.environ.get("HEAL_FSYNC", "1") == "1"}
            conf["replicator"] = {"concurrency": concurrency}
            path = os.path.join(root, f"node{node.index}.toml")
            with open(path, "w") as handle:
                handle.write(dump_toml(conf))
            configs.append(path)
            procs.append(_spawn(["-m", "tests.daemons.mini_cluster", path], profile,
                                f"node{node.index}", spies))
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("ready"), line
        settle()
        started = time.monotonic()
        node_cpu = [_cpu_seconds(p.pid) for p in procs]
        replicator_cpu = _children_cpu()
        passes = 0
        while True:
            passes += 1
            if os.environ.get("HEAL_VERBOSE"):
                print(f"pass {passes} starts replicators at {time.time():.3f}")
            replicators = [_spawn(["-m", "swiftlike", "replicate", "--once", "--config", c],
                                  profile, f"replicate{i}-pass{passes}", spies)
                           for i, c in enumerate(configs) if i != victim]
            for rep in replicators:
                out, _ = rep.communicate()
                if rep.returncode or os.environ.get("HEAL_VERBOSE"):
                    print(out[-4000:])
            if os.environ.get("HEAL_VERBOSE"):
                print(f"replicators exited at {time.time():.3f}")
            if missing_on(placed) == 0 or passes >= 5:
                break
        elapsed = time.monotonic() - started
        node_cpu = [_cpu_seconds(p.pid) - cpu for p, cpu in zip(procs, node_cpu, strict=True)]
        replicator_cpu = _children_cpu() - replicator_cpu
        if os.environ.get("HEAL_VERBOSE"):
            print(f"finished at {time.time():.3f}; victim node user/system so far: "
                  "%.2f/%.2f" % _cpu_split(procs[victim].pid))
        print("cpu s: nodes " + " ".join(f"{c:.2f}" for c in node_cpu) +
              f"; replicators (all passes) {replicator_cpu:.2f}")
        left = missing_on(placed)
        rate = (expected - left) / elapsed if elapsed else float("inf")
        print(f"restored {expected - left}/{expected} objects in {elapsed:.2f}s "
              f"({passes} pass(es), incl. process start-up): {rate:.0f} objects/s; "
              f"Swift: {SWIFT_RATE:.0f} objects/s -> {rate / SWIFT_RATE:.1f}x")
        if left:
            print(f"NOT RESTORED: {left} objects")
        if old_disk:
            shutil.rmtree(old_disk)  # the pulled disk, thrown away after the clock
        bad = wrong_bytes(placed, size)  # after the clock: every restored byte checked
        if bad:
            print(f"WRONG OR MISSING BYTES: {len(bad)} objects, e.g. {bad[:3]}")
        else:
            print(f"all {len(placed)} restored objects have the right bytes and ETag")
        return rate
    finally:
        for proc in procs:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
            if os.environ.get("HEAL_VERBOSE"):
                print(out[-2000:])
        for spy in spies:
            spy.wait(30)
        for node in cluster.nodes:
            await node.stop()
        if not os.environ.get("HEAL_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
        else:
            print("kept", root)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--size", type=int, default=4096, help="bytes per object")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--wipe", choices=("replace", "rm"), default="replace",
                        help="replace: swap in an empty device, as a new or reformatted "
                             "disk is (default); rm: delete the files in place first")
    parser.add_argument("--profile", metavar="DIR",
                        help="run nodes and replicators under py-spy; collapsed stacks here")
    args = parser.parse_args()
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    asyncio.run(main(args.objects, args.size, args.concurrency, args.profile, args.wipe))
