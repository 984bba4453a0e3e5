"""Prometheus metrics of the autoscaler and the HTTP endpoint that serves them with the probes.

    GET /metrics  Prometheus text format
    GET /healthz  200 while the control loop makes progress (liveness), else 503
    GET /readyz   200 once the last loop iteration succeeded recently (readiness), else 503

Each `Metrics` has its own registry, so several controllers (tests) can live in one process.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "airflow_worker_autoscaler"
# Why a scale-down was held (the label values of held_scale_downs_total).
HOLD_REASONS = ("removal_pending", "rollout", "queue_mismatch", "busy_pod_ranks_first", "scale_conflict",
                "lost_leadership")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queued = Gauge(f"{PREFIX}_queued_tasks", "Queued Celery task instances, per queue", ["queue"], registry=r)
        self.running = Gauge(f"{PREFIX}_running_tasks", "Running Celery task instances, per queue", ["queue"], registry=r)
        self.raw_desired = Gauge(f"{PREFIX}_raw_desired_replicas", "Workers the load needs, before damping", registry=r)
        self.desired = Gauge(f"{PREFIX}_desired_replicas", "Workers the policy decided on", registry=r)
        self.current = Gauge(f"{PREFIX}_current_replicas", "Worker replicas before this decision", registry=r)
        self.busy = Gauge(f"{PREFIX}_busy_workers", "Workers holding an active or reserved task (or not answering)", registry=r)
        self.drains = Gauge(f"{PREFIX}_drains_in_progress", "Workers being drained for removal", registry=r)
        self.drain_seconds = Histogram(
            f"{PREFIX}_drain_seconds", "Time from cancel_consumer to a worker holding no task",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800), registry=r,
        )
        self.errors = Counter(f"{PREFIX}_errors", "Failed reads or actions, by source", ["source"], registry=r)
        self.scale_events = Counter(f"{PREFIX}_scale_events", "Replica changes made, by direction", ["direction"], registry=r)
        self.aborted_drains = Counter(f"{PREFIX}_aborted_drains", "Scale-downs given up, by reason", ["reason"], registry=r)
        self.leader = Gauge(f"{PREFIX}_leader", "1 while this instance holds the leader lock", registry=r)
        self.held_scale_downs = Counter(
            f"{PREFIX}_held_scale_downs", "Scale-downs not started because removing a pod was not certain to be safe, "
            "by reason", ["reason"], registry=r,
        )
        # The alert AirflowWorkerConsumesNoQueue (observability/rules.py) reads deaf_workers.
        self.deaf_workers = Gauge(
            f"{PREFIX}_deaf_workers", "Live workers found consuming fewer of the queues than they should (and not "
            "drained by us); each is healed with add_consumer", registry=r,
        )
        self.healed_workers = Counter(f"{PREFIX}_healed_workers", "add_consumer sent to deaf workers", registry=r)
        self.queue_mismatch_workers = Gauge(
            f"{PREFIX}_queue_mismatch_workers", "Workers consuming queues outside --queues (no scale-down while > 0)",
            registry=r,
        )
        self.foreign_pods = Gauge(
            f"{PREFIX}_foreign_pods", "Pods matching the worker selector that the worker Deployment does not own",
            registry=r,
        )
        self.task_slot_cap = Gauge(
            f"{PREFIX}_task_slot_cap", "Task slots Airflow lets run at once: [core] parallelism x schedulers", registry=r,
        )
        self.kpo_slots = Gauge(
            f"{PREFIX}_kubernetes_pod_operator_slots", "Running non-deferred KubernetesPodOperator tasks: each holds a "
            "worker slot while it only waits for its pod", registry=r,
        )
        self.last_success = Gauge(f"{PREFIX}_last_success_timestamp_seconds", "End of the last good loop", registry=r)
        for source in ("airflow_db", "celery", "actuator", "controller"):
            self.errors.labels(source)  # export zeros, so rate() works from the start
        for direction in ("up", "down"):
            self.scale_events.labels(direction)
        for reason in HOLD_REASONS:
            self.held_scale_downs.labels(reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """What the probes report; the controller calls `beat()` every loop and `succeeded()` after a good one."""

    def __init__(self, liveness_timeout_s: float, readiness_timeout_s: float, clock=time.monotonic):
        self.liveness_timeout_s = liveness_timeout_s
        self.readiness_timeout_s = readiness_timeout_s
        self._clock = clock
        self._beat = clock()
        self._success: float | None = None

    def beat(self) -> None:
        self._beat = self._clock()

    def succeeded(self) -> None:
        self._success = self._beat = self._clock()

    def live(self) -> bool:
        return self._clock() - self._beat < self.liveness_timeout_s

    def ready(self) -> bool:
        return self._success is not None and self._clock() - self._success < self.readiness_timeout_s


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on (host, port) from a daemon thread; port 0 picks a free one."""

    def __init__(self, metrics: Metrics, health: Health, host: str = "0.0.0.0", port: int = 9090):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, outer.metrics.render(), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok = outer.health.live() if path == "/healthz" else outer.health.ready()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"not ok\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # probes every few seconds would flood the log
                pass

        self.metrics = metrics
        self.health = health
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
