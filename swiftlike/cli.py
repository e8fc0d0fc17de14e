"""The `swiftlike` command: the composition root that wires the layers into processes.

This is the only module that imports every service package; the packages themselves
keep to the layer rules of ARCHITECTURE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ring import RingFileError
from swiftlike.common.config import ConfigError, load_config


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


def _setup_logging(conf: dict[str, Any], section: str) -> None:
    level = str(conf.get(section, {}).get("log_level", "INFO")).upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s {section}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )


def _apply_process_policies(conf: dict[str, Any], section: str) -> None:
    """``[section]``'s CPU policy and malloc thresholds for this server process (see
    swiftlike.common.cpu_policy and .malloc_policy): both read and checked before either
    is applied, so a bad setting stops the process with its table named."""
    from swiftlike.common.cpu_policy import apply_cpu_policy, cpu_policy_from
    from swiftlike.common.malloc_policy import apply_malloc_policy, malloc_policy_from

    table = conf.get(section, {})
    try:
        cpu, malloc = cpu_policy_from(table), malloc_policy_from(table)
    except ValueError as err:
        raise ConfigError(f"[{section}] {err}") from err
    apply_cpu_policy(cpu)
    apply_malloc_policy(malloc)


def _cmd_serve(args: argparse.Namespace) -> int:
    from swiftlike.serve import ServeOptions, serve

    opts = ServeOptions(
        data_dir=Path(args.data_dir),
        host=args.host,
        port=args.port,
        nodes=args.nodes,
        workers=args.workers,
        daemons=not args.no_daemons,
        image_segment_size=args.image_segment_size,
    )
    return int(_run(serve(opts)))


def _cmd_node(args: argparse.Namespace) -> int:
    conf = load_config(args.config)
    _setup_logging(conf, "node")
    _apply_process_policies(conf, "node")
    sock = None
    if args.listen_fd is not None:
        # bound by `swiftlike serve`, which holds it across restarts of this node
        sock = socket.socket(fileno=args.listen_fd)
        sock.setblocking(False)
    _run(_until_signalled(_run_node_with_daemons(conf, sock)))
    return 0


async def _run_node_with_daemons(conf: dict[str, Any],
                                 sock: socket.socket | None = None) -> None:
    """A storage node, and its consistency daemons in the same process when enabled.

    The daemons live in a layer below storage, so the node server cannot start them
    itself; this composition root runs both side by side.
    """
    from swiftlike.common.config import conf_bool
    from swiftlike.storage.server import run_node

    if not conf_bool(conf.get("daemons", {}).get("enabled"), default=False):
        await run_node(conf, sock)
        return
    from swiftlike.daemons.runner import run_daemons

    node = asyncio.ensure_future(run_node(conf, sock))
    daemons = asyncio.ensure_future(run_daemons(conf))
    try:
        done, _ = await asyncio.wait({node, daemons}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in (node, daemons):
            task.cancel()
        await asyncio.gather(node, daemons, return_exceptions=True)


def _cmd_proxy(args: argparse.Namespace) -> int:
    conf = load_config(args.config)
    _setup_logging(conf, "proxy")
    _apply_process_policies(conf, "proxy")
    _run(_until_signalled(_run_proxy_with_apis(conf)))
    return 0


async def _run_proxy_with_apis(conf: dict[str, Any]) -> None:
    """The proxy, plus the image API on the same port when the config has an [image] table."""
    from swiftlike.proxy.server import run_proxy

    extra_apps: dict[str, Any] = {}
    extra_routes: dict[str, Any] = {}
    if conf.get("image", {}).get("enabled", True) and "image" in conf:
        from swiftlike.image.server import make_app as make_image_app
        from swiftlike.image.server import versions_multiple_choice

        image_conf = dict(conf)
        image_conf["image"] = {
            "object_store_url": _proxy_base_url(conf),
            **conf["image"],
        }
        extra_apps["/image"] = make_image_app(image_conf)
        extra_routes["/image"] = versions_multiple_choice  # keystoneauth asks without a slash
    await run_proxy(conf, extra_apps=extra_apps, extra_routes=extra_routes)


def _proxy_base_url(conf: dict[str, Any]) -> str:
    proxy = conf.get("proxy", {})
    return f"http://{proxy.get('bind_ip', '127.0.0.1')}:{proxy.get('bind_port', 8080)}"


def _cmd_image(args: argparse.Namespace) -> int:
    from swiftlike.image.server import run_image

    conf = load_config(args.config)
    _setup_logging(conf, "image")
    _run(_until_signalled(run_image(conf)))
    return 0


def _cmd_daemon(args: argparse.Namespace) -> int:
    from swiftlike.daemons.runner import run_daemon

    conf = load_config(args.config)
    _setup_logging(conf, args.command)
    return int(_run(run_daemon(args.command, conf, once=args.once)) or 0)


async def _until_signalled(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a server coroutine until SIGTERM/SIGINT, then cancel it so it can clean up."""
    import signal

    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swiftlike", description="Swift-compatible object storage, images and compute."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run an all-in-one cluster on this host")
    serve.add_argument("--data-dir", default="swiftlike-data")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--nodes", type=int, default=4)
    serve.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    serve.add_argument("--no-daemons", action="store_true",
                       help="do not run replicator/auditor/updater/expirer/reaper in the nodes")
    serve.add_argument("--image-segment-size", type=int, default=None, metavar="BYTES",
                       help="images larger than this are stored as segments plus an SLO "
                            "manifest (kept in cluster.toml [image] segment_size)")
    serve.set_defaults(func=_cmd_serve)

    for name, func, text in (
        ("node", _cmd_node, "run one storage node (its [node] table)"),
        ("proxy", _cmd_proxy, "run one proxy worker (its [proxy] table)"),
        ("image", _cmd_image, "run the image API alone (its [image] table)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True)
        if name == "node":
            p.add_argument("--listen-fd", type=int,
                           help="serve on this inherited listening socket instead of "
                                "binding [node] bind_ip:bind_port (swiftlike serve's)")
        p.set_defaults(func=func)

    for name in ("replicate", "audit", "update", "expire", "reap"):
        p = sub.add_parser(name, help=f"run the {name} daemon of a storage node")
        p.add_argument("--config", required=True)
        p.add_argument("--once", action="store_true", help="one pass, then exit")
        p.set_defaults(func=_cmd_daemon)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"swiftlike: {exc}", file=sys.stderr)
        return 2
    except RingFileError as exc:  # a missing or damaged ring file at startup
        print(f"swiftlike: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
