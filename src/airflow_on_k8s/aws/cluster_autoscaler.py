"""The Kubernetes Cluster Autoscaler on EKS: adds task nodes for pending pods and removes idle ones.

It finds the node groups' Auto Scaling groups by the tags EKS puts on every managed node group's
group (`k8s.io/cluster-autoscaler/enabled`, `k8s.io/cluster-autoscaler/<cluster>`), so the chart needs
no list of groups. It acts as an IAM role through IRSA; that role may change the size of this cluster's
groups only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from airflow_on_k8s.aws.workload_identity import ROLE_ARN_ANNOTATION, IrsaWorkloadIdentity
from airflow_on_k8s.contract import register_annotated_outputs
from airflow_on_k8s.config import ClusterAutoscalerConfig, ConfigError, StackConfig
from airflow_on_k8s._helm import pinned_release
from airflow_on_k8s.versions import CLUSTER_AUTOSCALER_CHART, CLUSTER_AUTOSCALER_IMAGE_TAGS

NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "cluster-autoscaler"

# Describe and list calls take no resource-level permissions in IAM: "*" is the only resource AWS accepts.
DESCRIBE_ACTIONS = [
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeLaunchConfigurations",
    "autoscaling:DescribeScalingActivities",
    "ec2:DescribeImages",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:GetInstanceTypesFromInstanceRequirements",
]
# The two calls that change capacity; allowed only on groups tagged as this cluster's.
SCALING_ACTIONS = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]

# Measured needs of one replica on a cluster of this size (upstream's EKS example uses the same figures).
RESOURCES = {"requests": {"cpu": "100m", "memory": "600Mi"}, "limits": {"memory": "600Mi"}}

# The stack config's defaults are the args' defaults: one place says how fast nodes go.
_DEFAULTS = ClusterAutoscalerConfig()


def cluster_tag_key(cluster_name: str) -> str:
    """The tag EKS sets to `owned` on the Auto Scaling group of each of the cluster's managed node groups."""
    return f"k8s.io/cluster-autoscaler/{cluster_name}"


def autoscaler_policy(partition: str, region: str, account_id: str, cluster_name: str) -> dict[str, Any]:
    """The Cluster Autoscaler's IAM permissions: read everything it must, resize only this cluster's groups."""
    arn = f"arn:{partition}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Describe", "Effect": "Allow", "Action": DESCRIBE_ACTIONS, "Resource": "*"},
            {
                # Labels and taints of a managed node group that has never had a node (see eks_cluster.py).
                "Sid": "DescribeThisClustersNodegroups",
                "Effect": "Allow",
                "Action": ["eks:DescribeNodegroup"],
                "Resource": f"{arn}:eks:{region}:{account_id}:nodegroup/{cluster_name}/*",
            },
            {
                "Sid": "ScaleThisClustersGroups",
                "Effect": "Allow",
                "Action": SCALING_ACTIONS,
                "Resource": f"{arn}:autoscaling:{region}:{account_id}:autoScalingGroup:*:autoScalingGroupName/*",
                "Condition": {"StringEquals": {f"aws:ResourceTag/{cluster_tag_key(cluster_name)}": "owned"}},
            },
        ],
    }


