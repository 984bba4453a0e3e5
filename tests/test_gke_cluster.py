"""The GKE cluster component, run inside the real program under Pulumi mocks (gcp-dev and gcp-prod).

Expected values come from each stack's parsed config, so the tests follow the stack files; where the
brief fixes a value per stack (spot on dev, deletion protection on prod) that is asserted too.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from airflow_on_k8s.config import PROJECT, ConfigError, StackConfig, parse_stack_config
from airflow_on_k8s.gcp.workload_identity import BUCKET_ROLES, service_account_id
from airflow_on_k8s.gcp.cluster import (
    CONTROL_PLANE_TO_NODE_PORTS,
    NODE_SERVICE_ACCOUNT_ROLES,
    GkeClusterArgs,
    gcp_labels,
    gke_kubeconfig,
)
from airflow_on_k8s.task_pool import TASK_POOL
from tests.conftest import program_run
from airflow_on_k8s.testing.mock_runtime import STACKS_DIR, ProgramRun, fake_outputs, read_stack_config, run_program

CLUSTER = "gcp:container/cluster:Cluster"
NODE_POOL = "gcp:container/nodePool:NodePool"
COMPONENT = "airflow-on-k8s:cluster:GkeCluster"
# Roles that would make the node account (and so any pod escaping to the node) a project administrator.
BROAD_ROLES = {"roles/owner", "roles/editor", "roles/viewer", "roles/iam.serviceAccountUser", "roles/storage.admin"}


def stack_config(stack: str) -> StackConfig:
    prefix = PROJECT + ":"
    raw = {
        k[len(prefix) :]: json.loads(v) if v[:1] in "{[" else v
        for k, v in read_stack_config(stack).items()
        if k.startswith(prefix)
    }
    return parse_stack_config(raw)


def pool(run: ProgramRun, which: str):
    return run.one(NODE_POOL, f"-{which}")


# --- network ---------------------------------------------------------------------------------------------


def test_network_is_vpc_native_with_secondary_ranges(gcp_run: ProgramRun) -> None:
    cfg = stack_config(gcp_run.stack)
    network = gcp_run.one("gcp:compute/network:Network")
    assert network.inputs["autoCreateSubnetworks"] is False

    subnet = gcp_run.one("gcp:compute/subnetwork:Subnetwork")
    assert subnet.inputs["ipCidrRange"] == cfg.gcp.subnet_cidr
    assert subnet.inputs["region"] == cfg.gcp.region
    assert subnet.inputs["privateIpGoogleAccess"] is True
    assert subnet.inputs["network"] == f"{network.name}-id"
    ranges = {r["rangeName"]: r["ipCidrRange"] for r in subnet.inputs["secondaryIpRanges"]}

    policy = gcp_run.one(CLUSTER).inputs["ipAllocationPolicy"]
    assert ranges == {
        policy["clusterSecondaryRangeName"]: cfg.gcp.pods_cidr,
        policy["servicesSecondaryRangeName"]: cfg.gcp.services_cidr,
    }


def test_private_nodes_get_cloud_nat_for_the_subnet(gcp_run: ProgramRun) -> None:
    assert stack_config(gcp_run.stack).gcp.private_nodes
    router = gcp_run.one("gcp:compute/router:Router")
    nat = gcp_run.one("gcp:compute/routerNat:RouterNat")
    assert router.inputs["network"] == f"{gcp_run.one('gcp:compute/network:Network').name}-id"
    assert nat.inputs["natIpAllocateOption"] == "AUTO_ONLY"
    subnet = gcp_run.one("gcp:compute/subnetwork:Subnetwork")
    assert [s["name"] for s in nat.inputs["subnetworks"]] == [f"{subnet.name}-id"]
    # Nodes come up only once they can reach the internet (Docker Hub images).
    for which in ("system", "tasks"):
        assert nat.name in pool(gcp_run, which).options["dependsOn"]


def test_control_plane_reaches_keda_ports_on_private_nodes(gcp_run: ProgramRun) -> None:
    cfg = stack_config(gcp_run.stack)
    rule = gcp_run.one("gcp:compute/firewall:Firewall")
    assert rule.inputs["direction"] == "INGRESS"
    assert rule.inputs["sourceRanges"] == [cfg.gcp.master_cidr]
    assert rule.inputs["allows"] == [{"protocol": "tcp", "ports": CONTROL_PLANE_TO_NODE_PORTS}]
    node_sa = gcp_run.one("gcp:serviceaccount/account:Account", "-nodes")
    assert rule.inputs["targetServiceAccounts"] == [
        fake_outputs(node_sa.type, node_sa.name, node_sa.inputs)["email"]
    ]


# --- cluster ---------------------------------------------------------------------------------------------


def test_cluster_settings_follow_the_stack(gcp_run: ProgramRun) -> None:
    cfg = stack_config(gcp_run.stack)
    cluster = gcp_run.one(CLUSTER)
    i = cluster.inputs
    assert i["name"] == cfg.cluster_name
    assert i["location"] == cfg.gcp.region  # regional
    assert i["removeDefaultNodePool"] is True and i["initialNodeCount"] == 1
    assert i["workloadIdentityConfig"] == {"workloadPool": f"{cfg.gcp.project}.svc.id.goog"}
    assert i["releaseChannel"] == {"channel": cfg.gcp.release_channel}
    # The channel picks the version: GKE rejects a minimum version the channel does not offer.
    assert "minMasterVersion" not in i
    assert i["networkingMode"] == "VPC_NATIVE"
    assert i["datapathProvider"] == "ADVANCED_DATAPATH"
    assert i["enableShieldedNodes"] is True
    assert set(i["loggingConfig"]["enableComponents"]) >= {"SYSTEM_COMPONENTS", "WORKLOADS"}
    # Node auto-provisioning off; the profile drives GKE's own autoscaler.
    assert i["clusterAutoscaling"] == {"enabled": False, "autoscalingProfile": cfg.gcp.autoscaling_profile}
    assert cfg.gcp.autoscaling_profile == "OPTIMIZE_UTILIZATION"
    # Default access model: the public endpoint stays on (the kubeconfig uses it) behind the authorized networks.
    assert not cfg.gcp.private_endpoint
    assert i["privateClusterConfig"] == {
        "enablePrivateNodes": True,
        "enablePrivateEndpoint": False,
        "masterIpv4CidrBlock": cfg.gcp.master_cidr,
    }
    authorized = i["masterAuthorizedNetworksConfig"]
    assert [b["cidrBlock"] for b in authorized["cidrBlocks"]] == cfg.gcp.master_authorized_cidrs
    # Only the listed networks, not any Google Cloud VM's public address.
    assert authorized["gcpPublicCidrsAccessEnabled"] is False
    # The throwaway default pool runs as the minimal node account, and its config is ignored once deleted.
    node_sa = gcp_run.one("gcp:serviceaccount/account:Account", "-nodes")
    assert i["nodeConfig"]["serviceAccount"] == fake_outputs(node_sa.type, node_sa.name, node_sa.inputs)["email"]
    assert "nodeConfig" in cluster.options["ignoreChanges"]


@pytest.mark.parametrize("stack, protected", [("gcp-dev", False), ("gcp-prod", True)])
def test_deletion_protection_only_on_prod(stack: str, protected: bool) -> None:
    run = program_run(stack)
    cluster = run.one(CLUSTER)
    assert stack_config(stack).protect is protected
    assert cluster.inputs["deletionProtection"] is protected
    assert cluster.options.get("protect", False) is protected


def test_every_gcp_resource_uses_the_components_provider(gcp_run: ProgramRun) -> None:
    component = gcp_run.one(COMPONENT)
    provider = gcp_run.one("pulumi:providers:gcp")
    cfg = stack_config(gcp_run.stack)
    assert (provider.inputs["project"], provider.inputs["region"]) == (cfg.gcp.project, cfg.gcp.region)
    gcp_resources = [r for r in gcp_run.resources if r.type.startswith("gcp:")]
    assert len(gcp_resources) >= 12
    for r in gcp_resources:
        assert r.options.get("provider") == provider.name, r.name
        assert r.parent == f"{COMPONENT}::{component.name}", r.name


# --- node pools ------------------------------------------------------------------------------------------


def test_task_pool_scales_from_zero_with_the_task_pool_label_and_taint(gcp_run: ProgramRun) -> None:
    cfg = stack_config(gcp_run.stack)
    tasks = pool(gcp_run, "tasks")
    assert tasks.inputs["autoscaling"]["totalMinNodeCount"] == 0
    assert tasks.inputs["autoscaling"]["totalMaxNodeCount"] == cfg.task_pool.max_size
    # Pool-wide limits only: per-zone limits would multiply by the zone count.
    assert "minNodeCount" not in tasks.inputs["autoscaling"] and "maxNodeCount" not in tasks.inputs["autoscaling"]
    assert tasks.inputs["initialNodeCount"] == 0
    node = tasks.inputs["nodeConfig"]
    assert node["labels"] == TASK_POOL.labels
    assert node["taints"] == [
        {"key": TASK_POOL.taint_key, "value": TASK_POOL.taint_value, "effect": TASK_POOL.gke_taint_effect}
    ]
    assert node["taints"][0]["effect"] == "NO_SCHEDULE"
    assert node["machineType"] == cfg.instance_types("task")[0]
    assert node["diskSizeGb"] == cfg.task_pool.disk_size_gb
    assert node["spot"] is cfg.task_pool.spot


@pytest.mark.parametrize("stack, spot", [("gcp-dev", True), ("gcp-prod", False)])
def test_task_pool_is_spot_on_dev_only(stack: str, spot: bool) -> None:
    assert pool(program_run(stack), "tasks").inputs["nodeConfig"]["spot"] is spot


def test_system_pool_never_drops_below_one_node_and_carries_no_task_taint(gcp_run: ProgramRun) -> None:
    cfg = stack_config(gcp_run.stack)
    system = pool(gcp_run, "system")
    assert system.inputs["autoscaling"]["totalMinNodeCount"] == cfg.system_pool.min_size >= 1
    assert system.inputs["autoscaling"]["totalMaxNodeCount"] == cfg.system_pool.max_size
    node = system.inputs["nodeConfig"]
    assert node["machineType"] == cfg.instance_types("system")[0]
    assert "taints" not in node and TASK_POOL.label_key not in (node.get("labels") or {})
    assert node["spot"] is False


def test_both_pools_are_managed_and_leave_node_counts_to_the_autoscaler(gcp_run: ProgramRun) -> None:
    cfg = stack_config(gcp_run.stack)
    node_sa = gcp_run.one("gcp:serviceaccount/account:Account", "-nodes")
    sa_email = fake_outputs(node_sa.type, node_sa.name, node_sa.inputs)["email"]
    for which in ("system", "tasks"):
        p = pool(gcp_run, which)
        assert p.inputs["cluster"] == cfg.cluster_name
        assert p.inputs["location"] == cfg.gcp.region
        assert p.inputs.get("nodeLocations") == (cfg.gcp.node_zones or None)
        assert p.inputs["management"] == {"autoRepair": True, "autoUpgrade": True}
        assert {"nodeCount", "initialNodeCount"} <= set(p.options["ignoreChanges"])
        node = p.inputs["nodeConfig"]
        assert node["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
        assert node["serviceAccount"] == sa_email
        assert node["shieldedInstanceConfig"] == {"enableSecureBoot": True, "enableIntegrityMonitoring": True}


def test_dev_pins_pools_to_its_zones() -> None:
    zones = stack_config("gcp-dev").gcp.node_zones
    assert zones
    run = program_run("gcp-dev")
    assert pool(run, "system").inputs["nodeLocations"] == zones
    assert run.one(CLUSTER).inputs["nodeLocations"] == zones


# --- node service account --------------------------------------------------------------------------------


def test_node_service_account_has_only_the_minimal_roles(gcp_run: ProgramRun) -> None:
    cfg = stack_config(gcp_run.stack)
    node_sa = gcp_run.one("gcp:serviceaccount/account:Account", "-nodes")
    member = "serviceAccount:" + fake_outputs(node_sa.type, node_sa.name, node_sa.inputs)["email"]
    bindings = gcp_run.by_type("gcp:projects/iAMMember:IAMMember")
    assert all(b.inputs["member"] == member and b.inputs["project"] == cfg.gcp.project for b in bindings)
    roles = sorted(b.inputs["role"] for b in bindings)
    assert roles == sorted(NODE_SERVICE_ACCOUNT_ROLES)
    assert not BROAD_ROLES & set(roles)
    # Google's documented minimum for a node service account (logs, metrics, autoscaling metrics).
    assert "roles/container.defaultNodeServiceAccount" in roles
    assert "roles/owner" not in roles and "roles/editor" not in roles
    # Nodes start only once their account may write logs and pull images.
    for which in ("system", "tasks"):
        assert {b.name for b in bindings} <= set(pool(gcp_run, which).options["dependsOn"])


# --- kubeconfig and Kubernetes provider ------------------------------------------------------------------


def test_kubeconfig_is_secret_and_feeds_the_provider(gcp_run: ProgramRun) -> None:
    exported = gcp_run.outputs["kubeconfig"]
    assert set(exported) == {"secret"}
    provider = gcp_run.one("pulumi:providers:kubernetes")
    assert provider.inputs["kubeconfig"] == exported
    # Kubernetes resources wait for nodes to exist.
    assert {pool(gcp_run, "system").name, pool(gcp_run, "tasks").name} <= set(provider.options["dependsOn"])


def test_kubeconfig_loads_in_the_kubernetes_client_and_calls_the_gke_auth_plugin(
    gcp_run: ProgramRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The official client parses the kubeconfig and runs its exec plugin; only the process is faked."""
    from kubernetes import config as k8s_config
    from kubernetes.config import exec_provider

    calls: list[dict] = []

    class FakeAuthPlugin:
        def __init__(self, args, env, **_kwargs) -> None:  # noqa: ANN001
            calls.append({"args": args, "exec_info": json.loads(env["KUBERNETES_EXEC_INFO"])})
            self.returncode = 0

        def communicate(self):
            cred = {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "kind": "ExecCredential",
                "status": {"token": "gke-token"},
            }
            return json.dumps(cred), ""

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(exec_provider.subprocess, "Popen", FakeAuthPlugin)
    kubeconfig = yaml.safe_load(gcp_run.outputs["kubeconfig"]["secret"])
    client = k8s_config.new_client_from_config_dict(kubeconfig)

    faked = fake_outputs(CLUSTER, gcp_run.one(CLUSTER).name, {})
    assert client.configuration.host == f"https://{faked['endpoint']}"
    with open(client.configuration.ssl_ca_cert, "rb") as ca:
        assert ca.read() == base64.b64decode(faked["masterAuth"]["clusterCaCertificate"])
    assert "Bearer gke-token" in client.configuration.api_key.values()
    assert [c["args"] for c in calls] == [["gke-gcloud-auth-plugin"]]
    # provideClusterInfo: the plugin is told which cluster it authenticates to.
    assert calls[0]["exec_info"]["spec"]["cluster"]["server"] == client.configuration.host


