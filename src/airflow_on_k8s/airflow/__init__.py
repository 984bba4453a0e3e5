"""Airflow on the cluster: the chart, the task namespace, the pod mutation hook and the worker autoscaler."""
