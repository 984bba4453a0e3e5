"""`python -m airflow_on_k8s.autoscaler --help`: run the autoscaler (see settings.py for flags and env)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from airflow_on_k8s.autoscaler.settings import Settings, SettingsError, settings_from_args


def build_controller(settings: Settings):
    """Wire the configured signals, actuator and lock into a Controller (imports only what is used)."""
    from airflow_on_k8s.autoscaler.actuators.events import DecisionEvents
    from airflow_on_k8s.autoscaler.controller import Controller, ControllerConfig
    from airflow_on_k8s.autoscaler.metrics import Health, Metrics
    from airflow_on_k8s.autoscaler.policy import ScalingPolicy
    from airflow_on_k8s.autoscaler.signals.airflow_db import AirflowDbSignal, ExecutorFilter
    from airflow_on_k8s.autoscaler.signals.celery_inspect import CeleryWorkers

    load = AirflowDbSignal(
        settings.db_url,
        ExecutorFilter.from_airflow_setting(settings.executor),
        include_queues=settings.queues,
        exclude_queues=settings.exclude_queues,
        default_queue=settings.queues[0],
    )
    celery = CeleryWorkers(settings.broker_url, timeout_s=settings.celery_timeout_s)
    if settings.actuator == "local":
        from airflow_on_k8s.autoscaler.actuators.local_processes import (
            FileLeaderLock,
            LocalProcessActuator,
            airflow_worker_command,
        )

        state = Path(settings.local_state_dir)
        actuator = LocalProcessActuator(
            state, airflow_worker_command(settings.worker_concurrency, settings.queues, settings.hostname_template)
        )
        lock = FileLeaderLock(state / "leader.lock", settings.identity)
        from airflow_on_k8s.autoscaler.actuators.events import LocalEventRecorder

        recorder = LocalEventRecorder()
    else:
        from kubernetes import client, config

        from airflow_on_k8s.autoscaler.actuators.events import KubernetesEventRecorder
        from airflow_on_k8s.autoscaler.actuators.kubernetes import KubernetesDeploymentActuator, KubernetesLease

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.ApiClient()
        actuator = KubernetesDeploymentActuator(api, settings.namespace, settings.deployment, settings.label_selector)
        lock = KubernetesLease(api, settings.namespace, settings.lease_name, settings.identity,
                               lease_duration_s=settings.lease_duration_s)
        # Events on the worker Deployment, signed by this pod (source.host), as the HPA's are by its controller.
        recorder = KubernetesEventRecorder(api, settings.namespace, settings.deployment, host=settings.identity)
    loop = ControllerConfig(
        queues=settings.queues,
        poll_interval_s=settings.poll_interval_s,
        drain_timeout_s=settings.drain_timeout_s,
        drain_poll_s=settings.drain_poll_s,
        drain_settle_s=settings.drain_settle_s,
        hostname_template=settings.hostname_template,
        task_slot_cap=settings.task_slot_cap,
    )
    if settings.max_workers * settings.worker_concurrency > settings.task_slot_cap:
        logging.getLogger("airflow_on_k8s.autoscaler").warning(
            "%d workers x %d slots exceed Airflow's [core] parallelism x schedulers (%d): the last workers can never "
            "fill up; raise parallelism or lower --max-workers", settings.max_workers, settings.worker_concurrency,
            settings.task_slot_cap,
        )
    # Live while iterations keep coming (a drain may legitimately take drain_timeout_s); ready after a good one.
    health = Health(
        liveness_timeout_s=settings.drain_timeout_s + 6 * settings.poll_interval_s + 60,
        readiness_timeout_s=3 * settings.poll_interval_s + settings.drain_timeout_s,
    )
    return Controller(ScalingPolicy(settings.policy_config()), load, celery, actuator, lock, loop,
                      metrics=Metrics(), health=health, events=DecisionEvents(recorder))


def main(argv: list[str] | None = None) -> int:
    try:
        settings, once = settings_from_args(argv)
    except SettingsError as err:
        print(f"airflow_on_k8s.autoscaler: invalid settings:\n{err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    controller = build_controller(settings)
    # Importing Airflow's config (for the Celery app) reconfigures logging: put ours back.
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    logging.getLogger("airflow_on_k8s.autoscaler").disabled = False
    from airflow_on_k8s.autoscaler.metrics import MetricsServer

    server = MetricsServer(controller.metrics, controller.health, settings.metrics_host, settings.metrics_port).start()
    logging.getLogger("airflow_on_k8s.autoscaler").info(
        "started as %s (%s actuator); metrics on port %d", settings.identity, settings.actuator, server.port
    )
    signal.signal(signal.SIGTERM, lambda *_: controller.stop.set())
    signal.signal(signal.SIGINT, lambda *_: controller.stop.set())
    try:
        if once:
            try:
                controller.run_once()
            finally:
                controller.lock.release()
        else:
            controller.run()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
