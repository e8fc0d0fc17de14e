"""Ports picked for unconfigured listeners stay out of the kernel's ephemeral range."""

from __future__ import annotations

import socket

from swiftlike.common.ports import ephemeral_range_start, free_port, free_ports, port_is_free


def test_free_port_is_below_the_ephemeral_range_and_bindable():
    low = ephemeral_range_start()
    seen = set()
    for _ in range(20):
        port = free_port(avoid=seen)
        assert port < low and port not in seen
        seen.add(port)
        with socket.socket() as sock:
            # as every listener of ours binds: a port whose last connection is in
            # TIME_WAIT (common after a load run) is free for them, not for a bare bind
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_port_is_free_sees_a_listener():
    with socket.socket() as sock:
        # free_port vouches for a bind with SO_REUSEADDR, as ours are (see above)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        assert not port_is_free("127.0.0.1", sock.getsockname()[1])


def test_free_ports_never_repeat_within_one_pick(monkeypatch):
    # a generator that keeps offering the same port: the second pick must skip it
    import random

    offers = iter([20001, 20001, 20001, 20002, 20001, 20003])
    monkeypatch.setattr(random.SystemRandom, "randrange", lambda self, a, b: next(offers))
    monkeypatch.setattr("swiftlike.common.ports.port_is_free", lambda host, port: True)
    monkeypatch.setattr("swiftlike.common.ports.ephemeral_range_start", lambda: 32768)
    assert free_ports(3) == [20001, 20002, 20003]
