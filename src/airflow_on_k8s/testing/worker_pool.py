"""The chart's Celery worker Deployment on a :class:`~airflow_on_k8s.testing.controlplane.ControlPlane`, with real
`airflow celery worker` processes for its pods (a :class:`~airflow_on_k8s.testing.node_agent.NodeAgent`) and the
worker autoscaler's RBAC exactly as the Pulumi program writes it. Shared by the real-control-plane tests
(tests/autoscaler/test_real_k8s.py) and the benchmark (`python -m bench.scaling --real-k8s`)::

    workers = WorkerPool(plane.api_client(), plane, "airflow-1", grace_s=20, env=airflow_env,
                         command=airflow_worker_command(2), log_dir=work / "pods")
    kubeconfig = workers.token_kubeconfig(work / "autoscaler.kubeconfig")   # the program's ServiceAccount
    ...
    workers.close()                                                          # agent stopped, namespace deleted
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from airflow_on_k8s.airflow.component import WORKER_POD_LABELS
from airflow_on_k8s.airflow.worker_autoscaler import worker_label_selector
from airflow_on_k8s.testing.node_agent import NodeAgent, ProcessSpec
from airflow_on_k8s.testing.waiting import wait_for  # noqa: F401  (also this module's API, for the benchmark)

WORKER_DEPLOYMENT = "airflow-worker"
AGENT_NODE_LABELS = {"airflow-on-k8s/test-node": "agent"}
AUTOSCALER_PARENT = "airflow-on-k8s:scaling:WorkerAutoscaler::worker-autoscaler"


def _manifest(value: Any) -> Any:
    """Recorded inputs as a manifest: Pulumi secrets unwrapped, whole-number floats (protobuf) back to ints."""
    if isinstance(value, dict):
        if set(value) == {"secret"}:
            return _manifest(value["secret"])
        return {k: _manifest(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_manifest(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def program_autoscaler_rbac(stack: str = "local") -> dict[str, dict]:
    """The worker autoscaler's ServiceAccount, Role and RoleBinding as the program writes them for `stack`
    (the program run under the mock runtime; the current directory must be the Pulumi project)."""
    from airflow_on_k8s.testing.mock_runtime import run_program

    found = {}
    for r in run_program(stack).resources:
        if r.parent == AUTOSCALER_PARENT:
            body = _manifest(r.inputs)
            if body["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
                found[body["kind"]] = body
    if set(found) != {"ServiceAccount", "Role", "RoleBinding"}:
        raise RuntimeError(f"the program's autoscaler RBAC not found for stack {stack}: {sorted(found)}")
    return found


def worker_deployment(namespace: str, grace_s: int, *, env: list[dict] | None = None,
                      resources: dict | None = None, name: str = WORKER_DEPLOYMENT) -> dict:
    """The chart's Celery worker Deployment as far as the autoscalers and the controllers see it: its name, the
    chart's worker pod labels, the grace period, the chart's rolling-update strategy; `env` (e.g. the chart's
    AIRFLOW_CONN_AIRFLOW_DB, which KEDA's trigger reads from the pod template) and `resources` (CPU requests, which
    the HPA's Utilization target divides by) when a mode needs them."""
    container: dict[str, Any] = {"name": "worker", "image": "apache/airflow:test"}
    if env:
        container["env"] = env
    if resources:
        container["resources"] = resources
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(WORKER_POD_LABELS)},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": dict(WORKER_POD_LABELS)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "50%"}},
            "template": {
                "metadata": {"labels": dict(WORKER_POD_LABELS)},
                "spec": {
                    "terminationGracePeriodSeconds": grace_s,
                    "automountServiceAccountToken": False,
                    "nodeSelector": dict(AGENT_NODE_LABELS),
                    "containers": [container],
                },
            },
        },
    }  # fmt: skip


