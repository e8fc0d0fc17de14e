"""Ring builder and lookup benchmark.

    python benchmarks/ring_bench.py                       # part power 20, 1000 devices
    python benchmarks/ring_bench.py --part-power 23 --devices 10000
    python benchmarks/ring_bench.py --json

Cluster: 5 zones x (devices / 50) servers x 10 disks, 3 replicas, weight 100 each.
Rows: initial rebalance (time, peak memory), +1% capacity in one zone (one rebalance:
replicas moved vs the new devices' weighted share, balance after), +10% spread over all
zones, remove one device (moved vs its replicas), get_nodes per lookup, ring file load.
Swift's own figures on this machine (swift-ring-builder) are in the targets' notes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ring import Ring, RingBuilder

ZONES = 5
DISKS = 10


def add_server(b: RingBuilder, zone: int, server: int, weight: float = 100.0) -> list[int]:
    return b.add_devs({"region": 1, "zone": zone, "ip": f"10.{zone}.{server // 250}."
                       f"{server % 250}", "port": 6200, "device": f"d{d}", "weight": weight}
                      for d in range(DISKS))


def run(part_power: int, devices: int, lookups: int, seed: int) -> list[dict]:
    rows: list[dict] = []
    servers = max(1, devices // (ZONES * DISKS))
    b = RingBuilder(part_power, 3, min_part_hours=1)
    for z in range(1, ZONES + 1):
        for s in range(servers):
            add_server(b, z, s)
    now = 1_000_000.0
    # Peak memory from the process high-water mark (tracemalloc would slow the run).
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    cpu = time.process_time()
    rep = b.rebalance(seed=seed, now=now)
    took = time.perf_counter() - t
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    rows.append({"row": "initial rebalance", "seconds": took, "target_seconds": 5.0,
                 "cpu_seconds": cpu, "peak_mb": peak / 2**20, "balance": rep.balance,
                 "dispersion": rep.dispersion,
                 "note": "swift-ring-builder: 155 s"})
    total_replicas = 3 << part_power

    def grow(label: str, new_ids: list[int], target: float) -> None:
        nonlocal now
        now += 2 * 3600
        w_total = sum(d["weight"] for d in b.devs if d is not None)
        ideal = total_replicas * sum(b.get_dev(i)["weight"] for i in new_ids) / w_total
        t = time.perf_counter()
        cpu = time.process_time()
        rep = b.rebalance(seed=seed, now=now)
        took = time.perf_counter() - t
        cpu = time.process_time() - cpu
        ratio = rep.moved_replicas / ideal if ideal else 0.0
        rows.append({"row": label, "seconds": took, "cpu_seconds": cpu,
                     "target_seconds": target,
                     "moved": rep.moved_replicas, "ideal": round(ideal, 1),
                     "moved_vs_ideal": round(ratio, 4), "target_ratio": 1.05,
                     "balance": rep.balance, "dispersion": rep.dispersion,
                     "note": "swift: 2 rebalances, ~2x ideal" if "1%" in label else ""})

    # +1% capacity in zone 1: new servers of 10 disks, at least devices/100 disks.
    new_ids: list[int] = []
    extra = max(1, devices // 100)
    s = servers
    while len(new_ids) < extra:
        ids = add_server(b, 1, s)
        s += 1
        new_ids.extend(ids)
    grow("+1% capacity, one zone", new_ids, 2.0)
    # +10% spread over all zones.
    new_ids = []
    per_zone = max(1, servers // 10)
    for z in range(1, ZONES + 1):
        for k in range(per_zone):
            new_ids.extend(add_server(b, z, 1000 + k))
    grow("+10% capacity, all zones", new_ids, 2.0)
    # Remove one device.
    victim = 7
    held = b.dev_part_counts()[victim]
    b.remove_dev(victim)
    now += 2 * 3600
    t = time.perf_counter()
    cpu = time.process_time()
    rep = b.rebalance(seed=seed, now=now)
    took = time.perf_counter() - t
    cpu = time.process_time() - cpu
    rows.append({"row": "remove one device", "seconds": took, "cpu_seconds": cpu,
                 "target_seconds": 2.0,
                 "moved": rep.moved_replicas, "ideal": held,
                 "moved_vs_ideal": round(rep.moved_replicas / held, 4), "target_ratio": 1.0,
                 "balance": rep.balance, "dispersion": rep.dispersion, "note": ""})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.ring")
        b.save_ring(path)
        t = time.perf_counter()
        cpu = time.process_time()
        ring = Ring(path, hash_prefix=b"pre", hash_suffix=b"suf")
        load = time.perf_counter() - t
        load_cpu = time.process_time() - cpu
        names = [f"obj{i}" for i in range(lookups)]
        get_nodes = ring.get_nodes
        for name in names[:1000]:
            get_nodes("AUTH_test", "cont", name)
        # Five timed passes, median: a VM's neighbours make any single pass swing ~2x.
        walls, cpus = [], []
        for _ in range(5):
            t = time.perf_counter()
            cpu = time.process_time()
            for name in names:
                get_nodes("AUTH_test", "cont", name)
            walls.append((time.perf_counter() - t) / lookups)
            cpus.append((time.process_time() - cpu) / lookups)
        per = statistics.median(walls)
        cpu = statistics.median(cpus)
        rows.append({"row": "get_nodes per lookup", "seconds": per, "cpu_seconds": cpu,
                     "target_seconds": 2e-6,
                     "note": "swift: 9.5 us; median of 5 passes"})
        rows.append({"row": "ring load", "seconds": load, "cpu_seconds": load_cpu,
                     "target_seconds": 0.05,
                     "file_mb": os.path.getsize(path) / 2**20, "note": ""})
    for row in rows:
        ok = row["seconds"] <= row["target_seconds"]
        if "target_ratio" in row:
            ok = ok and row["moved_vs_ideal"] <= row["target_ratio"]
        row["pass"] = ok
    return rows


def fmt_time(s: float) -> str:
    return f"{s * 1e6:.2f} us" if s < 1e-3 else f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part-power", type=int, default=20)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = run(args.part_power, args.devices, args.lookups, args.seed)
    # The targets are set for the reference size; other sizes only have to complete.
    judged = (args.part_power, args.devices) == (20, 1000)
    if not judged:
        for row in rows:
            row["pass"] = None
    if args.json:
        print(json.dumps({"part_power": args.part_power, "devices": args.devices,
                          "load_average": os.getloadavg()[0],
                          "rows": rows}, indent=2))
    else:
        print(f"part power {args.part_power}, 3 replicas, {args.devices} devices "
              f"({ZONES} zones x {DISKS} disks per server)")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus "
              "(wall time is judged; cpu time shown for loaded machines)")
        print(f"{'row':28} {'time':>10} {'cpu':>9} {'target':>10} {'moved/ideal':>22} "
              f"{'balance':>8} {'extra':>14}  result")
        for r in rows:
            moved = (f"{r['moved']}/{r['ideal']:.0f}={r['moved_vs_ideal']:.3f}"
                     if "moved" in r else "")
            extra = (f"peak {r['peak_mb']:.0f} MB" if "peak_mb" in r else
                     f"{r['file_mb']:.1f} MB file" if "file_mb" in r else "")
            bal = f"{r['balance']:.2f}" if "balance" in r else ""
            cpu = fmt_time(r["cpu_seconds"]) if "cpu_seconds" in r else ""
            print(f"{r['row']:28} {fmt_time(r['seconds']):>10} {cpu:>9} "
                  f"{fmt_time(r['target_seconds']):>10} {moved:>22} {bal:>8} {extra:>14}  "
                  f"{verdict(r['pass'])} {r['note']}")
        if not judged:
            print("targets apply to part power 20 / 1000 devices; this size only has to "
                  "complete")
    return 0 if all(r["pass"] is not False for r in rows) else 1


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


if __name__ == "__main__":
    sys.exit(main())
