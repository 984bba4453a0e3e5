"""Pinned versions: Helm charts, the Airflow image, and the Kubernetes versions each cloud offers.

Bump a version here and every component, stack and test picks it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class ChartRef:
    """A Helm chart pinned to one version in one repository."""

    chart: str
    version: str
    repo: str


# 9.54.0 is the first chart whose ClusterRole lets the autoscaler read resource.k8s.io (DRA) objects, which
# autoscaler 1.35 always watches; 9.55.1 defaults to autoscaler 1.35.0. 9.50.x was built for 1.33 and lacks it.
CLUSTER_AUTOSCALER_CHART = ChartRef("cluster-autoscaler", "9.55.1", "https://kubernetes.github.io/autoscaler")
METRICS_SERVER_CHART = ChartRef("metrics-server", "3.13.0", "https://kubernetes-sigs.github.io/metrics-server/")
# 2.20 is the first KEDA release tested on Kubernetes 1.35 (2.18: 1.31-1.33); see COMPONENT_KUBERNETES_SUPPORT.
KEDA_CHART = ChartRef("keda", "2.20.2", "https://kedacore.github.io/charts")
AIRFLOW_CHART = ChartRef("airflow", "1.21.0", "https://airflow.apache.org")

# The Airflow version the image runs and the tests install (requirements-dev.txt pins the same; a test checks).
AIRFLOW_VERSION = "3.3.2"
AIRFLOW_IMAGE_REPOSITORY = "apache/airflow"
AIRFLOW_IMAGE_TAG = f"{AIRFLOW_VERSION}-python3.11"

# End of standard support on EKS per Kubernetes minor: after it EKS either upgrades the cluster
# (aws.supportType STANDARD) or bills extended support, $0.60 instead of $0.10 per cluster hour (EXTENDED).
# Only minors still in standard support are listed; EKS offers exactly these. Source: the release calendar in
# docs.aws.amazon.com/eks/latest/userguide/kubernetes-versions.html (1.33 left standard support on 2026-07-29).
EKS_STANDARD_SUPPORT_ENDS: dict[str, date] = {
    "1.34": date(2026, 12, 2),
    "1.35": date(2027, 3, 27),
}

# Kubernetes minor versions each managed service offers in standard support; the config rejects others.
# Update when EKS or GKE releases or retires a version.
SUPPORTED_KUBERNETES_VERSIONS: dict[str, tuple[str, ...]] = {
    "aws": tuple(EKS_STANDARD_SUPPORT_ENDS),
    "gcp": ("1.33", "1.34", "1.35"),
    # A local cluster is whatever the kubeconfig points at; the version is informational.
    "local": ("1.33", "1.34", "1.35"),
}
# 1.34 leaves EKS standard support on 2026-12-02: a new cluster starts on the newest minor.
DEFAULT_KUBERNETES_VERSION = "1.35"

# The Cluster Autoscaler image tag follows the Kubernetes minor version (its compatibility rule). Newest
# patch of each minor among the kubernetes/autoscaler tags (cluster-autoscaler-1.34.5, -1.35.2).
CLUSTER_AUTOSCALER_IMAGE_TAGS: dict[str, str] = {
    "1.34": "v1.34.5",
    "1.35": "v1.35.2",
}


@dataclass(frozen=True)
class KubernetesRange:
    """The Kubernetes minors a pinned component is documented to support, and on which clouds it is installed."""

    oldest: str
    newest: str | None  # None: the component documents no upper bound
    clouds: tuple[str, ...]
    source: str

    def supports(self, minor: str) -> bool:
        above_oldest = _minor_key(self.oldest) <= _minor_key(minor)
        return above_oldest and (self.newest is None or _minor_key(minor) <= _minor_key(self.newest))


def _minor_key(minor: str) -> tuple[int, ...]:
    return tuple(int(part) for part in minor.split("."))


# Which Kubernetes minors each pinned component supports, per the component's own documentation; a test checks
# that every minor the config allows on a cloud is supported by every component installed there.
COMPONENT_KUBERNETES_SUPPORT: dict[str, KubernetesRange] = {
    f"KEDA {KEDA_CHART.version}": KubernetesRange(
        "1.33", "1.35", ("aws", "gcp", "local"), "keda.sh/docs/2.20/operate/cluster: 'v2.20 | v1.33 - v1.35'"
    ),
    # Installed on GKE only with addons.metricsServer: install.
    f"metrics-server chart {METRICS_SERVER_CHART.version} (app 0.8.0)": KubernetesRange(
        "1.31", None, ("aws", "gcp", "local"), "metrics-server README compatibility matrix: '0.8.x | 1.31+'"
    ),
    # One image per minor (its compatibility rule), so the range is the minors with a pinned image.
    "Cluster Autoscaler": KubernetesRange(
        min(CLUSTER_AUTOSCALER_IMAGE_TAGS, key=_minor_key),
        max(CLUSTER_AUTOSCALER_IMAGE_TAGS, key=_minor_key),
        ("aws",),
        "cluster-autoscaler/README.md: 'We recommend using Cluster Autoscaler with the Kubernetes control plane "
        "... version for which it was meant'",
    ),
}
