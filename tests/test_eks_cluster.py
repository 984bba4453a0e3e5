"""The EKS cluster (airflow_on_k8s/aws/cluster.py), its Cluster Autoscaler and IRSA, checked on the real program
run under Pulumi's mock runtime for aws-dev and aws-prod, plus unit tests of the pure helpers.

`iam_policy_problems(run)` is the reusable check that no IAM policy document a program writes grants a
wildcard action; it works on any ProgramRun (it finds nothing to object to in a GCP run's IAM bindings
unless they use a primitive role).
"""

from __future__ import annotations

import ipaddress
import json
import re
import textwrap
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import airflow_on_k8s.aws.cluster as eks_cluster_module
from airflow_on_k8s.config import CONTROL_PLANE_LOG_TYPES, PROJECT, ConfigError, StackConfig, parse_stack_config
from airflow_on_k8s.aws.cluster import (
    EksClusterArgs,
    documentation_cidrs,
    plan_subnets,
    s3_gateway_service,
    standard_support_warning,
    task_pool_asg_tags,
    usable_zones,
)
from airflow_on_k8s.aws.names import derived_name
from airflow_on_k8s.task_pool import TASK_POOL
from airflow_on_k8s.versions import (
    CLUSTER_AUTOSCALER_CHART,
    CLUSTER_AUTOSCALER_IMAGE_TAGS,
    EKS_STANDARD_SUPPORT_ENDS,
    SUPPORTED_KUBERNETES_VERSIONS,
)
from tests.conftest import program_run
from airflow_on_k8s.testing.mock_runtime import STACKS_DIR, ProgramRun, RecordedResource, fake_outputs, run_program

CLUSTER = "aws:eks/cluster:Cluster"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
ROLE = "aws:iam/role:Role"
RELEASE = "kubernetes:helm.sh/v3:Release"
KMS_KEY = "aws:kms/key:Key"
ADDON = "aws:eks/addon:Addon"

# The smallest aws section the program accepts: a region and who may reach the API.
DEPLOYER = "198.18.0.10/32"
AWS_SECTION = {"region": "eu-west-1", "publicAccessCidrs": [DEPLOYER]}


# ---------------------------------------------------------------------------------------------------------
# Reusable IAM check
# ---------------------------------------------------------------------------------------------------------

# GCP's basic roles grant (nearly) every permission in a project: the GCP form of Action "*".
PRIMITIVE_GCP_ROLES = {"roles/owner", "roles/editor"}


