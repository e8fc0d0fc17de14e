# ruff: noqa: ASYNC220, ASYNC230
"""The cluster across hosts: every node in its own network namespace with its own address.

The test creates a switch namespace holding a bridge, one namespace per storage node and
one for the proxy (the client side), each joined to the bridge by a veth pair, with
10.251.<n>.x addresses that exist only inside these namespaces. The ring names those
addresses. The drill writes through the proxy, wipes one node's device, runs
``swiftlike replicate --once`` inside every node's namespace, and proves the device is
rebuilt over the "network" and every object reads back. Everything is removed at the end.
Skipped, with the reason, where namespaces cannot be created.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.drills.drill_cluster import build_drill_cluster

pytestmark = pytest.mark.timeout(300)
TAG = f"slk{os.getpid() % 100000}"
SUBNET = f"10.251.{os.getpid() % 250}"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


class Namespaces:
    """Creates and removes the drill's namespaces, veths and bridge."""

    def __init__(self, count: int) -> None:
        self.switch = f"{TAG}sw"
        self.names = [f"{TAG}n{i}" for i in range(count)] + [f"{TAG}cl"]
        self.ips = [f"{SUBNET}.{i + 10}" for i in range(count)] + [f"{SUBNET}.100"]

    def create(self) -> None:
        sh("ip", "netns", "add", self.switch)
        sw = ["ip", "netns", "exec", self.switch]
        sh(*sw, "ip", "link", "add", "br0", "type", "bridge")
        sh(*sw, "ip", "link", "set", "br0", "up")
        for i, (ns, ip) in enumerate(zip(self.names, self.ips, strict=True)):
            sh("ip", "netns", "add", ns)
            host_end, ns_end = f"{TAG}h{i}", f"{TAG}v{i}"
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            sh("ip", "link", "set", host_end, "netns", self.switch)
            sh("ip", "link", "set", ns_end, "netns", ns)
            sh(*sw, "ip", "link", "set", host_end, "master", "br0")
            sh(*sw, "ip", "link", "set", host_end, "up")
            inside = ["ip", "netns", "exec", ns]
            sh(*inside, "ip", "addr", "add", f"{ip}/24", "dev", ns_end)
            sh(*inside, "ip", "link", "set", ns_end, "up")
            sh(*inside, "ip", "link", "set", "lo", "up")

    def remove(self) -> None:
        for ns in [*self.names, self.switch]:
            sh("ip", "netns", "del", ns, check=False)


def in_ns(ns: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, *cmd],
                          capture_output=True, text=True, timeout=240,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))


async def test_netns_cluster_rebuilds_a_wiped_device_across_hosts(tmp_path):
    namespaces = Namespaces(6)
    try:
        namespaces.create()
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        namespaces.remove()
        reason = getattr(err, "stderr", "") or str(err)
        pytest.skip(f"cannot create network namespaces here: {reason.strip()}")
    drill = build_drill_cluster(str(tmp_path), ips=namespaces.ips[:6],
                                netns=namespaces.names[:6])
    proxy_ns = namespaces.names[6]
    # the proxy lives in the client namespace and listens on its address there
    with open(drill.proxy_conf) as handle:
        proxy_conf = handle.read().replace('bind_ip = "127.0.0.1"',
                                           f'bind_ip = "{namespaces.ips[6]}"')
    with open(drill.proxy_conf, "w") as handle:
        handle.write(proxy_conf)
    proxy_url = f"http://{namespaces.ips[6]}:{drill.proxy_port}"
    proxy = None
    try:
        for node in drill.nodes:
            node.start()
        proxy = subprocess.Popen(["ip", "netns", "exec", proxy_ns, sys.executable, "-m",
                                  "swiftlike", "proxy", "--config", drill.proxy_conf],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        urls = [f"http://{n.ip}:{n.port}/healthcheck" for n in drill.nodes]
        urls.append(f"{proxy_url}/healthcheck")
        ready = in_ns(proxy_ns, "-c", (
            "import asyncio; from tests.drills.drill_cluster import wait_healthy; "
            f"asyncio.run(wait_healthy({urls!r}, 60))"))
        assert ready.returncode == 0, ready.stderr[-2000:]
        put = in_ns(proxy_ns, "-m", "tests.drills.netns_client", proxy_url, "put", "nsc", "40")
        assert put.returncode == 0, put.stdout + put.stderr[-2000:]
        victim = drill.nodes[0]
        expected_back = sum(
            1 for i in range(40)
            if victim.name in drill.primary_names("nsc", f"ns-{i:03d}"))
        assert expected_back > 0
        shutil.rmtree(victim.device_path)
        os.makedirs(victim.device_path)
        for _ in range(2):
            for node in drill.nodes:
                run = in_ns(node.netns or "", "-m", "swiftlike", "replicate", "--once",
                            "--config", node.config)
                assert run.returncode in (0, 1), run.stderr[-2000:]
        back = sum(1 for i in range(40)
                   if victim.name in drill.object_holders("nsc", f"ns-{i:03d}"))
        assert back == expected_back
        check = in_ns(proxy_ns, "-m", "tests.drills.netns_client", proxy_url, "check", "nsc",
                      "40")
        assert check.returncode == 0, check.stdout + check.stderr[-2000:]
        assert json.loads(check.stdout)["problems"] == []
        for i in range(40):
            name = f"ns-{i:03d}"
            assert set(drill.object_holders("nsc", name)) == drill.primary_names("nsc", name)
    finally:
        if proxy is not None and proxy.poll() is None:
            os.killpg(proxy.pid, 9)
            proxy.wait(10)
        drill.stop()
        namespaces.remove()