def test_kubeconfig_names_its_context_like_gcloud() -> None:
    doc = yaml.safe_load(gke_kubeconfig("198.51.100.7", "Q0E=", "gke_p_r_c"))
    assert doc["current-context"] == "gke_p_r_c"
    assert doc["clusters"][0]["cluster"] == {"server": "https://198.51.100.7", "certificate-authority-data": "Q0E="}


# --- Workload Identity and the component's other attributes (a small program around the component) -------

PROGRAM = textwrap.dedent(
    """
    import pulumi

    from airflow_on_k8s.contract import BucketGrant, KubernetesCluster
    from airflow_on_k8s.config import load_stack_config, parse_stack_config
    from airflow_on_k8s.gcp.cluster import GkeCluster, GkeClusterArgs

    raw = load_stack_config().model_dump(by_alias=True)
    raw["gcp"].update({gcp_overrides!r})
    config = parse_stack_config(raw)
    cluster = GkeCluster(config.cluster_name, GkeClusterArgs.from_stack(config))
    annotations = cluster.workload_identity.bind_service_account(
        "airflow-worker",
        "airflow",
        "airflow-worker",
        [BucketGrant("my-logs-bucket"), BucketGrant("my-dags-bucket", "read")],
        parent=cluster,
    )
    pulumi.export("annotations", annotations)
    pulumi.export("fulfils_contract", isinstance(cluster, KubernetesCluster))
    pulumi.export("network_id", cluster.network_id)
    pulumi.export("network_self_link", cluster.network_self_link)
    pulumi.export("subnetwork_self_link", cluster.subnetwork_self_link)
    pulumi.export("kubeconfig", cluster.kubeconfig)
    """
)