def policy_documents(run: ProgramRun) -> Iterator[tuple[RecordedResource, str, dict[str, Any]]]:
    """Every IAM policy document in any resource input (policy, assumeRolePolicy, inlinePolicies[].policy, ...),
    whether the input holds it as JSON text or as an object."""

    def walk(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                return
        if isinstance(value, dict):
            if "Statement" in value:
                yield path, value
                return
            for key, inner in value.items():
                yield from walk(inner, f"{path}.{key}" if path else key)
        elif isinstance(value, list):
            for i, inner in enumerate(value):
                yield from walk(inner, f"{path}[{i}]")

    for resource in run.resources:
        for path, doc in walk(resource.inputs, ""):
            yield resource, path, doc


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def iam_policy_problems(run: ProgramRun) -> list[str]:
    """Wildcard grants in `run`: Action "*" or "service:*", any NotAction, and GCP basic roles."""
    problems: list[str] = []
    for resource, path, doc in policy_documents(run):
        for i, statement in enumerate(_as_list(doc.get("Statement"))):
            where = f"{resource.type} {resource.name} {path} Statement[{i}]"
            if "NotAction" in statement:
                problems.append(f"{where}: NotAction grants every action not listed")
            for action in _as_list(statement.get("Action", [])):
                if action == "*" or (isinstance(action, str) and action.endswith(":*")):
                    problems.append(f"{where}: wildcard action {action!r}")
    for resource in run.resources:
        for key in ("role", "roles"):
            for role in _as_list(resource.inputs.get(key, [])):
                if role in PRIMITIVE_GCP_ROLES:
                    problems.append(f"{resource.type} {resource.name} {key}: basic role {role} grants nearly everything")
    return problems


def test_no_program_writes_a_wildcard_iam_action(aws_run):
    documents = list(policy_documents(aws_run))
    # The EKS program writes trust policies and inline policies; finding none would make this test vacuous.
    assert len(documents) >= 6, [(r.name, p) for r, p, _ in documents]
    assert iam_policy_problems(aws_run) == []


def test_the_wildcard_check_also_passes_on_gcp_runs(gcp_run):
    assert iam_policy_problems(gcp_run) == []


def test_the_wildcard_check_catches_wildcards():
    def doc(*actions: str, key: str = "Action") -> str:
        return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", key: list(actions), "Resource": "*"}]})

    resources = [
        RecordedResource("aws:iam/rolePolicy:RolePolicy", "star", None, {"policy": doc("*")}, True),
        RecordedResource("aws:iam/policy:Policy", "service-star", None, {"policy": doc("s3:GetObject", "s3:*")}, True),
        RecordedResource(
            "aws:iam/role:Role", "inline", None, {"inlinePolicies": [{"name": "x", "policy": doc("ec2:*")}]}, True
        ),
        RecordedResource("aws:iam/policy:Policy", "not-action", None, {"policy": doc("iam:*", key="NotAction")}, True),
        RecordedResource("gcp:projects/iAMMember:IAMMember", "owner", None, {"role": "roles/owner"}, True),
        RecordedResource("aws:iam/rolePolicy:RolePolicy", "fine", None, {"policy": doc("s3:GetObject")}, True),
    ]
    problems = iam_policy_problems(ProgramRun("synthetic", resources, {}, []))
    flagged = {p.split()[1] for p in problems}
    assert flagged == {"star", "service-star", "inline", "not-action", "owner"}


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def stack_config(stack: str) -> StackConfig:
    """The validated config of a stack file, as the program sees it."""
    doc = yaml.safe_load((STACKS_DIR / f"Pulumi.{stack}.yaml").read_text())
    prefix = f"{PROJECT}:"
    return parse_stack_config({k[len(prefix) :]: v for k, v in doc["config"].items() if k.startswith(prefix)})


def policy(resource: RecordedResource, key: str = "policy") -> dict[str, Any]:
    return json.loads(resource.inputs[key])


def task_group(run: ProgramRun) -> RecordedResource:
    return run.one(NODE_GROUP, "-tasks")


def system_group(run: ProgramRun) -> RecordedResource:
    return run.one(NODE_GROUP, "-system")


def write_stack(tmp_path: Path, base: str, changes: dict[str, Any]) -> Path:
    """A copy of stacks/Pulumi.<base>.yaml with some project keys replaced, in a temporary stacks dir."""
    doc = yaml.safe_load((STACKS_DIR / f"Pulumi.{base}.yaml").read_text())
    for key, value in changes.items():
        doc["config"][f"{PROJECT}:{key}"] = value
    (tmp_path / f"Pulumi.{base}.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


# ---------------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------------


def test_subnets_one_public_and_one_private_per_az(aws_run):
    config = stack_config(aws_run.stack)
    subnets = aws_run.by_type("aws:ec2/subnet:Subnet")
    private = [s for s in subnets if "kubernetes.io/role/internal-elb" in s.inputs["tags"]]
    public = [s for s in subnets if "kubernetes.io/role/elb" in s.inputs["tags"]]
    zones = config.aws.availability_zones
    assert zones >= 2
    assert len(private) == len(public) == zones == len(subnets) // 2
    assert len({s.inputs["availabilityZone"] for s in private}) == zones
    assert len({s.inputs["availabilityZone"] for s in public}) == zones
    vpc = ipaddress.ip_network(aws_run.one("aws:ec2/vpc:Vpc").inputs["cidrBlock"])
    assert str(vpc) == config.aws.vpc_cidr
    for subnet in subnets:
        assert ipaddress.ip_network(subnet.inputs["cidrBlock"]).subnet_of(vpc)
        assert subnet.inputs["tags"][f"kubernetes.io/cluster/{config.cluster_name}"] == "shared"
        assert subnet.inputs["mapPublicIpOnLaunch"] is False


def test_nat_gateways_per_az_or_shared(aws_run):
    config = stack_config(aws_run.stack)
    nats = aws_run.by_type("aws:ec2/natGateway:NatGateway")
    assert len(nats) == (config.aws.availability_zones if config.aws.nat_gateway_per_az else 1)
    private_tables = [t for t in aws_run.by_type("aws:ec2/routeTable:RouteTable") if "-private-" in t.name]
    assert len(private_tables) == config.aws.availability_zones
    nat_ids = {f"{n.name}-id" for n in nats}
    used = {t.inputs["routes"][0]["natGatewayId"] for t in private_tables}
    assert used == nat_ids  # every NAT gateway is used, and private subnets leave only through NAT
    public_table = aws_run.one("aws:ec2/routeTable:RouteTable", "-public")
    igw = aws_run.one("aws:ec2/internetGateway:InternetGateway")
    assert public_table.inputs["routes"][0]["gatewayId"] == f"{igw.name}-id"


def test_the_cluster_and_nodes_live_in_private_subnets(aws_run):
    subnets = aws_run.by_type("aws:ec2/subnet:Subnet")
    private_ids = {f"{s.name}-id" for s in subnets if "kubernetes.io/role/internal-elb" in s.inputs["tags"]}
    assert set(aws_run.one(CLUSTER).inputs["vpcConfig"]["subnetIds"]) == private_ids
    for group in aws_run.by_type(NODE_GROUP):
        assert set(group.inputs["subnetIds"]) == private_ids


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.integers(min_value=8, max_value=20),
    az_count=st.integers(min_value=2, max_value=6),
    base=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_subnet_plan_fits_any_allowed_vpc(prefix, az_count, base):
    vpc = ipaddress.ip_network((base, prefix), strict=False)
    plans = plan_subnets(str(vpc), az_count)
    nets = [p.private for p in plans] + [p.public for p in plans]
    assert len(plans) == az_count
    assert all(n.subnet_of(vpc) for n in nets)
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
    # Pods take addresses from the private subnets, so those are the big ones.
    assert all(p.private.num_addresses > p.public.num_addresses for p in plans)
    # Even the smallest VPC the config allows (/20) leaves room for load balancers in each public subnet.
    assert all(p.public.num_addresses >= 64 for p in plans)


# ---------------------------------------------------------------------------------------------------------
# Control plane
# ---------------------------------------------------------------------------------------------------------


def test_cluster_uses_access_entries_kms_and_logs(aws_run):
    config = stack_config(aws_run.stack)
    cluster = aws_run.one(CLUSTER)
    inputs = cluster.inputs
    assert inputs["name"] == config.cluster_name
    assert inputs["version"] == config.kubernetes_version
    assert inputs["accessConfig"]["authenticationMode"] == "API"
    key = aws_run.one(KMS_KEY, "-secrets")
    assert key.inputs["enableKeyRotation"] is True
    assert inputs["encryptionConfig"]["resources"] == ["secrets"]
    assert inputs["encryptionConfig"]["provider"]["keyArn"] == fake_outputs(key.type, key.name, key.inputs)["arn"]
    assert inputs["enabledClusterLogTypes"] == config.aws.log_types(config.protect)
    log_group = aws_run.one("aws:cloudwatch/logGroup:LogGroup", "-control-plane")
    assert log_group.inputs["name"] == f"/aws/eks/{config.cluster_name}/cluster"
    assert log_group.inputs["retentionInDays"] == config.aws.log_retention_days(config.protect)
    assert log_group.name in cluster.options["dependsOn"]  # created first, so EKS does not create it unbounded
    assert inputs["kubernetesNetworkConfig"]["serviceIpv4Cidr"] == config.aws.service_cidr
    vpc_config = inputs["vpcConfig"]
    assert vpc_config["endpointPrivateAccess"] is True
    assert vpc_config["endpointPublicAccess"] is config.aws.public_endpoint
    if config.aws.public_endpoint:
        assert vpc_config["publicAccessCidrs"] == config.aws.public_access_cidrs


def test_cluster_role_may_use_only_its_secrets_key(aws_run):
    key = aws_run.one(KMS_KEY, "-secrets")
    key_arn = fake_outputs(key.type, key.name, key.inputs)["arn"]
    statements = policy(aws_run.one("aws:iam/rolePolicy:RolePolicy", "secrets-key"))["Statement"]
    assert [s["Resource"] for s in statements] == [key_arn]
    assert all(a.startswith("kms:") for s in statements for a in s["Action"])


def test_prod_is_protected_and_dev_is_not():
    prod, dev = program_run("aws-prod"), program_run("aws-dev")
    for type_ in ((CLUSTER, ""), (KMS_KEY, "-secrets")):
        assert prod.one(*type_).options.get("protect") is True
        assert dev.one(*type_).options.get("protect") is None
    assert prod.one(CLUSTER).inputs["deletionProtection"] is True
    assert dev.one(CLUSTER).inputs["deletionProtection"] is False


def test_admin_roles_get_cluster_admin_access_entries(tmp_path):
    admins = ["arn:aws:iam::123456789012:role/platform-admins", "arn:aws:iam::123456789012:role/oncall"]
    aws_section = {**AWS_SECTION, "availabilityZones": 2, "adminRoleArns": admins}
    stacks = write_stack(tmp_path, "aws-dev", {"aws": aws_section})
    run = run_program("aws-dev", stacks_dir=stacks)
    # (The AMP collector's entry belongs to the Observability component.)
    entries = [e for e in run.by_type("aws:eks/accessEntry:AccessEntry")
               if not e.parent.startswith("airflow-on-k8s:observability:")]
    assert sorted(e.inputs["principalArn"] for e in entries) == sorted(admins)
    assert all(e.inputs["type"] == "STANDARD" for e in entries)
    associations = run.by_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
    assert sorted(a.inputs["principalArn"] for a in associations) == sorted(admins)
    for association in associations:
        assert association.inputs["policyArn"] == "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
        assert association.inputs["accessScope"] == {"type": "cluster"}


# ---------------------------------------------------------------------------------------------------------
# Node groups
# ---------------------------------------------------------------------------------------------------------


def test_task_group_scales_from_zero_with_the_task_pool_label_and_taint(aws_run):
    config = stack_config(aws_run.stack)
    group = task_group(aws_run).inputs
    assert group["scalingConfig"]["minSize"] == 0
    assert group["scalingConfig"]["maxSize"] == config.task_pool.max_size
    assert group["labels"] == TASK_POOL.labels
    assert group["taints"] == [
        {"key": TASK_POOL.taint_key, "value": TASK_POOL.taint_value, "effect": TASK_POOL.eks_taint_effect}
    ]
    assert TASK_POOL.eks_taint_effect == "NO_SCHEDULE"
    assert group["instanceTypes"] == config.instance_types("task")
    assert group["capacityType"] == ("SPOT" if config.task_pool.spot else "ON_DEMAND")


def test_dev_tasks_run_on_spot_and_prod_on_demand():
    assert task_group(program_run("aws-dev")).inputs["capacityType"] == "SPOT"
    assert task_group(program_run("aws-prod")).inputs["capacityType"] == "ON_DEMAND"


def test_system_group_always_has_a_node_and_no_task_pool_taint(aws_run):
    config = stack_config(aws_run.stack)
    group = system_group(aws_run).inputs
    assert group["scalingConfig"]["minSize"] == config.system_pool.min_size >= 1
    assert group["scalingConfig"]["maxSize"] == config.system_pool.max_size
    assert group["instanceTypes"] == config.instance_types("system")
    assert "taints" not in group and "labels" not in group


def test_pulumi_never_resets_the_autoscalers_desired_size(aws_run):
    for group in aws_run.by_type(NODE_GROUP):
        assert group.options["ignoreChanges"] == ["scalingConfig.desiredSize"]


def test_nodes_use_imdsv2_with_hop_limit_one_and_the_pool_disk_size(aws_run):
    config = stack_config(aws_run.stack)
    for group, pool in ((system_group(aws_run), config.system_pool), (task_group(aws_run), config.task_pool)):
        template_id = group.inputs["launchTemplate"]["id"]
        template = next(t for t in aws_run.by_type("aws:ec2/launchTemplate:LaunchTemplate") if f"{t.name}-id" == template_id)
        metadata = template.inputs["metadataOptions"]
        assert metadata["httpTokens"] == "required"
        assert metadata["httpPutResponseHopLimit"] == 1
        ebs = template.inputs["blockDeviceMappings"][0]["ebs"]
        assert ebs["volumeSize"] == pool.disk_size_gb
        assert ebs["encrypted"] == "true"
        assert group.inputs["amiType"] == ("AL2023_ARM_64_STANDARD" if pool.arm else "AL2023_x86_64_STANDARD")


def test_node_role_has_no_cni_permissions_the_vpc_cni_uses_irsa(aws_run):
    attachments = {
        a.name: a.inputs["policyArn"] for a in aws_run.by_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    }
    node = {name: arn for name, arn in attachments.items() if "-node-" in name}
    assert sorted(arn.rsplit("/", 1)[1] for arn in node.values()) == [
        "AmazonEC2ContainerRegistryPullOnly",
        "AmazonEKSWorkerNodePolicy",
    ]
    cni_role = aws_run.one(ROLE, "vpc-cni")
    trust = policy(cni_role, "assumeRolePolicy")["Statement"][0]["Condition"]["StringEquals"]
    assert "system:serviceaccount:kube-system:aws-node" in trust.values()
    addon = next(a for a in aws_run.by_type("aws:eks/addon:Addon") if a.inputs["addonName"] == "vpc-cni")
    assert addon.inputs["serviceAccountRoleArn"] == fake_outputs(ROLE, cni_role.name, cni_role.inputs)["arn"]
    # Nodes join only once pod networking can be set up.
    for group in aws_run.by_type(NODE_GROUP):
        assert addon.name in group.options["dependsOn"]


# ---------------------------------------------------------------------------------------------------------
# Cluster Autoscaler: ASG tags, IAM, chart
# ---------------------------------------------------------------------------------------------------------


def test_task_group_asg_carries_the_node_template_tags(aws_run):
    tags = aws_run.by_type("aws:autoscaling/tag:Tag")
    group = task_group(aws_run)
    asg_name = fake_outputs(NODE_GROUP, group.name, group.inputs)["resources"][0]["autoscalingGroups"][0]["name"]
    found = {t.inputs["tag"]["key"]: t.inputs["tag"]["value"] for t in tags}
    assert found == {
        f"k8s.io/cluster-autoscaler/node-template/label/{TASK_POOL.label_key}": TASK_POOL.label_value,
        f"k8s.io/cluster-autoscaler/node-template/taint/{TASK_POOL.taint_key}": TASK_POOL.taint_string,
    }
    assert found == task_pool_asg_tags()
    for tag in tags:
        assert tag.inputs["autoscalingGroupName"] == asg_name
        assert tag.inputs["tag"]["propagateAtLaunch"] is False


def test_autoscaler_may_resize_only_this_clusters_groups(aws_run):
    config = stack_config(aws_run.stack)
    statements = policy(aws_run.one("aws:iam/rolePolicy:RolePolicy", "cluster-autoscaler"))["Statement"]
    scaling = [s for s in statements if "autoscaling:SetDesiredCapacity" in s["Action"]]
    assert len(scaling) == 1
    assert sorted(scaling[0]["Action"]) == [
        "autoscaling:SetDesiredCapacity",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    assert scaling[0]["Condition"] == {
        "StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{config.cluster_name}": "owned"}
    }
    # "*" only where AWS allows nothing else: read-only Describe/Get calls.
    for statement in statements:
        if statement["Resource"] == "*":
            assert all(a.split(":")[1].startswith(("Describe", "Get")) for a in statement["Action"])
    nodegroups = next(s for s in statements if s["Action"] == ["eks:DescribeNodegroup"])
    assert nodegroups["Resource"].endswith(f":nodegroup/{config.cluster_name}/*")


def test_autoscaler_release_is_pinned_and_configured(aws_run):
    config = stack_config(aws_run.stack)
    release = aws_run.one(RELEASE, "cluster-autoscaler")
    inputs = release.inputs
    assert (inputs["chart"], inputs["version"], inputs["repositoryOpts"]["repo"]) == (
        CLUSTER_AUTOSCALER_CHART.chart,
        CLUSTER_AUTOSCALER_CHART.version,
        CLUSTER_AUTOSCALER_CHART.repo,
    )
    assert inputs["namespace"] == "kube-system"
    values = inputs["values"]
    assert values["cloudProvider"] == "aws"
    assert values["awsRegion"] == config.aws.region
    assert values["autoDiscovery"]["clusterName"] == config.cluster_name
    assert values["image"]["tag"] == CLUSTER_AUTOSCALER_IMAGE_TAGS[config.kubernetes_version]
    args = values["extraArgs"]
    assert args["scale-down-unneeded-time"] == config.cluster_autoscaler.scale_down_unneeded_time
    assert args["scale-down-delay-after-add"] == config.cluster_autoscaler.scale_down_delay_after_add
    assert args["expander"] == config.cluster_autoscaler.expander
    assert config.scale_down_unneeded_seconds < 600  # well under the stock 10 minutes
    assert values["resources"]["requests"] and values["resources"]["limits"]
    # On the system group, by the label EKS puts on each of its nodes.
    system = system_group(aws_run)
    assert values["nodeSelector"] == {
        "eks.amazonaws.com/nodegroup": fake_outputs(NODE_GROUP, system.name, system.inputs)["nodeGroupName"]
    }
    assert release.options["provider"] == aws_run.one("pulumi:providers:kubernetes", "-k8s").name


def test_autoscaler_service_account_assumes_only_its_role(aws_run):
    values = aws_run.one(RELEASE, "cluster-autoscaler").inputs["values"]
    service_account = values["rbac"]["serviceAccount"]
    role = aws_run.one(ROLE, "cluster-autoscaler")
    assert service_account["annotations"] == {
        "eks.amazonaws.com/role-arn": fake_outputs(ROLE, role.name, role.inputs)["arn"]
    }
    statement = policy(role, "assumeRolePolicy")["Statement"]
    assert len(statement) == 1
    assert statement[0]["Action"] == "sts:AssumeRoleWithWebIdentity"
    oidc = aws_run.one("aws:iam/openIdConnectProvider:OpenIdConnectProvider")
    assert statement[0]["Principal"] == {"Federated": fake_outputs(oidc.type, oidc.name, oidc.inputs)["arn"]}
    issuer = oidc.inputs["url"].removeprefix("https://")
    assert statement[0]["Condition"] == {
        "StringEquals": {
            f"{issuer}:sub": f"system:serviceaccount:kube-system:{service_account['name']}",
            f"{issuer}:aud": "sts.amazonaws.com",
        }
    }


def test_a_cluster_autoscaler_image_is_pinned_for_every_eks_version():
    for version in SUPPORTED_KUBERNETES_VERSIONS["aws"]:
        assert CLUSTER_AUTOSCALER_IMAGE_TAGS[version].startswith(f"v{version}.")


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"clusterAutoscaler": {"expander": "price"}}, "clusterAutoscaler.expander"),
        ({"taskPool": {"minSize": 0, "maxSize": 5, "arm": True}}, "taskPool.instanceTypes"),
        ({"systemPool": {"instanceTypes": ["m7g.large"], "minSize": 1}}, "systemPool.instanceTypes"),
        ({"aws": {"region": "eu-west-1", "adminRoleArns": ["platform-admins"]}}, "aws.adminRoleArns[0]"),
        ({"aws": {"region": "eu-west-1", "publicAccessCidrs": ["10.0.0.300/8"]}}, "aws.publicAccessCidrs[0]"),
    ],
)
def test_settings_that_cannot_work_on_eks_are_rejected_naming_the_key(changes, key):
    raw = {"cloud": "aws", "aws": {"region": "eu-west-1"}, **changes}
    with pytest.raises(ConfigError) as err:
        EksClusterArgs.from_stack(parse_stack_config(raw))
    assert any(p.startswith(f"{PROJECT}:{key}: ") for p in err.value.problems), err.value.problems


