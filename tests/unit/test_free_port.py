"""The port chooser the tests and benchmarks start their processes on: a port taken from the
kernel's ephemeral range can become an outbound connection's source port before the process
binds it, which failed CI once with 'address already in use'."""

from __future__ import annotations

import socket

from bench.procs import free_port


def _ephemeral() -> range:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        low, high = (int(part) for part in ports.read().split())
    return range(low, high + 1)


def test_ports_come_from_outside_the_ephemeral_range_and_never_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert not [port for port in ports if port in _ephemeral()]


def test_a_cluster_node_gets_its_bus_port_outside_the_range_too() -> None:
    port = free_port(bus=True)
    assert port not in _ephemeral() and port + 10000 not in _ephemeral()
    assert free_port() not in (port, port + 10000)


def test_a_port_someone_holds_is_not_handed_out() -> None:
    held = []
    try:
        for port in range(10000, _ephemeral().start, 7):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        taken = {sock.getsockname()[1] for sock in held}
        assert not {free_port() for _ in range(50)} & taken
    finally:
        for sock in held:
            sock.close()
