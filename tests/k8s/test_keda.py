"""Real KEDA on the real control plane: KEDA's operator and metrics API server (built from their Go module) behind
the aggregated external-metrics API, a ScaledObject with the Airflow chart's postgresql trigger on a Deployment,
and the real HPA controller (kube-controller-manager) scaling it when task_instance rows appear in a real
PostgreSQL. See airflow_on_k8s.testing.keda for how the APIService reaches the adapter on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from airflow_on_k8s.airflow.component import scaling_values  # noqa: E402
from airflow_on_k8s.testing.controlplane import (  # noqa: E402
    ControlPlane,
    binary,
    kwok_node,
    start_kwok,
)
from airflow_on_k8s.testing.keda import (  # noqa: E402
    EXTERNAL_METRICS_APISERVICE,
    FrontProxy,
    airflow_worker_scaled_object,
    apiservice_available,
    start_keda,
)
from airflow_on_k8s.testing.local_services import postgres_server  # noqa: E402
from airflow_on_k8s.testing.waiting import wait_for  # noqa: E402

NS = "airflow"
WORKER = "airflow-worker"
WORKER_CONCURRENCY = 2
MAX_WORKERS = 4


def get_json(plane, path: str, **query) -> dict:
    """GET ``path`` from the apiserver as the admin user (what a client of the aggregated API sees)."""
    cfg = plane.client_configuration()
    context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    context.load_cert_chain(cfg.cert_file, cfg.key_file)
    url = f"{plane.server}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def keda_plane():
    # `make test` builds these (hack/controlplane/build.sh); a missing one fails here with the command to run.
    binary("keda", "keda-operator")
    binary("keda", "keda-adapter")
    binary("kubernetes", "kube-apiserver")
    with tempfile.TemporaryDirectory(prefix="front-proxy-") as tmp:
        front_proxy = FrontProxy(Path(tmp))
        plane = ControlPlane(extra_apiserver_args=front_proxy.apiserver_args())
        plane.start()
        try:
            yield plane
        finally:
            plane.stop()


@pytest.fixture(scope="module")
def api(keda_plane):
    api = keda_plane.api_client()
    yield api
    api.close()


@pytest.fixture(scope="module")
def keda(keda_plane, api):
    with start_kwok(keda_plane):
        client.CoreV1Api(api).create_node(kwok_node("kwok-node-0"))
        with start_keda(keda_plane) as running:
            yield running


@pytest.fixture(scope="module")
def postgres():
    with postgres_server("airflow") as server:
        import psycopg2

        conn = psycopg2.connect(server.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            # The columns of Airflow's task_instance the chart's query reads.
            cur.execute("CREATE TABLE task_instance (task_id text, state varchar(20), queue varchar(256))")
        server.conn = conn
        yield server
        conn.close()


@pytest.fixture(scope="module")
def namespace(api):
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))

    def has_default_sa():
        with contextlib.suppress(ApiException):
            return core.read_namespaced_service_account("default", NS)

    wait_for(has_default_sa, what=f"ServiceAccount {NS}/default")
    return NS


def test_external_metrics_apiservice_available_through_aggregator(keda_plane, api, keda):
    available, message = apiservice_available(api)
    assert available, message
    # Discovery through the aggregator reaches the adapter on 127.0.0.1.
    body = get_json(keda_plane, "/apis/external.metrics.k8s.io/v1beta1")
    assert body["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    print(f"KEDA {keda.version} up in {keda.start_seconds:.1f} s; {EXTERNAL_METRICS_APISERVICE} Available")


def test_loopback_endpoints_are_refused_so_the_route_is_an_external_name_service(api, keda):
    """Why testing.keda routes the APIService through an ExternalName Service: the apiserver refuses the
    loopback address in an EndpointSlice (and in Endpoints), any 127.x, so a ClusterIP Service cannot point
    at the adapter."""
    discovery = client.DiscoveryV1Api(api)
    core = client.CoreV1Api(api)
    for address in ("127.0.0.1", "127.0.0.2"):
        with pytest.raises(ApiException) as refused:
            discovery.create_namespaced_endpoint_slice("keda", {
                "metadata": {"name": f"loopback-{address.replace('.', '-')}"}, "addressType": "IPv4",
                "endpoints": [{"addresses": [address]}], "ports": [{"name": "https", "port": keda.adapter_port}]})
        assert refused.value.status == 422 and "loopback" in refused.value.body
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_endpoints("keda", {
                "metadata": {"name": f"loopback-{address.replace('.', '-')}"},
                "subsets": [{"addresses": [{"ip": address}], "ports": [{"port": keda.adapter_port}]}]})
        assert refused.value.status == 422 and "loopback" in refused.value.body
    service = core.read_namespaced_service("keda-metrics-apiserver", "keda")
    assert (service.spec.type, service.spec.external_name) == ("ExternalName", "127.0.0.1")


def _worker_deployment(dsn_url: str) -> dict:
    labels = {"component": "worker", "release": "airflow"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": WORKER, "namespace": NS},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": "worker", "image": "apache/airflow:fake",
                        # The chart's worker env var the trigger's connectionFromEnv names; KEDA reads it from
                        # the scale target's pod template.
                        "env": [{"name": "AIRFLOW_CONN_AIRFLOW_DB", "value": dsn_url}],
                    }],
                },
            },
        },
    }


def _replicas(apps) -> int:
    return apps.read_namespaced_deployment(WORKER, NS).spec.replicas or 0


def test_scaled_object_postgresql_trigger_drives_real_hpa(keda_plane, api, keda, postgres, namespace):
    apps = client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    autoscaling = client.AutoscalingV2Api(api)
    apps.create_namespaced_deployment(NS, _worker_deployment(postgres.url(driver="postgresql")))

    # What the program's keda mode deploys (scaling_values), rendered as the chart's ScaledObject template does.
    values = scaling_values(SimpleNamespace(scaling_mode="keda", min_workers=0, max_workers=MAX_WORKERS))["keda"]
    # Changed for the test only: cooldownPeriod 120 -> 10 s, so that scale-to-zero is seen within the test.
    values = {**values, "cooldownPeriod": 10}
    scaled_object = airflow_worker_scaled_object(WORKER, NS, WORKER, values, WORKER_CONCURRENCY)
    custom.create_namespaced_custom_object("keda.sh", "v1alpha1", NS, "scaledobjects", scaled_object)

    # KEDA creates the HPA (keda-hpa-<name>) on the external metric, AverageValue target 1.
    hpa = wait_for(lambda: next(iter(autoscaling.list_namespaced_horizontal_pod_autoscaler(NS).items), None),
                   timeout=60, what="the HPA KEDA creates")
    assert hpa.metadata.name == f"keda-hpa-{WORKER}"
    assert hpa.spec.max_replicas == MAX_WORKERS and hpa.spec.min_replicas == 1
    metric = hpa.spec.metrics[0]
    assert metric.type == "External" and metric.external.target.type == "AverageValue"
    assert hpa.spec.behavior.scale_down.stabilization_window_seconds == 120

    # Nothing queued: stays at zero.
    time.sleep(8)
    assert _replicas(apps) == 0

    # 5 queued/running tasks, concurrency 2 -> ceil(5/2) = 3 workers (plus rows in other states, which the query
    # must ignore).
    began = time.monotonic()
    with postgres.conn.cursor() as cur:
        cur.executemany("INSERT INTO task_instance VALUES (%s, %s, %s)",
                        [(f"t{i}", "queued" if i % 2 else "running", "default") for i in range(5)]
                        + [("done", "success", "default"), ("retry", "up_for_retry", "default"),
                           ("sched", "scheduled", "default")])
    wait_for(lambda: _replicas(apps) == 3, timeout=90, poll_s=1, what="the HPA scaling the workers to 3")
    scale_up_s = time.monotonic() - began

    # The 1 -> 3 step is the HPA controller's (KEDA itself only activates 0 -> 1): its status says so.
    # Its status is that of the sync that rescaled (current 1 = KEDA's activation, desired 3), written just after
    # the scale itself.
    hpa = wait_for(lambda: (h := autoscaling.read_namespaced_horizontal_pod_autoscaler(f"keda-hpa-{WORKER}", NS))
                   .status.last_scale_time and h.status.desired_replicas == 3 and h, timeout=30,
                   what="the HPA's status: rescaled, desired 3")
    core = client.CoreV1Api(api)
    def rescales() -> list[str]:
        return [e.message for e in core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name=keda-hpa-{WORKER}").items if e.reason == "SuccessfulRescale"]

    # (Waiting for the size-3 event itself: an earlier step, if the HPA ever made one, is recorded first.)
    wait_for(lambda: any("New size: 3" in m for m in rescales()), timeout=30,
             what="the HPA controller's SuccessfulRescale event to 3")
    assert any("New size: 3" in m and "external metric" in m for m in rescales()), rescales()
    print(f"HPA controller: {rescales()}")
    # The external metric, read the way the HPA controller reads it (through the aggregator).
    name = hpa.spec.metrics[0].external.metric.name
    selector = f"scaledobject.keda.sh/name={WORKER}"
    body = get_json(keda_plane, f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NS}/{name}",
                    labelSelector=selector)
    assert body["items"][0]["value"] in ("3", 3), body
    print(f"0 -> 3 workers {scale_up_s:.1f} s after the rows appeared")

    # The queue drains: KEDA scales to zero after cooldownPeriod (the HPA's floor is 1).
    began = time.monotonic()
    with postgres.conn.cursor() as cur:
        cur.execute("UPDATE task_instance SET state = 'success'")
    wait_for(lambda: _replicas(apps) == 0, timeout=90, poll_s=1, what="KEDA scaling the workers to zero")
    print(f"3 -> 0 workers {time.monotonic() - began:.1f} s after the queue drained")