class WorkerPool:
    """A namespace with the program's autoscaler RBAC, the worker Deployment and a node agent running its pods.

    `command(pod name)` is the worker's argv (e.g. airflow_worker_command(...)), run with `env`; pods of other
    namespaces, or not owned by a ReplicaSet, run nothing. `nodes`: node name -> labels (two agent nodes by default).
    """

    def __init__(self, api: client.ApiClient, control_plane, namespace: str, grace_s: int, *, env: dict[str, str],
                 command: Callable[[str], list[str]], log_dir: Path, nodes: dict[str, dict[str, str]] | None = None,
                 deployment_env: list[dict] | None = None, resources: dict | None = None,
                 rbac: dict[str, dict] | None = None, agent_factory=NodeAgent):
        self.control_plane = control_plane
        self.namespace = namespace
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.core.create_namespace({"metadata": {"name": namespace}})
        objects = rbac or program_autoscaler_rbac()
        rbac_api = client.RbacAuthorizationV1Api(api)
        sa = copy.deepcopy(objects["ServiceAccount"])
        sa["metadata"]["namespace"] = namespace
        self.core.create_namespaced_service_account(namespace, sa)
        for kind, create in (("Role", rbac_api.create_namespaced_role),
                             ("RoleBinding", rbac_api.create_namespaced_role_binding)):
            body = copy.deepcopy(objects[kind])
            body["metadata"]["namespace"] = namespace
            for subject in body.get("subjects", []):
                subject["namespace"] = namespace
            create(namespace, body)
        self.service_account = sa["metadata"]["name"]
        self.apps.create_namespaced_deployment(
            namespace, worker_deployment(namespace, grace_s, env=deployment_env, resources=resources))
        self._command = command
        nodes = nodes or {f"worker-node-{i}": dict(AGENT_NODE_LABELS) for i in (1, 2)}
        self.agent = agent_factory(api, nodes, self._runner, log_dir, base_env=env)
        self.agent.start()

    def _runner(self, pod: client.V1Pod) -> ProcessSpec | None:
        # Celery workers for the Deployment's pods; any other pod (a KubernetesExecutor-like pod) runs nothing.
        if pod.metadata.namespace != self.namespace or not pod.metadata.owner_references:
            return None
        return ProcessSpec(self._command(pod.metadata.name))

    def scale_to(self, replicas: int, timeout: float = 180) -> None:
        """Set the worker count by hand and wait until that many Celery worker processes run."""
        self.apps.patch_namespaced_deployment_scale(WORKER_DEPLOYMENT, self.namespace, {"spec": {"replicas": replicas}})
        wait_for(lambda: len(self.agent.processes()) == replicas
                 and len([p for p in self.live_pods() if p.metadata.owner_references]) == replicas, timeout,
                 f"{replicas} worker pods running")

    def token_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig holding a token of the program's ServiceAccount (a TokenRequest, as the kubelet mounts)."""
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
        token = self.core.create_namespaced_service_account_token(self.service_account, self.namespace, request).status.token
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: test\n  cluster:\n    server: {self.control_plane.server}\n"
            f"    certificate-authority: {self.control_plane.pki.ca.cert}\n"
            f"users:\n- name: sa\n  user:\n    token: {token}\n"
            "contexts:\n- name: test\n  context:\n    cluster: test\n    user: sa\n"
            f"    namespace: {self.namespace}\ncurrent-context: test\n"
        )
        return path

    def all_pods(self) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=worker_label_selector()).items

    def live_pods(self) -> list[client.V1Pod]:
        return [p for p in self.all_pods() if p.metadata.deletion_timestamp is None]

    def replicas(self) -> int:
        # The API omits a zero (omitempty), which the client reads as None.
        return self.apps.read_namespaced_deployment_scale(WORKER_DEPLOYMENT, self.namespace).spec.replicas or 0

    def running_workers(self) -> int:
        return len(self.agent.processes())

    def diagnostics(self) -> str:
        pods = self.core.list_namespaced_pod(self.namespace).items
        return "\n".join([
            f"replicas={self.replicas()} terminations={self.agent.terminations} agent errors={self.agent.errors}",
            *(f"pod {p.metadata.name} node={p.spec.node_name} phase={p.status.phase} deleting={p.metadata.deletion_timestamp}"
              f" annotations={p.metadata.annotations}" for p in pods),
        ])

    def close(self) -> None:
        self.agent.stop()
        try:
            self.core.delete_namespace(self.namespace)
        except ApiException:
            pass
