"""Stack configuration: every stack file parses, and bad values fail with the key and the fix."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from airflow_on_k8s.config import PROJECT, ConfigError, parse_stack_config
from airflow_on_k8s.versions import (
    AIRFLOW_VERSION,
    COMPONENT_KUBERNETES_SUPPORT,
    DEFAULT_KUBERNETES_VERSION,
    EKS_STANDARD_SUPPORT_ENDS,
    KEDA_CHART,
    SUPPORTED_KUBERNETES_VERSIONS,
)
from airflow_on_k8s.testing.mock_runtime import available_stacks, read_stack_config

REPO = Path(__file__).resolve().parent.parent

AWS_OK = {"cloud": "aws", "aws": {"region": "eu-west-1"}}
GCP_OK = {
    "cloud": "gcp",
    "gcp": {"project": "my-airflow-dev", "region": "europe-west1", "masterAuthorizedCidrs": ["203.0.113.10/32"]},
}


def raw_from_stack(stack: str) -> dict:
    prefix = PROJECT + ":"
    return {
        k[len(prefix) :]: json.loads(v) if v[:1] in "{[" else v
        for k, v in read_stack_config(stack).items()
        if k.startswith(prefix)
    }


def with_(base: dict, **changes) -> dict:
    raw = copy.deepcopy(base)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


@pytest.mark.parametrize("stack", available_stacks())
def test_every_stack_file_is_valid(stack):
    config = parse_stack_config(raw_from_stack(stack))
    assert config.task_pool.min_size == 0
    assert config.system_pool.min_size >= (0 if config.cloud == "local" else 1)
    assert config.kubernetes_version in SUPPORTED_KUBERNETES_VERSIONS[config.cloud]


def test_prod_stacks_are_protected_and_use_a_managed_database():
    for stack in ("aws-prod", "gcp-prod"):
        config = parse_stack_config(raw_from_stack(stack))
        assert config.protect, stack
        assert config.airflow.database == "managed", stack


def test_defaults_fill_a_minimal_aws_stack():
    config = parse_stack_config(AWS_OK)
    assert config.instance_types("task") == ["m6i.xlarge", "m5.xlarge"]
    assert config.task_pool.min_size == 0 and config.task_pool.max_size >= 1
    assert config.scale_down_unneeded_seconds == 180  # well under the stock 10 minutes
    assert config.scaling.mode == "task-aware"


# (raw config, the config key the message must name, a phrase of the fix)
BAD_INPUTS = [
    pytest.param({"cloud": "azure"}, "cloud", "'aws', 'gcp' or 'local'", id="unknown-cloud"),
    pytest.param({"cloud": "gcp"}, "gcp", "set gcp.project", id="gcp-without-section"),
    pytest.param(
        with_(GCP_OK, gcp__project=None) | {"gcp": {"region": "europe-west1"}}, "gcp.project", "required",
        id="gcp-without-project",
    ),
    pytest.param({"cloud": "aws"}, "aws", "set aws.region", id="aws-without-region"),
    pytest.param(with_(AWS_OK, taskPool__minSize=0, taskPool__maxSize=0), "taskPool.maxSize", "1 or more", id="task-max-0"),
    pytest.param(
        with_(AWS_OK, systemPool__minSize=3, systemPool__maxSize=2), "systemPool.maxSize", "raise maxSize",
        id="max-below-min",
    ),
    pytest.param(with_(AWS_OK, systemPool__minSize=0), "systemPool.minSize", "1 or more", id="system-min-0"),
    pytest.param(with_(AWS_OK, taskPool__minSize=2, taskPool__maxSize=5), "taskPool.minSize", "set it to 0", id="task-min-not-0"),
    pytest.param(with_(AWS_OK, taskPool__instanceTypes=[]), "taskPool.instanceTypes", "at least one", id="empty-instance-types"),
    pytest.param(
        with_(GCP_OK, gcp__podsCidr="10.50.0.0/16"), "gcp.podsCidr", "overlaps gcp.subnetCidr", id="overlapping-cidrs"
    ),
    pytest.param(
        with_(AWS_OK, aws__serviceCidr="10.40.128.0/20"), "aws.serviceCidr", "overlaps aws.vpcCidr",
        id="service-cidr-inside-vpc",
    ),
    pytest.param(with_(AWS_OK, aws__vpcCidr="10.0.0/16"), "aws.vpcCidr", "10.0.0.0/16", id="malformed-cidr"),
    pytest.param(with_(AWS_OK, kubernetesVersion="1.21"), "kubernetesVersion", "use one of", id="k8s-version-not-offered"),
    pytest.param(with_(AWS_OK, aws__region="Ireland"), "aws.region", "eu-west-1", id="bad-aws-region"),
    pytest.param(with_(AWS_OK, aws__availabilityZones=1), "aws.availabilityZones", "greater than or equal to 2", id="one-az"),
    pytest.param(with_(AWS_OK, taskpool={"maxSize": 3}), "taskpool", "spelling", id="typo-key"),
    pytest.param(with_(AWS_OK, gcp=GCP_OK["gcp"]), "gcp", "remove the gcp section", id="other-cloud-section"),
    pytest.param(
        with_(AWS_OK, clusterAutoscaler__scaleDownUnneededTime="3 minutes"),
        "clusterAutoscaler.scaleDownUnneededTime", "like 90s, 2m", id="bad-duration",
    ),
    pytest.param(
        with_(GCP_OK, gcp__nodeZones=["us-central1-a"]), "gcp.nodeZones", "europe-west1-b", id="zone-outside-region"
    ),
    pytest.param(with_(GCP_OK, gcp__masterCidr="172.16.0.0/24"), "gcp.masterCidr", "/28", id="master-cidr-size"),
    pytest.param(
        {"cloud": "gcp", "gcp": {"project": "my-airflow-dev", "region": "europe-west1"}},
        "gcp.masterAuthorizedCidrs", "curl -s https://checkip.amazonaws.com", id="no-open-api-by-default",
    ),
    pytest.param(
        with_(GCP_OK, gcp__masterAuthorizedCidrs=["10.0.0.0/8"]),
        "gcp.masterAuthorizedCidrs", "nobody would be admitted", id="public-endpoint-with-only-rfc1918",
    ),
    pytest.param(
        with_(GCP_OK, gcp__privateEndpoint=True),
        "gcp.masterAuthorizedCidrs", "not internal (RFC 1918) addresses", id="private-endpoint-with-public-cidr",
    ),
    pytest.param(
        with_(GCP_OK, gcp__privateEndpoint=True, gcp__privateNodes=False, gcp__masterAuthorizedCidrs=["10.8.0.0/24"]),
        "gcp.privateEndpoint", "set privateNodes: true", id="private-endpoint-needs-private-nodes",
    ),
    pytest.param(
        with_(GCP_OK, gcp__privateNodes=False, gcp__masterAuthorizedCidrs=[f"203.0.113.{i}/32" for i in range(51)]),
        "gcp.masterAuthorizedCidrs", "at most 50", id="too-many-authorized-networks",
    ),
    pytest.param(
        with_(GCP_OK, gcp__masterAuthorizedCidrs=["my-laptop"]), "gcp.masterAuthorizedCidrs", "198.51.100.7/32",
        id="authorized-cidr-not-a-cidr",
    ),
    pytest.param(
        with_(GCP_OK, gcp__cloudSql={"edition": "ENTERPRISE_PLUS", "tier": "db-custom-2-7680"}),
        "gcp.cloudSql.tier", "set edition: ENTERPRISE", id="custom-tier-on-enterprise-plus",
    ),
    pytest.param(
        with_(GCP_OK, gcp__cloudSql={"tier": "db-perf-optimized-N-4"}),
        "gcp.cloudSql.tier", "set edition: ENTERPRISE_PLUS", id="perf-optimized-tier-on-enterprise",
    ),
    pytest.param(
        with_(GCP_OK, gcp__cloudSql={"transactionLogRetentionDays": 14}),
        "gcp.cloudSql.transactionLogRetentionDays", "lower it to 7", id="log-retention-beyond-enterprise",
    ),
    pytest.param(
        with_(AWS_OK, scaling__minWorkers=5, scaling__maxWorkers=2), "scaling.maxWorkers", "raise maxWorkers",
        id="workers-max-below-min",
    ),
    pytest.param(
        with_(AWS_OK, scaling__mode="hpa", scaling__minWorkers=0), "scaling.minWorkers", "1 or more", id="hpa-to-zero"
    ),
    pytest.param(with_(AWS_OK, scaling__mode="cpu"), "scaling.mode", "'task-aware', 'keda' or 'hpa'", id="unknown-mode"),
    pytest.param(
        with_(AWS_OK, airflow__taskNamespace="airflow"), "airflow.taskNamespace", "own namespace", id="same-namespaces"
    ),
    pytest.param(with_(AWS_OK, taskPool__maxSize="lots"), "taskPool.maxSize", "integer", id="not-a-number"),
    pytest.param(with_(AWS_OK, aws__supportType="FOREVER"), "aws.supportType", "'STANDARD' or 'EXTENDED'", id="support-type"),
    pytest.param(
        with_(AWS_OK, aws__controlPlaneLogRetentionDays=10), "aws.controlPlaneLogRetentionDays", "7, 14, 30",
        id="log-retention-cloudwatch-refuses",
    ),
    pytest.param(
        with_(AWS_OK, aws__controlPlaneLogTypes=["audit", "kubelet"]), "aws.controlPlaneLogTypes", "choose from",
        id="unknown-log-type",
    ),
    pytest.param(with_(AWS_OK, kubernetesVersion="1.33"), "kubernetesVersion", "1.34, 1.35", id="eks-minor-past-standard-support"),
]


@pytest.mark.parametrize("raw, key, fix", BAD_INPUTS)
def test_bad_input_names_the_key_and_the_fix(raw, key, fix):
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw)
    lines = caught.value.problems
    matching = [line for line in lines if line.startswith(f"{PROJECT}:{key}: ")]
    assert matching, f"no problem names {PROJECT}:{key}; got {lines}"
    assert any(fix in line for line in matching), f"no fix hint {fix!r} in {matching}"


@pytest.mark.parametrize(
    "access",
    [
        # Public endpoint: the deployer's public address, plus internal ranges for clients inside the VPC.
        {"masterAuthorizedCidrs": ["203.0.113.10/32", "10.50.0.0/20"]},
        # Private endpoint only: internal ranges the deployer runs from.
        {"privateEndpoint": True, "masterAuthorizedCidrs": ["10.50.0.0/20", "192.168.10.0/24"]},
    ],
    ids=["public-endpoint", "private-endpoint"],
)
def test_gke_access_models_that_admit_a_deployer_are_accepted(access):
    config = parse_stack_config(with_(GCP_OK, **{f"gcp__{k}": v for k, v in access.items()}))
    assert config.gcp.master_authorized_cidrs == access["masterAuthorizedCidrs"]


def test_several_problems_are_reported_together():
    raw = with_(AWS_OK, kubernetesVersion="1.21", taskPool__minSize=1, aws__serviceCidr="10.40.0.0/24")
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw)
    keys = {line.split(": ")[0] for line in caught.value.problems}
    assert {f"{PROJECT}:kubernetesVersion", f"{PROJECT}:taskPool.minSize", f"{PROJECT}:aws.serviceCidr"} <= keys


def test_requirements_pin_the_airflow_version_the_image_runs():
    text = (REPO / "requirements-dev.txt").read_text()
    pinned = re.search(r"^apache-airflow\[[^\]]*\]==([\d.]+)$", text, re.M)
    assert pinned, "requirements-dev.txt must pin apache-airflow"
    assert pinned.group(1) == AIRFLOW_VERSION


def test_every_pinned_component_supports_every_kubernetes_minor_the_config_allows():
    unsupported = [
        f"{component} on {cloud} {minor} ({support.source})"
        for component, support in COMPONENT_KUBERNETES_SUPPORT.items()
        for cloud in support.clouds
        for minor in SUPPORTED_KUBERNETES_VERSIONS[cloud]
        if not support.supports(minor)
    ]
    assert unsupported == []
    assert DEFAULT_KUBERNETES_VERSION in SUPPORTED_KUBERNETES_VERSIONS["aws"]


def test_the_keda_range_is_the_one_documented_for_the_pinned_keda_minor():
    # Bumping KEDA_CHART without re-reading KEDA's compatibility table fails here.
    (keda,) = [support for name, support in COMPONENT_KUBERNETES_SUPPORT.items() if name.startswith("KEDA ")]
    minor = ".".join(KEDA_CHART.version.split(".")[:2])
    assert f"docs/{minor}/" in keda.source and f"v{minor} |" in keda.source


def test_a_new_eks_cluster_starts_well_inside_standard_support():
    # A cluster created on a minor about to leave standard support is upgraded by EKS behind Pulumi's back.
    newest = max(EKS_STANDARD_SUPPORT_ENDS, key=lambda m: tuple(map(int, m.split("."))))
    assert DEFAULT_KUBERNETES_VERSION == newest
