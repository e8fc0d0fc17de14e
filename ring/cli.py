"""swiftlike-ring: build and inspect rings, with swift-ring-builder's ergonomics.

    swiftlike-ring object.builder create 10 3 1
    swiftlike-ring object.builder add --region 1 --zone 1 --ip 127.0.0.1 --port 6200 \
        --device d1 --weight 100
    swiftlike-ring object.builder add r1z2-127.0.0.2:6200/d1 100
    swiftlike-ring object.builder remove d3          # or z1-127.0.0.1, or an id
    swiftlike-ring object.builder set-weight d3 50
    swiftlike-ring object.builder set-overload 0.1
    swiftlike-ring object.builder rebalance [--seed N] [--ring PATH]
    swiftlike-ring object.builder show               # also: swiftlike-ring object.builder
    swiftlike-ring object.builder validate [--ring PATH]
    swiftlike-ring object.builder set-info 127.0.0.1 --ip 10.0.0.9 --yes   # no moves
    swiftlike-ring object.builder write-ring [--ring PATH]
    swiftlike-ring object.builder search z2
    swiftlike-ring object.builder list-parts d3 d4
    swiftlike-ring object.builder pretend-min-part-hours-passed

Exit status: 0 success, 2 error. The builder file is written only when a command succeeds.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .builder import RingBuilder, RingBuilderError
from .cli_parse import PatternError, parse_device
from .placement import LEVELS
from .ring import Ring
from .ringfile import RingFileError, read_ring_file


class CliError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def default_ring_path(builder_path: str) -> str:
    root, ext = os.path.splitext(builder_path)
    return (root if ext == ".builder" else builder_path) + ".ring"


@contextmanager
def progress(label: str, stream: Any = None, after: float = 1.0) -> Iterator[None]:
    """Show a spinner with elapsed seconds on stderr if the block takes more than ``after``."""
    stream = stream or sys.stderr
    done = threading.Event()
    started = time.monotonic()

    def spin() -> None:
        if done.wait(after):
            return
        frames = "|/-\\"
        i = 0
        while not done.wait(0.2):
            stream.write(f"\r{label} {frames[i % 4]} {time.monotonic() - started:5.1f}s")
            stream.flush()
            i += 1
        stream.write(f"\r{label} done in {time.monotonic() - started:.1f}s\n")
        stream.flush()

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _load(path: str) -> RingBuilder:
    if not os.path.exists(path):
        raise CliError(f"{path}: no such builder file (create it with: "
                       f"swiftlike-ring {path} create <part_power> <replicas> <min_part_hours>)")
    return RingBuilder.load(path)


def _find(builder: RingBuilder, search: str) -> list[dict]:
    try:
        devs = builder.search_devs(search)
    except PatternError as exc:
        raise CliError(str(exc)) from exc
    if not devs:
        raise CliError(f"no device matches {search!r}")
    return devs


def _fmt_dev(d: dict) -> str:
    return f"d{d['id']}r{d['region']}z{d['zone']}-{d['ip']}:{d['port']}/{d['device']}"


# --- commands ------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> str:
    if os.path.exists(args.builder) and not args.force:
        raise CliError(f"{args.builder} already exists (use --force to overwrite)")
    b = RingBuilder(args.part_power, args.replicas, args.min_part_hours, args.overload)
    b.save(args.builder)
    return (f"created {args.builder}: {b.parts} partitions, {b.replicas} replicas, "
            f"min_part_hours {b.min_part_hours:g}")


def cmd_add(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    devs: list[dict] = []
    if args.spec:
        if len(args.spec) % 2:
            raise CliError("compact form is pairs of: r<region>z<zone>-<ip>:<port>/<device> "
                           "<weight>")
        for text, weight in zip(args.spec[::2], args.spec[1::2], strict=True):
            try:
                dev = parse_device(text)
                dev["weight"] = float(weight)
            except (PatternError, ValueError) as exc:
                raise CliError(str(exc)) from exc
            devs.append(dev)
    else:
        missing = [n for n in ("zone", "ip", "port", "device", "weight")
                   if getattr(args, n) is None]
        if missing:
            raise CliError("add needs --" + ", --".join(missing) +
                           " (or the compact form r1z1-127.0.0.1:6200/d1 100)")
        devs.append({"region": args.region, "zone": args.zone, "ip": args.ip,
                     "port": args.port, "device": args.device, "weight": args.weight,
                     "meta": args.meta or ""})
    lines = [f"device {_fmt_dev(b.get_dev(dev_id))} weight {dev['weight']:g} got id {dev_id}"
             for dev_id, dev in zip(b.add_devs(devs), devs, strict=True)]
    b.save(args.builder)
    return "\n".join(lines)


def cmd_remove(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    devs = _find(b, args.search)
    if len(devs) > 1 and not args.yes:
        raise CliError(f"{args.search!r} matches {len(devs)} devices; add --yes to remove all:\n"
                       + "\n".join(_fmt_dev(d) for d in devs))
    for d in devs:
        b.remove_dev(d["id"])
    b.save(args.builder)
    return "\n".join(f"marked {_fmt_dev(d)} for removal (takes effect at rebalance)"
                     for d in devs)


def cmd_set_weight(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    devs = _find(b, args.search)
    if len(devs) > 1 and not args.yes:
        raise CliError(f"{args.search!r} matches {len(devs)} devices; add --yes to change all")
    was = {d["id"]: d["weight"] for d in devs}  # _find's dicts are the builder's own
    for d in devs:
        b.set_dev_weight(d["id"], args.weight)
    b.save(args.builder)
    return "\n".join(f"{_fmt_dev(d)} weight {was[d['id']]:g} -> {args.weight:g}"
                     for d in devs)


def cmd_set_overload(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    value = args.overload
    overload = float(value[:-1]) / 100.0 if value.endswith("%") else float(value)
    b.set_overload(overload)
    b.save(args.builder)
    return f"overload set to {overload:.6f} ({overload * 100:.2f}%)"


def cmd_set_min_part_hours(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    b.set_min_part_hours(args.hours)
    b.save(args.builder)
    return f"min_part_hours set to {args.hours:g}"


def cmd_set_info(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    if all(getattr(args, key) is None for key in ("ip", "port", "device", "meta")):
        raise CliError("set-info needs at least one of --ip, --port, --device, --meta")
    devs = _find(b, args.search)
    if len(devs) > 1 and not args.yes:
        raise CliError(f"{args.search!r} matches {len(devs)} devices; add --yes to change all")
    lines = []
    for d in devs:
        now = b.set_dev_info(d["id"], ip=args.ip, port=args.port, device=args.device,
                             meta=args.meta)
        lines.append(f"{_fmt_dev(d)} -> {_fmt_dev(now)}" + (f" meta {now['meta']!r}"
                                                             if args.meta is not None else ""))
    b.save(args.builder)
    lines.append("no partition moved; write the ring file for the cluster to see it: "
                 f"swiftlike-ring {args.builder} write-ring")
    return "\n".join(lines)


def cmd_pretend_min_part_hours_passed(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    b.pretend_min_part_hours_passed()
    b.save(args.builder)
    return "every partition may move at the next rebalance"


def cmd_write_ring(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    if b.replica2part2dev is None:
        raise CliError("never rebalanced: no assignment to write (run rebalance)")
    ring_path = args.ring or default_ring_path(args.builder)
    b.save_ring(ring_path)
    note = " (pending changes are not in it: rebalance to place them)" if b.dirty else ""
    return f"wrote {ring_path}, build version {b.version}{note}"


def cmd_search(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    counts = b.dev_part_counts()
    return "\n".join(f"{_fmt_dev(d)} weight {d['weight']:g} partitions {counts.get(d['id'], 0)}"
                     + (f" meta {d['meta']!r}" if d["meta"] else "")
                     for d in _find(b, args.search))


def cmd_list_parts(args: argparse.Namespace) -> str:
    """Partitions with a replica on the matched devices, the most matches first (which
    partitions a failing disk or server holds)."""
    b = _load(args.builder)
    arr = b.replica2part2dev
    if arr is None:
        raise CliError("never rebalanced: no partitions assigned")
    ids = sorted({d["id"] for search in args.search for d in _find(b, search)})
    matches = np.isin(arr, np.array(ids, dtype=arr.dtype)).sum(axis=0)
    parts = np.flatnonzero(matches)
    order = np.lexsort((parts, -matches[parts]))
    rows = [f"{'partition':>9}  matches"]
    rows += [f"{int(parts[i]):>9}  {int(matches[parts[i]])}" for i in order]
    return "\n".join(rows)


def cmd_rebalance(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    ring_path = args.ring or default_ring_path(args.builder)
    with progress("rebalancing"):
        report = b.rebalance(seed=args.seed)
    b.save_ring(ring_path)
    b.save(args.builder)
    total = b.parts * b.replicas
    moved = (f"placed {total} replicas" if report.initial else
             f"moved {report.moved_replicas} replicas "
             f"({100.0 * report.moved_replicas / total:.2f}%) "
             f"of {report.moved_partitions} partitions")
    out = [f"{moved} in {report.seconds:.2f}s; balance {report.balance:.2f}, "
           f"dispersion {report.dispersion:.2f}", f"wrote {ring_path}"]
    if report.quota_gap:
        out.append(f"note: {report.quota_gap} replicas could not reach their device yet "
                   f"(a rebalance moves at most one replica of a partition, none moved "
                   f"within min_part_hours {b.min_part_hours:g}; or the topology): "
                   f"rebalance again later")
    return "\n".join(out)


def cmd_show(args: argparse.Namespace) -> str:
    b = _load(args.builder)
    counts = b.dev_part_counts()
    stats = b.stats()
    devs = [d for d in b.devs if d is not None]
    regions = {d["region"] for d in devs}
    zones = {(d["region"], d["zone"]) for d in devs}
    head = [f"{args.builder}, build version {b.version}",
            f"{b.parts} partitions, {b.replicas} replicas, {len(regions)} regions, "
            f"{len(zones)} zones, {len(devs)} devices"
            + (f", {stats.balance:.2f} balance, {stats.dispersion:.2f} dispersion"
               if stats else ", never rebalanced"),
            f"min_part_hours {b.min_part_hours:g}, overload {b.overload * 100:.2f}%"
            + (f" (needed for full dispersion: {stats.max_overload * 100:.2f}%)" if stats else ""),
            "pending changes: rebalance needed" if b.dirty else "ring is up to date with builder"]
    if stats:
        head.append("dispersion by tier: " + ", ".join(
            f"{k} {stats.dispersion_by_tier[k]:.2f}%" for k in LEVELS))
    total_w = sum(d["weight"] for d in devs) or 1.0
    rows = [("id", "region", "zone", "ip", "port", "device", "weight", "partitions", "balance",
             "flags", "meta")]
    for d in devs:
        parts = counts.get(d["id"], 0)
        want = b.parts * b.replicas * d["weight"] / total_w
        bal = (f"{100.0 * (parts / want - 1):.2f}" if want else
               ("999.99" if parts else "0.00"))
        flags = "REMOVED" if d["id"] in b._removed else ""
        rows.append((str(d["id"]), str(d["region"]), str(d["zone"]), d["ip"], str(d["port"]),
                     d["device"], f"{d['weight']:.2f}", str(parts), bal, flags, d["meta"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.rjust(w) if i in (0, 1, 2, 4, 6, 7, 8) else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    return "\n".join([*head, "Devices:", *table])


def _addresses(devs: list[dict | None]) -> list[tuple | None]:
    return [None if d is None else (d["id"], d["ip"], d["port"], d["device"], d["meta"])
            for d in devs]


def cmd_validate(args: argparse.Namespace) -> str:
    """Check the builder's assignment, and the ring file against it."""
    b = _load(args.builder)
    arr = b.replica2part2dev
    if arr is None:
        raise CliError("never rebalanced: nothing to validate")
    problems = []
    live = np.zeros(len(b.devs) + 1, dtype=bool)
    live[[d["id"] for d in b.devs if d is not None]] = True
    if not live[arr.astype(np.int64)].all():
        problems.append("partitions assigned to unknown devices")
    for r1 in range(b.replicas):
        for r2 in range(r1 + 1, b.replicas):
            dup = int((arr[r1] == arr[r2]).sum())
            if dup:
                problems.append(f"{dup} partitions have replicas {r1} and {r2} on one device")
    ring_path = args.ring or default_ring_path(args.builder)
    if os.path.exists(ring_path):
        ring = Ring(ring_path)
        if ring.part_power != b.part_power or ring.replica_count != b.replicas:
            problems.append(f"{ring_path}: shape differs from the builder")
        elif not np.array_equal(read_ring_file(ring_path).replica2part2dev, arr):
            problems.append(f"{ring_path}: assignment differs from the builder "
                            f"(rebalance or write the ring again)")
        elif _addresses(ring.devs) != _addresses(b.devs):
            problems.append(f"{ring_path}: device addresses differ from the builder "
                            f"(write the ring again)")
    else:
        problems.append(f"{ring_path}: no ring file")
    if problems:
        raise CliError("invalid: " + "; ".join(problems))
    stats = b.stats()
    return (f"ok: {b.parts} partitions x {b.replicas} replicas, balance {stats.balance:.2f}, "
            f"dispersion {stats.dispersion:.2f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swiftlike-ring", description=__doc__.split("\n")[0])
    p.add_argument("builder", help="builder file (e.g. object.builder)")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("create",
                       help="new builder: create <part_power> <replicas> <min_part_hours>")
    c.add_argument("part_power", type=int)
    c.add_argument("replicas", type=int)
    c.add_argument("min_part_hours", type=float)
    c.add_argument("--overload", type=float, default=0.0)
    c.add_argument("--force", action="store_true", help="overwrite an existing builder")
    c.set_defaults(func=cmd_create)
    a = sub.add_parser("add", help="add devices (options, or compact r1z1-ip:port/dev weight)")
    a.add_argument("spec", nargs="*", help="compact pairs: r1z1-127.0.0.1:6200/d1 100")
    a.add_argument("--region", type=int, default=1)
    a.add_argument("--zone", type=int)
    a.add_argument("--ip")
    a.add_argument("--port", type=int)
    a.add_argument("--device")
    a.add_argument("--weight", type=float)
    a.add_argument("--meta", default="")
    a.set_defaults(func=cmd_add)
    r = sub.add_parser("remove", help="remove devices: remove <id|search>")
    r.add_argument("search")
    r.add_argument("--yes", action="store_true", help="allow matching several devices")
    r.set_defaults(func=cmd_remove)
    w = sub.add_parser("set-weight", help="set-weight <id|search> <weight>")
    w.add_argument("search")
    w.add_argument("weight", type=float)
    w.add_argument("--yes", action="store_true", help="allow matching several devices")
    w.set_defaults(func=cmd_set_weight)
    o = sub.add_parser("set-overload", help="set-overload <fraction or N%%>")
    o.add_argument("overload")
    o.set_defaults(func=cmd_set_overload)
    m = sub.add_parser("set-min-part-hours", help="set-min-part-hours <hours>")
    m.add_argument("hours", type=float)
    m.set_defaults(func=cmd_set_min_part_hours)
    si = sub.add_parser("set-info", help="set-info <id|search> [--ip] [--port] [--device] "
                                         "[--meta]: move a device, no partition moves")
    si.add_argument("search")
    si.add_argument("--ip")
    si.add_argument("--port", type=int)
    si.add_argument("--device")
    si.add_argument("--meta")
    si.add_argument("--yes", action="store_true", help="allow matching several devices")
    si.set_defaults(func=cmd_set_info)
    pm = sub.add_parser("pretend-min-part-hours-passed",
                        help="let the next rebalance move recently moved partitions")
    pm.set_defaults(func=cmd_pretend_min_part_hours_passed)
    wr = sub.add_parser("write-ring", help="write the ring file from the builder, no rebalance")
    wr.add_argument("--ring", help="ring file to write (default: next to the builder)")
    wr.set_defaults(func=cmd_write_ring)
    se = sub.add_parser("search", help="search <id|search>: the matching devices")
    se.add_argument("search")
    se.set_defaults(func=cmd_search)
    lp = sub.add_parser("list-parts", help="list-parts <id|search> ...: partitions on them")
    lp.add_argument("search", nargs="+")
    lp.set_defaults(func=cmd_list_parts)
    rb = sub.add_parser("rebalance", help="rebalance and write the ring file")
    rb.add_argument("--seed", type=int)
    rb.add_argument("--ring", help="ring file to write (default: next to the builder)")
    rb.set_defaults(func=cmd_rebalance)
    s = sub.add_parser("show", help="devices, weights, partitions, balance, dispersion")
    s.set_defaults(func=cmd_show)
    v = sub.add_parser("validate", help="check the builder and its ring file")
    v.add_argument("--ring")
    v.set_defaults(func=cmd_validate)
    return p


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    """Entry point of the ``swiftlike-ring`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", cmd_show)
    try:
        text = func(args)
    except (CliError, RingBuilderError, RingFileError, PatternError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a builder or ring path that cannot be read or written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if text:
        out(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
