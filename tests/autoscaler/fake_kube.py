"""A fake Kubernetes API server behind the `kubernetes` client's HTTP layer.

`FakeKube.api_client()` returns a real `kubernetes.client.ApiClient` whose urllib3 pool manager is replaced:
the client builds, serializes and parses everything as usual, and this class answers the few endpoints the
autoscaler uses (Deployment scale, pods, Leases) from in-memory state with the API server's semantics that
matter here: JSON merge patch, resourceVersion conflicts (409), 404s. Every request is recorded for the
tests to assert on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import urllib3
from kubernetes import client


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
        annotations: dict | None = None, labels: dict | None = None) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "airflow", "labels": labels or {"component": "worker"},
                     "annotations": annotations or {}, "resourceVersion": "1",
                     **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})},
        "spec": {"containers": [{"name": "worker", "image": "apache/airflow"}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


@dataclass
class FakeKube:
    namespace: str = "airflow"
    replicas: dict[str, int] = field(default_factory=dict)
    pods: dict[str, dict] = field(default_factory=dict)
    leases: dict[str, dict] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    down: bool = False  # every request fails to connect
    before_write: Callable[[Request], None] | None = None  # lets a test slip in a concurrent writer
    _version: int = 100

    def api_client(self) -> client.ApiClient:
        config = client.Configuration(host="https://kube.test")
        api = client.ApiClient(config)
        api.rest_client.pool_manager = self
        return api

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

    def _route(self, req: Request) -> tuple[int, dict]:
        ns = re.escape(self.namespace)
        if m := re.fullmatch(rf"/apis/apps/v1/namespaces/{ns}/deployments/([^/]+)/scale", req.path):
            name = m.group(1)
            if name not in self.replicas:
                return self._status(404, "NotFound", f'deployments.apps "{name}" not found')
            if req.method == "PATCH":
                assert req.content_type == "application/merge-patch+json", req.content_type
                self.replicas[name] = merge_patch({"spec": {"replicas": self.replicas[name]}}, req.body)["spec"]["replicas"]
            return 200, {"apiVersion": "autoscaling/v1", "kind": "Scale",
                         "metadata": {"name": name, "namespace": self.namespace},
                         "spec": {"replicas": self.replicas[name]}, "status": {"replicas": self.replicas[name]}}
        if req.path == f"/api/v1/namespaces/{self.namespace}/pods" and req.method == "GET":
            wanted = dict(kv.split("=", 1) for kv in req.query.get("labelSelector", "").split(",") if kv)
            items = [p for p in self.pods.values() if wanted.items() <= p["metadata"]["labels"].items()]
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
