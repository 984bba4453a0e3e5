"""Every component's typed API (issue 9, point 3): documented args, documented and registered outputs, and each
cluster built from its typed args alone, with no stack config.

Components are found by walking the package for `pulumi.ComponentResource` subclasses, so a new one is checked
without being listed here. Their args class is the `args` parameter of `__init__`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import re
import textwrap
import typing
from pathlib import Path
from typing import Any

import pulumi
import pytest

import airflow_on_k8s
from airflow_on_k8s.contract import KubernetesCluster, output_names
from airflow_on_k8s.testing.mock_runtime import ProgramRun, run_program

PACKAGE_DIR = Path(airflow_on_k8s.__file__).parent
REPO = Path(__file__).resolve().parents[1]

# Known exceptions: components not in the typed shape, and the checks they fail (none today; a new entry needs a
# reason). Each listed check is a strict xfail, so a fixed one fails until removed here.
KNOWN_EXCEPTIONS: dict[str, set[str]] = {}


def _component_classes() -> list[type[pulumi.ComponentResource]]:
    found: list[type[pulumi.ComponentResource]] = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        # Cheap filter first: most modules (the autoscaler, the tools) have no component and need not be imported.
        if path.name == "__main__.py" or "ComponentResource" not in path.read_text():
            continue
        module_name = ".".join(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        module = importlib.import_module(module_name)
        found += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, pulumi.ComponentResource) and obj.__module__ == module_name
        ]
    return found


COMPONENTS = _component_classes()


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _params(check: str) -> list[Any]:
    return [
        pytest.param(
            cls,
            # The subpackage too: the portable components share their names with the Python ones they wrap.
            id=f"{cls.__module__.split('.')[1]}.{cls.__name__}",
            marks=(
                [pytest.mark.xfail(strict=True, reason=f"known exception: {check} (KNOWN_EXCEPTIONS)")]
                if check in KNOWN_EXCEPTIONS.get(_qualname(cls), set())
                else []
            ),
        )
        for cls in COMPONENTS
    ]


def _args_class(component: type) -> type:
    """The class of `__init__`'s `args` parameter, resolved in the component's module."""
    annotation = inspect.signature(component.__init__).parameters["args"].annotation
    if isinstance(annotation, str):
        annotation = getattr(importlib.import_module(component.__module__), annotation)
    return annotation


def _package_types(hint: Any) -> list[type]:
    """The package's own classes a type hint mentions (tuple[EksNodePoolSpec, ...] -> [EksNodePoolSpec])."""
    if isinstance(hint, type) and hint.__module__.startswith("airflow_on_k8s."):
        return [hint]
    return [t for arg in typing.get_args(hint) for t in _package_types(arg)]


def _args_classes(args: type) -> list[type]:
    """`args` and every dataclass of the package its fields hold, e.g. the node pool specs."""
    seen = [args]
    for cls in seen:
        if dataclasses.is_dataclass(cls):
            for hint in typing.get_type_hints(cls).values():
                seen += [t for t in _package_types(hint) if dataclasses.is_dataclass(t) and t not in seen]
    return seen


def _class_node(cls: type) -> ast.ClassDef:
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(node, ast.ClassDef)
    return node


def _annotation_docstrings(cls: type) -> dict[str, str | None]:
    """Each class-level annotation of `cls`'s own source, with the string literal right under it (None if none)."""
    body = _class_node(cls).body
    docs: dict[str, str | None] = {}
    for i, stmt in enumerate(body):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            after = body[i + 1] if i + 1 < len(body) else None
            is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)
            docs[stmt.target.id] = after.value.value if is_doc else None  # type: ignore[union-attr]
    return docs


