"""Writes DAG runs and task instances through Airflow's own code, in a subprocess with the test's Airflow env.

Run as ``python -m tests.autoscaler.airflow_seed '<json>'`` with AIRFLOW__DATABASE__SQL_ALCHEMY_CONN set.
The JSON names a dags folder and runs: ``{"dags_folder": ..., "dag_id": ..., "runs": {"run-1": {"task": "queued"}}}``;
a run given as ``"queued"`` instead of task states is a triggered run for a real scheduler (``"unpause": true``).
DAG files are parsed by Airflow's DagBag and stored with the dag processor's own `sync_bag_to_db`, runs are
created by the serialized DAG's `create_dagrun` (which creates the task instances with their queue and
executor from the DAG file), and only the states are set here.

It runs in a subprocess because Airflow reads its configuration once, at import, and other tests in the same
pytest process may import Airflow with other settings.
"""

from __future__ import annotations

import json
import sys


def main(spec: dict) -> None:
    from airflow._shared.timezones import timezone
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=spec["dags_folder"], bundle_name="dags-folder")
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:
        if spec.get("unpause"):
            session.query(DagModel).filter(DagModel.dag_id == spec["dag_id"]).update({DagModel.is_paused: False})
        dag = SerializedDagModel.get_dag(spec["dag_id"], session=session)
        for run_id, states in spec["runs"].items():
            # "queued": a triggered run, left to a real scheduler; otherwise task states are set here.
            queued = states == "queued"
            run = dag.create_dagrun(
                run_id=run_id,
                run_after=timezone.utcnow(),
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.TEST,
                state=DagRunState.QUEUED if queued else DagRunState.RUNNING,
                session=session,
            )
            if not queued:
                for ti in run.get_task_instances(session=session):
                    ti.state = states.get(ti.task_id)
        session.commit()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