def run_with(tmp_path: Path, stack: str, **gcp_overrides) -> ProgramRun:
    program = tmp_path / "program.py"
    program.write_text(PROGRAM.format(gcp_overrides=gcp_overrides))
    return run_program(stack, program=program)


@pytest.fixture(scope="module")
def binding_run(tmp_path_factory: pytest.TempPathFactory) -> ProgramRun:
    return run_with(tmp_path_factory.mktemp("gke"), "gcp-dev")


def test_workload_identity_binding_is_scoped_to_one_service_account_and_its_buckets(binding_run: ProgramRun) -> None:
    cfg = stack_config("gcp-dev")
    gsa = binding_run.one("gcp:serviceaccount/account:Account", "airflow-worker")
    email = fake_outputs(gsa.type, gsa.name, gsa.inputs)["email"]
    assert binding_run.outputs["annotations"] == {"iam.gke.io/gcp-service-account": email}

    wi = binding_run.one("gcp:serviceaccount/iAMMember:IAMMember")
    assert wi.inputs["role"] == "roles/iam.workloadIdentityUser"
    assert wi.inputs["member"] == f"serviceAccount:{cfg.gcp.project}.svc.id.goog[airflow/airflow-worker]"
    assert wi.inputs["serviceAccountId"] == f"projects/{cfg.gcp.project}/serviceAccounts/{email}"
    # The workload pool exists only after the cluster does.
    assert binding_run.one(CLUSTER).name in wi.options["dependsOn"]

    grants = binding_run.by_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert {b.inputs["bucket"]: (b.inputs["role"], b.inputs["member"]) for b in grants} == {
        "my-logs-bucket": (BUCKET_ROLES["read-write"], f"serviceAccount:{email}"),
        "my-dags-bucket": (BUCKET_ROLES["read"], f"serviceAccount:{email}"),
    }
    assert BUCKET_ROLES == {"read": "roles/storage.objectViewer", "read-write": "roles/storage.objectUser"}
    # Nothing in the binding is granted at project level.
    assert all("airflow-worker" not in b.name for b in binding_run.by_type("gcp:projects/iAMMember:IAMMember"))


