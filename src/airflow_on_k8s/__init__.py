"""Apache Airflow on Kubernetes (EKS, GKE or an existing cluster) as Pulumi component resources.

The tree says what is where:

- `contract` — what every cluster provides (`KubernetesCluster`, `WorkloadIdentity`, `CloudServices`);
  `clusters` — the one place that picks a cloud; `config` — the typed stack config; `versions` — every pin;
  `task_pool` — the task pool's label and taint, defined once.
- `aws/`, `gcp/`, `local/` — one folder per cloud, each behind the contract.
- `addons/` — metrics-server and KEDA; `airflow/` — the Airflow chart, the task namespace, the pod mutation hook
  (`local_settings/`), the worker autoscaler's deployment and the example DAGs.
- `autoscaler/` — the task-aware Celery worker autoscaler itself (runs in the cluster; never imports Pulumi).
- `testing/`, `tools/` — the offline preview under Pulumi's mock runtime, throwaway services for tests.

This file imports nothing: the autoscaler ships it into its pod, where Pulumi is not installed.
"""

__version__ = "0.2.0"
