"""Task-aware Celery worker autoscaler for Airflow: scales on queued + running task instances and
removes only idle workers (see README section "Task-aware worker autoscaling").

`airflow_on_k8s.autoscaler.policy` is pure and imports nothing outside the standard library; the signal readers,
actuators and the controller loop live in their own modules so importing the policy stays cheap.
"""
