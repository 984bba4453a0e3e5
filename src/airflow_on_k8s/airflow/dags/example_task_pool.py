"""KubernetesPodOperator tasks that run on the task pool, with nothing in the DAG about node pools.

The cluster's pod mutation hook (airflow_on_k8s.airflow.local_settings/airflow_local_settings.py) adds the task pool's node
affinity, toleration and no-eviction annotations to every KubernetesPodOperator pod; the pods run in the
task namespace because the `kubernetes_default` connection names it. A task that must not run on the task
pool sets the label `airflow-on-k8s/task-pool: "skip"`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

with DAG(
    dag_id="example_task_pool",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["example", "kubernetes-pod-operator"],
) as dag:
    # Defaults from the task namespace's LimitRange apply: 250m CPU, 256Mi memory requested.
    hello = KubernetesPodOperator(
        task_id="hello",
        name="hello",
        image="busybox:1.37",
        cmds=["sh", "-c", "echo hello from $(hostname) on the task pool"],
    )

    # A heavier step states what it needs; the Cluster Autoscaler sizes the task pool from these requests.
    crunch = KubernetesPodOperator(
        task_id="crunch",
        name="crunch",
        image="python:3.12-slim",
        cmds=["python", "-c", "print(sum(i * i for i in range(10_000_000)))"],
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": "1", "memory": "512Mi"}, limits={"memory": "1Gi"}
        ),
    )

    # XCom from a pod: the provider's sidecar reads /airflow/xcom/return.json.
    report = KubernetesPodOperator(
        task_id="report",
        name="report",
        image="busybox:1.37",
        cmds=["sh", "-c", 'mkdir -p /airflow/xcom && echo \'{"rows": 42}\' > /airflow/xcom/return.json'],
        do_xcom_push=True,
    )

    hello >> crunch >> report
