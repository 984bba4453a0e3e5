"""Fixtures of the control-plane tier (a pytest plugin the root conftest loads, so the autoscaler's tests share
them): one real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
per test session, and kwok making the Nodes labelled ``type=kwok`` Ready. Binaries come from
``make k8s-binaries``; see airflow_on_k8s.testing.controlplane for the environment overrides.
When a test here fails, the tail of every control-plane log is attached to its report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from airflow_on_k8s.testing.controlplane import ControlPlane, kwok_node, start_kwok

KWOK_SELECTOR = "type=kwok"

_running: list[ControlPlane] = []
_started: list[str] = []


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    plane = ControlPlane()
    plane.start()
    _running.append(plane)
    _started.append(f"control plane {plane.version} (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) "
                    f"started in {plane.start_seconds:.1f} s")
    try:
        yield plane
    finally:
        _running.remove(plane)
        plane.stop()


@pytest.fixture(scope="session")
def api(control_plane):
    client = control_plane.api_client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def kwok(control_plane) -> Iterator[None]:
    with start_kwok(control_plane, node_selector=KWOK_SELECTOR):
        yield


@pytest.fixture(scope="session")
def kwok_nodes(api, kwok) -> list[str]:
    """Two kwok-managed Nodes, Ready."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    names = ["kwok-node-0", "kwok-node-1"]
    for name in names:
        core.create_node(kwok_node(name))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = {
            node.metadata.name
            for node in core.list_node(label_selector=KWOK_SELECTOR).items
            if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        }
        if ready >= set(names):
            return names
        time.sleep(0.2)
    raise AssertionError(f"kwok nodes not Ready after 30 s: {ready}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _running:
        report.sections.append(("control plane logs", _running[0].log_tails()))


def pytest_terminal_summary(terminalreporter):
    for line in _started:
        terminalreporter.write_line(line)


def pytest_collection_modifyitems(items):
    # Everything under tests/k8s runs on the control plane: `make test-k8s` selects it (and the autoscaler's
    # tests on it) with `-m k8s`.
    for item in items:
        if "tests/k8s/" in item.nodeid:
            item.add_marker(pytest.mark.k8s)
