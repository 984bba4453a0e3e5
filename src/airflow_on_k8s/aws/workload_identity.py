"""IAM Roles for Service Accounts (IRSA): how a Kubernetes service account on EKS acts as an IAM role.

EKS publishes an OIDC issuer per cluster. An IAM OIDC provider trusts that issuer, and each role's trust
policy accepts only tokens whose subject is one `system:serviceaccount:<namespace>:<name>` and whose
audience is STS. The pod identity webhook on EKS mounts such a token into pods whose service account
carries the `eks.amazonaws.com/role-arn` annotation, and the AWS SDKs exchange it for role credentials.
"""

from __future__ import annotations

from typing import Any, Sequence

import pulumi
import pulumi_aws as aws

from airflow_on_k8s.contract import BucketGrant, WorkloadIdentity

ROLE_ARN_ANNOTATION = "eks.amazonaws.com/role-arn"
STS_AUDIENCE = "sts.amazonaws.com"

# What each BucketGrant access level may do. Listing is on the bucket, the rest on its objects.
# read-write has no DeleteObject: log and XCom writers overwrite objects, they never need to delete them.
BUCKET_ACTIONS = ["s3:ListBucket", "s3:GetBucketLocation"]
OBJECT_ACTIONS = {
    "read": ["s3:GetObject"],
    "read-write": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
}


def service_account_subject(namespace: str, service_account: str) -> str:
    """The `sub` claim of a service-account token, as IAM sees it."""
    return f"system:serviceaccount:{namespace}:{service_account}"


def irsa_trust_policy(
    oidc_provider_arn: str, issuer_host: str, namespace: str, service_account: str
) -> dict[str, Any]:
    """A trust policy that lets exactly one service account assume the role through the cluster's OIDC issuer."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": oidc_provider_arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{issuer_host}:sub": service_account_subject(namespace, service_account),
                        f"{issuer_host}:aud": STS_AUDIENCE,
                    }
                },
            }
        ],
    }


def bucket_policy(partition: str, grants: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Least-privilege S3 access for (bucket name, access) pairs: each statement names its bucket's ARNs."""
    statements: list[dict[str, Any]] = []
    for bucket, access in grants:
        if access not in OBJECT_ACTIONS:
            raise ValueError(f"BucketGrant.access: {access!r} is not allowed; use one of {sorted(OBJECT_ACTIONS)}")
        if not bucket:
            raise ValueError("BucketGrant.bucket: is empty; pass the bucket's name")
        bucket_arn = f"arn:{partition}:s3:::{bucket}"
        statements.append({"Effect": "Allow", "Action": BUCKET_ACTIONS, "Resource": bucket_arn})
        statements.append({"Effect": "Allow", "Action": OBJECT_ACTIONS[access], "Resource": f"{bucket_arn}/*"})
    return {"Version": "2012-10-17", "Statement": statements}


class IrsaWorkloadIdentity(WorkloadIdentity):
    """Workload identity on EKS through IRSA: one IAM role per bound service account.

    `oidc_provider_arn` and `issuer_host` (the issuer URL without `https://`) come from the cluster's
    IAM OIDC provider; `aws_provider` is passed to every role so it lands in the cluster's account and region.
    """

    def __init__(
        self,
        oidc_provider_arn: pulumi.Input[str],
        issuer_host: pulumi.Input[str],
        partition: pulumi.Input[str],
        aws_provider: aws.Provider,
    ) -> None:
        self.oidc_provider_arn = pulumi.Output.from_input(oidc_provider_arn)
        self.issuer_host = pulumi.Output.from_input(issuer_host)
        self.partition = pulumi.Output.from_input(partition)
        self.aws_provider = aws_provider

    def service_account_role(
        self, name: str, namespace: str, service_account: str, parent: pulumi.Resource
    ) -> aws.iam.Role:
        """An IAM role only `namespace/service_account` may assume, with no permissions yet."""
        trust = pulumi.Output.all(self.oidc_provider_arn, self.issuer_host).apply(
            lambda args: irsa_trust_policy(args[0], args[1], namespace, service_account)
        )
        return aws.iam.Role(
            f"{name}-irsa",
            assume_role_policy=pulumi.Output.json_dumps(trust),
            description=f"IRSA role for the Kubernetes service account {namespace}/{service_account}",
            opts=pulumi.ResourceOptions(parent=parent, provider=self.aws_provider),
        )

    def bind_service_account(
        self,
        name: str,
        namespace: str,
        service_account: str,
        grants: Sequence[BucketGrant],
        parent: pulumi.Resource,
    ) -> pulumi.Output[dict[str, str]]:
        for grant in grants:
            if grant.access not in OBJECT_ACTIONS:
                raise ValueError(
                    f"{name}: BucketGrant.access {grant.access!r} is not allowed; use one of {sorted(OBJECT_ACTIONS)}"
                )
        role = self.service_account_role(name, namespace, service_account, parent)
        # The annotation waits for the permissions too, so no pod starts with a role that cannot act yet.
        ready: list[pulumi.Output[Any]] = [role.arn]
        if grants:
            accesses = [g.access for g in grants]
            policy = pulumi.Output.all(self.partition, *[g.bucket for g in grants]).apply(
                lambda args: bucket_policy(args[0], list(zip(args[1:], accesses)))
            )
            role_policy = aws.iam.RolePolicy(
                f"{name}-buckets",
                role=role.id,
                policy=pulumi.Output.json_dumps(policy),
                opts=pulumi.ResourceOptions(parent=parent, provider=self.aws_provider),
            )
            ready.append(role_policy.id)
        return pulumi.Output.all(*ready).apply(lambda values: {ROLE_ARN_ANNOTATION: values[0]})
