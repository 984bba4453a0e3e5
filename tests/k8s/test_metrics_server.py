"""Real metrics-server on the real control plane: built from its Go module, serving v1beta1.metrics.k8s.io
through the aggregator on 127.0.0.1 (the same ExternalName route as KEDA's adapter). Scraping the node agent's
kubelet endpoint, and the HPA on it: test_hpa_cpu.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytest.importorskip("kubernetes")

from airflow_on_k8s.testing.controlplane import ControlPlane, binary  # noqa: E402
from airflow_on_k8s.testing.keda import FrontProxy, apiservice_available  # noqa: E402
from airflow_on_k8s.testing.metrics_server import METRICS_APISERVICE, start_metrics_server  # noqa: E402

from .test_keda import get_json  # noqa: E402


def test_metrics_api_available_through_aggregator():
    binary("metrics-server", "metrics-server")  # built by `make test`; a missing one fails with the command to run
    with tempfile.TemporaryDirectory(prefix="front-proxy-") as tmp:
        front_proxy = FrontProxy(Path(tmp))
        with ControlPlane(extra_apiserver_args=front_proxy.apiserver_args()) as plane:
            with start_metrics_server(plane) as server:
                api = plane.api_client()
                try:
                    available, message = apiservice_available(api, METRICS_APISERVICE)
                    assert available, message
                finally:
                    api.close()
                assert get_json(plane, "/apis/metrics.k8s.io/v1beta1")["groupVersion"] == "metrics.k8s.io/v1beta1"
                assert get_json(plane, "/apis/metrics.k8s.io/v1beta1/nodes")["kind"] == "NodeMetricsList"
                print(f"metrics-server {server.version} Available in {server.start_seconds:.1f} s")