def test_the_walk_finds_every_component():
    # A floor, not the list: the walk must not silently find nothing after a move.
    names = {cls.__name__ for cls in COMPONENTS}
    assert {"EksCluster", "GkeCluster", "LocalCluster", "ClusterAutoscaler", "Keda", "MetricsServer"} <= names
    assert {"TaskNamespace", "Airflow", "WorkerAutoscaler", "AirflowOnKubernetes"} <= names
    assert set(KNOWN_EXCEPTIONS) <= {_qualname(cls) for cls in COMPONENTS}, "an exception names no component"


@pytest.mark.parametrize("component", _params("args"))
def test_args_fields_are_documented(component):
    """Every field of the args class, and of the package's dataclasses inside it, has a docstring under it."""
    args = _args_class(component)
    if dataclasses.is_dataclass(args):
        assert callable(getattr(args, "from_stack", None)), f"{args.__name__}: the stack config maps on via from_stack"
    problems = []
    for cls in _args_classes(args):
        if dataclasses.is_dataclass(cls):
            assert cls.__dataclass_params__.frozen, f"{cls.__name__}: args are frozen dataclasses"
            fields = [f.name for f in dataclasses.fields(cls)]
        else:  # a TypedDict, the component provider's form (AirflowOnKubernetesArgs, airflow_on_k8s.portable)
            fields = list(cls.__annotations__)  # not evaluated: pulumi.Input holds a forward reference
        docs = _annotation_docstrings(cls)
        problems += [f"{cls.__name__}.{name}" for name in fields if not docs.get(name)]
    assert not problems, f"fields without a docstring right under them: {problems}"


@pytest.mark.parametrize("component", _params("outputs"))
def test_outputs_are_annotated_and_documented(component):
    """Outputs are `pulumi.Output[...]` class annotations with a docstring; plain-typed attributes say Python-only."""
    docs = _annotation_docstrings(component)
    assert output_names(component), f"{component.__name__} annotates no pulumi.Output"
    assert not re.search(r"^\s*Outputs:", component.__doc__ or "", re.M), "outputs belong in annotations"
    undocumented = [name for name, doc in docs.items() if not doc]
    assert not undocumented, f"annotations without a docstring: {undocumented}"
    python_only = set(docs) - set(output_names(component))
    unmarked = [name for name in python_only if "Python-only" not in (docs[name] or "")]
    assert not unmarked, f"plain-typed attributes whose docstring does not say Python-only: {unmarked}"


