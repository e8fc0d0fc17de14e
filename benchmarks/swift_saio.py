"""OpenStack Swift all-in-one on loopback, for side-by-side benchmarks.

Swift is installed from PyPI into its own virtualenv (never into ours), configured with
the same topology as ``swiftlike serve --nodes N`` (N nodes, one device each, 3 replicas,
tempauth, fsync on, no replicator/auditor/updater daemons) in a directory of plain
directories (``mount_check = false``), and started as ordinary processes whose PIDs we
keep, so they can be measured and stopped by PID.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from swiftlike.common.ports import free_port, free_ports

__all__ = ["free_port"]  # vs_swift picks its ports here too

SWIFT_REQUIREMENT = "swift>=2.38,<2.39"
DEFAULT_VENV = Path.home() / ".cache" / "swiftlike-bench" / "swift-venv"
SERVER_KINDS = ("object", "container", "account")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, **kwargs)


def ensure_apt_packages(packages: list[str], log=print) -> None:
    """apt-get install ``packages`` (after apt-get update) unless dpkg has them all."""
    missing = [p for p in packages
               if _run(["dpkg-query", "-W", "-f=${Status}", p]).stdout.find("ok installed") < 0]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"need Debian packages {missing} but apt-get is not available")
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    update = _run(["apt-get", "update", "-qq"], env=env)
    if update.returncode != 0:
        raise RuntimeError(f"apt-get update failed:\n{update.stderr[-2000:]}")
    install = _run(["apt-get", "install", "-y", "-qq", *missing], env=env)
    if install.returncode != 0:
        raise RuntimeError(f"apt-get install {missing} failed:\n{install.stderr[-2000:]}")


def swift_version(venv: Path) -> str | None:
    """The Swift version installed in ``venv``, or None."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    out = _run([str(python), "-c", "import swift; print(swift.__version__)"])
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_swift_venv(venv: Path = DEFAULT_VENV, log=print) -> str:
    """Install OpenStack Swift 2.38.x into ``venv`` if it is not there; return its version."""
    version = swift_version(venv)
    if version and version.startswith("2.38."):
        return version
    log(f"installing {SWIFT_REQUIREMENT} into {venv}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    made = _run([sys.executable, "-m", "venv", str(venv)])
    if made.returncode != 0:
        raise RuntimeError(f"python -m venv failed:\n{made.stderr[-2000:]}")
    pip = [str(venv / "bin" / "pip"), "install", "-q", SWIFT_REQUIREMENT]
    done = _run(pip)
    if done.returncode != 0:
        # pyeclib builds against liberasurecode when no wheel fits this platform.
        ensure_apt_packages(["liberasurecode-dev", "build-essential", "python3-dev"], log)
        done = _run(pip)
        if done.returncode != 0:
            raise RuntimeError(f"pip install {SWIFT_REQUIREMENT} failed:\n{done.stderr[-3000:]}")
    version = swift_version(venv)
    if not version:
        raise RuntimeError("swift installed but cannot be imported in its venv")
    return version


@dataclasses.dataclass
class SaioLayout:
    """Where one Swift all-in-one lives and which ports it uses."""

    base: Path
    nodes: int
    proxy_port: int
    memcache_port: int
    node_ports: dict[str, list[int]]     # server kind -> port of each node
    replicas: int = 3
    part_power: int = 10
    proxy_workers: int = 2
    #: "features": the middleware of swiftlike's default pipeline (see PIPELINES)
    pipeline: str = "features"
    user: str = dataclasses.field(default_factory=getpass.getuser)

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    def devices_dir(self, node: int) -> Path:
        return self.base / "srv" / f"node{node}"

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/auth/v1.0"


#: Swift proxy pipelines. "features" enables the API features swiftlike's default
#: pipeline serves (bulk, temp URLs, rate limits, form POST, static web, quotas, SLO,
#: DLO, both kinds of versioning, symlinks; CORS is built into Swift's proxy), in the
#: order of Swift's sample configuration, so both sides run the same features.
#: "minimal" is the shorter pipeline the comparison used before 2026-12-07.
PIPELINES = {
    "features": "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk\n"
                "    tempurl ratelimit formpost tempauth staticweb copy container-quotas\n"
                "    account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server",
    "minimal": "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats tempauth\n"
               "    copy dlo versioned_writes proxy-logging proxy-server",
}


#: versioned_writes settings: both kinds of versioning with the features (object
#: versioning needs symlink in the pipeline, so not in the minimal one)
VERSIONING = {"features": "allow_versioned_writes = true\nallow_object_versioning = true\n",
              "minimal": ""}

#: middleware that need no settings here: [filter:<name>] use = egg:swift#<name>
PLAIN_FILTERS = ("catch_errors", "gatekeeper", "healthcheck", "proxy-logging",
                 "listing_formats", "copy", "dlo", "bulk", "tempurl", "ratelimit",
                 "formpost", "staticweb", "container-quotas", "account-quotas", "slo",
                 "symlink")


def make_layout(base: Path, nodes: int = 4, proxy_port: int | None = None,
                proxy_workers: int = 2, pipeline: str = "features") -> SaioLayout:
    """A layout with fresh free ports for every server."""
    ports = free_ports(2 + nodes * len(SERVER_KINDS))  # all different: no shared binds
    return SaioLayout(
        base=base, nodes=nodes, proxy_port=proxy_port or ports[0],
        memcache_port=ports[1],
        node_ports={kind: ports[2 + k * nodes:2 + (k + 1) * nodes]
                    for k, kind in enumerate(SERVER_KINDS)},
        proxy_workers=proxy_workers, pipeline=pipeline,
    )


def swift_conf_text() -> str:
    return ("[swift-hash]\nswift_hash_path_suffix = swiftlike-bench-suffix\n"
            "swift_hash_path_prefix = swiftlike-bench-prefix\n\n"
            "[storage-policy:0]\nname = gold\ndefault = yes\n")


def proxy_conf_text(layout: SaioLayout) -> str:
    return f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {layout.proxy_port}
workers = {layout.proxy_workers}
user = {layout.user}
swift_dir = {layout.etc}
log_level = INFO

[pipeline:main]
pipeline = {PIPELINES[layout.pipeline]}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
token_life = 86400

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{layout.memcache_port}

[filter:versioned_writes]
use = egg:swift#versioned_writes
{VERSIONING[layout.pipeline]}""" + "".join(
        f"\n[filter:{name}]\nuse = egg:swift#{name.replace('-', '_')}\n"
        for name in PLAIN_FILTERS)


def node_conf_text(layout: SaioLayout, kind: str, node: int) -> str:
    """Config of one storage server; Swift always fsyncs object data before its 201."""
    return f"""[DEFAULT]
devices = {layout.devices_dir(node)}
mount_check = false
bind_ip = 127.0.0.1
bind_port = {layout.node_ports[kind][node - 1]}
workers = 1
user = {layout.user}
swift_dir = {layout.etc}
log_level = INFO

[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""


def ring_commands(layout: SaioLayout, ring_builder: str) -> list[list[str]]:
    """swift-ring-builder invocations for the account, container and object rings."""
    cmds = []
    for kind in SERVER_KINDS:
        builder = str(layout.etc / f"{kind}.builder")
        cmds.append([ring_builder, builder, "create", str(layout.part_power),
                     str(layout.replicas), "1"])
        for node in range(1, layout.nodes + 1):
            port = layout.node_ports[kind][node - 1]
            cmds.append([ring_builder, builder, "add", "--region", "1", "--zone", str(node),
                         "--ip", "127.0.0.1", "--port", str(port), "--device", f"d{node}",
                         "--weight", "100"])
        cmds.append([ring_builder, builder, "rebalance"])
    return cmds


def write_saio(layout: SaioLayout, ring_builder: str | None) -> None:
    """Write every config file, make the device directories, build the rings."""
    layout.etc.mkdir(parents=True, exist_ok=True)
    (layout.etc / "swift.conf").write_text(swift_conf_text())
    (layout.etc / "proxy-server.conf").write_text(proxy_conf_text(layout))
    for kind in SERVER_KINDS:
        for node in range(1, layout.nodes + 1):
            (layout.devices_dir(node) / f"d{node}").mkdir(parents=True, exist_ok=True)
            (layout.etc / f"{kind}-server-{node}.conf").write_text(
                node_conf_text(layout, kind, node))
    if ring_builder is None:
        return
    for cmd in ring_commands(layout, ring_builder):
        done = _run(cmd)
        # swift-ring-builder exits 1 for warnings (e.g. balance), 2 for errors.
        if done.returncode not in (0, 1):
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_for_auth(auth_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            auth_url, headers={"X-Auth-User": "test:tester", "X-Auth-Key": "testing"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status // 100 == 2:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"auth at {auth_url} not answering after {timeout}s: {last}")


class SwiftCluster:
    """A running Swift all-in-one: memcached, storage servers and a proxy, by PID."""

    def __init__(self, layout: SaioLayout, venv: Path = DEFAULT_VENV) -> None:
        self.layout = layout
        self.venv = venv
        self.procs: list[subprocess.Popen] = []

    @property
    def server_pids(self) -> list[int]:
        """PIDs whose process trees do Swift's work (memcached included: tempauth needs it)."""
        return [p.pid for p in self.procs]

    def _spawn(self, cmd: list[str], log_name: str) -> subprocess.Popen:
        logs = self.layout.base / "log"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{log_name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 60.0) -> None:
        memcached = shutil.which("memcached")
        if memcached is None:
            raise RuntimeError("memcached is not installed (tempauth needs it)")
        bin_dir = self.venv / "bin"
        try:
            mc = self._spawn([memcached, "-l", "127.0.0.1", "-p", str(self.layout.memcache_port),
                              "-U", "0", "-m", "64", "-u", self.layout.user], "memcached")
            wait_for_port(self.layout.memcache_port, timeout, mc)
            waits = []
            for kind in SERVER_KINDS:
                for node in range(1, self.layout.nodes + 1):
                    conf = self.layout.etc / f"{kind}-server-{node}.conf"
                    proc = self._spawn([str(bin_dir / f"swift-{kind}-server"), str(conf)],
                                       f"{kind}-{node}")
                    waits.append((self.layout.node_ports[kind][node - 1], proc))
            proxy = self._spawn([str(bin_dir / "swift-proxy-server"),
                                 str(self.layout.etc / "proxy-server.conf")], "proxy")
            waits.append((self.layout.proxy_port, proxy))
            for port, proc in waits:
                wait_for_port(port, timeout, proc)
            wait_for_auth(self.layout.auth_url, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every process we started, then SIGKILL its own session if it lingers."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            try:
                # Workers the server forked live in the session we created for it.
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs.clear()
