"""The namespace KubernetesPodOperator pods run in, and the only place Airflow may create pods.

- A Role with exactly what the cncf.kubernetes provider's KubernetesPodOperator calls (checked against
  provider 10.25: operators/pod.py, utils/pod_manager.py, hooks/kubernetes.py):
  pods create/get/list/watch/patch/delete (launch, wait, label as checked, clean up), pods/log get (stream
  logs), pods/exec create+get (read the XCom sidecar's result; the stream client opens a websocket with GET,
  which API servers before 1.35 authorise as `get` and later ones as `create`), events get/list/watch
  (the pod's events are logged while it starts).
- RoleBindings of that Role to the Celery worker's ServiceAccount and the triggerer's (deferrable KPO tasks
  are watched from the triggerer), both in the Airflow namespace. Nothing is granted anywhere else.
- A LimitRange so every task pod has requests even when the DAG author set none (the Cluster Autoscaler sizes
  task nodes from requests), and a ResourceQuota that caps the namespace at what the task pool can hold.
- Task pods run arbitrary images, so the namespace is closed by default: NetworkPolicies deny all ingress and
  allow egress only to kube-dns and outside the private ranges (the internet, not Airflow's database or
  Redis, not the cluster, not the VPC), plus `airflow.taskEgressCidrs`; Pod Security Standards `baseline`
  (airflow_on_k8s/airflow/network_policies.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from airflow_on_k8s.contract import KubernetesCluster, register_annotated_outputs
from airflow_on_k8s.config import AirflowConfig, StackConfig
from airflow_on_k8s.airflow.network_policies import PSS_LABELS, task_namespace_policies

POD_LAUNCHER_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
]

# Applied to each container that states no requests; a DAG author overrides them with container_resources.
# No default limit: a default memory limit below a request the author did set would make the pod invalid.
DEFAULT_REQUEST = {"cpu": "250m", "memory": "256Mi"}
# The quota guards against a runaway DAG, not against normal load: per task node, room for pods as large as
# the biggest instance types the stacks use (16 vCPU, 64 GiB).
QUOTA_PER_TASK_NODE = {"pods": 110, "cpu": 16, "memory_gi": 64}


@dataclass(frozen=True)
class ServiceAccountRef:
    """A Kubernetes ServiceAccount, by namespace and name."""

    namespace: str
    """The ServiceAccount's namespace, e.g. airflow."""
    name: str
    """The ServiceAccount's name, e.g. airflow-worker."""


@dataclass(frozen=True)
class TaskNamespaceArgs:
    """The task namespace, who may launch pods in it, and how large it may grow."""

    launchers: tuple[ServiceAccountRef, ...]
    """Who may launch pods here: the ServiceAccounts of the Airflow components that run KubernetesPodOperator code
    (the Celery worker's and the triggerer's; `airflow.component.POD_LAUNCHER_SERVICE_ACCOUNTS`)."""
    task_pool_max_nodes: int
    """The task pool's most nodes; the ResourceQuota allows QUOTA_PER_TASK_NODE per node (pods, CPU, memory)."""
    name: str = AirflowConfig().task_namespace
    """The namespace's name (created by the component; a DNS label)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Extra labels on the namespace and every object in it."""
    egress_cidrs: tuple[str, ...] = ()
    """Private ranges (CIDR blocks) task pods may reach besides the internet, e.g. a database in the VPC
    (airflow.taskEgressCidrs); empty: the internet and kube-dns only."""

    @classmethod
    def from_stack(cls, config: StackConfig) -> TaskNamespaceArgs:
        from airflow_on_k8s.airflow.component import POD_LAUNCHER_SERVICE_ACCOUNTS

        return cls(
            name=config.airflow.task_namespace,
            launchers=tuple(ServiceAccountRef(config.airflow.namespace, sa) for sa in POD_LAUNCHER_SERVICE_ACCOUNTS),
            task_pool_max_nodes=config.task_pool.max_size,
            egress_cidrs=tuple(config.airflow.task_egress_cidrs),
        )

    def quota(self) -> dict[str, str]:
        n = self.task_pool_max_nodes
        return {
            "pods": str(QUOTA_PER_TASK_NODE["pods"] * n),
            "requests.cpu": str(QUOTA_PER_TASK_NODE["cpu"] * n),
            "requests.memory": f"{QUOTA_PER_TASK_NODE['memory_gi'] * n}Gi",
        }


class TaskNamespace(pulumi.ComponentResource):
    """Namespace, pod-launcher Role and bindings, LimitRange and ResourceQuota for task pods."""

    name: pulumi.Output[str]
    """The namespace task pods run in."""
    role_name: pulumi.Output[str]
    """The Role that lets the launchers run pods there."""

    def __init__(
        self,
        name: str,
        args: TaskNamespaceArgs,
        cluster: KubernetesCluster,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("airflow-on-k8s:airflow:TaskNamespace", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=cluster.provider)
        labels = {"app.kubernetes.io/part-of": "airflow", "app.kubernetes.io/component": "tasks", **args.labels}
        namespace = k8s.core.v1.Namespace(
            name, metadata=k8s.meta.v1.ObjectMetaArgs(name=args.name, labels={**labels, **PSS_LABELS}), opts=child
        )
        in_namespace = pulumi.ResourceOptions(parent=self, provider=cluster.provider, depends_on=[namespace])
        self.name = namespace.metadata.name

        def meta(suffix: str) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(name=f"airflow-{suffix}", namespace=self.name, labels=labels)

        role = k8s.rbac.v1.Role(
            f"{name}-pod-launcher",
            metadata=meta("pod-launcher"),
            rules=[k8s.rbac.v1.PolicyRuleArgs(**_snake(rule)) for rule in POD_LAUNCHER_RULES],
            opts=in_namespace,
        )
        self.role_name = role.metadata.name
        for launcher in args.launchers:
            k8s.rbac.v1.RoleBinding(
                f"{name}-pod-launcher-{launcher.name}",
                metadata=meta(f"pod-launcher-{launcher.name}"),
                role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=role.metadata.name),
                subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=launcher.name, namespace=launcher.namespace)],
                opts=in_namespace,
            )
        k8s.core.v1.LimitRange(
            f"{name}-defaults",
            metadata=meta("task-defaults"),
            spec=k8s.core.v1.LimitRangeSpecArgs(
                limits=[
                    k8s.core.v1.LimitRangeItemArgs(type="Container", default_request=DEFAULT_REQUEST)
                ]
            ),
            opts=in_namespace,
        )
        k8s.core.v1.ResourceQuota(
            f"{name}-quota",
            metadata=meta("task-quota"),
            spec=k8s.core.v1.ResourceQuotaSpecArgs(hard=args.quota()),
            opts=in_namespace,
        )
        for policy in task_namespace_policies(args.name, args.egress_cidrs, labels):
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy['metadata']['name']}",
                metadata=policy["metadata"],
                spec=policy["spec"],
                opts=in_namespace,
            )
        register_annotated_outputs(self)


def _snake(rule: dict[str, Any]) -> dict[str, Any]:
    return {"api_groups": rule["apiGroups"], "resources": rule["resources"], "verbs": rule["verbs"]}
