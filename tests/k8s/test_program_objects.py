"""The Pulumi program's own Kubernetes objects for the `local` stack, applied server-side to a real kube-apiserver
(built from its Go module), and the worker autoscaler's RBAC enforced by it.

Helm releases are not objects (their charts are not rendered here), and custom resources whose CRDs come with a
chart (KEDA's ScaledObject, the Prometheus Operator's rules) are left out: the apiserver would refuse them for a
missing CRD, which says nothing about the objects.
"""

from __future__ import annotations

import pytest
from kubernetes import client, dynamic
from kubernetes.client.rest import ApiException

from airflow_on_k8s.airflow.worker_autoscaler import APP
from airflow_on_k8s.testing.mock_runtime import RecordedResource
from tests.conftest import program_run
from tests.test_k8s_schema import kubernetes_objects, manifest

pytestmark = pytest.mark.k8s

BUILT_IN_GROUPS = ("", "apps", "rbac.authorization.k8s.io", "policy", "networking.k8s.io", "coordination.k8s.io",
                   "storage.k8s.io", "batch", "autoscaling")  # fmt: skip
FIELD_MANAGER = "pulumi-kubernetes"  # what the Pulumi provider's server-side apply names itself


def _built_in(r: RecordedResource) -> bool:
    group = r.inputs["apiVersion"].rpartition("/")[0]
    return group in BUILT_IN_GROUPS


@pytest.fixture(scope="module")
def applied(control_plane):
    """Every built-in object of the local stack, applied server-side (namespaces first) like Pulumi's provider."""
    api = control_plane.api_client()
    dyn = dynamic.DynamicClient(api)
    objects = [manifest(r.inputs) for r in kubernetes_objects(program_run("local")) if _built_in(r)]
    objects.sort(key=lambda o: o["kind"] != "Namespace")
    results = {}
    for body in objects:
        resource = dyn.resources.get(api_version=body["apiVersion"], kind=body["kind"])
        namespace = body["metadata"].get("namespace")
        applied_body = resource.server_side_apply(
            body=body, name=body["metadata"]["name"], namespace=namespace, field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )  # fmt: skip
        results[(body["kind"], namespace, body["metadata"]["name"])] = applied_body
    return api, objects, results


def test_every_object_of_the_local_stack_is_accepted_by_a_real_apiserver(applied):
    _, objects, results = applied
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "PodDisruptionBudget",
            "LimitRange", "ResourceQuota", "NetworkPolicy", "ConfigMap", "Secret"} <= kinds  # fmt: skip
    assert len(results) == len(objects)
    for key, body in results.items():
        assert body.metadata.uid, key  # stored, not only validated
    print(f"\n[program objects] {len(objects)} objects of {len(kinds)} kinds applied server-side")


def _autoscaler_client(control_plane, api: client.ApiClient, namespace: str) -> client.ApiClient:
    """A client with a token of the program's autoscaler ServiceAccount (a TokenRequest, as the kubelet mounts)."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = client.CoreV1Api(api).create_namespaced_service_account_token(APP, namespace, request).status.token
    return control_plane.token_client(token)


def _forbidden(call) -> bool:
    try:
        call()
    except ApiException as e:
        return e.status == 403
    return False


def test_the_autoscalers_role_allows_its_calls_and_nothing_more(control_plane, applied):
    api, objects, _ = applied
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == APP]
    namespace = deployment["metadata"]["namespace"]
    worker = next(a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--deployment="))
    worker_deployment = worker.split("=", 1)[1]
    apps = client.AppsV1Api(api)
    for name in (worker_deployment, "other"):
        apps.create_namespaced_deployment(namespace, {
            "metadata": {"name": name}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}},
        })  # fmt: skip
    sa = _autoscaler_client(control_plane, api, namespace)
    sa_apps, sa_core = client.AppsV1Api(sa), client.CoreV1Api(sa)
    # Its job: read and change the worker Deployment's scale, list and annotate pods, hold its Lease.
    assert sa_apps.read_namespaced_deployment_scale(worker_deployment, namespace).spec.replicas in (0, None)
    sa_apps.patch_namespaced_deployment_scale(worker_deployment, namespace, {"spec": {"replicas": 0}})
    sa_core.list_namespaced_pod(namespace)
    lease = client.V1Lease(metadata=client.V1ObjectMeta(name=next(
        a.split("=", 1)[1] for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        if a.startswith("--lease-name="))), spec=client.V1LeaseSpec(holder_identity="test", lease_duration_seconds=30))
    client.CoordinationV1Api(sa).create_namespaced_lease(namespace, lease)
    # Nothing more: no pod deletion, no other Deployment, no Secrets, nothing in another namespace.
    assert _forbidden(lambda: sa_core.delete_collection_namespaced_pod(namespace))
    assert _forbidden(lambda: sa_apps.patch_namespaced_deployment_scale("other", namespace, {"spec": {"replicas": 5}}))
    assert _forbidden(lambda: sa_core.list_namespaced_secret(namespace))
    assert _forbidden(lambda: sa_core.read_namespaced_secret("anything", namespace))
    assert _forbidden(lambda: sa_apps.delete_namespaced_deployment(worker_deployment, namespace))
    assert _forbidden(lambda: sa_core.list_namespaced_pod("default"))
