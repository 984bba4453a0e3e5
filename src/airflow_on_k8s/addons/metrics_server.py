"""metrics-server: the resource metrics API (`kubectl top`, HPA on CPU) where the cloud does not run one.

`addons.metricsServer: auto` installs it on EKS and local clusters and skips it on GKE, which runs a managed
metrics-server under its addon manager; a second copy would fight it for the `v1beta1.metrics.k8s.io` APIService.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from airflow_on_k8s.contract import KubernetesCluster, register_annotated_outputs
from airflow_on_k8s.config import StackConfig
from airflow_on_k8s._helm import pinned_release
from airflow_on_k8s.versions import METRICS_SERVER_CHART

# metrics-server's own sizing guidance: about 1m CPU and 2 MiB per node; these cover ~100 nodes.
RESOURCES = {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"memory": "400Mi"}}
# Chart 3.13.0 mounts an emptyDir named `tmp` (templates/deployment.yaml, values.yaml `tmpVolume`). The Cluster
# Autoscaler keeps a node whose pods have an emptyDir unless the pod lists it in this annotation
# (cluster-autoscaler-1.34.1 FAQ.md, "What types of pods can prevent CA from removing a node?").
POD_ANNOTATIONS = {"cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes": "tmp"}


@dataclass(frozen=True)
class MetricsServerArgs:
    """Whether to install metrics-server, and how it reaches the kubelets; its chart version and sizing are this
    module's and not settable."""

    install: bool = True
    """Whether the platform installs it; `MetricsServer` itself always installs. False where the cloud runs its own
    (GKE): a second copy would fight it for the `v1beta1.metrics.k8s.io` APIService."""
    kubelet_insecure_tls: bool = False
    """Skip verifying the kubelets' serving certificates: needed on kind, k3d and minikube, whose kubelets serve
    self-signed ones; leave False on a cloud."""
    namespace: str = "kube-system"
    """The namespace it runs in (it must exist); kube-system, where the resource metrics API usually lives."""

    @classmethod
    def from_stack(cls, config: StackConfig) -> MetricsServerArgs:
        setting = config.addons.metrics_server
        install = setting == "install" or (setting == "auto" and config.cloud != "gcp")
        return cls(install=install, kubelet_insecure_tls=config.cloud == "local")

    def chart_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {"resources": RESOURCES, "podAnnotations": POD_ANNOTATIONS}
        if self.kubelet_insecure_tls:
            values["args"] = ["--kubelet-insecure-tls"]
        return values


class MetricsServer(pulumi.ComponentResource):
    """The metrics-server chart at its pinned version in kube-system."""

    namespace: pulumi.Output[str]
    """The namespace metrics-server runs in."""
    release_status: pulumi.Output[str]
    """The Helm release's status, e.g. "deployed"."""
    release: k8s.helm.v3.Release
    """The Helm release (Python-only)."""

    def __init__(
        self,
        name: str,
        args: MetricsServerArgs,
        cluster: KubernetesCluster,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("airflow-on-k8s:addons:MetricsServer", name, None, opts)
        self.namespace = pulumi.Output.from_input(args.namespace)
        self.release = pinned_release(
            name,
            METRICS_SERVER_CHART,
            namespace=args.namespace,
            values=args.chart_values(),
            provider=cluster.provider,
            parent=self,
        )
        # None until deployed (a preview knows no status).
        self.release_status = self.release.status.apply(lambda status: status.status if status else None)
        register_annotated_outputs(self)
