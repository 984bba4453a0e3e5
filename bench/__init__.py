"""Scaling benchmark: HPA (CPU), KEDA (the Airflow chart's ScaledObject) and the task-aware autoscaler.

`bench.sim` is a discrete-event model of the Celery worker Deployment, its ReplicaSet, the task node
pool and the Cluster Autoscaler; `bench.hpa`, `bench.keda` and `bench.replicaset` are ports of the
upstream decision rules; the task-aware mode runs the project's real `airflow_on_k8s.autoscaler.policy`.
`python -m bench.scaling` runs every scenario and writes bench/results/ (see bench/README.md).
"""

import sys as _sys
from pathlib import Path as _Path

# This checkout's package first (as pytest.ini's `pythonpath` does for the tests): the virtualenv may point at
# another worktree's src/, and the real runs start child processes that must import the same code.
_SRC = str(_Path(__file__).resolve().parents[1] / "src")
if _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)