# Programs that build components under the mock runtime. Together they construct every component class: the cluster
# components and add-ons from typed args only (no StackConfig), the rest through AirflowOnKubernetes.
PROGRAMS: dict[str, str] = {
    "aws": """
from airflow_on_k8s.aws.cluster import EksCluster, EksClusterArgs, EksNodePoolSpec
cluster = EksCluster(
    "typed",
    EksClusterArgs(
        cluster_name="typed-eks",
        region="eu-west-1",
        public_access_cidrs=("198.51.100.7/32",),
        system_pool=EksNodePoolSpec(instance_types=("m6i.large",), min_size=1, max_size=2),
        task_pool=EksNodePoolSpec(instance_types=("c7g.xlarge",), min_size=0, max_size=4, spot=True, arm=True),
        nat_gateway_per_az=False,
    ),
)
""",
    "gcp": """
from airflow_on_k8s.gcp.cluster import GkeCluster, GkeClusterArgs, GkeNodePoolSpec
cluster = GkeCluster(
    "typed",
    GkeClusterArgs(
        cluster_name="typed-gke",
        project="typed-project",
        region="europe-west1",
        master_authorized_cidrs=("198.51.100.7/32",),
        system_pool=GkeNodePoolSpec(machine_type="e2-standard-4", min_nodes=3, max_nodes=4),
        task_pool=GkeNodePoolSpec(machine_type="e2-standard-8", min_nodes=0, max_nodes=5, spot=True),
    ),
)
""",
    "local": """
from airflow_on_k8s.addons.keda import Keda, KedaArgs
from airflow_on_k8s.addons.metrics_server import MetricsServer, MetricsServerArgs
from airflow_on_k8s.airflow.task_namespace import ServiceAccountRef, TaskNamespace, TaskNamespaceArgs
from airflow_on_k8s.local.cluster import LocalCluster, LocalClusterArgs
cluster = LocalCluster("typed", LocalClusterArgs(cluster_name="typed-local", context="kind-typed",
                                                 kubeconfig_path="/nonexistent/typed-kubeconfig"))
MetricsServer("metrics-server", MetricsServerArgs(kubelet_insecure_tls=True), cluster)
Keda("keda", KedaArgs(), cluster)
TaskNamespace("tasks", TaskNamespaceArgs(launchers=(ServiceAccountRef("airflow", "airflow-worker"),),
                                         task_pool_max_nodes=2), cluster)
""",
    # The components other languages get, from plain data as the component provider hands it over (dicts).
    "portable": """
import pulumi
from airflow_on_k8s.portable.airflow import AirflowOnCluster
from airflow_on_k8s.portable.clusters import EksCluster, GkeCluster
eks = EksCluster("portable-eks", {
    "cluster_name": "portable-eks",
    "aws": {"region": "eu-west-1", "public_access_cidrs": ["198.51.100.7/32"], "nat_gateway_per_az": False},
    "task_pool": {"max_size": 4, "spot": True},
})
gke = GkeCluster("portable-gke", {
    "cluster_name": "portable-gke",
    "gcp": {"project": "typed-project", "region": "europe-west1", "master_authorized_cidrs": ["198.51.100.7/32"]},
    "task_pool": {"instance_types": ["e2-standard-8"], "max_size": 5, "spot": None},
})
airflow = AirflowOnCluster("portable", {
    "kubeconfig": PORTABLE_KUBECONFIG,
    "cluster_name": "kind-portable",
    "task_pool": {"label_value": "batch", "taint_key": "dedicated", "taint_effect": "NoExecute"},
    "task_pool_max_nodes": 3,
    "scaling": {"mode": "keda", "min_workers": 0, "max_workers": 4},
    "observability": {"scrape": "none"},
})
for prefix, component in (("eks", eks), ("gke", gke), ("airflow", airflow)):
    for name in output_names(type(component)):
        pulumi.export(f"{prefix}.{name}", getattr(component, name))
""",
    "platform": """
import yaml
from airflow_on_k8s.platform import AirflowOnKubernetes
stack = yaml.safe_load(open(STACK_FILE))["config"]
AirflowOnKubernetes("platform", {"config": {k.split(":", 1)[1]: v for k, v in stack.items()}})
""",
}
PORTABLE_KUBECONFIG = "apiVersion: v1\nkind: Config\ncurrent-context: kind-portable\n"
# Each cluster program exports its cluster's annotated outputs, by attribute name.
EXPORT_CLUSTER_OUTPUTS = """
import pulumi
from airflow_on_k8s.contract import KubernetesCluster, output_names
for name in output_names(type(cluster)):
    pulumi.export(name, getattr(cluster, name))
"""


class Registered(typing.NamedTuple):
    component: pulumi.ComponentResource
    keys: frozenset[str]


