"""GKE Workload Identity: a Kubernetes service account acts as a Google service account (GSA).

For each binding this creates one GSA, lets exactly `namespace/service_account` impersonate it
(`roles/iam.workloadIdentityUser` on that GSA only) and grants it object access on the named buckets
only. Pods never see a key file: the GKE metadata server (node pools run with GKE_METADATA) swaps the
pod's Kubernetes token for the GSA's access token.
"""

from __future__ import annotations

import re
from typing import Sequence

import pulumi
import pulumi_gcp as gcp

from airflow_on_k8s.contract import BucketGrant, WorkloadIdentity
from airflow_on_k8s.gcp.names import bounded_name

# Object roles per access level. objectUser (not objectAdmin) for read-write: it reads, writes,
# lists and deletes objects but cannot change object ACLs or IAM, which nothing in Airflow needs.
BUCKET_ROLES: dict[str, str] = {
    "read": "roles/storage.objectViewer",
    "read-write": "roles/storage.objectUser",
}

ANNOTATION = "iam.gke.io/gcp-service-account"

_ACCOUNT_ID_MAX = 30
_ACCOUNT_ID_MIN = 6


def service_account_id(*parts: str) -> str:
    """A valid GSA account ID (6-30 chars, lowercase letters, digits and '-', starting with a letter) from `parts`.

    Too-long IDs keep their start and end with a short hash of the full text, so distinct inputs stay distinct.
    """
    text = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    if not text or not text[0].isalpha():
        text = "sa-" + text
    if len(text) < _ACCOUNT_ID_MIN:
        text = f"{text}-account"
    return bounded_name(text, _ACCOUNT_ID_MAX)


class GkeWorkloadIdentity(WorkloadIdentity):
    """The `WorkloadIdentity` hook of a GKE cluster whose workload pool is `<project>.svc.id.goog`."""

    def __init__(
        self,
        cluster_name: str,
        project: str,
        gcp_provider: gcp.Provider,
        cluster: pulumi.Resource,
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> None:
        self.cluster_name = cluster_name
        self.project = project
        self.workload_pool = f"{project}.svc.id.goog"
        self._provider = gcp_provider
        # The workload pool exists only once the cluster does; IAM rejects members of a missing pool.
        self._cluster = cluster
        # The APIs the bindings call (IAM, Cloud Storage), when the cluster enables them.
        self._depends_on = list(depends_on)

    def member(self, namespace: str, service_account: str) -> str:
        """The IAM principal for one Kubernetes service account."""
        return f"serviceAccount:{self.workload_pool}[{namespace}/{service_account}]"

    def bind_service_account(
        self,
        name: str,
        namespace: str,
        service_account: str,
        grants: Sequence[BucketGrant],
        parent: pulumi.Resource,
    ) -> pulumi.Output[dict[str, str]]:
        for field, value in (("namespace", namespace), ("service_account", service_account)):
            if not value:
                raise ValueError(f"{name}: {field} is empty; name the Kubernetes {field.replace('_', ' ')} to bind")
        for grant in grants:
            if grant.access not in BUCKET_ROLES:
                raise ValueError(
                    f"{name}: bucket access {grant.access!r} is not known; use one of {', '.join(BUCKET_ROLES)}"
                )

        opts = pulumi.ResourceOptions(parent=parent, provider=self._provider, depends_on=self._depends_on)
        gsa = gcp.serviceaccount.Account(
            f"{name}-gsa",
            account_id=service_account_id(self.cluster_name, name),
            display_name=f"{self.cluster_name}: {namespace}/{service_account}",
            description=f"Workload Identity for Kubernetes service account {namespace}/{service_account}",
            project=self.project,
            opts=opts,
        )
        gcp.serviceaccount.IAMMember(
            f"{name}-workload-identity-user",
            service_account_id=gsa.name,
            role="roles/iam.workloadIdentityUser",
            member=self.member(namespace, service_account),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[self._cluster])),
        )
        gsa_member = gsa.email.apply(lambda email: f"serviceAccount:{email}")
        for index, grant in enumerate(grants):
            # Bucket-level, not project-level: the GSA reaches these buckets and no others.
            gcp.storage.BucketIAMMember(
                f"{name}-bucket-{index}",
                bucket=grant.bucket,
                role=BUCKET_ROLES[grant.access],
                member=gsa_member,
                opts=opts,
            )
        return gsa.email.apply(lambda email: {ANNOTATION: email})
