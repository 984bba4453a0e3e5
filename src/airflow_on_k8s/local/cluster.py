"""A cluster that already exists and is reached through a kubeconfig context: kind, k3d, minikube, Docker Desktop.

Nothing is created in a cloud. The Kubernetes provider is bound to the kubeconfig file and context the stack
names (`local.kubeconfigPath`, `local.context`); empty values mean the user's default kubeconfig
($KUBECONFIG or ~/.kube/config) and its current context, resolved by the provider itself at deploy time.

The task pool is whichever nodes carry the TASK_POOL label (and taint). On a local cluster you mark them by hand:

    python -m airflow_on_k8s.local.cluster kind-worker2

prints the kubectl commands that label and taint that node with the values from airflow_on_k8s/task_pool.py.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from airflow_on_k8s.contract import NoWorkloadIdentity, register_annotated_outputs
from airflow_on_k8s.config import StackConfig
from airflow_on_k8s.task_pool import TASK_POOL, TaskPoolSelector


@dataclass(frozen=True)
class LocalClusterArgs:
    """Which kubeconfig file and context to use; empty strings mean the user's defaults."""

    cluster_name: str
    """A name for the cluster, reported as `cluster_name` (informational: `context` decides which cluster is used)."""
    context: str = ""
    """The kubeconfig context to use, e.g. kind-airflow; "" is the kubeconfig's current context."""
    kubeconfig_path: str = ""
    """Path of the kubeconfig file ("~" is expanded); "" is $KUBECONFIG, else ~/.kube/config, as kubectl does."""

    @classmethod
    def from_stack(cls, config: StackConfig) -> LocalClusterArgs:
        local = config.local
        return cls(
            cluster_name=config.cluster_name,
            context=local.context if local else "",
            kubeconfig_path=local.kubeconfig_path if local else "",
        )


def task_pool_node_commands(node: str, selector: TaskPoolSelector = TASK_POOL) -> list[str]:
    """kubectl commands that put `node` into the task pool (label) and keep other pods off it (taint)."""
    return [
        f"kubectl label node {node} {selector.label_key}={selector.label_value} --overwrite",
        f"kubectl taint node {node} {selector.taint_key}={selector.taint_value}:{selector.taint_effect} --overwrite",
    ]


class LocalCluster(pulumi.ComponentResource):
    """The `KubernetesCluster` contract for an existing cluster (no cloud resources, no cloud identity)."""

    cloud: str = "local"
    """"local" (Python-only: the same for every instance)."""
    cluster_name: pulumi.Output[str]
    """`args.cluster_name` (informational; the context decides the real cluster)."""
    kubeconfig: pulumi.Output[str]
    """The kubeconfig file's text as a secret, or "" when there is no file on this machine."""
    context: pulumi.Output[str]
    """The kubeconfig context the provider uses; "" is the kubeconfig's current context."""
    provider: k8s.Provider
    """A Kubernetes provider bound to that kubeconfig and context (Python-only)."""
    task_pool: TaskPoolSelector
    """TASK_POOL; label and taint the nodes meant for tasks, see `task_pool_node_commands` (Python-only)."""
    workload_identity: NoWorkloadIdentity
    """`NoWorkloadIdentity`, so task logs stay in the cluster (Python-only)."""

    def __init__(self, name: str, args: LocalClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("airflow-on-k8s:local:LocalCluster", name, None, opts)
        self.cluster_name = pulumi.Output.from_input(args.cluster_name)
        self.task_pool = TASK_POOL
        self.workload_identity = NoWorkloadIdentity()
        self.kubeconfig = pulumi.Output.secret(_read_kubeconfig(args.kubeconfig_path))
        # Only what the stack sets is passed: the provider's own default resolution ($KUBECONFIG, then
        # ~/.kube/config, current context) is what kubectl does, and works on a machine with no file yet.
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=os.path.expanduser(args.kubeconfig_path) if args.kubeconfig_path else None,
            context=args.context or None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.context = pulumi.Output.from_input(args.context)
        register_annotated_outputs(self)


def _read_kubeconfig(path: str) -> str:
    """The kubeconfig text, if this machine has it (an offline preview or CI run usually does not)."""
    if path:
        candidates = [path]
    else:
        candidates = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p] + ["~/.kube/config"]
    for candidate in candidates:
        file = Path(os.path.expanduser(candidate))
        if file.is_file():
            return file.read_text()
    return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the kubectl commands that make a node a task-pool node.")
    parser.add_argument("nodes", nargs="+", help="node names, e.g. kind-worker2")
    for node in parser.parse_args(argv).nodes:
        print("\n".join(task_pool_node_commands(node)))


if __name__ == "__main__":
    main()