@pytest.fixture(scope="module")
def typed_runs(tmp_path_factory) -> tuple[dict[str, ProgramRun], list[Registered]]:
    """Each of PROGRAMS run under mocks, and every component's register_outputs call."""
    registered: list[Registered] = []
    original = pulumi.ComponentResource.register_outputs

    def recording(self, outputs):  # noqa: ANN001
        registered.append(Registered(self, frozenset(outputs or {})))
        return original(self, outputs)

    runs: dict[str, ProgramRun] = {}
    folder = tmp_path_factory.mktemp("programs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pulumi.ComponentResource, "register_outputs", recording)
        for key, source in PROGRAMS.items():
            program = folder / f"{key}.py"
            header = (
                f"STACK_FILE = {str(REPO / 'stacks' / 'Pulumi.local.yaml')!r}\n"
                f"PORTABLE_KUBECONFIG = {PORTABLE_KUBECONFIG!r}\n"
                "from airflow_on_k8s.contract import output_names\n"
            )
            program.write_text(header + source + (EXPORT_CLUSTER_OUTPUTS if "cluster = " in source else ""))
            # The stack only sets the runtime's config, which these programs do not read.
            runs[key] = run_program("local", program=program)
    return runs, registered


@pytest.mark.parametrize("component", _params("registered"))
def test_every_annotated_output_is_registered(component, typed_runs):
    _, registered = typed_runs
    instances = [r for r in registered if type(r.component) is component]
    assert instances, f"no program in PROGRAMS constructs {component.__name__}: add it there"
    for r in instances:
        assert r.keys == set(output_names(component)), "register_outputs registers exactly the annotated outputs"
        not_outputs = [name for name in r.keys if not isinstance(getattr(r.component, name), pulumi.Output)]
        assert not not_outputs, f"annotated as pulumi.Output but not one: {not_outputs}"


def test_the_cluster_contract_says_which_members_are_required_and_which_optional():
    docs = _annotation_docstrings(KubernetesCluster)
    assert set(docs) == set(typing.get_type_hints(KubernetesCluster))
    unmarked = [name for name, doc in docs.items() if not (doc or "").startswith(("Required. ", "Optional. "))]
    assert not unmarked, f"contract members whose docstring does not start with Required. or Optional.: {unmarked}"


def test_every_cluster_component_documents_each_contract_member(typed_runs):
    _, registered = typed_runs
    clusters = {type(r.component) for r in registered if isinstance(r.component, KubernetesCluster)}
    assert {cls.__name__ for cls in clusters} == {"EksCluster", "GkeCluster", "LocalCluster"}
    for cls in clusters:
        missing = set(typing.get_type_hints(KubernetesCluster)) - set(_annotation_docstrings(cls))
        assert not missing, f"{cls.__name__} does not annotate the contract's {sorted(missing)}"


def _inputs(run: ProgramRun, type_: str, name_contains: str = "") -> dict[str, Any]:
    return run.one(type_, name_contains).inputs


def test_an_eks_cluster_builds_from_typed_args_alone(typed_runs):
    run = typed_runs[0]["aws"]
    out = run.outputs
    assert out["cluster_name"] == "typed-eks"
    kubeconfig = json.loads(out["kubeconfig"]["secret"])
    assert kubeconfig["users"][0]["user"]["exec"]["args"][-5:] == ["typed-eks", "--region", "eu-west-1", "--output", "json"]
    assert out["vpc_id"] and out["cluster_security_group_id"] and out["oidc_provider_arn"] and out["node_role_arn"]
    # The defaults are the stack config's: three AZs, one private subnet each.
    assert len(out["private_subnet_ids"]) == 3
    cluster = _inputs(run, "aws:eks/cluster:Cluster")
    assert cluster["vpcConfig"]["publicAccessCidrs"] == ["198.51.100.7/32"]
    assert cluster["enabledClusterLogTypes"] == ["audit", "authenticator"]  # unprotected: the dev default
    tasks = _inputs(run, "aws:eks/nodeGroup:NodeGroup", "tasks")
    assert (tasks["capacityType"], tasks["amiType"], tasks["scalingConfig"]["minSize"]) == ("SPOT", "AL2023_ARM_64_STANDARD", 0)
    assert len(run.by_type("aws:ec2/natGateway:NatGateway")) == 1
    # No autoscaler args given: the Cluster Autoscaler's defaults, for this cluster.
    values = json.loads(json.dumps(_inputs(run, "kubernetes:helm.sh/v3:Release", "cluster-autoscaler")["values"]))
    assert (values["autoDiscovery"]["clusterName"], values["extraArgs"]["expander"]) == ("typed-eks", "least-waste")


def test_a_gke_cluster_builds_from_typed_args_alone(typed_runs):
    run = typed_runs[0]["gcp"]
    out = run.outputs
    assert (out["cluster_name"], out["project"], out["region"]) == ("typed-gke", "typed-project", "europe-west1")
    assert "gke-gcloud-auth-plugin" in out["kubeconfig"]["secret"]
    assert out["network_self_link"] and out["subnetwork_self_link"] and out["node_service_account_email"]
    cluster = _inputs(run, "gcp:container/cluster:Cluster")
    assert cluster["masterAuthorizedNetworksConfig"]["cidrBlocks"][0]["cidrBlock"] == "198.51.100.7/32"
    assert cluster["privateClusterConfig"]["enablePrivateNodes"] is True  # the stack config's default
    tasks = _inputs(run, "gcp:container/nodePool:NodePool", "tasks")
    assert (tasks["nodeConfig"]["machineType"], tasks["nodeConfig"]["spot"]) == ("e2-standard-8", True)
    assert tasks["autoscaling"]["totalMinNodeCount"] == 0
    # The APIs a fresh project needs are enabled by default.
    assert run.by_type("gcp:projects/service:Service")


def test_a_local_cluster_and_the_addons_build_from_typed_args_alone(typed_runs):
    run = typed_runs[0]["local"]
    out = run.outputs
    assert (out["cluster_name"], out["context"], out["kubeconfig"]) == ("typed-local", "kind-typed", {"secret": ""})
    provider = _inputs(run, "pulumi:providers:kubernetes", "typed")
    assert (provider["context"], provider["kubeconfig"]) == ("kind-typed", "/nonexistent/typed-kubeconfig")
    metrics = _inputs(run, "kubernetes:helm.sh/v3:Release", "metrics-server")
    assert metrics["values"]["args"] == ["--kubelet-insecure-tls"]
    assert _inputs(run, "kubernetes:core/v1:Namespace", "keda")["metadata"]["name"] == "keda"
    quota = _inputs(run, "kubernetes:core/v1:ResourceQuota", "tasks")
    assert quota["metadata"]["namespace"] == "airflow-tasks"  # the stack config's default name
    assert quota["spec"]["hard"]["pods"] == "220"  # two task nodes' worth


def test_the_args_defaults_are_the_stack_configs():
    """A component user and a stack file that set the same keys get the same args (one source for each default)."""
    from airflow_on_k8s.aws.cluster import EksClusterArgs
    from airflow_on_k8s.config import parse_stack_config
    from airflow_on_k8s.gcp.cluster import GkeClusterArgs

    cidrs = ["198.51.100.7/32"]
    eks = EksClusterArgs.from_stack(
        parse_stack_config({"cloud": "aws", "clusterName": "c", "aws": {"region": "eu-west-1", "publicAccessCidrs": cidrs}})
    )
    typed = EksClusterArgs("c", "eu-west-1", tuple(cidrs), eks.system_pool, eks.task_pool, tags=eks.tags)
    # from_stack resolves what the typed args leave to the component: the same values either way.
    assert typed == dataclasses.replace(
        eks, autoscaler=None, control_plane_log_types=None, control_plane_log_retention_days=None
    )
    assert typed.cluster_autoscaler_args == eks.autoscaler
    assert (typed.log_types, typed.log_retention_days) == (list(eks.control_plane_log_types), 7)
    assert dataclasses.replace(typed, protect=True).log_retention_days == 90

    gke = GkeClusterArgs.from_stack(
        parse_stack_config(
            {"cloud": "gcp", "clusterName": "c", "gcp": {"project": "typed-project", "region": "europe-west1",
                                                          "masterAuthorizedCidrs": cidrs}}
        )
    )
    typed_gke = GkeClusterArgs("c", "typed-project", "europe-west1", tuple(cidrs), gke.system_pool, gke.task_pool,
                               labels=gke.labels)
    assert typed_gke == gke


# --- The components other languages get (airflow_on_k8s.portable) ----------------------------------------------


def test_portable_clusters_build_from_plain_data_with_plain_outputs(typed_runs):
    from airflow_on_k8s.task_pool import TASK_POOL

    run = typed_runs[0]["portable"]
    out = run.outputs
    assert (out["eks.cloud"], out["eks.cluster_name"]) == ("aws", "portable-eks")
    kubeconfig = json.loads(out["eks.kubeconfig"]["secret"])
    assert kubeconfig["users"][0]["user"]["exec"]["args"][-5:] == ["portable-eks", "--region", "eu-west-1", "--output", "json"]
    assert out["eks.task_pool"] == out["gke.task_pool"] == TASK_POOL.as_dict()
    assert out["eks.vpc_id"] and len(out["eks.private_subnet_ids"]) == 3  # the stack config's default AZ count
    # The inputs went through the stack config: its defaults fill what is left out, the given keys win.
    tasks = _inputs(run, "aws:eks/nodeGroup:NodeGroup", "portable-eks-tasks")
    assert (tasks["capacityType"], tasks["scalingConfig"]["maxSize"], tasks["instanceTypes"]) == (
        "SPOT", 4, ["m6i.xlarge", "m5.xlarge"])
    assert len(run.by_type("aws:ec2/natGateway:NatGateway")) == 1
    # The Python component is the adapter's child (its URN keeps a type chain of its own).
    assert run.one("airflow-on-k8s:aws:EksCluster").parent == "airflow-on-k8s:index:EksCluster::portable-eks"
    assert (out["gke.cloud"], out["gke.project"], out["gke.region"]) == ("gcp", "typed-project", "europe-west1")
    assert "gke-gcloud-auth-plugin" in out["gke.kubeconfig"]["secret"]
    gke_tasks = _inputs(run, "gcp:container/nodePool:NodePool", "portable-gke-tasks")
    assert (gke_tasks["nodeConfig"]["machineType"], gke_tasks["autoscaling"]["totalMaxNodeCount"]) == ("e2-standard-8", 5)


def test_airflow_on_cluster_installs_through_a_provider_from_the_kubeconfig_it_is_given(typed_runs):
    run = typed_runs[0]["portable"]
    out = run.outputs
    provider = run.one("pulumi:providers:kubernetes", "portable-k8s")
    assert provider.parent == "airflow-on-k8s:index:AirflowOnCluster::portable"
    assert provider.inputs["kubeconfig"] == {"secret": PORTABLE_KUBECONFIG}
    releases = {r.name: r for r in run.by_type("kubernetes:helm.sh/v3:Release")}
    for name in ("airflow", "keda", "metrics-server"):
        assert releases[name].options["provider"] == "portable-k8s", name
    # cloud left out: local, whose kubelets serve self-signed certificates.
    assert releases["metrics-server"].inputs["values"]["args"] == ["--kubelet-insecure-tls"]
    # The task-pool selector given as data lands in the pod mutation hook the chart installs.
    local_settings = releases["airflow"].inputs["values"]["airflowLocalSettings"]
    selector = {"label_key": "airflow-on-k8s/pool", "label_value": "batch", "taint_key": "dedicated",
                "taint_value": "tasks", "taint_effect": "NoExecute"}
    assert f"TASK_POOL: dict[str, str] = {json.dumps(selector)}" in local_settings
    assert out["airflow.task_pool"] == selector
    quota = _inputs(run, "kubernetes:core/v1:ResourceQuota", "airflow-tasks")
    assert quota["spec"]["hard"]["pods"] == "330"  # task_pool_max_nodes 3
    celery = releases["airflow"].inputs["values"]["workers"]["celery"]
    assert celery["keda"]["enabled"] and (celery["keda"]["minReplicaCount"], celery["keda"]["maxReplicaCount"]) == (0, 4)
    assert not [r for r in run.by_type("airflow-on-k8s:scaling:WorkerAutoscaler")]
    assert (out["airflow.worker_autoscaler_deployment"], out["airflow.metrics_server_namespace"]) == ("", "kube-system")
    assert (out["airflow.cluster_name"], out["airflow.airflow_namespace"]) == ("kind-portable", "airflow")
    assert set(out["airflow.airflow_admin_password"]) == {"secret"}


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"airflow": {"database": "managed"}}, "airflow.database: managed needs the cloud's database"),
        ({"cloud": "aws"}, "observability.scrape: amazon-managed needs the EKS cluster's AWS details"),
        ({"cloud": "local", "observability": {"scrape": "google-managed"}}, "google-managed needs cloud gcp"),
        ({"cloud": "azure"}, "cloud: 'azure' is not one of aws, gcp, local"),
        ({"airflow": {"workerConcurency": 4}}, "airflow.workerConcurency: is not a known key"),
        ({"scaling": {"min_workers": 5, "max_workers": 2}}, "scaling.maxWorkers: 2 is below minWorkers"),
        ({"task_pool_max_nodes": 0}, "taskPool.maxSize: is 0"),
    ],
)
def test_airflow_on_cluster_refuses_settings_it_cannot_honour_with_the_key_and_the_fix(args, problem):
    from airflow_on_k8s.config import ConfigError
    from airflow_on_k8s.portable.airflow import in_cluster_config

    with pytest.raises(ConfigError) as raised:
        in_cluster_config({"kubeconfig": "", **args})
    assert any(problem in line for line in raised.value.problems), raised.value.problems


