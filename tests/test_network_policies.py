"""NetworkPolicies and Pod Security Standards labels (airflow_on_k8s/airflow/network_policies.py), in every stack.

The stores' policies are evaluated against the pod labels the charts really put on their pods (read from the
templates at the pinned versions, listed below with their source), the worker autoscaler's pods as the
program deploys them, and KubernetesPodOperator pods built by the real cncf.kubernetes provider with the
shipped pod mutation hook. Every policy is validated strictly against the stack's Kubernetes schema.
"""

from __future__ import annotations

import ipaddress

import kubernetes_validate
import pytest

from airflow_on_k8s.airflow import component
from airflow_on_k8s.addons.keda import KEDA_NAMESPACE
from airflow_on_k8s.airflow.network_policies import PRIVATE_RANGES, admits, selects, task_namespace_policies
from tests.conftest import program_run
from tests.test_addons import stack_config
from tests.test_k8s_schema import manifest
from tests.test_pod_mutation_hook import build_pod, in_cluster, local_settings  # noqa: F401 - fixtures
from airflow_on_k8s.testing.mock_runtime import ProgramRun, available_stacks

POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
NAMESPACE = "kubernetes:core/v1:Namespace"


def chart_pod(component_name: str) -> dict[str, str]:
    # Airflow chart 1.21.0: every Airflow pod template carries tier/component/release (e.g.
    # templates/workers/worker-deployment.yaml, api-server/api-server-deployment.yaml,
    # jobs/migrate-database-job.yaml "run-airflow-migrations", jobs/create-user-job.yaml "create-user-job").
    return {"tier": "airflow", "component": component_name, "release": "airflow"}


AIRFLOW_COMPONENTS = [
    "scheduler", "worker", "triggerer", "dag-processor", "api-server", "run-airflow-migrations", "create-user-job",
]
# The bundled Postgres: a Bitnami-style subchart, labelled by chart name and release.
POSTGRES_POD = {"app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": "airflow", "app.kubernetes.io/component": "primary"}
# kedacore/charts v2.18.1 keda/templates/manager/deployment.yaml
KEDA_OPERATOR_POD = {"app": "keda-operator", "app.kubernetes.io/name": "keda-operator", "name": "keda-operator"}


@pytest.fixture(params=available_stacks())
def run(request) -> ProgramRun:
    return program_run(request.param)


def policies(run: ProgramRun, namespace: str) -> dict[str, dict]:
    found = {}
    for r in run.by_type(POLICY):
        body = manifest(r.inputs)
        if body["metadata"]["namespace"] == namespace:
            found[body["metadata"]["name"]] = body
    return found


def store_policies(run: ProgramRun) -> dict[str, dict]:
    """The Airflow namespace's policies by the store they protect."""
    cfg = stack_config(run.stack)
    found = policies(run, cfg.airflow.namespace)
    out = {}
    for name, policy in found.items():
        selector = policy["spec"]["podSelector"]
        for store, labels in (("redis", chart_pod("redis")), ("pgbouncer", chart_pod("pgbouncer")), ("postgresql", POSTGRES_POD)):
            if selects(selector, labels):
                assert store not in out, f"two policies for {store}"
                out[store] = policy
    assert len(out) == len(found), "a policy in the Airflow namespace protects no known store"
    return out


def autoscaler_pod_labels(run: ProgramRun) -> dict[str, str]:
    (deployment,) = [r for r in run.by_type("kubernetes:apps/v1:Deployment") if r.name == "worker-autoscaler-deployment"]
    return manifest(deployment.inputs)["spec"]["template"]["metadata"]["labels"]


def port_of(store: str) -> int:
    return {"redis": component.REDIS_PORT, "pgbouncer": component.PGBOUNCER_PORT, "postgresql": component.POSTGRES_PORT}[store]


# --- the Airflow namespace: Redis, Postgres, PgBouncer -------------------------------------------------------


def test_each_store_has_one_policy_selecting_exactly_its_pods(run):
    cfg = stack_config(run.stack)
    stores = store_policies(run)
    db = "pgbouncer" if cfg.airflow.database == "managed" else "postgresql"
    assert set(stores) == {"redis", db}
    for store, policy in stores.items():
        selector = policy["spec"]["podSelector"]
        assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress of the stores is not restricted
        for other in AIRFLOW_COMPONENTS + ["statsd"]:
            assert not selects(selector, chart_pod(other)), (store, other)
    assert not selects(stores["redis"]["spec"]["podSelector"], POSTGRES_POD)


def test_airflows_own_pods_reach_the_stores(run):
    cfg = stack_config(run.stack)
    for store, policy in store_policies(run).items():
        for name in AIRFLOW_COMPONENTS:
            assert admits(policy, cfg.airflow.namespace, chart_pod(name), port_of(store)), (store, name)


@pytest.mark.parametrize("stack", [s for s in available_stacks() if stack_config(s).scaling.mode == "task-aware"])
def test_the_worker_autoscaler_reaches_redis_and_the_database(stack):
    run = program_run(stack)
    cfg = stack_config(stack)
    labels = autoscaler_pod_labels(run)
    for store, policy in store_policies(run).items():
        assert admits(policy, cfg.airflow.namespace, labels, port_of(store)), store


def test_keda_reaches_the_database_in_keda_mode_only_and_never_redis(run):
    cfg = stack_config(run.stack)
    for store, policy in store_policies(run).items():
        allowed = store != "redis" and cfg.scaling.mode == "keda"
        assert admits(policy, KEDA_NAMESPACE, KEDA_OPERATOR_POD, port_of(store)) is allowed, store


