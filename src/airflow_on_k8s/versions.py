"""Pinned versions: Helm charts, the Airflow image, and the Kubernetes versions each cloud offers.

Bump a version here and every component, stack and test picks it up.
"""

from __future__ import annotations

from dataclasses import dataclass


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
KEDA_CHART = ChartRef("keda", "2.18.1", "https://kedacore.github.io/charts")
AIRFLOW_CHART = ChartRef("airflow", "1.21.0", "https://airflow.apache.org")

# The Airflow version the image runs and the tests install (requirements-dev.txt pins the same; a test checks).
AIRFLOW_VERSION = "3.3.2"
AIRFLOW_IMAGE_REPOSITORY = "apache/airflow"
AIRFLOW_IMAGE_TAG = f"{AIRFLOW_VERSION}-python3.11"

# Kubernetes minor versions each managed service offers in standard support; the config rejects others.
# Update when EKS or GKE releases or retires a version.
SUPPORTED_KUBERNETES_VERSIONS: dict[str, tuple[str, ...]] = {
    "aws": ("1.32", "1.33", "1.34", "1.35"),
    "gcp": ("1.32", "1.33", "1.34", "1.35"),
    # A local cluster is whatever the kubeconfig points at; the version is informational.
    "local": ("1.30", "1.31", "1.32", "1.33", "1.34", "1.35"),
}
DEFAULT_KUBERNETES_VERSION = "1.34"

# The Cluster Autoscaler image tag follows the Kubernetes minor version (its compatibility rule).
CLUSTER_AUTOSCALER_IMAGE_TAGS: dict[str, str] = {
    "1.32": "v1.32.2",
    "1.33": "v1.33.1",
    "1.34": "v1.34.1",
    "1.35": "v1.35.0",
}