def test_graviton_pools_use_the_arm_ami(tmp_path):
    graviton = {"instanceTypes": ["m7g.xlarge", "c7gn.xlarge"], "minSize": 0, "maxSize": 4, "arm": True}
    stacks = write_stack(tmp_path, "aws-dev", {"taskPool": graviton})
    run = run_program("aws-dev", stacks_dir=stacks)
    assert task_group(run).inputs["amiType"] == "AL2023_ARM_64_STANDARD"
    assert system_group(run).inputs["amiType"] == "AL2023_x86_64_STANDARD"


def test_more_azs_than_the_region_offers_fails_naming_the_key(tmp_path):
    stacks = write_stack(tmp_path, "aws-dev", {"aws": {**AWS_SECTION, "availabilityZones": 4}})
    with pytest.raises(ValueError, match=r"airflow-on-k8s:aws\.availabilityZones: 4 asked, but eu-west-1 offers only 3"):
        run_program("aws-dev", stacks_dir=stacks)


# ---------------------------------------------------------------------------------------------------------
# Contract, kubeconfig, IRSA bindings, attributes for later components
# ---------------------------------------------------------------------------------------------------------


def test_kubeconfig_is_secret_and_uses_aws_eks_get_token(aws_run):
    config = stack_config(aws_run.stack)
    kubeconfig = aws_run.outputs["kubeconfig"]
    assert set(kubeconfig) == {"secret"}
    doc = json.loads(kubeconfig["secret"])
    cluster = aws_run.one(CLUSTER)
    assert doc["clusters"][0]["cluster"]["server"] == fake_outputs(CLUSTER, cluster.name, cluster.inputs)["endpoint"]
    exec_ = doc["users"][0]["user"]["exec"]
    assert exec_["command"] == "aws"
    assert exec_["args"][:4] == ["eks", "get-token", "--cluster-name", config.cluster_name]
    assert exec_["args"][exec_["args"].index("--region") + 1] == config.aws.region
    provider = aws_run.one("pulumi:providers:kubernetes", "-k8s")
    assert provider.inputs["kubeconfig"] == kubeconfig
    # Nothing is installed before a node can run it and cluster DNS works.
    assert system_group(aws_run).name in provider.options["dependsOn"]
    assert any("coredns" in d for d in provider.options["dependsOn"])


