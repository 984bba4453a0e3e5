"""`FakeKube` plus the core/v1 Events endpoints the autoscaler's event recorder uses (create, patch), and the
Deployment's uid in the scale subresource's metadata, as the API server returns it there
(pkg/registry/apps/deployment/storage/storage.go `scaleFromDeployment` copies the Deployment's UID).

A subclass rather than an edit of fake_kube.py, so the two can change independently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tests.autoscaler.fake_kube import FakeKube, Request, merge_patch

DEPLOYMENT_UID = "6f1c2d3e-0000-4000-8000-00000000beef"


@dataclass
class FakeKubeWithEvents(FakeKube):
    events: dict[str, dict] = field(default_factory=dict)

    def _route(self, req: Request) -> tuple[int, dict]:
        ns = re.escape(self.namespace)
        if m := re.fullmatch(rf"/api/v1/namespaces/{ns}/events(?:/([^/]+))?", req.path):
            name = m.group(1)
            if req.method == "POST" and name is None:
                body = dict(req.body)
                name = body["metadata"]["name"]
                if name in self.events:
                    return self._status(409, "AlreadyExists", f'events "{name}" already exists')
                body["metadata"] = {**body["metadata"], "resourceVersion": self._next_version()}
                self.events[name] = body
                return 201, body
            if req.method == "PATCH" and name is not None:
                if name not in self.events:
                    return self._status(404, "NotFound", f'events "{name}" not found')
                assert req.content_type == "application/merge-patch+json", req.content_type
                merge_patch(self.events[name], req.body)
                return 200, self.events[name]
        return super()._route(req)

    def deployment_uid(self, name: str) -> str:
        return DEPLOYMENT_UID
