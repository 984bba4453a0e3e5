"""Composition root: read the stack's config, build the cluster, install what runs on it."""

import pulumi

from airflow_on_k8s.airflow.component import Airflow, AirflowArgs
from airflow_on_k8s.clusters import create_cloud_services, create_cluster
from airflow_on_k8s.config import load_stack_config
from airflow_on_k8s.addons.keda import Keda, KedaArgs
from airflow_on_k8s.addons.metrics_server import MetricsServer, MetricsServerArgs
from airflow_on_k8s.airflow.task_namespace import TaskNamespace, TaskNamespaceArgs
from airflow_on_k8s.airflow.worker_autoscaler import WorkerAutoscaler, WorkerAutoscalerArgs

config = load_stack_config()
cluster = create_cluster(config)
services = create_cloud_services(config, cluster)

# Add-ons: metrics-server where the cloud has none (not GKE), KEDA everywhere.
metrics_server = MetricsServerArgs.from_stack(config)
if metrics_server.install:
    MetricsServer("metrics-server", metrics_server, cluster)
keda = Keda("keda", KedaArgs.from_stack(config), cluster)

# Airflow, and the namespace its KubernetesPodOperator pods run in.
tasks = TaskNamespace("airflow-tasks", TaskNamespaceArgs.from_stack(config), cluster)
airflow = Airflow("airflow", AirflowArgs.from_stack(config), cluster, services, depends_on=[keda.release])

# scaling.mode task-aware: the autoscaler that owns the Celery worker count (keda and hpa modes live in the chart).
autoscaler = WorkerAutoscalerArgs.from_stack(config)
if autoscaler.enabled:
    WorkerAutoscaler("worker-autoscaler", autoscaler, cluster, airflow)

pulumi.export("cloud", config.cloud)
pulumi.export("clusterName", cluster.cluster_name)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("taskPool", cluster.task_pool.as_dict())
pulumi.export("airflowNamespace", airflow.namespace)
pulumi.export("taskNamespace", tasks.name)
pulumi.export("airflowUiService", airflow.ui_service)
pulumi.export("airflowUiPortForward", airflow.port_forward)
pulumi.export("airflowAdminUser", airflow.admin_user)
pulumi.export("airflowAdminPassword", airflow.admin_password)