def test_every_aws_resource_of_the_cluster_goes_through_the_stack_region_provider(aws_run):
    config = stack_config(aws_run.stack)
    provider = aws_run.one("pulumi:providers:aws", f"{config.cluster_name}-aws")
    assert provider.inputs["region"] == config.aws.region
    components = {
        f"airflow-on-k8s:aws:EksCluster::{config.cluster_name}",
        "airflow-on-k8s:aws:ClusterAutoscaler::cluster-autoscaler",
    }
    ours = [r for r in aws_run.resources if r.type.startswith("aws:") and r.parent in components]
    assert len(ours) > 30
    assert {r.options.get("provider") for r in ours} == {provider.name}


BIND_PROGRAM = textwrap.dedent(
    """
    import pulumi
    from airflow_on_k8s.contract import BucketGrant
    from airflow_on_k8s.clusters import create_cluster
    from airflow_on_k8s.config import load_stack_config

    cluster = create_cluster(load_stack_config())
    annotations = cluster.workload_identity.bind_service_account(
        "airflow-worker", "airflow", "airflow-worker",
        [BucketGrant("task-logs", "read-write"), BucketGrant("dag-bundles", "read")],
        parent=cluster,
    )
    pulumi.export("annotations", annotations)
    pulumi.export("vpcId", cluster.vpc_id)
    pulumi.export("privateSubnetIds", cluster.private_subnet_ids)
    pulumi.export("clusterSecurityGroupId", cluster.cluster_security_group_id)
    pulumi.export("cloud", cluster.cloud)
    """
)


