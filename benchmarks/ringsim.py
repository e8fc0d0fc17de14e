"""Petabyte ring simulator for capacity planners.

Describe a cluster (regions, zones, servers, disks, disk sizes, rebuild bandwidth,
annual failure rate) and a workload (object count, size distribution) in TOML or JSON;
ringsim builds the ring with the real ``ring`` builder, spreads the objects over the
partitions statistically (numpy, never one Python object per stored object) and reports:

- per-device fill and how full the cluster can run before its fullest disk is full;
- a device, a server and a zone failure: handoff load, bytes to re-replicate, time to
  heal, partitions left with a single copy meanwhile;
- adding servers: bytes moved against the ideal, rebalance time;
- durability: the annual probability of losing a partition.

Example description (every key optional; these are the defaults)::

    [topology]
    part_power = 14
    replicas = 3
    regions = 1
    zones_per_region = 4
    servers_per_zone = 4
    disks_per_server = 12
    disk_size_tb = [16.0]          # cycled over servers: [16, 20] mixes two generations
    rebuild_mib_per_s = 100.0      # per disk
    annual_failure_rate = 0.02     # per disk
    detect_hours = 1.0             # failure noticed and ring pushed after this long

    [workload]
    objects = 10000000
    size = "lognormal"             # or "fixed"
    size_bytes = 1048576           # the mean (lognormal) or the size (fixed)
    sigma = 1.5

Run ``python benchmarks/ringsim.py --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ringsim_model import (
    TB,
    build_ring,
    durability,
    failure_scenario,
    fill_report,
    growth_scenario,
    load_description,
    partition_load,
)
from benchmarks.tinyplot import histogram_png, lines_png

FAILURES = ("device", "server", "zone")


class Progress:
    """A one-line progress bar on stderr (silent when disabled)."""

    def __init__(self, steps: int, enabled: bool = True) -> None:
        self.steps, self.done, self.enabled = steps, 0, enabled
        self.started = time.monotonic()

    def __call__(self, label: str) -> None:
        if not self.enabled:
            return
        filled = int(30 * self.done / self.steps)
        bar = "#" * filled + "." * (30 - filled)
        elapsed = time.monotonic() - self.started
        print(f"\r[{bar}] {self.done}/{self.steps} {elapsed:6.1f}s {label:<32}",
              end="", file=sys.stderr, flush=True)
        self.done += 1

    def finish(self) -> None:
        if self.enabled:
            self.done = self.steps
            self("done")
            print(file=sys.stderr, flush=True)


def simulate(topo, work, add_servers: int = 1, failures: Sequence[str] = FAILURES,
             progress: Progress | None = None) -> dict[str, Any]:
    """Run every scenario; returns JSON-able results (plus numpy arrays for the plots)."""
    step = progress or (lambda label: None)
    step(f"building ring ({topo.devices} devices, 2^{topo.part_power} parts)")
    t0 = time.monotonic()
    builder, devices = build_ring(topo)
    ring_seconds = time.monotonic() - t0
    step("spreading objects over partitions")
    counts, part_bytes = partition_load(topo, work)
    r2p2d = builder.replica2part2dev
    step("device fill")
    fill = fill_report(topo, devices, r2p2d, part_bytes)
    scenarios = []
    for kind in failures:
        step(f"{kind} failure")
        scenarios.append(failure_scenario(builder, devices, part_bytes, topo, kind))
    growth = None
    if add_servers > 0:
        step(f"adding {add_servers} server(s)")
        growth = growth_scenario(builder, devices, part_bytes, topo, add_servers)
    step("durability")
    device_failure = next((s for s in scenarios if s["kind"] == "device"), None)
    if device_failure is None:
        device_failure = failure_scenario(builder, devices, part_bytes, topo, "device")
    dur = durability(builder, topo, device_failure["heal_hours"], part_bytes)
    return {
        "topology": vars(topo), "workload": vars(work),
        "workload_total_bytes": work.total_bytes,
        "objects_placed": int(counts.sum()),
        "partition_bytes_total": int(part_bytes.sum()),
        "replicas": topo.replicas,
        "ring_build_seconds": ring_seconds,
        "fill": fill, "failures": scenarios, "growth": growth, "durability": dur,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def format_report(result: dict[str, Any]) -> str:
    """The terminal report."""
    topo, fill, dur = result["topology"], result["fill"], result["durability"]
    out = [
        f"ring: {fill['devices']} devices, 2^{topo['part_power']} partitions, "
        f"{topo['replicas']} replicas (built in {result['ring_build_seconds']:.1f}s)",
        f"workload: {result['objects_placed']:,} objects, "
        f"{result['workload_total_bytes'] / TB:,.2f} TB logical, "
        f"{fill['stored_tb']:,.2f} TB stored of {fill['raw_capacity_tb']:,.1f} TB raw",
        "",
        "device fill        min      mean     p99      max      overfull",
        f"                   {_pct(fill['fill_min']):<8} {_pct(fill['fill_mean']):<8} "
        f"{_pct(fill['fill_p99']):<8} {_pct(fill['fill_max']):<8} "
        f"{fill['overfull_devices']}",
        f"the cluster can run at {_pct(fill['cluster_fill_when_first_device_full'])} "
        "full before its fullest device is full",
        "",
        "failure  devices  bytes to copy    handoff devs  max handoff    heal time  "
        "degraded parts  single-copy parts",
    ]
    for s in result["failures"]:
        out.append(
            f"{s['kind']:<8} {s['failed_devices']:>7}  {s['bytes_to_rereplicate'] / TB:>10.3f} TB"
            f"    {s['handoff_devices']:>12}  {s['handoff_bytes_max'] / TB:>8.3f} TB"
            f"  {s['heal_hours']:>8.1f} h  {s['partitions_degraded']:>14,}"
            f"  {s['partitions_single_copy']:>17,}")
    growth = result["growth"]
    if growth:
        out += ["", f"adding {growth['servers_added']} server(s) "
                    f"({growth['devices_added']} devices): moves "
                    f"{growth['bytes_moved'] / TB:.3f} TB, "
                    f"ideal {growth['bytes_ideal'] / TB:.3f} TB "
                    f"({growth['moved_vs_ideal']:.2f}x); rebalance takes "
                    f"{growth['rebalance_hours']:.1f} h at the rebuild bandwidth"]
    out += ["", f"durability (AFR {topo['annual_failure_rate']:.1%} per disk, heal window "
                f"{dur['heal_window_hours']:.1f} h, {dur['distinct_replica_sets']:,} distinct "
                "replica sets):",
            f"  one partition lost in a year: {dur['partition_annual_loss_probability']:.3e}",
            f"  any partition lost in a year: {dur['cluster_annual_loss_probability']:.3e}"]
    return "\n".join(out)


def write_plots(result: dict[str, Any], prefix: Path) -> list[str]:
    """fill histogram and heal timelines as PNG files; returns their paths."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    fill_path = Path(f"{prefix}-fill-histogram.png")
    histogram_png(fill_path, [100 * f for f in result["fill"]["fill"]])
    paths.append(str(fill_path))
    for s in result["failures"]:
        tl = s["timeline"]
        path = Path(f"{prefix}-heal-{s['kind']}.png")
        lines_png(path, tl["hours"], [tl["degraded"], tl["single_copy"]])
        paths.append(str(path))
    return paths


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    out["fill"] = {k: v for k, v in result["fill"].items() if k != "fill"}
    return out


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("description", nargs="?", help="topology/workload TOML or JSON file")
    parser.add_argument("--part-power", type=int, help="override [topology] part_power")
    parser.add_argument("--servers-per-zone", type=int)
    parser.add_argument("--zones", type=int, help="zones per region")
    parser.add_argument("--regions", type=int)
    parser.add_argument("--disks-per-server", type=int)
    parser.add_argument("--objects", type=float, help="override [workload] objects (1e10 ok)")
    parser.add_argument("--add-servers", type=int, default=1,
                        help="servers added in the growth scenario (0 to skip)")
    parser.add_argument("--failures", default=",".join(FAILURES),
                        help="failure scenarios to run (comma-separated)")
    parser.add_argument("--plots", type=Path, default=None,
                        help="write PNG plots with this path prefix (e.g. out/ringsim)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    topo = {key: value for key, value in (
        ("part_power", args.part_power), ("servers_per_zone", args.servers_per_zone),
        ("zones_per_region", args.zones), ("regions", args.regions),
        ("disks_per_server", args.disks_per_server)) if value is not None}
    work = {} if args.objects is None else {"objects": int(args.objects)}
    return {"topology": topo, "workload": work}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        topo, work = load_description(args.description, overrides_from_args(args))
    except (ValueError, OSError) as exc:
        print(f"ringsim: {exc}", file=sys.stderr)
        return 2
    failures = [f for f in args.failures.split(",") if f]
    bad = [f for f in failures if f not in FAILURES]
    if bad:
        print(f"ringsim: unknown failure kinds {bad}; known: {', '.join(FAILURES)}",
              file=sys.stderr)
        return 2
    steps = 4 + len(failures) + (1 if args.add_servers > 0 else 0)
    progress = Progress(steps, enabled=(not args.no_progress and sys.stderr.isatty())
                        or (not args.no_progress and not args.json))
    result = simulate(topo, work, args.add_servers, failures, progress)
    progress.finish()
    if args.plots is not None:
        result["plots"] = write_plots(result, args.plots)
    if args.json:
        json.dump(to_json(result), sys.stdout, indent=2)
        print()
    else:
        print(format_report(result))
        for path in result.get("plots", []):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
