"""A fake Kubernetes API server behind the `kubernetes` client's HTTP layer, with the ReplicaSet and Deployment
controllers' scale-down behaviour.

`FakeKube.api_client()` returns a real `kubernetes.client.ApiClient` whose urllib3 pool manager is replaced:
the client builds, serializes and parses everything as usual, and this class answers the endpoints the
autoscaler uses (Deployment scale, ReplicaSets, pods, Leases) from in-memory state with the API server's
semantics that matter here: JSON merge patch, resourceVersion conflicts (409) on Leases and on the scale
subresource, 404s, and the Scale object's metadata (the Deployment's uid and resourceVersion) and
`status.selector` (pkg/registry/apps/deployment/storage/storage.go `scaleFromDeployment`). Every request is
recorded for the tests to assert on.

Controllers (`sync()`; on every scale write too unless `controllers_paused`, the stand-in for a late
controller-manager):
* Deployment (pkg/controller/deployment/sync.go `scale`): one active ReplicaSet takes the Deployment's count;
  with several, a change is spread in proportion to their sizes and the leftover goes to the first one in
  `ReplicaSetsBySizeOlder` order (largest, then oldest) when scaling down. Simplified: the upstream
  proportions also use the max-surge annotations, which do not change who is picked for a one-pod step.
* ReplicaSet (pkg/controller/replicaset/replica_set.go `manageReplicas` / `getPodsToDelete`): with more active
  pods than replicas it deletes the first of them in `ActivePodsWithRanks` order (bench/replicaset.py, ported
  from pkg/controller/controller_utils.go); a deleted pod gets a deletionTimestamp and stays listed, as during
  its grace period. With fewer it creates Pending, unscheduled pods.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import urllib3
from kubernetes import client

from bench.replicaset import RsPod, deletion_order

TEMPLATE_HASH = "pod-template-hash"
WORKER_LABELS = {"component": "worker"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str | None


def merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            target[key] = merge_patch(dict(target.get(key) or {}), value)
        else:
            target[key] = value
    return target


def pod(name: str, *, ready: bool = True, phase: str = "Running", deleting: bool = False,
        annotations: dict | None = None, labels: dict | None = None, node: str | None = "node-1",
        owner: dict | None = None, containers_started: bool | None = None) -> dict:
    """A pod as the API server returns it; `owner` is a ReplicaSet object (see FakeKube.replica_set)."""
    labels = dict(labels or WORKER_LABELS)
    owners = []
    if owner is not None:
        labels[TEMPLATE_HASH] = owner["metadata"]["labels"][TEMPLATE_HASH]
        owners = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner["metadata"]["name"],
                   "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    started = phase != "Pending" if containers_started is None else containers_started
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "airflow", "uid": f"uid-{name}", "labels": labels,
                     "annotations": annotations or {}, "resourceVersion": "1", "ownerReferences": owners,
                     "creationTimestamp": "2026-01-01T00:00:00Z",
                     **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})},
        "spec": {"containers": [{"name": "worker", "image": "apache/airflow"}], **({"nodeName": node} if node else {})},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "containerStatuses": [{"name": "worker", "ready": ready, "restartCount": 0, "image": "apache/airflow",
                                          "imageID": "", "state": {"running": {}} if started else {"waiting": {}}}]},
    }


def _ready(p: dict) -> bool:
    return p["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", ())
    )


def _cost(p: dict) -> int:
    try:
        return int(p["metadata"].get("annotations", {}).get("controller.kubernetes.io/pod-deletion-cost", "0"))
    except ValueError:
        return 0


def _controller(meta: dict) -> dict | None:
    return next((r for r in meta.get("ownerReferences") or () if r.get("controller")), None)


def _matches(labels: dict, selector: str) -> bool:
    wanted = dict(kv.split("=", 1) for kv in selector.split(",") if kv)
    return wanted.items() <= labels.items()


@dataclass
class FakeKube:
    namespace: str = "airflow"
    replicas: dict[str, int] = field(default_factory=dict)  # Deployment name -> spec.replicas
    pods: dict[str, dict] = field(default_factory=dict)
    leases: dict[str, dict] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    down: bool = False  # every request fails to connect
    before_write: Callable[[Request], None] | None = None  # lets a test slip in a concurrent writer
    controllers_paused: bool = False  # a controller-manager that is down or late
    selectors: dict[str, dict[str, str]] = field(default_factory=dict)  # Deployment -> matchLabels
    replica_sets: dict[str, dict] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)  # pods the ReplicaSets deleted, in order
    _version: int = 100
    _deployment_versions: dict[str, str] = field(default_factory=dict)

    def api_client(self) -> client.ApiClient:
        config = client.Configuration(host="https://kube.test")
        api = client.ApiClient(config)
        api.rest_client.pool_manager = self
        return api

    # --- objects ----------------------------------------------------------------------------------------------

    def _deployment_version(self, name: str) -> str:
        return self._deployment_versions.setdefault(name, self._next_version())

    def deployment_uid(self, name: str) -> str:
        return f"uid-{name}"

    def touch_deployment(self, name: str) -> None:
        """Someone else wrote the Deployment (a Helm upgrade, a status update): a new resourceVersion."""
        self._deployment_versions[name] = self._next_version()

    def deployment(self, name: str, replicas: int, match_labels: dict[str, str] | None = None) -> None:
        self.replicas[name] = replicas
        self.selectors[name] = dict(match_labels or WORKER_LABELS)

    def pause_controllers(self) -> None:
        self.controllers_paused = True

    def resume_controllers(self) -> None:
        self.controllers_paused = False

    def settle(self) -> None:
        self.sync()

    def foreign_pod(self, name: str, **status) -> None:
        """A pod with the worker labels that no ReplicaSet of ours controls (e.g. a KubernetesExecutor task pod)."""
        self.pods[name] = pod(name, labels=dict(WORKER_LABELS), **status)

    def replica_set(self, deployment: str, template_hash: str, replicas: int | None = None, age: int = 0) -> dict:
        """The ReplicaSet of `deployment` for pod-template-hash `template_hash` (created on first use)."""
        name = f"{deployment}-{template_hash}"
        if name not in self.replica_sets:
            labels = {**self.selectors.get(deployment, WORKER_LABELS), TEMPLATE_HASH: template_hash}
            self.replica_sets[name] = {
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": name, "namespace": self.namespace, "uid": f"uid-{name}", "labels": labels,
                             "resourceVersion": self._next_version(),
                             "creationTimestamp": f"2026-01-01T00:{59 - age:02d}:00Z",
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                                                  "uid": self.deployment_uid(deployment), "controller": True}]},
                "spec": {"replicas": 0, "selector": {"matchLabels": labels}},
                "status": {"replicas": 0},
            }
        rs = self.replica_sets[name]
        if replicas is not None:
            rs["spec"]["replicas"] = replicas
        return rs

    def worker_pods(self, deployment: str, names, template_hash: str = "h1", age: int = 0, **status) -> list[str]:
        """Pods of the Deployment's ReplicaSet `template_hash` (`age` minutes old), sized to hold them all."""
        rs = self.replica_set(deployment, template_hash, age=age)
        labels = {**self.selectors.get(deployment, WORKER_LABELS)}
        for name in names:
            self.pods[name] = pod(name, labels=labels, owner=rs, **status)
        rs["spec"]["replicas"] = self._active(rs).__len__()
        return list(names)

    def set_pod(self, name: str, **status) -> None:
        """Replace a pod's status as a kubelet (or the node-lifecycle controller) would."""
        old = self.pods[name]
        owner = self.replica_sets.get((_controller(old["metadata"]) or {}).get("name", ""))
        new = pod(name, labels={k: v for k, v in old["metadata"]["labels"].items() if k != TEMPLATE_HASH},
                  owner=owner, annotations=old["metadata"]["annotations"], **status)
        self.pods[name] = new

    def _active(self, rs: dict) -> list[dict]:
        uid = rs["metadata"]["uid"]
        return [p for p in self.pods.values()
                if (_controller(p["metadata"]) or {}).get("uid") == uid
                and "deletionTimestamp" not in p["metadata"]
                and p["status"].get("phase") not in ("Succeeded", "Failed")]

    def _owned_sets(self, deployment: str) -> list[dict]:
        return [rs for rs in self.replica_sets.values()
                if (_controller(rs["metadata"]) or {}).get("uid") == self.deployment_uid(deployment)]

    # --- controllers --------------------------------------------------------------------------------------------

    def sync(self) -> None:
        """Run the Deployment and ReplicaSet controllers once (what a running controller-manager does by itself)."""
        for deployment, replicas in self.replicas.items():
            sets = self._owned_sets(deployment)
            active = [rs for rs in sets if rs["spec"]["replicas"] > 0]
            if len(active) <= 1:
                target = active[0] if active else max(sets, key=lambda rs: rs["metadata"]["creationTimestamp"], default=None)
                if target is not None:
                    target["spec"]["replicas"] = replicas
                continue
            total = sum(rs["spec"]["replicas"] for rs in active)
            change = replicas - total
            if change == 0:
                continue
            # ReplicaSetsBySizeOlder (largest, then oldest first) to scale down, BySizeNewer to scale up.
            order = sorted(active, key=lambda rs: rs["metadata"]["creationTimestamp"], reverse=change > 0)
            order.sort(key=lambda rs: -rs["spec"]["replicas"])
            sizes = [rs["spec"]["replicas"] for rs in order]
            shares = [int(change * size / total) for size in sizes]
            shares[0] += change - sum(shares)  # the leftover goes to the first
            for rs, size, share in zip(order, sizes, shares):
                rs["spec"]["replicas"] = max(0, size + share)
        for rs in self.replica_sets.values():
            self._sync_replica_set(rs)

    def _sync_replica_set(self, rs: dict) -> None:
        active = self._active(rs)
        diff = len(active) - rs["spec"]["replicas"]
        if diff > 0:
            ranked = deletion_order(
                [RsPod(name=p["metadata"]["name"], uid=p["metadata"]["uid"], node=p["spec"].get("nodeName"),
                       phase=p["status"].get("phase", "Pending"), ready=_ready(p), ready_since=0.0, created_at=0.0,
                       deletion_cost=_cost(p))
                 for p in active],
                now=1.0,
            )
            for victim in ranked[:diff]:
                self.pods[victim.name]["metadata"]["deletionTimestamp"] = "2026-01-01T01:00:00Z"
                self.deleted.append(victim.name)
        elif diff < 0:
            for _ in range(-diff):
                name = f"{rs['metadata']['name']}-new{len(self.pods)}"
                labels = {k: v for k, v in rs["metadata"]["labels"].items() if k != TEMPLATE_HASH}
                self.pods[name] = pod(name, labels=labels, owner=rs, phase="Pending", ready=False, node=None)
        rs["status"]["replicas"] = len(self._active(rs))

    # --- HTTP ---------------------------------------------------------------------------------------------------

    # urllib3.PoolManager's interface, as kubernetes.client.rest uses it.
    def request(self, method, url, body=None, fields=None, headers=None, **_):
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if fields:
            query.update({k: str(v) for k, v in fields})
        req = Request(method, parts.path, query, json.loads(body) if body else None, (headers or {}).get("Content-Type"))
        self.requests.append(req)
        if self.down:
            raise urllib3.exceptions.MaxRetryError(None, url, reason="connection refused (fake)")
        if method in ("POST", "PUT", "PATCH") and self.before_write:
            self.before_write(req)
        status, payload = self._route(req)
        return urllib3.HTTPResponse(
            body=json.dumps(payload).encode(), status=status, reason="fake",
            headers={"Content-Type": "application/json"}, preload_content=True,
        )

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _status(self, code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                      "message": message, "code": code}

    def _scale(self, name: str) -> dict:
        selector = ",".join(f"{k}={v}" for k, v in sorted(self.selectors.get(name, WORKER_LABELS).items()))
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": name, "namespace": self.namespace, "uid": self.deployment_uid(name),
                             "resourceVersion": self._deployment_version(name)},
                "spec": {"replicas": self.replicas[name]},
                "status": {"replicas": self.replicas[name], "selector": selector}}

    def _route(self, req: Request) -> tuple[int, dict]:
        ns = re.escape(self.namespace)
        if m := re.fullmatch(rf"/apis/apps/v1/namespaces/{ns}/deployments/([^/]+)/scale", req.path):
            name = m.group(1)
            if name not in self.replicas:
                return self._status(404, "NotFound", f'deployments.apps "{name}" not found')
            if req.method in ("PATCH", "PUT"):
                if req.method == "PATCH":
                    assert req.content_type == "application/merge-patch+json", req.content_type
                    new = merge_patch({"spec": {"replicas": self.replicas[name]}}, req.body)["spec"]["replicas"]
                else:
                    version = (req.body.get("metadata") or {}).get("resourceVersion")
                    if version and version != self._deployment_version(name):
                        return self._status(409, "Conflict", 'Operation cannot be fulfilled on deployments.apps '
                                            f'"{name}": the object has been modified; please apply your changes to '
                                            "the latest version and try again")
                    new = req.body["spec"]["replicas"]
                if new != self.replicas[name]:
                    self.replicas[name] = new
                    self.touch_deployment(name)
                    if not self.controllers_paused:
                        self.sync()
            return 200, self._scale(name)
        if req.path == f"/apis/apps/v1/namespaces/{self.namespace}/replicasets" and req.method == "GET":
            selector = req.query.get("labelSelector", "")
            items = [rs for rs in self.replica_sets.values() if _matches(rs["metadata"]["labels"], selector)]
            return 200, {"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {"resourceVersion": "1"},
                         "items": items}
        if req.path == f"/api/v1/namespaces/{self.namespace}/pods" and req.method == "GET":
            selector = req.query.get("labelSelector", "")
            items = [p for p in self.pods.values() if _matches(p["metadata"]["labels"], selector)]
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}
        if m := re.fullmatch(rf"/api/v1/namespaces/{ns}/pods/([^/]+)", req.path):
            name = m.group(1)
            if name not in self.pods:
                return self._status(404, "NotFound", f'pods "{name}" not found')
            if req.method == "PATCH":
                assert req.content_type == "application/merge-patch+json", req.content_type
                merge_patch(self.pods[name], req.body)
            return 200, self.pods[name]
        if m := re.fullmatch(rf"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases(?:/([^/]+))?", req.path):
            name = m.group(1) or (req.body or {}).get("metadata", {}).get("name")
            if req.method == "GET":
                if name not in self.leases:
                    return self._status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                return 200, self.leases[name]
            if req.method == "POST":
                if name in self.leases:
                    return self._status(409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists')
                lease = dict(req.body)
                lease["metadata"] = {**lease["metadata"], "resourceVersion": self._next_version()}
                self.leases[name] = lease
                return 201, lease
            if req.method == "PUT":
                current = self.leases.get(name)
                if current is None:
                    return self._status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                if req.body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                    return self._status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again")
                lease = dict(req.body)
                lease["metadata"] = {**lease["metadata"], "resourceVersion": self._next_version()}
                self.leases[name] = lease
                return 200, lease
        return self._status(404, "NotFound", f"fake API has no route for {req.method} {req.path}")

    def writes(self) -> list[tuple[str, str, Any]]:
        return [(r.method, r.path, r.body) for r in self.requests if r.method != "GET"]

    def live(self) -> list[str]:
        return sorted(n for n, p in self.pods.items() if "deletionTimestamp" not in p["metadata"])
