"""An example program of your own: an EKS cluster and Airflow built from the airflow-on-k8s components.

It picks its own settings in code instead of a stack file, composes the components itself, and adds a
Kubernetes object of its own through the cluster's provider. Preview it offline:

    python -m airflow_on_k8s.tools.preview dev
"""

import pulumi
import pulumi_kubernetes as k8s

from airflow_on_k8s.addons.keda import Keda, KedaArgs
from airflow_on_k8s.addons.metrics_server import MetricsServer, MetricsServerArgs
from airflow_on_k8s.airflow.component import Airflow, AirflowArgs
from airflow_on_k8s.airflow.task_namespace import TaskNamespace, TaskNamespaceArgs
from airflow_on_k8s.airflow.worker_autoscaler import WorkerAutoscaler, WorkerAutoscalerArgs
from airflow_on_k8s.clusters import create_cloud_services, create_cluster
from airflow_on_k8s.config import parse_stack_config

# The same keys as a stack file's airflow-on-k8s: namespace, validated with the same errors.
config = parse_stack_config(
    {
        "cloud": "aws",
        "clusterName": "analytics",
        "aws": {
            "region": "eu-west-1",
            "availabilityZones": 2,
            # Who may reach the Kubernetes API: your deployer's egress address (curl -s https://checkip.amazonaws.com).
            "publicAccessCidrs": ["203.0.113.10/32"],
        },
        "taskPool": {"maxSize": 6, "spot": True, "instanceTypes": ["m6i.xlarge", "m5.xlarge"]},
        "airflow": {"workerConcurrency": 8, "taskNamespace": "analytics-tasks"},
        "scaling": {"mode": "task-aware", "minWorkers": 0, "maxWorkers": 6},
        "tags": {"team": "analytics"},
    }
)

cluster = create_cluster(config)
services = create_cloud_services(config, cluster)
MetricsServer("metrics-server", MetricsServerArgs(install=True), cluster)
keda = Keda("keda", KedaArgs(), cluster)
tasks = TaskNamespace("analytics-tasks", TaskNamespaceArgs.from_stack(config), cluster)
airflow = Airflow("airflow", AirflowArgs.from_stack(config), cluster, services, depends_on=[keda.release])
WorkerAutoscaler("worker-autoscaler", WorkerAutoscalerArgs.from_stack(config), cluster, airflow)

# Your own objects go through the same cluster provider.
k8s.core.v1.ConfigMap(
    "team-settings",
    metadata=k8s.meta.v1.ObjectMetaArgs(name="team-settings", namespace=tasks.name),
    data={"owner": "analytics"},
    opts=pulumi.ResourceOptions(provider=cluster.provider),
)

pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("taskPool", cluster.task_pool.as_dict())
pulumi.export("airflowUi", airflow.port_forward)