def test_airflow_on_cluster_checks_the_task_pool_it_is_given():
    from airflow_on_k8s.config import ConfigError
    from airflow_on_k8s.portable.airflow import task_pool_selector
    from airflow_on_k8s.task_pool import TASK_POOL

    assert task_pool_selector(None) == TASK_POOL
    assert task_pool_selector({"label_value": "batch", "taint_key": None}).taint_key == TASK_POOL.taint_key
    with pytest.raises(ConfigError, match="taskPool.taintEffect: 'NoScheduled' is not one of"):
        task_pool_selector({"taint_effect": "NoScheduled"})
    # A value not known before deployment (an Output over the wire) cannot be written into the hook.
    with pytest.raises(ConfigError, match="taskPool.labelValue: must be a plain string known before deployment"):
        task_pool_selector({"label_value": object()})


def test_the_portable_defaults_documented_are_the_ones_applied():
    """The schema's descriptions state the task pool's defaults; they are TASK_POOL's and the stack config's."""
    from airflow_on_k8s.config import TaskPoolConfig
    from airflow_on_k8s.portable.airflow import AirflowOnClusterArgs
    from airflow_on_k8s.portable.clusters import TaskPool
    from airflow_on_k8s.task_pool import TASK_POOL

    docs = _annotation_docstrings(TaskPool)
    for key, value in TASK_POOL.as_dict().items():
        assert f"Default: {value}." in docs[key], key
    assert f"Default: {TaskPoolConfig().max_size}." in _annotation_docstrings(AirflowOnClusterArgs)["task_pool_max_nodes"]


def test_a_portable_cluster_refuses_a_wrong_key_before_registering_anything():
    from airflow_on_k8s.config import ConfigError
    from airflow_on_k8s.portable.clusters import stack_config

    with pytest.raises(ConfigError, match="aws.region: 'eu-west' is not an AWS region"):
        stack_config("aws", {"cluster_name": "c", "aws": {"region": "eu-west"}})
    with pytest.raises(ConfigError, match="gcp.masterAuthorizedCidrs: is not set"):
        stack_config("gcp", {"cluster_name": "c", "gcp": {"project": "typed-project", "region": "europe-west1"}})