def test_task_pods_reach_no_store_even_when_they_label_themselves_as_airflow(run, local_settings, in_cluster):
    cfg = stack_config(run.stack)
    pod = build_pod(local_settings, in_cluster)
    assert pod.metadata.namespace == "airflow-tasks"
    disguised = {**pod.metadata.labels, **chart_pod("scheduler")}
    for store, policy in store_policies(run).items():
        for labels in (pod.metadata.labels, disguised):
            assert not admits(policy, cfg.airflow.task_namespace, labels, port_of(store)), store
        # And no other pod outside the Airflow namespace either.
        assert not admits(policy, "default", chart_pod("worker"), port_of(store)), store


def test_the_stores_only_open_their_own_ports(run):
    cfg = stack_config(run.stack)
    for store, policy in store_policies(run).items():
        assert not admits(policy, cfg.airflow.namespace, chart_pod("scheduler"), 22), store
        (rule,) = policy["spec"]["ingress"]
        assert port_of(store) in {p["port"] for p in rule["ports"]}


def test_the_release_waits_for_the_policies(run):
    cfg = stack_config(run.stack)
    names = {r.name for r in run.by_type(POLICY) if manifest(r.inputs)["metadata"]["namespace"] == cfg.airflow.namespace}
    depends = set(run.one("kubernetes:helm.sh/v3:Release", "airflow").options.get("dependsOn", []))
    assert names and all(any(n in d for d in depends) for n in names), (names, depends)


def test_the_charts_own_policies_stay_off(run):
    values = run.one("kubernetes:helm.sh/v3:Release", "airflow").inputs["values"]
    assert values["networkPolicies"] == {"enabled": False}


# --- the task namespace ------------------------------------------------------------------------------------


def egress_rules(run: ProgramRun) -> list[dict]:
    cfg = stack_config(run.stack)
    found = policies(run, cfg.airflow.task_namespace)
    assert set(found) == {"default-deny", "task-egress"}
    deny = found["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}  # every pod, nothing allowed
    egress = found["task-egress"]["spec"]
    assert egress["podSelector"] == {} and egress["policyTypes"] == ["Egress"]
    return egress["egress"]


def test_task_pods_resolve_names_through_kube_dns_only(run):
    dns = egress_rules(run)[0]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    (peer,) = dns["to"]
    assert selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": "kube-system"})
    # CoreDNS (EKS, kind) and kube-dns (GKE) pods both carry k8s-app=kube-dns.
    assert selects(peer["podSelector"], {"k8s-app": "kube-dns", "pod-template-hash": "x"})


def allowed_ip(rules: list[dict], ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    for rule in rules:
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if not block or address not in ipaddress.ip_network(block["cidr"]):
                continue
            if not any(address in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
    return False


def cluster_ranges(run: ProgramRun) -> list[str]:
    cfg = stack_config(run.stack)
    if cfg.cloud == "aws":
        return [cfg.aws.vpc_cidr, cfg.aws.service_cidr]  # VPC CNI pods, nodes, RDS live in the VPC
    if cfg.cloud == "gcp":
        return [cfg.gcp.subnet_cidr, cfg.gcp.pods_cidr, cfg.gcp.services_cidr, cfg.gcp.master_cidr]
    return ["10.244.0.0/16", "10.96.0.0/12"]  # kind's pod and service ranges


def test_task_pods_reach_the_internet_but_not_the_cluster_the_vpc_or_the_databases(run):
    rules = egress_rules(run)
    for ip in ("1.1.1.1", "142.250.0.1", "52.95.110.1"):  # public addresses (S3, GCS, registries live there)
        assert allowed_ip(rules, ip), ip
    for cidr in cluster_ranges(run):
        net = ipaddress.ip_network(cidr)
        for ip in (net.network_address + 1, net.broadcast_address - 1):
            assert not allowed_ip(rules, str(ip)), (cidr, ip)
    # Cloud SQL's private range and any peered private network are in the private ranges too.
    for ip in ("10.1.2.3", "172.16.5.4", "192.168.1.1", "100.64.0.10"):
        assert not allowed_ip(rules, ip), ip


def test_listed_private_cidrs_are_opened_for_tasks():
    rules = task_namespace_policies("airflow-tasks", ["10.200.0.0/16"])[1]["spec"]["egress"]
    assert allowed_ip(rules, "10.200.3.4") and not allowed_ip(rules, "10.201.0.1")
    assert set(PRIVATE_RANGES) >= {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}


# --- Pod Security Standards and schema ----------------------------------------------------------------------


def test_both_namespaces_enforce_the_baseline_pod_security_standard(run):
    cfg = stack_config(run.stack)
    namespaces = {manifest(r.inputs)["metadata"]["name"]: manifest(r.inputs) for r in run.by_type(NAMESPACE)}
    for name in (cfg.airflow.namespace, cfg.airflow.task_namespace):
        labels = namespaces[name]["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "baseline", name
        assert labels["pod-security.kubernetes.io/audit"] == "restricted", name


def test_every_policy_validates_against_the_stacks_kubernetes_schema(run):
    version = stack_config(run.stack).kubernetes_version
    found = run.by_type(POLICY)
    assert len(found) >= 4
    for r in found:
        kubernetes_validate.validate(manifest(r.inputs), version, strict=True)
