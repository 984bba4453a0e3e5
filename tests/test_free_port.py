"""free_port, which every local server of the tests and the benchmark (etcd, kube-apiserver, PostgreSQL, Redis,
KEDA, ...) takes its port from: a CI run is lost if a server finds its port taken."""

from __future__ import annotations

import socket

from airflow_on_k8s.testing import local_services
from airflow_on_k8s.testing.local_services import free_port


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_ports_come_from_below_the_range_outgoing_connections_use_and_never_repeat():
    low, _ = local_services._ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(p < low for p in ports), "a port in the ephemeral range can be taken by any client's connect()"
    assert all(_bindable(p) for p in ports)


def test_a_port_someone_holds_is_never_handed_out(monkeypatch):
    start = next(p for p in range(16000, 17000) if all(_bindable(p + i) for i in range(3)))
    monkeypatch.setattr(local_services, "_LOWEST_PORT", start)
    monkeypatch.setattr(local_services, "_ephemeral_range", lambda: (start + 3, 60999))
    monkeypatch.setattr(local_services, "_handed_out", set())
    listening, connected_to = socket.socket(), socket.socket()
    try:
        listening.bind(("127.0.0.1", start))
        listening.listen()
        connected_to.bind(("127.0.0.1", start + 1))  # bound, as a client socket's local port is
        assert free_port() == start + 2
        # The window is used up: the kernel chooses (a port of its ephemeral range), still not a repeat.
        assert free_port() not in {start, start + 1, start + 2}
    finally:
        listening.close()
        connected_to.close()
