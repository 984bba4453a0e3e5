"""The worker Deployment on Kubernetes, through the official `kubernetes` client.

* replicas: read and replace the Deployment's `scale` subresource (what `kubectl scale` and the HPA use), so
  the autoscaler needs no write access to the Deployment itself. Lowering is conditional: the write carries
  the resourceVersion read before the drain, so a count changed meanwhile (Helm, a human) fails with 409;
* workers: the pods matching the scale subresource's `status.selector` (the Deployment's own selector) that
  are controlled by a ReplicaSet the Deployment controls. Anything else matching the labels (e.g. the
  chart's KubernetesExecutor pods carry the same `component=worker` labels) is foreign and never touched;
* which pods go: a ReplicaSet scaling down deletes pods by `ActivePodsWithRanks` (see policy.plan_removal),
  where `controller.kubernetes.io/pod-deletion-cost` is the fourth rule; the chosen, drained pods get the
  lowest possible cost, plus our own marker annotation so that cleanup only ever clears what we set;
* leader election: `KubernetesLease`, a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

RBAC it needs (namespace-scoped Role): deployments/scale get, patch, update; replicasets list; pods list,
patch; leases get, create, update (and events create, patch for actuators/events.py).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from airflow_on_k8s.autoscaler.actuators import ScaleConflict, ScaleTarget, WorkerPod, WorkerView

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
MARKER = "worker-autoscaler.airflow-on-k8s/drained"
# The lowest int32: below any cost someone else may have set.
CHOSEN_COST = str(-(2**31))
TEMPLATE_HASH = "pod-template-hash"  # set by the Deployment controller on each ReplicaSet and its pods
_MERGE_PATCH = "application/merge-patch+json"


def _pod_ready(pod: client.V1Pod) -> bool:
    conditions = (pod.status and pod.status.conditions) or []
    return pod.status is not None and pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in conditions
    )


def _containers_started(pod: client.V1Pod) -> bool:
    statuses = [*((pod.status and pod.status.container_statuses) or [])]
    return any(s.state is not None and (s.state.running or s.state.terminated) for s in statuses) or (
        pod.status is not None and pod.status.phase in ("Running", "Unknown")
    )


def _deletion_cost(annotations: dict[str, str]) -> int:
    try:
        return int(annotations.get(DELETION_COST, "0"))
    except ValueError:
        return 0  # the API server rejects such values; treat as unset, like GetDeletionCostFromPodAnnotations


def _controller_of(meta: client.V1ObjectMeta) -> client.V1OwnerReference | None:
    return next((r for r in meta.owner_references or () if r.controller), None)


class KubernetesDeploymentActuator:
    """Scales one Deployment of Celery workers and marks the pods its next scale-down removes."""

    def __init__(self, api_client: client.ApiClient, namespace: str, deployment: str, label_selector: str = "",
                 request_timeout_s: float = 10):
        self.namespace = namespace
        self.deployment = deployment
        # Only until the scale subresource has told us the Deployment's own selector.
        self.label_selector = label_selector
        self.timeout = request_timeout_s
        self._apps = client.AppsV1Api(api_client)
        self._core = client.CoreV1Api(api_client)

    def _read_scale(self) -> client.V1Scale:
        return self._apps.read_namespaced_deployment_scale(self.deployment, self.namespace, _request_timeout=self.timeout)

    def get_scale(self) -> ScaleTarget:
        scale = self._read_scale()
        return ScaleTarget(int(scale.spec.replicas or 0), scale.metadata.resource_version)

    def get_replicas(self) -> int:
        return self.get_scale().replicas

    def set_replicas(self, replicas: int) -> None:
        self._apps.patch_namespaced_deployment_scale(
            self.deployment, self.namespace, {"spec": {"replicas": int(replicas)}},
            _content_type=_MERGE_PATCH, _request_timeout=self.timeout,
        )

    def observe(self) -> WorkerView:
        scale = self._read_scale()
        # The Scale object carries the Deployment's uid and its selector (status.selector) in label-query form.
        deployment_uid = scale.metadata.uid
        selector = (scale.status and scale.status.selector) or self.label_selector
        replica_sets = self._apps.list_namespaced_replica_set(
            self.namespace, label_selector=selector, _request_timeout=self.timeout
        ).items
        ours = {
            rs.metadata.uid: rs
            for rs in replica_sets
            if (owner := _controller_of(rs.metadata)) is not None
            and owner.kind == "Deployment" and owner.name == self.deployment
            and (deployment_uid is None or owner.uid == deployment_uid)
        }
        pods = self._core.list_namespaced_pod(self.namespace, label_selector=selector, _request_timeout=self.timeout).items
        workers, foreign, with_pods = [], [], set()
        for p in pods:
            if p.status is not None and p.status.phase in ("Succeeded", "Failed"):
                continue
            owner = _controller_of(p.metadata)
            if owner is None or owner.kind != "ReplicaSet" or owner.uid not in ours:
                foreign.append(p.metadata.name)
                continue
            annotations = p.metadata.annotations or {}
            terminating = p.metadata.deletion_timestamp is not None
            if not terminating:
                with_pods.add(owner.uid)
            workers.append(WorkerPod(
                name=p.metadata.name,
                ready=_pod_ready(p),
                terminating=terminating,
                marked=MARKER in annotations,
                phase=(p.status and p.status.phase) or "Pending",
                node=(p.spec and p.spec.node_name) or None,
                containers_started=_containers_started(p),
                template_hash=(p.metadata.labels or {}).get(TEMPLATE_HASH, ""),
                deletion_cost=_deletion_cost(annotations),
            ))
        active = {uid for uid, rs in ours.items() if (rs.spec and rs.spec.replicas)} | with_pods
        return WorkerView(
            scale=ScaleTarget(int(scale.spec.replicas or 0), scale.metadata.resource_version),
            workers=sorted(workers, key=lambda w: w.name),
            replica_sets=len(active),
            foreign=sorted(foreign),
        )

    def list_workers(self) -> list[WorkerPod]:
        return self.observe().workers

    def _annotate(self, name: str, annotations: dict[str, str | None]) -> None:
        try:
            self._core.patch_namespaced_pod(
                name, self.namespace, {"metadata": {"annotations": annotations}},
                _content_type=_MERGE_PATCH, _request_timeout=self.timeout,
            )
        except ApiException as err:
            if err.status != 404:  # a pod already gone needs no annotation change
                raise

    def mark_for_removal(self, names: Iterable[str]) -> None:
        for name in names:
            self._annotate(name, {DELETION_COST: CHOSEN_COST, MARKER: "true"})

    def clear_marks(self, names: Iterable[str]) -> None:
        for name in names:
            # null deletes a key in a JSON merge patch.
            self._annotate(name, {DELETION_COST: None, MARKER: None})

    def remove(self, names: list[str], replicas: int, expected: ScaleTarget) -> None:
        """Set replicas to `replicas` if the Deployment is unchanged since `expected` was read (409 otherwise);
        the ReplicaSet then deletes the marked (lowest-cost) pods."""
        body = client.V1Scale(
            metadata=client.V1ObjectMeta(name=self.deployment, namespace=self.namespace,
                                         resource_version=expected.version),
            spec=client.V1ScaleSpec(replicas=int(replicas)),
        )
        try:
            self._apps.replace_namespaced_deployment_scale(self.deployment, self.namespace, body,
                                                           _request_timeout=self.timeout)
        except ApiException as err:
            if err.status == 409:
                raise ScaleConflict(f"deployment {self.deployment} changed since it was read: {err.reason}") from err
            raise


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class KubernetesLease:
    """Leader election on a coordination.k8s.io/v1 Lease, following client-go's leaderelection:

    * free or ours: take/renew it with an update carrying the resourceVersion we read, so two candidates
      cannot both win (the loser gets 409 Conflict);
    * someone else's: expired only once its record stayed unchanged for `lease_duration_s` on OUR clock
      (no trust in the other node's clock); then take it over (leaseTransitions + 1);
    * `release()` hands it back at once: empty holder, 1 s duration.

    `held` turns false by itself when the last successful renewal is older than the renew deadline (2/3 of
    the lease duration, as client-go's defaults 10 s / 15 s), so a controller that cannot reach the API
    server stops acting before any other candidate can consider the lease expired.
    """

    def __init__(self, api_client: client.ApiClient, namespace: str, name: str, identity: str, *,
                 lease_duration_s: int = 30, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime.datetime] = _utcnow, request_timeout_s: float = 5):
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self._api = client.CoordinationV1Api(api_client)
        self._clock = clock
        self._wall_clock = wall_clock
        self.timeout = request_timeout_s
        self._renewed_at: float | None = None
        self._observed: tuple | None = None  # (holder, renewTime, resourceVersion) last seen
        self._observed_at = 0.0

    @property
    def retry_period_s(self) -> float:
        """How often to renew: client-go's defaults are 15 s lease, 10 s renew deadline, 2 s retry period."""
        return self.lease_duration_s / 7.5

    @property
    def renew_deadline_s(self) -> float:
        return self.lease_duration_s * 2 / 3

    @property
    def held(self) -> bool:
        return self._renewed_at is not None and self._clock() - self._renewed_at < self.renew_deadline_s

    def _spec(self, transitions: int, acquire_time: datetime.datetime | None) -> client.V1LeaseSpec:
        now = self._wall_clock()
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_duration_s,
            acquire_time=acquire_time or now,
            renew_time=now,
            lease_transitions=transitions,
        )

    def try_acquire(self) -> bool:
        """Acquire or renew; True if we hold the lease now. API errors count as "not held"."""
        now = self._clock()
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout)
        except ApiException as err:
            if err.status != 404:
                return self._still_held()
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(transitions=0, acquire_time=None),
            )
            try:
                self._api.create_namespaced_lease(self.namespace, body, _request_timeout=self.timeout)
            except ApiException as create_err:
                # 409: another candidate created it first; anything else is transient.
                return self._lose() if create_err.status == 409 else self._still_held()
            self._renewed_at = now
            return True
        except Exception:  # connection refused, timeouts (urllib3 errors)
            return self._still_held()

        spec = lease.spec or client.V1LeaseSpec()
        record = (spec.holder_identity, spec.renew_time, lease.metadata.resource_version)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder = spec.holder_identity or ""
        duration = spec.lease_duration_seconds or self.lease_duration_s
        ours = holder == self.identity
        if holder and not ours and now - self._observed_at < duration:
            return self._lose()
        transitions = (spec.lease_transitions or 0) + (0 if ours else 1)
        lease.spec = self._spec(transitions, spec.acquire_time if ours else None)
        try:
            updated = self._api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=self.timeout)
        except ApiException as err:
            # 409 Conflict: someone else wrote it since our read, so it is theirs now.
            return self._lose() if err.status == 409 else self._still_held()
        except Exception:
            return self._still_held()
        self._observed = (self.identity, updated.spec.renew_time, updated.metadata.resource_version)
        self._observed_at = now
        self._renewed_at = now
        return True

    def _lose(self) -> bool:
        self._renewed_at = None
        return False

    def _still_held(self) -> bool:
        """A failed renewal: we keep the lease until the renew deadline, as nobody else can take it sooner."""
        if not self.held:
            self._renewed_at = None
        return self.held

    def release(self) -> None:
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout)
            if lease.spec.holder_identity != self.identity:
                return
            now = self._wall_clock()
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = now
            self._api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=self.timeout)
        except Exception:
            pass  # it expires on its own after lease_duration_s
