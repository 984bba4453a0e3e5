"""Real metrics-server (built from ``sigs.k8s.io/metrics-server`` by ``hack/controlplane/build.sh``) against a
:class:`~airflow_on_k8s.testing.controlplane.ControlPlane`, serving the aggregated ``v1beta1.metrics.k8s.io``.

It is wired like :func:`airflow_on_k8s.testing.keda.start_keda` (read that module's docstring for the route): an
ExternalName Service ``kube-system/metrics-server`` -> 127.0.0.1, the APIService on the server's port, a serving
certificate for ``metrics-server.kube-system.svc``, the front-proxy flags on the apiserver, and the identity
``system:serviceaccount:kube-system:metrics-server`` bound the way metrics-server's own manifests
(``manifests/base/rbac.yaml`` of the module, read from the Go module cache) bind it.

What it scrapes: each Node's kubelet resource-metrics endpoint (``/metrics/resource``) at the Node's
``InternalIP`` and, with ``--kubelet-use-node-status-port`` (as upstream's manifest), the port in the Node's
``status.daemonEndpoints.kubeletEndpoint``. :class:`airflow_on_k8s.testing.kubelet_metrics.MetricsNodeAgent`
serves that endpoint with the real CPU and memory of each pod's processes (its docstring says how); with a plain
NodeAgent (or kwok) the API is registered and Available, and lists no metrics.
:mod:`airflow_on_k8s.testing.hpa` starts both together for the HPA on CPU.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from airflow_on_k8s.testing.controlplane import (
    ControlPlane,
    ControlPlaneError,
    Process,
    http_ok,
    insecure_context,
    binary,
    go_mod_cache,
    pinned_version,
)
from airflow_on_k8s.testing.keda import _CA, _apply, _wait, apiservice_available
from airflow_on_k8s.testing.local_services import free_port

NAMESPACE = "kube-system"
SERVICE = "metrics-server"
METRICS_APISERVICE = "v1beta1.metrics.k8s.io"


def metrics_server_manifests() -> list[dict]:
    """metrics-server's ServiceAccount and RBAC as it ships them (manifests/base/rbac.yaml of the pinned module)."""
    path = go_mod_cache() / f"sigs.k8s.io/metrics-server@{pinned_version('metrics-server')}" / "manifests" / "base"
    if not (path / "rbac.yaml").is_file():
        raise ControlPlaneError(f"{path}/rbac.yaml not found: `make k8s-binaries` downloads the module")
    return [doc for doc in yaml.safe_load_all((path / "rbac.yaml").read_text()) if doc]


@dataclass
class MetricsServer:
    process: Process
    port: int
    version: str
    start_seconds: float


@contextlib.contextmanager
def start_metrics_server(control_plane: ControlPlane, metric_resolution: str = "15s",
                         timeout: float = 90, extra_args: tuple[str, ...] = ()) -> Iterator[MetricsServer]:
    """Install metrics-server's RBAC, start it, register ``v1beta1.metrics.k8s.io`` and wait until Available.

    ``metric_resolution``: how often it scrapes every node (upstream's manifest: 15s; at least 10s, and more than
    ``--kubelet-request-timeout``/0.9, default 10s: pass ``extra_args=("--kubelet-request-timeout=5s",)`` with 10s).
    """
    began = time.monotonic()
    exe = binary("metrics-server", "metrics-server")
    api = control_plane.api_client()
    work: Path = control_plane.work_dir / "metrics-server"
    work.mkdir(parents=True, exist_ok=True)
    for manifest in metrics_server_manifests():
        _apply(api, manifest)
    ca = _CA(work, "metrics-server-test-ca")
    ca.issue(work / "tls.crt", work / "tls.key", SERVICE, server=True, client=False,
             hosts=("127.0.0.1", "localhost", f"{SERVICE}.{NAMESPACE}.svc", f"{SERVICE}.{NAMESPACE}.svc.cluster.local"))
    kubeconfig = control_plane.issue_user(f"system:serviceaccount:{NAMESPACE}:{SERVICE}",
                                          ("system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"))
    port = free_port()
    process = Process(
        "metrics-server",
        [str(exe), "--bind-address=127.0.0.1", f"--secure-port={port}",
         f"--tls-cert-file={work / 'tls.crt'}", f"--tls-private-key-file={work / 'tls.key'}", f"--cert-dir={work}",
         f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
         f"--authorization-kubeconfig={kubeconfig}",
         # upstream's manifest, except TLS to the kubelet: the node agent's endpoint has a self-signed certificate.
         "--kubelet-preferred-address-types=InternalIP", "--kubelet-use-node-status-port",
         "--kubelet-insecure-tls", f"--metric-resolution={metric_resolution}", *extra_args],
        control_plane.log_dir / "metrics-server.log",
        # /readyz waits for a first successful scrape; /livez says the server is up.
        lambda: http_ok(f"https://127.0.0.1:{port}/livez", insecure_context()),
    )
    control_plane.processes.append(process)
    process.start()
    try:
        process.wait_healthy(timeout)
        _apply(api, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                     "spec": {"type": "ExternalName", "externalName": "127.0.0.1",
                              "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}})
        _apply(api, {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                     "metadata": {"name": METRICS_APISERVICE},
                     "spec": {"service": {"name": SERVICE, "namespace": NAMESPACE, "port": port},
                              "group": "metrics.k8s.io", "version": "v1beta1",
                              "caBundle": base64.b64encode(ca.cert_pem).decode(),
                              "groupPriorityMinimum": 100, "versionPriority": 100}})
        _wait(lambda: apiservice_available(api, METRICS_APISERVICE)[0], timeout,
              f"APIService {METRICS_APISERVICE} Available")
        yield MetricsServer(process, port, pinned_version("metrics-server"), time.monotonic() - began)
    except ControlPlaneError as exc:
        raise ControlPlaneError(f"{exc}\n{process.tail()}") from None
    finally:
        process.stop()
        api.close()