@dataclass(frozen=True)
class ClusterAutoscalerArgs:
    """What the Cluster Autoscaler needs: which cluster, where, and how fast to scale down."""

    cluster_name: str
    """The EKS cluster's name: the autoscaler discovers the node groups' Auto Scaling groups tagged with it."""
    region: str
    """The cluster's AWS region, e.g. eu-west-1."""
    kubernetes_version: str
    """The cluster's Kubernetes minor, e.g. "1.35": picks the autoscaler release built for it; must be a key of
    CLUSTER_AUTOSCALER_IMAGE_TAGS (versions.py)."""
    scale_down_unneeded_time: str = _DEFAULTS.scale_down_unneeded_time
    """How long a node must be unneeded before it is removed, as a duration like 90s, 3m or 1h (stock: 10m)."""
    scale_down_delay_after_add: str = _DEFAULTS.scale_down_delay_after_add
    """Pause after a scale-up before scale-down is considered again, as a duration like 3m (stock: 10m)."""
    expander: str = _DEFAULTS.expander
    """Which node group grows when several fit: least-waste, random, most-pods or priority ("price" works only on
    GCE)."""

    @classmethod
    def from_stack(cls, config: StackConfig) -> ClusterAutoscalerArgs:
        if config.aws is None:
            raise ConfigError(["airflow-on-k8s:aws: is required for the Cluster Autoscaler on EKS; set aws.region"])
        if config.cluster_autoscaler.expander == "price":
            # The AWS provider has no pricing model; the autoscaler exits at start-up with this expander.
            raise ConfigError(
                [
                    "airflow-on-k8s:clusterAutoscaler.expander: 'price' works only on GCE, the autoscaler "
                    "exits at start-up on AWS; use least-waste"
                ]
            )
        if config.kubernetes_version not in CLUSTER_AUTOSCALER_IMAGE_TAGS:
            raise ConfigError(
                [
                    f"airflow-on-k8s:kubernetesVersion: {config.kubernetes_version!r} has no Cluster Autoscaler "
                    "image pinned; add it to CLUSTER_AUTOSCALER_IMAGE_TAGS in airflow_on_k8s/versions.py or use one of "
                    + ", ".join(sorted(CLUSTER_AUTOSCALER_IMAGE_TAGS))
                ]
            )
        return cls(
            cluster_name=config.cluster_name,
            region=config.aws.region,
            kubernetes_version=config.kubernetes_version,
            scale_down_unneeded_time=config.cluster_autoscaler.scale_down_unneeded_time,
            scale_down_delay_after_add=config.cluster_autoscaler.scale_down_delay_after_add,
            expander=config.cluster_autoscaler.expander,
        )

    @property
    def image_tag(self) -> str:
        """The autoscaler release built for the cluster's Kubernetes minor version (its compatibility rule)."""
        return CLUSTER_AUTOSCALER_IMAGE_TAGS[self.kubernetes_version]

    def extra_args(self) -> dict[str, Any]:
        """Flags passed to the autoscaler (the chart renders each as `--key=value`)."""
        return {
            # The stock 10 minutes keeps an idle task node billed long after its last task.
            "scale-down-unneeded-time": self.scale_down_unneeded_time,
            "scale-down-delay-after-add": self.scale_down_delay_after_add,
            "expander": self.expander,
            # Spread a pool across groups of equal instance types, should it ever be split per AZ.
            "balance-similar-node-groups": True,
            # kube-system pods (CoreDNS, metrics-server) have PodDisruptionBudgets; let them move so a
            # surplus system node can go too. Running task pods are bare pods and still block scale-down.
            "skip-nodes-with-system-pods": False,
        }

    def values(
        self,
        service_account_annotations: pulumi.Input[dict[str, str]],
        node_selector: pulumi.Input[dict[str, str]],
    ) -> dict[str, Any]:
        """The chart's values (checked against the pinned chart's values.yaml)."""
        return {
            "cloudProvider": "aws",
            "awsRegion": self.region,
            "autoDiscovery": {"clusterName": self.cluster_name},
            "fullnameOverride": "cluster-autoscaler",
            "image": {"tag": self.image_tag},
            "rbac": {
                "serviceAccount": {"create": True, "name": SERVICE_ACCOUNT, "annotations": service_account_annotations}
            },
            "extraArgs": self.extra_args(),
            "resources": RESOURCES,
            # The system pool always has a node; the task pool's taint keeps the autoscaler off it anyway.
            "nodeSelector": node_selector,
            # Never evict the autoscaler while it drains the node it runs on.
            "podAnnotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        }


class ClusterAutoscaler(pulumi.ComponentResource):
    """The Cluster Autoscaler chart in kube-system with its IRSA role."""

    role_arn: pulumi.Output[str]
    """The ARN of the IAM role the autoscaler's service account assumes."""
    release_name: pulumi.Output[str]
    """The Helm release's name."""
    service_account: pulumi.Output[str]
    """The autoscaler's ServiceAccount, "kube-system/cluster-autoscaler"."""
    role: aws.iam.Role
    """The IAM role the autoscaler's service account assumes (Python-only)."""
    release: k8s.helm.v3.Release
    """The Helm release (Python-only)."""

    def __init__(
        self,
        name: str,
        args: ClusterAutoscalerArgs,
        identity: IrsaWorkloadIdentity,
        k8s_provider: k8s.Provider,
        node_selector: pulumi.Input[dict[str, str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("airflow-on-k8s:aws:ClusterAutoscaler", name, None, opts)
        self.service_account = pulumi.Output.from_input(f"{NAMESPACE}/{SERVICE_ACCOUNT}")

        self.role = identity.service_account_role(name, NAMESPACE, SERVICE_ACCOUNT, parent=self)
        account_id = aws.get_caller_identity_output(
            opts=pulumi.InvokeOutputOptions(provider=identity.aws_provider, parent=self)
        ).account_id
        policy = pulumi.Output.all(identity.partition, account_id).apply(
            lambda a: autoscaler_policy(a[0], args.region, a[1], args.cluster_name)
        )
        role_policy = aws.iam.RolePolicy(
            f"{name}-scaling",
            role=self.role.id,
            policy=pulumi.Output.json_dumps(policy),
            opts=pulumi.ResourceOptions(parent=self, provider=identity.aws_provider),
        )
        annotations = pulumi.Output.all(self.role.arn, role_policy.id).apply(
            lambda a: {ROLE_ARN_ANNOTATION: a[0]}
        )
        self.release = pinned_release(
            name,
            CLUSTER_AUTOSCALER_CHART,
            namespace=NAMESPACE,
            values=args.values(annotations, node_selector),
            provider=k8s_provider,
            parent=self,
        )
        self.role_arn = self.role.arn
        self.release_name = self.release.name
        register_annotated_outputs(self)
