"""metrics-server, KEDA and the task namespace (RBAC, LimitRange, ResourceQuota) in every stack, under Pulumi mocks."""

from __future__ import annotations

import json

import pytest

from airflow_on_k8s.airflow.component import TRIGGERER_SERVICE_ACCOUNT, WORKER_SERVICE_ACCOUNT
from airflow_on_k8s.config import PROJECT, StackConfig, parse_stack_config
from airflow_on_k8s.addons.metrics_server import MetricsServerArgs
from airflow_on_k8s.airflow.task_namespace import DEFAULT_REQUEST, POD_LAUNCHER_RULES, QUOTA_PER_TASK_NODE
from airflow_on_k8s.versions import KEDA_CHART, METRICS_SERVER_CHART
from tests.conftest import program_run
from airflow_on_k8s.testing.mock_runtime import ProgramRun, available_stacks, read_stack_config

RELEASE = "kubernetes:helm.sh/v3:Release"
ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"
ROLE_BINDING = "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding"
RBAC_TYPES = [ROLE, ROLE_BINDING] + [
    f"kubernetes:rbac.authorization.k8s.io/v1:{kind}" for kind in ("ClusterRole", "ClusterRoleBinding")
]


def stack_config(stack: str) -> StackConfig:
    prefix = PROJECT + ":"
    raw = {k[len(prefix) :]: v for k, v in read_stack_config(stack).items() if k.startswith(prefix)}
    return parse_stack_config({k: json.loads(v) if v[:1] in "[{" else v for k, v in raw.items()})


@pytest.fixture(params=available_stacks())
def run(request) -> ProgramRun:
    return program_run(request.param)


def k8s_provider(run: ProgramRun) -> str:
    providers = run.by_type("pulumi:providers:kubernetes")
    assert len(providers) == 1, [p.name for p in providers]
    return providers[0].name


def test_every_kubernetes_object_goes_through_the_clusters_provider(run):
    provider = k8s_provider(run)
    objects = [r for r in run.resources if r.type.startswith("kubernetes:")]
    assert len(objects) >= 15
    for r in objects:
        assert r.options.get("provider") == provider, r.name


def test_metrics_server_everywhere_but_gke_by_default(run):
    cfg = stack_config(run.stack)
    releases = [r for r in run.by_type(RELEASE) if r.inputs["chart"] == METRICS_SERVER_CHART.chart]
    if cfg.cloud == "gcp":
        assert releases == []
        return
    (release,) = releases
    assert (release.inputs["version"], release.inputs["repositoryOpts"]["repo"]) == (
        METRICS_SERVER_CHART.version,
        METRICS_SERVER_CHART.repo,
    )
    assert release.inputs["namespace"] == "kube-system"
    requests = release.inputs["values"]["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    # kind/k3d/minikube kubelets serve self-signed certificates; cloud kubelets do not need the flag.
    assert ("--kubelet-insecure-tls" in release.inputs["values"].get("args", [])) is (cfg.cloud == "local")


def test_metrics_server_never_pins_a_node_for_the_cluster_autoscaler(run):
    # Chart 3.13.0 mounts an emptyDir named `tmp` (templates/deployment.yaml: `- name: tmp` with values.yaml
    # `tmpVolume: emptyDir: {}`); the Cluster Autoscaler keeps a node under such a pod unless the pod names
    # every local volume in this annotation (cluster-autoscaler-1.34.1 utils/drain/drain.go HasBlockingLocalStorage).
    releases = [r for r in run.by_type(RELEASE) if r.inputs["chart"] == METRICS_SERVER_CHART.chart]
    for release in releases:
        annotations = release.inputs["values"]["podAnnotations"]
        assert annotations == {"cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes": "tmp"}
        assert "tmpVolume" not in release.inputs["values"]  # the chart's volume name and kind are kept


@pytest.mark.parametrize(
    "cloud, setting, installed",
    [
        ("aws", "auto", True),
        ("gcp", "auto", False),
        ("local", "auto", True),
        ("gcp", "install", True),
        ("aws", "skip", False),
    ],
)
def test_metrics_server_setting(cloud, setting, installed):
    section = {"aws": {"aws": {"region": "eu-west-1"}}, "gcp": {"gcp": {"project": "my-project-1", "region": "europe-west1", "masterAuthorizedCidrs": ["203.0.113.10/32"]}}}
    cfg = parse_stack_config({"cloud": cloud, **section.get(cloud, {}), "addons": {"metricsServer": setting}})
    assert MetricsServerArgs.from_stack(cfg).install is installed


def test_keda_is_pinned_sized_and_kept_off_wildcard_rbac(run):
    keda = [r for r in run.by_type(RELEASE) if r.inputs["chart"] == KEDA_CHART.chart]
    (release,) = keda
    assert (release.inputs["version"], release.inputs["repositoryOpts"]["repo"]) == (KEDA_CHART.version, KEDA_CHART.repo)
    assert release.inputs["namespace"] == "keda"
    assert "keda-namespace" in release.options["dependsOn"]
    values = release.inputs["values"]
    for part in ("operator", "metricServer", "webhooks"):
        resources = values["resources"][part]
        assert set(resources["requests"]) == {"cpu", "memory"}, part
        assert resources["limits"]["memory"], part
    assert values["rbac"]["enabledCustomScaledRefKinds"] is False
    # Airflow's ScaledObject needs KEDA's CRDs first.
    airflow = run.one(RELEASE, "airflow")
    assert release.name in airflow.options["dependsOn"]


def in_namespace(resources, namespace):
    # Other components (the worker autoscaler) have Roles of their own in other namespaces.
    return [r for r in resources if r.inputs["metadata"]["namespace"] == namespace]


def test_task_namespace_role_grants_exactly_what_kpo_uses(run):
    cfg = stack_config(run.stack)
    namespaces = [r.inputs["metadata"]["name"] for r in run.by_type("kubernetes:core/v1:Namespace")]
    assert cfg.airflow.task_namespace in namespaces
    (role,) = in_namespace(run.by_type(ROLE), cfg.airflow.task_namespace)
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role.inputs["rules"]}
    assert rules == {
        (("",), ("pods",)): {"create", "get", "list", "watch", "patch", "delete"},
        (("",), ("pods/log",)): {"get"},
        (("",), ("pods/exec",)): {"create", "get"},
        (("",), ("events",)): {"get", "list", "watch"},
    }
    assert len(POD_LAUNCHER_RULES) == len(rules)