@pytest.fixture(scope="module")
def bound_run(tmp_path_factory) -> ProgramRun:
    program = tmp_path_factory.mktemp("bind") / "program.py"
    program.write_text(BIND_PROGRAM)
    return run_program("aws-dev", program=program)


def test_bound_service_account_gets_a_role_scoped_to_it(bound_run):
    role = bound_run.one(ROLE, "airflow-worker")
    assert role.parent == "airflow-on-k8s:aws:EksCluster::airflow-dev"
    condition = policy(role, "assumeRolePolicy")["Statement"][0]["Condition"]["StringEquals"]
    assert sorted(condition.values()) == ["sts.amazonaws.com", "system:serviceaccount:airflow:airflow-worker"]
    assert bound_run.outputs["annotations"] == {
        "eks.amazonaws.com/role-arn": fake_outputs(ROLE, role.name, role.inputs)["arn"]
    }


def test_bucket_grants_are_least_privilege_and_scoped_to_each_bucket(bound_run):
    statements = policy(bound_run.one("aws:iam/rolePolicy:RolePolicy", "airflow-worker"))["Statement"]
    by_resource = {s["Resource"]: set(s["Action"]) for s in statements}
    assert set(by_resource) == {
        "arn:aws:s3:::task-logs",
        "arn:aws:s3:::task-logs/*",
        "arn:aws:s3:::dag-bundles",
        "arn:aws:s3:::dag-bundles/*",
    }
    assert "s3:PutObject" in by_resource["arn:aws:s3:::task-logs/*"]
    assert by_resource["arn:aws:s3:::dag-bundles/*"] == {"s3:GetObject"}
    assert "s3:ListBucket" in by_resource["arn:aws:s3:::dag-bundles"]
    assert all(not a.startswith("s3:Delete") for actions in by_resource.values() for a in actions)
    assert iam_policy_problems(bound_run) == []


