"""metrics-server: the resource metrics API (`kubectl top`, HPA on CPU) where the cloud does not run one.

`addons.metricsServer: auto` installs it on EKS and local clusters and skips it on GKE, which runs a managed
metrics-server under its addon manager; a second copy would fight it for the `v1beta1.metrics.k8s.io` APIService.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from airflow_on_k8s.contract import KubernetesCluster
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
    install: bool
    # kind, k3d and minikube kubelets serve self-signed certificates that metrics-server cannot verify.
    kubelet_insecure_tls: bool = False
    namespace: str = "kube-system"

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
    """The metrics-server chart at its pinned version in kube-system.

    Outputs: `release` (the Helm release), `namespace`.
    """

    def __init__(
        self,
        name: str,
        args: MetricsServerArgs,
        cluster: KubernetesCluster,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("airflow-on-k8s:addons:MetricsServer", name, None, opts)
        self.namespace = args.namespace
        self.release = pinned_release(
            name,
            METRICS_SERVER_CHART,
            namespace=args.namespace,
            values=args.chart_values(),
            provider=cluster.provider,
            parent=self,
        )
        self.register_outputs({"namespace": self.namespace, "releaseStatus": self.release.status})
