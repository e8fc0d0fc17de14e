"""`swiftlike serve` as a newcomer meets it: start, use the printed command, stop, restart."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

from tests.cluster_harness import free_port, start_served_cluster


def _printed_swift_command(output: list[str]) -> list[str]:
    for line in output:
        if "try: swift " in line:
            words = shlex.split(line.split("try: ", 1)[1])
            assert words[-1] == "stat"
            return words[:-1]
    raise AssertionError("no swift command in the ready output:\n" + "".join(output))


def _swift(cmd: list[str], *args: str, cwd: Path | None = None) -> str:
    swift_bin = Path(sys.executable).with_name("swift")
    full = [str(swift_bin), *cmd[1:], *args]
    done = subprocess.run(full, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert done.returncode == 0, f"{full}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _child_pids(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return {int(p) for p in out.split()}


def test_printed_command_works_and_data_survives_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cluster = start_served_cluster(data_dir, nodes=4, workers=2)
    try:
        cmd = _printed_swift_command(cluster.output)
        assert f"http://127.0.0.1:{cluster.port}/auth/v1.0" in cmd
        stat = _swift(cmd, "stat")
        assert "Account: AUTH_test" in stat
        src = tmp_path / "hello.txt"
        src.write_bytes(b"hello from a newcomer\n" * 100)
        _swift(cmd, "upload", "docs", "hello.txt", cwd=tmp_path)
        assert _swift(cmd, "list", "docs").split() == ["hello.txt"]
        children = _child_pids(cluster.process.pid)
        assert len(children) == 4 + 2, "4 storage nodes and 2 proxy workers"
        # the proxies reach the nodes of this host by their Unix sockets, not loopback TCP
        sockets = data_dir / "run" / "sockets"
        assert len(list(sockets.glob("*.sock"))) == 4
        assert _connected_unix_sockets(sockets) > 0
        # the configs hold the auth secret and the image store's key, the registry every
        # image's record: none is for other users' eyes
        secret_files = [data_dir / "cluster.toml", *data_dir.glob("**/*.toml"),
                        *data_dir.glob("**/images.sqlite")]
        assert len(secret_files) > 2
        for path in secret_files:
            assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))
    finally:
        assert cluster.stop() == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"{pid} still running"
    assert list((data_dir / "run" / "sockets").glob("*.sock")) == []  # nodes remove theirs

    again = start_served_cluster(data_dir, nodes=4, workers=1)
    try:
        cmd = _printed_swift_command(again.output)
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        _swift(cmd, "download", "docs", "hello.txt", cwd=out_dir)
        assert (out_dir / "hello.txt").read_bytes() == src.read_bytes()
    finally:
        again.stop()


def _connected_unix_sockets(directory: Path) -> int:
    """Connected (state 03) Unix sockets bound under ``directory``, from /proc/net/unix:
    the nodes' ends of connections made to their sockets."""
    rows = Path("/proc/net/unix").read_text().splitlines()[1:]
    return sum(1 for row in rows
               if len(row.split()) >= 8 and row.split()[5] == "03"
               and row.split()[7].startswith(str(directory)))


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_refuses_a_port_in_use_and_a_changed_node_count(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "swiftlike", "serve", "--data-dir", str(tmp_path / "d"),
             "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 2
    assert "already in use" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "swiftlike", "serve", "--data-dir", str(tmp_path / "d"),
         "--nodes", "5", "--port", str(port)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "4 nodes" in done.stderr


def _node_ports(data_dir: Path) -> list[int]:
    from swiftlike.common.config import load_config

    conf = load_config(data_dir / "cluster.toml")
    return [int(node["bind_port"]) for node in conf["nodes"].values()]


def _swift_stat_account_bytes(cluster) -> tuple[str, str]:
    from swiftclient.client import Connection

    conn = Connection(authurl=cluster.auth_url, user=cluster.user, key=cluster.key,
                      retries=0, timeout=10)
    try:
        headers = conn.head_account()
        return headers["x-account-container-count"], conn.url
    finally:
        conn.close()


def test_clusters_started_together_never_share_a_node_port(tmp_path: Path) -> None:
    """Each serve binds its nodes' ports itself and hands the sockets to the nodes, so
    two clusters created at the same moment cannot both pick 6201 (one of them would
    then talk to the other's node)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start_served_cluster, tmp_path / name, nodes=2, workers=1,
                               extra_args=["--no-daemons"]) for name in ("a", "b")]
    # both awaited before anything can fail, so one that started is always stopped
    started = [f.result() for f in futures if f.exception() is None]
    try:
        for future in futures:
            future.result()  # a start that failed fails the test, after the finally
        ports_a, ports_b = _node_ports(tmp_path / "a"), _node_ports(tmp_path / "b")
        assert len(set(ports_a + ports_b)) == 4, (ports_a, ports_b)
        from swiftclient.client import Connection

        conn = Connection(authurl=started[0].auth_url, user=started[0].user,
                          key=started[0].key, retries=0, timeout=10)
        conn.put_container("only-in-a")
        conn.close()
        assert _swift_stat_account_bytes(started[0])[0] == "1"
        assert _swift_stat_account_bytes(started[1])[0] == "0"
    finally:
        for cluster in started:
            cluster.stop()


def test_a_node_port_taken_by_another_process_is_refused(tmp_path: Path) -> None:
    """An existing cluster whose node port someone else holds does not start half-way
    (with that node down and its health check answered by the stranger)."""
    data_dir = tmp_path / "d"
    start_served_cluster(data_dir, nodes=2, workers=1, extra_args=["--no-daemons"]).stop()
    port = _node_ports(data_dir)[1]
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        done = subprocess.run(
            [sys.executable, "-m", "swiftlike", "serve", "--data-dir", str(data_dir),
             "--nodes", "2", "--port", str(free_port())],
            capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"node2's port 127.0.0.1:{port} is already in use" in done.stderr


def _kill_node1(cluster) -> int:
    """SIGKILL the cluster's first storage node; its port."""
    import os
    import signal

    node_pid = next(pid for pid in _child_pids(cluster.process.pid)
                    if "node1.toml" in Path(f"/proc/{pid}/cmdline").read_text())
    os.kill(node_pid, signal.SIGKILL)
    return _node_ports(cluster.data_dir)[0]


def test_a_dead_node_refuses_connections_until_it_is_back_on_its_port(tmp_path: Path) -> None:
    """serve holds each node's listening socket, but not while the node is down: the
    proxy must get a refusal (and go to another node at once), not a connection that
    nobody accepts. The restarted node serves on the same port."""
    import errno
    import time
    import urllib.request

    cluster = start_served_cluster(tmp_path / "d", nodes=2, workers=1,
                                   extra_args=["--no-daemons"])
    try:
        port = _kill_node1(cluster)
        refused = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not refused:
            with socket.socket() as probe:
                probe.settimeout(1)
                refused = probe.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
            time.sleep(0.02)
        assert refused, "connections to the dead node were accepted by nobody"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck",
                                            timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "node1 never came back"
                time.sleep(0.1)
    finally:
        assert cluster.stop() == 0


def test_a_node_whose_port_is_taken_while_it_is_down_waits_for_it(tmp_path: Path) -> None:
    """Someone takes the port in the second the node is down: serve says so, keeps
    trying, and restarts the node once the port is free again."""
    import time

    cluster = start_served_cluster(tmp_path / "d", nodes=2, workers=1,
                                   extra_args=["--no-daemons"])
    try:
        port = _kill_node1(cluster)
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:  # the port is free once serve has let go of the dead node's socket
            try:
                squatter.bind(("127.0.0.1", port))
                squatter.listen()
                break
            except OSError:
                assert time.monotonic() < deadline, "serve never let go of the port"
                time.sleep(0.01)
        expected = f"node1 cannot restart: its port 127.0.0.1:{port} is taken"
        deadline = time.monotonic() + 10
        while expected not in "".join(cluster.output):  # the harness collects the output
            assert time.monotonic() < deadline, "".join(cluster.output[-20:])
            time.sleep(0.1)
        squatter.close()
        deadline = time.monotonic() + 30
        while "node1" not in _listening_pids_cmdlines(port):
            assert time.monotonic() < deadline, "node1 never came back"
            time.sleep(0.1)
    finally:
        assert cluster.stop() == 0


def _listening_pids_cmdlines(port: int) -> str:
    done = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                          text=True)
    pids = [int(p) for p in __import__("re").findall(r"pid=(\d+)", done.stdout)]
    text = ""
    for pid in pids:
        try:
            text += Path(f"/proc/{pid}/cmdline").read_text()
        except FileNotFoundError:
            pass
    return text


def test_help_lists_the_commands() -> None:
    done = subprocess.run([sys.executable, "-m", "swiftlike", "--help"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0
    for word in ("serve", "node", "proxy", "replicate", "audit"):
        assert word in done.stdout


def test_a_proxy_given_a_damaged_ring_says_so_and_exits_2(swift_cluster, tmp_path: Path
                                                         ) -> None:
    """No traceback for an operator's broken ring file: one line naming it, exit 2."""
    conf = (swift_cluster.data_dir / "cluster.toml").read_text()
    ring = (swift_cluster.data_dir / "cluster.ring").read_bytes()
    damaged = tmp_path / "damaged.ring"
    damaged.write_bytes(ring[:-7] + bytes(b ^ 0xFF for b in ring[-7:]))
    lines = []
    for line in conf.splitlines():
        if line.strip().startswith("ring ="):
            line = f'ring = "{damaged}"'
        lines.append(line)
    (tmp_path / "cluster.toml").write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "-m", "swiftlike", "proxy", "--config",
                           str(tmp_path / "cluster.toml")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert str(damaged) in done.stderr and "checksum" in done.stderr