def test_cluster_exposes_network_attributes_for_later_components(bound_run):
    outputs = bound_run.outputs
    assert outputs["cloud"] == "aws"
    assert outputs["vpcId"] == bound_run.one("aws:ec2/vpc:Vpc").name + "-id"
    private = [s for s in bound_run.by_type("aws:ec2/subnet:Subnet") if "-private-" in s.name]
    assert sorted(outputs["privateSubnetIds"]) == sorted(f"{s.name}-id" for s in private)
    cluster = bound_run.one(CLUSTER)
    faked = fake_outputs(CLUSTER, cluster.name, cluster.inputs)
    assert outputs["clusterSecurityGroupId"] == faked["vpcConfig"]["clusterSecurityGroupId"]


# ---------------------------------------------------------------------------------------------------------
# Storage: the EBS CSI driver and an encrypted gp3 default StorageClass (issue 8, item 2)
# ---------------------------------------------------------------------------------------------------------


def test_ebs_csi_driver_acts_through_its_own_role_with_only_the_managed_policy(aws_run):
    addon = next(a for a in aws_run.by_type(ADDON) if a.inputs["addonName"] == "aws-ebs-csi-driver")
    role = aws_run.one(ROLE, "ebs-csi")
    assert addon.inputs["serviceAccountRoleArn"] == fake_outputs(ROLE, role.name, role.inputs)["arn"]
    trust = policy(role, "assumeRolePolicy")["Statement"][0]["Condition"]["StringEquals"]
    assert "system:serviceaccount:kube-system:ebs-csi-controller-sa" in trust.values()
    role_name = fake_outputs(ROLE, role.name, role.inputs)["name"]
    granted = [
        a.inputs["policyArn"]
        for a in aws_run.by_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if a.inputs["role"] == role_name
    ]
    assert granted == ["arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicyV2"]
    assert not [p for p in aws_run.by_type("aws:iam/rolePolicy:RolePolicy") if p.inputs["role"] == f"{role.name}-id"]
    # Its controller is a Deployment: the add-on turns ACTIVE once the system group has a node.
    assert system_group(aws_run).name in addon.options["dependsOn"]
    # Nothing that may claim a volume is installed before the driver.
    assert addon.name in aws_run.one("pulumi:providers:kubernetes", "-k8s").options["dependsOn"]