def test_role_is_bound_to_the_worker_and_triggerer_only(run):
    cfg = stack_config(run.stack)
    (role,) = in_namespace(run.by_type(ROLE), cfg.airflow.task_namespace)
    bindings = in_namespace(run.by_type(ROLE_BINDING), cfg.airflow.task_namespace)
    assert bindings
    subjects = set()
    for binding in bindings:
        assert binding.inputs["metadata"]["namespace"] == cfg.airflow.task_namespace
        assert binding.inputs["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role.inputs["metadata"]["name"],
        }
        subjects |= {(s["kind"], s["namespace"], s["name"]) for s in binding.inputs["subjects"]}
    assert subjects == {
        ("ServiceAccount", cfg.airflow.namespace, WORKER_SERVICE_ACCOUNT),
        ("ServiceAccount", cfg.airflow.namespace, TRIGGERER_SERVICE_ACCOUNT),
    }
    # And the chart's own pod-launching Role in the Airflow namespace is off.
    assert program_run(run.stack).one(RELEASE, "airflow").inputs["values"]["allowPodLaunching"] is False


def test_no_rbac_object_the_program_writes_has_a_wildcard(run):
    for r in (r for t in RBAC_TYPES for r in run.by_type(t)):
        for rule in r.inputs.get("rules", []):
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), (r.name, field)


def test_task_pods_get_default_requests_and_a_quota_sized_to_the_task_pool(run):
    cfg = stack_config(run.stack)
    (limit_range,) = run.by_type("kubernetes:core/v1:LimitRange")
    (item,) = limit_range.inputs["spec"]["limits"]
    assert item["type"] == "Container"
    assert item["defaultRequest"] == DEFAULT_REQUEST
    assert "default" not in item  # a default limit under an author's request would make the pod invalid
    (quota,) = run.by_type("kubernetes:core/v1:ResourceQuota")
    n = cfg.task_pool.max_size
    assert quota.inputs["spec"]["hard"] == {
        "pods": str(QUOTA_PER_TASK_NODE["pods"] * n),
        "requests.cpu": str(QUOTA_PER_TASK_NODE["cpu"] * n),
        "requests.memory": f"{QUOTA_PER_TASK_NODE['memory_gi'] * n}Gi",
    }
    for r in (limit_range, quota):
        assert r.inputs["metadata"]["namespace"] == cfg.airflow.task_namespace