def test_component_fulfils_the_contract_and_exposes_its_network(binding_run: ProgramRun) -> None:
    assert binding_run.outputs["fulfils_contract"] is True
    network = binding_run.one("gcp:compute/network:Network")
    subnet = binding_run.one("gcp:compute/subnetwork:Subnetwork")
    assert binding_run.outputs["network_id"] == f"{network.name}-id"
    outputs = binding_run.outputs
    assert outputs["network_self_link"] == fake_outputs(network.type, network.name, network.inputs)["selfLink"]
    assert outputs["subnetwork_self_link"] == fake_outputs(subnet.type, subnet.name, subnet.inputs)["selfLink"]


def test_public_nodes_need_no_nat_or_control_plane_firewall(tmp_path: Path) -> None:
    run = run_with(tmp_path, "gcp-dev", privateNodes=False, autoscalingProfile="BALANCED")
    assert not run.by_type("gcp:compute/router:Router")
    assert not run.by_type("gcp:compute/routerNat:RouterNat")
    assert not run.by_type("gcp:compute/firewall:Firewall")
    cluster = run.one(CLUSTER).inputs
    assert "privateClusterConfig" not in cluster
    assert cluster["clusterAutoscaling"]["autoscalingProfile"] == "BALANCED"


def test_private_endpoint_kubeconfig_uses_the_internal_address(tmp_path: Path) -> None:
    """Fully private API: the only endpoint is internal, so the kubeconfig (and Pulumi) must use that address."""
    run = run_with(tmp_path, "gcp-dev", privateEndpoint=True, masterAuthorizedCidrs=["10.50.0.0/20"])
    cluster = run.one(CLUSTER)
    private = cluster.inputs["privateClusterConfig"]
    assert private["enablePrivateEndpoint"] is True
    # Reachable from every region of the VPC (a runner or VPN gateway elsewhere), still only from authorized ranges.
    assert private["masterGlobalAccessConfig"] == {"enabled": True}
    assert [b["cidrBlock"] for b in cluster.inputs["masterAuthorizedNetworksConfig"]["cidrBlocks"]] == ["10.50.0.0/20"]
    internal = fake_outputs(CLUSTER, cluster.name, cluster.inputs)["privateClusterConfig"]["privateEndpoint"]
    kubeconfig = yaml.safe_load(run.outputs["kubeconfig"]["secret"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"https://{internal}"


def test_switching_to_the_private_endpoint_keeps_the_kubernetes_provider(tmp_path: Path) -> None:
    """A new API address alone must not make Pulumi replace every Kubernetes resource (it would by default)."""
    public = program_run("gcp-dev").one("pulumi:providers:kubernetes")
    private = run_with(tmp_path, "gcp-dev", privateEndpoint=True, masterAuthorizedCidrs=["10.50.0.0/20"]).one(
        "pulumi:providers:kubernetes"
    )
    assert public.inputs["kubeconfig"] != private.inputs["kubeconfig"]
    assert public.inputs["clusterIdentifier"] == private.inputs["clusterIdentifier"]
    assert stack_config("gcp-dev").cluster_name in public.inputs["clusterIdentifier"]


def test_public_endpoint_kubeconfig_uses_the_public_address(gcp_run: ProgramRun) -> None:
    cluster = gcp_run.one(CLUSTER)
    kubeconfig = yaml.safe_load(gcp_run.outputs["kubeconfig"]["secret"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"https://{fake_outputs(CLUSTER, cluster.name, {})['endpoint']}"
    assert "masterGlobalAccessConfig" not in cluster.inputs["privateClusterConfig"]


def test_binding_rejects_an_unknown_access_level() -> None:
    from airflow_on_k8s.gcp.workload_identity import GkeWorkloadIdentity
    from airflow_on_k8s.contract import BucketGrant

    # Validation happens before any resource is created, so no provider, cluster or parent is needed.
    identity = GkeWorkloadIdentity("airflow", "my-project", gcp_provider=None, cluster=None)  # type: ignore[arg-type]
    bad_grant = [BucketGrant("b", "admin")]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"logs: bucket access 'admin' is not known; use one of read, read-write"):
        identity.bind_service_account("logs", "airflow", "worker", bad_grant, parent=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logs: namespace is empty"):
        identity.bind_service_account("logs", "", "worker", [], parent=None)  # type: ignore[arg-type]


# --- args from config ------------------------------------------------------------------------------------

GCP_DEV_RAW = {
    "cloud": "gcp",
    "gcp": {"project": "my-airflow-dev", "region": "europe-west1", "masterAuthorizedCidrs": ["203.0.113.10/32"]},
}


def test_several_machine_types_are_a_config_error_naming_the_pool() -> None:
    task_pool = {"instanceTypes": ["n2-standard-8", "n2-standard-16"], "minSize": 0}
    config = parse_stack_config({**GCP_DEV_RAW, "taskPool": task_pool})
    with pytest.raises(ConfigError) as err:
        GkeClusterArgs.from_stack(config)
    assert err.value.problems == [
        f"{PROJECT}:taskPool.instanceTypes: GKE node pools take one machine type, got "
        "['n2-standard-8', 'n2-standard-16']; keep one, e.g. [n2-standard-8]"
    ]


def test_system_pool_too_small_for_its_zones_is_a_config_error() -> None:
    zones = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]
    def config(zone_list: list[str]) -> StackConfig:
        gcp_section = {**GCP_DEV_RAW["gcp"], "nodeZones": zone_list}
        return parse_stack_config({**GCP_DEV_RAW, "gcp": gcp_section, "systemPool": {"minSize": 1, "maxSize": 2}})

    with pytest.raises(ConfigError, match=r"systemPool\.maxSize: 2 is below the 3 zones .* raise maxSize to 3"):
        GkeClusterArgs.from_stack(config(zones))
    assert GkeClusterArgs.from_stack(config(zones[:2])).system_pool.max_nodes == 2


def test_default_machine_types_apply_when_the_stack_sets_none() -> None:
    args = GkeClusterArgs.from_stack(parse_stack_config(GCP_DEV_RAW))
    assert args.task_pool.machine_type == "e2-standard-4"
    assert (args.task_pool.min_nodes, args.task_pool.max_nodes) == (0, 10)
    assert args.pods_range_name != args.services_range_name


ACCOUNT_ID = re.compile(r"^[a-z](?:[-a-z0-9]{4,28}[a-z0-9])$")


@given(st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=3))
def test_service_account_ids_are_always_valid(parts: list[str]) -> None:
    assert ACCOUNT_ID.match(service_account_id(*parts)), service_account_id(*parts)


def test_long_service_account_ids_stay_distinct() -> None:
    a = service_account_id("a-thirty-character-cluster-nam", "airflow-worker")
    b = service_account_id("a-thirty-character-cluster-nam", "airflow-scheduler")
    assert a != b and len(a) == len(b) == 30


@given(st.dictionaries(st.text(min_size=1, max_size=80), st.text(max_size=80), max_size=5))
def test_tags_become_valid_gcp_labels(tags: dict[str, str]) -> None:
    for key, value in gcp_labels(tags).items():
        assert re.match(r"^[a-z][a-z0-9_-]{0,62}$", key), key
        assert re.match(r"^[a-z0-9_-]{0,63}$", value), value


# --- whole-program variants of a stack file -----------------------------------------------------------------


def run_variant(tmp_path: Path, base: str, **changes) -> ProgramRun:
    """The real program on a copy of `base`'s stack file with project keys changed (sections are merged)."""
    doc = yaml.safe_load((STACKS_DIR / f"Pulumi.{base}.yaml").read_text())
    config = doc["config"]
    for key, value in changes.items():
        full = f"{PROJECT}:{key}"
        if isinstance(value, dict) and isinstance(config.get(full), dict):
            value = {**config[full], **value}
        config[full] = value
    (tmp_path / f"Pulumi.{base}-variant.yaml").write_text(yaml.safe_dump(doc))
    return run_program(f"{base}-variant", stacks_dir=tmp_path)


# --- Cloud SQL (gcp-prod: airflow.database managed) ----------------------------------------------------------

SQL_INSTANCE = "gcp:sql/databaseInstance:DatabaseInstance"


def assert_tier_fits_edition(settings: dict) -> None:
    # pulumi-gcp 10.2.0 sql/_inputs.py, `edition`: ENTERPRISE_PLUS takes only db-perf-optimized-N-* tiers;
    # shared-core and custom tiers need ENTERPRISE. Unset on POSTGRES_16 means ENTERPRISE_PLUS.
    assert settings.get("edition") in ("ENTERPRISE", "ENTERPRISE_PLUS"), "edition must be explicit"
    assert settings["tier"].startswith("db-perf-optimized-N-") is (settings["edition"] == "ENTERPRISE_PLUS")


def test_cloud_sql_sets_an_edition_that_takes_its_tier() -> None:
    instance = program_run("gcp-prod").one(SQL_INSTANCE)
    settings = instance.inputs["settings"]
    assert_tier_fits_edition(settings)
    assert settings["edition"] == stack_config("gcp-prod").gcp.cloud_sql.edition == "ENTERPRISE"
    backup = settings["backupConfiguration"]
    # Point-in-time recovery on a protected stack, with no more log days than ENTERPRISE keeps (1-7).
    assert backup["pointInTimeRecoveryEnabled"] is True
    assert 1 <= backup["transactionLogRetentionDays"] <= 7


@pytest.mark.parametrize("edition", ["ENTERPRISE", "ENTERPRISE_PLUS"])
def test_default_tier_follows_the_edition(tmp_path: Path, edition: str) -> None:
    run = run_variant(tmp_path, "gcp-prod", gcp={"cloudSql": {"edition": edition}})
    assert_tier_fits_edition(run.one(SQL_INSTANCE).inputs["settings"])


# --- Google APIs -------------------------------------------------------------------------------------------

# The API that serves each resource type the program creates (a new type fails the test until it is listed).
API_OF_TYPE = {
    "gcp:container/": "container.googleapis.com",
    "gcp:compute/": "compute.googleapis.com",
    "gcp:serviceaccount/": "iam.googleapis.com",
    "gcp:projects/iAMMember:": "cloudresourcemanager.googleapis.com",
    "gcp:storage/": "storage.googleapis.com",
    "gcp:sql/": "sqladmin.googleapis.com",
    "gcp:servicenetworking/": "servicenetworking.googleapis.com",
}
SERVICE = "gcp:projects/service:Service"


def test_every_gcp_resource_waits_for_its_api_to_be_enabled(gcp_run: ProgramRun) -> None:
    cfg = stack_config(gcp_run.stack)
    services = {s.inputs["service"]: s for s in gcp_run.by_type(SERVICE)}
    for service in services.values():
        assert service.inputs["project"] == cfg.gcp.project
        # Destroying the stack leaves the APIs on: other things in the project may use them.
        assert service.inputs["disableOnDestroy"] is False
    # Workload Identity hands pods tokens of their Google service account through the IAM Credentials API.
    assert "iamcredentials.googleapis.com" in services
    for r in gcp_run.resources:
        if not r.type.startswith("gcp:") or r.type == SERVICE:
            continue
        api = next((api for prefix, api in API_OF_TYPE.items() if r.type.startswith(prefix)), None)
        assert api, f"{r.type}: which API serves it? add it to API_OF_TYPE (and to the APIs the program enables)"
        assert api in services, f"{r.type} needs {api}, which the program does not enable"
        assert services[api].name in r.options.get("dependsOn", []), f"{r.name} does not wait for {api}"


def test_apis_are_left_alone_when_the_project_manages_them(tmp_path: Path) -> None:
    run = run_with(tmp_path, "gcp-dev", enableApis=False)
    assert not run.by_type(SERVICE)
    assert run.by_type(CLUSTER)


def test_service_networking_connection_does_not_block_destroy() -> None:
    connection = program_run("gcp-prod").one("gcp:servicenetworking/connection:Connection")
    # pulumi-gcp 10.2.0: DELETE fails while Cloud SQL holds the range; ABANDON leaves the peering, which blocks
    # deleting the network; REMOVE_PEERING removes the peering when the delete is refused.
    assert connection.inputs["deletionPolicy"] == "REMOVE_PEERING"


# --- names GCP accepts, at the longest cluster name and project ID the config allows -------------------------

# Documented limits of the names the program sets or lets Pulumi derive.
NAME_LIMITS = {
    # GKE: "must be no longer than 40 characters" (API error quoted in pulumi/pulumi-gcp#1510).
    "gcp:container/cluster:Cluster": 40,
    "gcp:container/nodePool:NodePool": 40,
    # Compute Engine: "The name must be 1-63 characters long, and comply with RFC1035" (compute REST reference).
    "gcp:compute/network:Network": 63,
    "gcp:compute/subnetwork:Subnetwork": 63,
    "gcp:compute/router:Router": 63,
    "gcp:compute/routerNat:RouterNat": 63,
    "gcp:compute/firewall:Firewall": 63,
    "gcp:compute/globalAddress:GlobalAddress": 63,
    # Cloud Storage: 3-63 characters for a name without dots.
    "gcp:storage/bucket:Bucket": 63,
    # Cloud SQL: "This ID can have a maximum length of 98 characters" (sqladmin v1 reference).
    "gcp:sql/databaseInstance:DatabaseInstance": 98,
    # PostgreSQL identifiers (database, role): 63 bytes.
    "gcp:sql/database:Database": 63,
    "gcp:sql/user:User": 63,
}
# Pulumi auto-names a resource whose `name` the program leaves unset: its logical name, "-" and 7 random
# characters (pulumi/pulumi-gcp#1510: "primaryPreemptibleNodes-b8a97f9").
AUTONAME_SUFFIX = "-abcdef0"
LONGEST_CLUSTER_NAME = "a-thirty-character-cluster-nam"
LONGEST_PROJECT_ID = "a-thirty-character-project-id0"


def takes_a_name(type_token: str) -> bool:
    module, cls = type_token.split(":")[1].split("/")[0], type_token.split(":")[2]
    resource = getattr(importlib.import_module(f"pulumi_gcp.{module}"), cls)
    return "name" in inspect.signature(resource._internal_init).parameters


def test_every_gcp_name_fits_at_the_longest_cluster_name_and_project_id(tmp_path: Path) -> None:
    assert len(LONGEST_CLUSTER_NAME) == len(LONGEST_PROJECT_ID) == 30
    # Both pass the config's own checks (clusterName and gcp.project allow 30 characters at most).
    run = run_variant(
        tmp_path, "gcp-prod", clusterName=LONGEST_CLUSTER_NAME, gcp={"project": LONGEST_PROJECT_ID}
    )
    checked = 0
    for r in run.resources:
        if not r.type.startswith("gcp:"):
            continue
        if r.type == "gcp:serviceaccount/account:Account":
            assert 6 <= len(r.inputs["accountId"]) <= 30, r.inputs["accountId"]
            checked += 1
        for secondary in r.inputs.get("secondaryIpRanges") or []:
            assert len(secondary["rangeName"]) <= 63, secondary["rangeName"]
        if not takes_a_name(r.type):
            continue
        assert r.type in NAME_LIMITS, f"{r.type} takes a name: add its documented limit to NAME_LIMITS"
        name = r.inputs.get("name") or r.name + AUTONAME_SUFFIX
        assert len(name) <= NAME_LIMITS[r.type], f"{r.type} {name!r}: {len(name)} > {NAME_LIMITS[r.type]}"
        assert re.fullmatch(r"[a-z][-a-z0-9]*[a-z0-9]", name), name
        checked += 1
    assert checked >= 15
    # Names stay what they say where they fit.
    assert run.one("gcp:storage/bucket:Bucket").inputs["name"].startswith(f"{LONGEST_PROJECT_ID}-")
    assert {pool(run, which).inputs["name"] for which in ("system", "tasks")} == {"system", "tasks"}
    # A fixed name exists once: replacing a pool deletes the old one first.
    assert all(pool(run, which).options.get("deleteBeforeReplace") for which in ("system", "tasks"))