def test_the_default_storage_class_is_encrypted_gp3_from_the_ebs_csi_driver(aws_run):
    classes = aws_run.by_type("kubernetes:storage.k8s.io/v1:StorageClass")
    defaults = [c for c in classes if c.inputs["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"]
    assert len(defaults) == len(classes) == 1
    (default,) = defaults
    assert default.inputs["provisioner"] == "ebs.csi.aws.com"
    assert default.inputs["parameters"] == {"type": "gp3", "encrypted": "true"}
    assert default.inputs["volumeBindingMode"] == "WaitForFirstConsumer"
    assert default.options["provider"] == aws_run.one("pulumi:providers:kubernetes", "-k8s").name


# ---------------------------------------------------------------------------------------------------------
# Who reaches the API (items 4 and 6)
# ---------------------------------------------------------------------------------------------------------


def test_both_stacks_reach_the_api_on_the_first_up_through_a_restricted_public_endpoint(aws_run):
    config = stack_config(aws_run.stack)
    vpc_config = aws_run.one(CLUSTER).inputs["vpcConfig"]
    assert vpc_config["endpointPrivateAccess"] is True
    assert vpc_config["endpointPublicAccess"] is True
    assert vpc_config["publicAccessCidrs"] == config.aws.public_access_cidrs
    assert "0.0.0.0/0" not in vpc_config["publicAccessCidrs"]


def test_a_fully_private_api_admits_the_deploying_network_on_443(tmp_path):
    section = {"region": "eu-west-1", "publicEndpoint": False, "privateAccessCidrs": ["10.8.0.0/16", "192.168.4.0/24"]}
    run = run_program("aws-prod", stacks_dir=write_stack(tmp_path, "aws-prod", {"aws": section}))
    cluster = run.one(CLUSTER)
    assert cluster.inputs["vpcConfig"]["endpointPublicAccess"] is False
    assert "publicAccessCidrs" not in cluster.inputs["vpcConfig"]
    cluster_sg = fake_outputs(CLUSTER, cluster.name, cluster.inputs)["vpcConfig"]["clusterSecurityGroupId"]
    rules = run.by_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert sorted(r.inputs["cidrIpv4"] for r in rules) == sorted(section["privateAccessCidrs"])
    for rule in rules:
        assert rule.inputs["securityGroupId"] == cluster_sg
        assert (rule.inputs["ipProtocol"], rule.inputs["fromPort"], rule.inputs["toPort"]) == ("tcp", 443, 443)


@pytest.mark.parametrize(
    ("section", "key", "fix"),
    [
        pytest.param({}, "aws.publicAccessCidrs", "curl -s https://checkip.amazonaws.com", id="no-open-default"),
        pytest.param({"publicAccessCidrs": ["10.0.0.0/8"]}, "aws.publicAccessCidrs[0]", "egress", id="private-range-on-public"),
        pytest.param({"publicEndpoint": False}, "aws.privateAccessCidrs", "runner or VPN", id="private-without-a-way-in"),
        pytest.param(
            {"publicEndpoint": False, "publicAccessCidrs": [DEPLOYER], "privateAccessCidrs": ["10.8.0.0/16"]},
            "aws.publicAccessCidrs", "would be ignored", id="public-cidrs-without-public-endpoint",
        ),
        pytest.param(
            {"publicAccessCidrs": [DEPLOYER], "privateAccessCidrs": ["8.8.8.0/24"]},
            "aws.privateAccessCidrs[0]", "public range", id="public-range-on-private",
        ),
        pytest.param({"publicAccessCidrs": ["203.0.113.300/32"]}, "aws.publicAccessCidrs[0]", "IPv4 CIDR", id="malformed"),
    ],
)
def test_api_access_that_nobody_could_use_is_rejected(section, key, fix):
    raw = {"cloud": "aws", "aws": {"region": "eu-west-1", **section}}
    with pytest.raises(ConfigError) as err:
        EksClusterArgs.from_stack(parse_stack_config(raw))
    matching = [p for p in err.value.problems if p.startswith(f"{PROJECT}:{key}: ")]
    assert matching and any(fix in p for p in matching), err.value.problems


def test_the_documentation_placeholder_warns_in_preview_and_stops_pulumi_up(monkeypatch):
    assert documentation_cidrs(stack_config("aws-dev").aws.public_access_cidrs) == ["203.0.113.10/32"]
    program_run("aws-dev")  # a preview goes through, with a warning
    monkeypatch.setattr(eks_cluster_module, "_deploying", lambda: True)
    with pytest.raises(ConfigError, match=r"airflow-on-k8s:aws\.publicAccessCidrs: 203\.0\.113\.10/32 is a documentation"):
        run_program("aws-dev")


# ---------------------------------------------------------------------------------------------------------
# Names AWS accepts for the longest cluster name the config allows (item 5)
# ---------------------------------------------------------------------------------------------------------

LONGEST_CLUSTER_NAME = "data-platform-airflow-prod-eu1"

# (type, input) -> the most characters AWS (or the provider) accepts.
NAME_LIMITS = {
    ("aws:s3/bucket:Bucket", "bucketPrefix"): 37,  # pulumi_aws s3/bucket.py: "less than or equal to 37 characters"
    ("aws:rds/instance:Instance", "identifierPrefix"): 37,  # 63 minus the provider's 26-character unique suffix
    ("aws:rds/instance:Instance", "finalSnapshotIdentifier"): 255,
    ("aws:rds/subnetGroup:SubnetGroup", "name"): 255,
    ("aws:eks/cluster:Cluster", "name"): 100,
    ("aws:cloudwatch/logGroup:LogGroup", "name"): 512,
}
# Types Pulumi auto-names (logical name + "-" + 7 random characters) when the program sets no name.
AUTONAME_LIMITS = {
    ROLE: 64,
    "aws:iam/rolePolicy:RolePolicy": 128,
    NODE_GROUP: 63,
    "aws:ec2/launchTemplate:LaunchTemplate": 128,
    "aws:ec2/securityGroup:SecurityGroup": 255,
}
# RDS identifiers: lowercase letters, digits and single hyphens, starting with a letter (terraform-provider-aws
# internal/service/rds validate.go, validIdentifier / validIdentifierPrefix).
RDS_IDENTIFIER = re.compile(r"^[a-z](?!.*--)[a-z0-9-]*$")


def test_every_name_fits_with_the_longest_cluster_name_the_config_allows(tmp_path):
    assert parse_stack_config({"cloud": "aws", "aws": AWS_SECTION, "clusterName": LONGEST_CLUSTER_NAME})
    with pytest.raises(ConfigError):
        parse_stack_config({"cloud": "aws", "aws": AWS_SECTION, "clusterName": LONGEST_CLUSTER_NAME + "x"})
    run = run_program("aws-prod", stacks_dir=write_stack(tmp_path, "aws-prod", {"clusterName": LONGEST_CLUSTER_NAME}))
    checked = 0
    for resource in run.resources:
        for (type_, key), limit in NAME_LIMITS.items():
            if resource.type == type_ and key in resource.inputs:
                value = resource.inputs[key]
                assert len(value) <= limit, f"{type_} {key} {value!r} is {len(value)} > {limit}"
                checked += 1
        if resource.type in AUTONAME_LIMITS and "name" not in resource.inputs:
            assert len(resource.name) + 8 <= AUTONAME_LIMITS[resource.type], (resource.type, resource.name)
            checked += 1
        for key in ("identifierPrefix", "finalSnapshotIdentifier"):
            if resource.type == "aws:rds/instance:Instance" and resource.inputs.get(key):
                assert RDS_IDENTIFIER.match(resource.inputs[key]), resource.inputs[key]
        for tag_key, tag_value in (resource.inputs.get("tags") or {}).items():
            assert len(tag_key) <= 128 and len(str(tag_value)) <= 256, (resource.name, tag_key)
    assert checked >= 20
    assert LONGEST_CLUSTER_NAME in run.one("aws:eks/cluster:Cluster").inputs["name"]


@settings(max_examples=200, deadline=None)
@given(
    name=st.from_regex(r"\A[a-z]([-a-z0-9]{0,28}[a-z0-9])?\Z"),
    suffix=st.sampled_from(["-airflow-logs-", "-airflow-"]),
    single_hyphens=st.booleans(),
)
def test_derived_names_always_fit_and_keep_the_names_that_already_did(name, suffix, single_hyphens):
    derived = derived_name(name, suffix, 37, single_hyphens)
    assert len(derived) <= 37 and derived.endswith(suffix) and derived[0] == name[0]
    assert "--" not in derived or not single_hyphens
    if len(name + suffix) <= 37 and not (single_hyphens and "--" in name):
        assert derived == name + suffix  # the names of existing stacks never change


# ---------------------------------------------------------------------------------------------------------
# Network policy, support policy, logs, S3 endpoint, node tags, zones (items 11-14, 17, 18)
# ---------------------------------------------------------------------------------------------------------


def cni_configuration(run: ProgramRun) -> dict[str, Any]:
    addon = next(a for a in run.by_type(ADDON) if a.inputs["addonName"] == "vpc-cni")
    return json.loads(addon.inputs["configurationValues"])


def test_the_vpc_cni_enforces_network_policies_unless_turned_off(aws_run, tmp_path):
    assert cni_configuration(aws_run) == {"enableNetworkPolicy": "true"}
    stacks = write_stack(tmp_path, "aws-dev", {"aws": {**AWS_SECTION, "networkPolicy": False}})
    assert cni_configuration(run_program("aws-dev", stacks_dir=stacks)) == {"enableNetworkPolicy": "false"}


def test_clusters_stay_on_standard_support_unless_extended_is_asked_for(aws_run, tmp_path):
    assert aws_run.one(CLUSTER).inputs["upgradePolicy"] == {"supportType": "STANDARD"}
    stacks = write_stack(tmp_path, "aws-dev", {"aws": {**AWS_SECTION, "supportType": "EXTENDED"}})
    assert run_program("aws-dev", stacks_dir=stacks).one(CLUSTER).inputs["upgradePolicy"] == {"supportType": "EXTENDED"}


def test_eks_minors_and_their_end_of_standard_support_come_from_one_table(monkeypatch):
    assert SUPPORTED_KUBERNETES_VERSIONS["aws"] == tuple(EKS_STANDARD_SUPPORT_ENDS)
    assert all(isinstance(ends, date) for ends in EKS_STANDARD_SUPPORT_ENDS.values())
    # 1.33 left standard support on 2026-07-29: no longer offered.
    for gone in ("1.32", "1.33"):
        with pytest.raises(ConfigError, match="kubernetesVersion"):
            parse_stack_config({"cloud": "aws", "aws": AWS_SECTION, "kubernetesVersion": gone})
    config = parse_stack_config({"cloud": "aws", "aws": AWS_SECTION, "kubernetesVersion": "1.34"})
    EksClusterArgs.from_stack(config)
    monkeypatch.delitem(EKS_STANDARD_SUPPORT_ENDS, "1.34")
    with pytest.raises(ConfigError, match=r"airflow-on-k8s:kubernetesVersion: '1\.34' is not in EKS standard support"):
        EksClusterArgs.from_stack(config)


def test_a_minor_near_the_end_of_standard_support_is_announced():
    ends = EKS_STANDARD_SUPPORT_ENDS["1.34"]
    assert standard_support_warning("1.34", "STANDARD", ends - timedelta(days=61)) is None
    soon = standard_support_warning("1.34", "STANDARD", ends - timedelta(days=10))
    assert soon and "kubernetesVersion" in soon and "leaves" in soon and "upgrades the cluster" in soon
    past = standard_support_warning("1.34", "EXTENDED", ends + timedelta(days=1))
    assert past and "left" in past and "$0.60" in past


def test_dev_ships_two_log_types_for_a_week_and_prod_all_for_a_quarter():
    dev, prod = program_run("aws-dev"), program_run("aws-prod")
    assert dev.one(CLUSTER).inputs["enabledClusterLogTypes"] == ["audit", "authenticator"]
    assert dev.one("aws:cloudwatch/logGroup:LogGroup").inputs["retentionInDays"] == 7
    assert sorted(prod.one(CLUSTER).inputs["enabledClusterLogTypes"]) == sorted(CONTROL_PLANE_LOG_TYPES)
    assert prod.one("aws:cloudwatch/logGroup:LogGroup").inputs["retentionInDays"] == 90


def test_explicit_log_settings_win_and_bad_retention_is_rejected(tmp_path):
    section = {**AWS_SECTION, "controlPlaneLogTypes": ["api"], "controlPlaneLogRetentionDays": 30}
    run = run_program("aws-dev", stacks_dir=write_stack(tmp_path, "aws-dev", {"aws": section}))
    assert run.one(CLUSTER).inputs["enabledClusterLogTypes"] == ["api"]
    assert run.one("aws:cloudwatch/logGroup:LogGroup").inputs["retentionInDays"] == 30
    with pytest.raises(ConfigError, match=r"airflow-on-k8s:aws\.controlPlaneLogRetentionDays: 10 is not a retention"):
        parse_stack_config({"cloud": "aws", "aws": {**AWS_SECTION, "controlPlaneLogRetentionDays": 10}})


def test_private_subnets_reach_s3_through_a_free_gateway_endpoint(aws_run):
    endpoint = aws_run.one("aws:ec2/vpcEndpoint:VpcEndpoint")
    assert endpoint.inputs["vpcEndpointType"] == "Gateway"
    assert endpoint.inputs["serviceName"] == f"com.amazonaws.{stack_config(aws_run.stack).aws.region}.s3"
    assert endpoint.inputs["vpcId"] == aws_run.one("aws:ec2/vpc:Vpc").name + "-id"
    private_tables = [t for t in aws_run.by_type("aws:ec2/routeTable:RouteTable") if "-private-" in t.name]
    assert sorted(endpoint.inputs["routeTableIds"]) == sorted(f"{t.name}-id" for t in private_tables)
    assert s3_gateway_service("cn-north-1") == "cn.com.amazonaws.cn-north-1.s3"


def test_instances_volumes_and_interfaces_launched_by_node_groups_carry_the_cost_tags(tmp_path):
    stacks = write_stack(tmp_path, "aws-dev", {"tags": {"cost-center": "data-42"}})
    run = run_program("aws-dev", stacks_dir=stacks)
    templates = run.by_type("aws:ec2/launchTemplate:LaunchTemplate")
    assert len(templates) == 2
    for template in templates:
        specs = {s["resourceType"]: s["tags"] for s in template.inputs["tagSpecifications"]}
        assert set(specs) == {"instance", "volume", "network-interface"}
        for tags in specs.values():
            assert tags["project"] == PROJECT and tags["cluster"] == "airflow-dev" and tags["cost-center"] == "data-42"
            assert tags["Name"] == template.name


def test_zones_eks_refuses_for_the_control_plane_are_skipped():
    names = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]
    ids = ["use1-az6", "use1-az3", "use1-az1", "use1-az2"]
    assert usable_zones(names, ids) == ["us-east-1a", "us-east-1c", "us-east-1d"]
