"""The package as others use it: installed outside the repository, its example previewed from a copy elsewhere, and
the component provider serving the schema that is checked in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from airflow_on_k8s import provider
from airflow_on_k8s.airflow.component import POSTRENDER_COMMAND, WORKER_DEPLOYMENT
from airflow_on_k8s.tools import schema as schema_tool

REPO = Path(__file__).resolve().parent.parent
# What a fresh virtualenv sees: none of this test run's import paths (tests/autoscaler sets PYTHONPATH to src/).
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
EXAMPLE = REPO / "examples" / "eks-airflow"


def test_the_checked_in_schema_is_the_one_pulumi_infers(monkeypatch):
    monkeypatch.chdir(REPO)
    assert schema_tool.main(["--check"]) == 0, "run: python -m airflow_on_k8s.tools.schema --write"


def test_the_schema_names_every_component_with_documented_inputs_and_outputs():
    resources = provider.schema()["resources"]
    assert set(resources) == {f"{provider.NAME}:index:{c.__name__}" for c in provider.COMPONENTS}
    for component in provider.COMPONENTS:
        resource = resources[f"{provider.NAME}:index:{component.__name__}"]
        assert resource["isComponent"] and resource["description"]
        assert resource["inputProperties"] and resource["properties"]
        for name, prop in {**resource["inputProperties"], **resource["properties"]}.items():
            assert prop.get("description"), f"{component.__name__}.{name} has no docstring"
        # Every Output annotation of the class is an output of the schema (and so of every language's SDK).
        annotated = {k for k, v in component.__annotations__.items() if "Output" in str(v)}
        camel = {"".join(w.title() if i else w for i, w in enumerate(k.split("_"))) for k in annotated}
        assert camel == set(resource["properties"])


# The finer components other languages get (airflow_on_k8s.portable): their required inputs, inputs and outputs a
# program in another language relies on. A component, input or output that goes missing fails here.
PORTABLE: dict[str, tuple[set[str], set[str], set[str]]] = {
    "EksCluster": (
        {"clusterName", "aws"},
        {"clusterName", "aws", "kubernetesVersion", "systemPool", "taskPool", "clusterAutoscaler", "protect", "tags"},
        {"cloud", "clusterName", "kubeconfig", "taskPool", "clusterArn", "vpcId", "privateSubnetIds",
         "clusterSecurityGroupId", "oidcProviderArn", "nodeRoleArn"},
    ),
    "GkeCluster": (
        {"clusterName", "gcp"},
        {"clusterName", "gcp", "kubernetesVersion", "systemPool", "taskPool", "protect", "tags"},
        {"cloud", "clusterName", "kubeconfig", "taskPool", "project", "region", "networkId", "networkSelfLink",
         "subnetworkSelfLink", "nodeServiceAccountEmail"},
    ),
    "AirflowOnCluster": (
        {"kubeconfig"},
        {"kubeconfig", "context", "cloud", "clusterName", "taskPool", "taskPoolMaxNodes", "airflow", "scaling",
         "addons", "observability"},
        {"clusterName", "taskPool", "airflowNamespace", "taskNamespace", "airflowUiService", "airflowPortForward",
         "airflowAdminUser", "airflowAdminPassword", "kedaNamespace", "metricsServerNamespace",
         "workerAutoscalerDeployment", "dashboardConfigmap"},
    ),
}


def test_the_schema_gives_other_languages_the_finer_components_with_plain_data():
    served = provider.schema()
    resources, types = served["resources"], served["types"]
    for name, (required, inputs, outputs) in PORTABLE.items():
        resource = resources[f"{provider.NAME}:index:{name}"]
        assert set(resource.get("requiredInputs", [])) == required, name
        assert set(resource["inputProperties"]) == inputs, name
        assert set(resource["properties"]) == outputs, name
    # Plain data only: no input or output refers to a resource (of this package or another), and every property of
    # every type they use is documented, down to the settings' keys.
    assert not served.get("dependencies")
    text = json.dumps({k: v for k, v in resources.items() if k.split(":")[-1] in PORTABLE})
    assert "/schema.json#/resources/" not in text
    for token, typ in types.items():
        assert typ.get("description"), f"{token} has no docstring"
        for key, prop in typ["properties"].items():
            assert prop.get("description"), f"{token}.{key} has no docstring"
    # The cluster reference AirflowOnCluster takes: a kubeconfig that may be another resource's output (an input),
    # the task pool's selector as plain data.
    inputs = resources[f"{provider.NAME}:index:AirflowOnCluster"]["inputProperties"]
    assert not inputs["kubeconfig"].get("plain") and inputs["taskPool"]["plain"]
    assert set(types[f"{provider.NAME}:index:TaskPool"]["properties"]) == {
        "labelKey", "labelValue", "taintKey", "taintValue", "taintEffect"}


def test_the_portable_settings_are_the_stack_configs_keys():
    """The settings types are generated from the config model; a changed key shows up as a stale file."""
    from airflow_on_k8s.tools import portable_settings

    assert portable_settings.main(["--check"]) == 0, "run: python -m airflow_on_k8s.tools.portable_settings --write"
    types = provider.schema()["types"]
    for model, _ in portable_settings.SECTIONS:
        token = f"{provider.NAME}:index:{portable_settings.settings_name(model)}"
        keys = {field.alias or name for name, field in model.model_fields.items()}
        assert set(types[token]["properties"]) == keys, token


def _start_plugin(engine: str = "127.0.0.1:1", cwd: Path = REPO / "provider") -> tuple[subprocess.Popen, int]:
    # The engine starts a plugin as `<program> <engine address>` and reads the gRPC port from its first line. The
    # plugin imports this checkout's package (an installed copy may be another checkout's).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    plugin = subprocess.Popen(
        [sys.executable, str(REPO / "provider" / "__main__.py"), engine],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
    )
    line = plugin.stdout.readline()
    if not line.strip().isdigit():
        plugin.kill()
        raise AssertionError(f"the plugin printed no port: {line!r} {plugin.stderr.read()}")
    return plugin, int(line)


def test_the_plugin_serves_the_checked_in_schema_over_grpc():
    import grpc
    from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

    plugin, port = _start_plugin()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            served = json.loads(stub.GetSchema(provider_pb2.GetSchemaRequest(version=0), timeout=30).schema)
    finally:
        plugin.terminate()
        plugin.wait(timeout=10)
    assert served == json.loads((REPO / "provider" / "schema.json").read_text())
    assert served["version"] == provider.__version__


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new virtualenv with the package installed from this checkout (not editable). Its third-party
    dependencies come from the repository's .venv through a path entry, so the test needs no network; the
    package itself is a real install of the built wheel."""
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    # No pip of its own: pip and the build backend (setuptools) come from .venv too.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # A plain path, not a site dir: .venv's .pth files (among them the editable install of this checkout) stay off.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    started = time.monotonic()
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", str(REPO)],
        check=True, cwd=root, env=CLEAN_ENV,
    )
    print(f"installed the package in {time.monotonic() - started:.1f}s")
    return venv


def test_the_package_installs_with_its_data_and_no_repository(fresh_venv, tmp_path):
    code = (
        "import airflow_on_k8s, airflow_on_k8s.airflow.component as a, airflow_on_k8s.airflow.worker_autoscaler as w\n"
        "print(airflow_on_k8s.__file__)\n"
        "print(sorted(p.name for p in a.DAGS_DIR.glob('*.py')))\n"
        "print(len(w.package_files()))\n"
        "from airflow_on_k8s import provider\n"
        "print(sorted(provider.schema()['resources']))\n"
    )
    out = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", code], cwd=tmp_path, check=True, env=CLEAN_ENV,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0].startswith(str(fresh_venv)), out[0]
    assert "example_task_pool.py" in out[1]
    assert int(out[2]) > 10
    # The installed copy serves the same components as this checkout (the portable ones included).
    assert out[3] == str(sorted(f"{provider.NAME}:index:{c.__name__}" for c in provider.COMPONENTS))


def test_the_example_previews_offline_from_a_folder_outside_the_repository(fresh_venv, tmp_path):
    program = tmp_path / "eks-airflow"
    shutil.copytree(EXAMPLE, program)
    done = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-m", "airflow_on_k8s.tools.preview", "dev", "--json", "out.json"],
        cwd=program, env=CLEAN_ENV, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    resources = json.loads((program / "out.json").read_text())
    types = {r["type"] for r in resources}
    assert {"aws:eks/cluster:Cluster", "airflow-on-k8s:airflow:Airflow", "airflow-on-k8s:scaling:WorkerAutoscaler"} <= types
    # The example's own settings, and its own object through the cluster's provider.
    (task_nodes,) = [r for r in resources if r["type"] == "aws:eks/nodeGroup:NodeGroup" and r["name"].endswith("-tasks")]
    assert task_nodes["inputs"]["scalingConfig"]["maxSize"] == 6
    (team,) = [r for r in resources if r["name"] == "team-settings"]
    assert team["options"]["provider"]


class _MockEngine:
    """The engine's side of a Construct call, served over gRPC: a resource monitor that records each registration
    and echoes its inputs as its outputs (a preview), and an engine endpoint that keeps the logs."""

    def __init__(self, project: str, stack: str) -> None:
        self.project, self.stack = project, stack
        self.stack_urn = f"urn:pulumi:{stack}::{project}::pulumi:pulumi:Stack::{project}-{stack}"
        self.registered: list[dict] = []
        self.logs: list[str] = []

    def serve(self):  # noqa: ANN201 - a grpc.Server
        from concurrent import futures

        import grpc
        from google.protobuf import empty_pb2, json_format, struct_pb2
        from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc, resource_pb2, resource_pb2_grpc

        engine = self

        class Monitor(resource_pb2_grpc.ResourceMonitorServicer):
            def GetDeploymentInfo(self, request, context):  # noqa: N802, ANN001, ANN202
                from pulumi.runtime.mocks import MockMonitor

                return MockMonitor(None).GetDeploymentInfo(request)  # the SDK's own mock feature set

            def SupportsFeature(self, request, context):  # noqa: N802, ANN001, ANN202
                return resource_pb2.SupportsFeatureResponse(hasSupport=request.id != "outputValues")

            def RegisterResource(self, request, context):  # noqa: N802, ANN001, ANN202
                chain = request.type
                if request.parent and not request.parent.endswith(f"::{engine.project}-{engine.stack}"):
                    chain = f"{request.parent.split('::')[2]}${request.type}"
                urn = f"urn:pulumi:{engine.stack}::{engine.project}::{chain}::{request.name}"
                engine.registered.append({
                    "urn": urn, "type": request.type, "name": request.name, "parent": request.parent,
                    "provider": request.provider, "custom": request.custom,
                    "inputs": json_format.MessageToDict(request.object),
                })
                return resource_pb2.RegisterResourceResponse(
                    urn=urn, id=f"{request.name}-id" if request.custom else "", object=request.object)

            def RegisterResourceOutputs(self, request, context):  # noqa: N802, ANN001, ANN202
                return empty_pb2.Empty()

            def Invoke(self, request, context):  # noqa: N802, ANN001, ANN202
                return resource_pb2.ResourceInvokeResponse(**{"return": struct_pb2.Struct()})

            def RegisterPackage(self, request, context):  # noqa: N802, ANN001, ANN202
                return resource_pb2.RegisterPackageResponse(ref=f"{request.name}-ref")

            def SignalAndWaitForShutdown(self, request, context):  # noqa: N802, ANN001, ANN202
                return empty_pb2.Empty()

        class Engine(engine_pb2_grpc.EngineServicer):
            def Log(self, request, context):  # noqa: N802, ANN001, ANN202
                engine.logs.append(request.message)
                return empty_pb2.Empty()

            def GetRootResource(self, request, context):  # noqa: N802, ANN001, ANN202
                return engine_pb2.GetRootResourceResponse(urn=engine.stack_urn)

            def SetRootResource(self, request, context):  # noqa: N802, ANN001, ANN202
                return engine_pb2.SetRootResourceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        resource_pb2_grpc.add_ResourceMonitorServicer_to_server(Monitor(), server)
        engine_pb2_grpc.add_EngineServicer_to_server(Engine(), server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return server


# A kubeconfig as another language's program would pass it: plain text, for a cluster that does not exist.
KUBECONFIG = json.dumps({
    "apiVersion": "v1", "kind": "Config", "current-context": "grpc",
    "clusters": [{"name": "grpc", "cluster": {"server": "https://192.0.2.10:6443"}}],
    "users": [{"name": "grpc", "user": {"token": "not-a-token"}}],
    "contexts": [{"name": "grpc", "context": {"cluster": "grpc", "user": "grpc"}}],
})


def _construct_airflow_on_cluster(program_dir: Path, scaling: dict):
    """What `pulumi preview` of a TypeScript, Go or YAML program does with AirflowOnCluster: the engine starts the
    plugin in the program's directory (pulumi sdk/go/common/resource/plugin/plugin.go: a PulumiPlugin.yaml plugin
    is run by its language host with `WorkingDirectory: ctx.Pwd`, the program's working directory, as binary
    plugins get `cmd.Dir = pwd`) and calls its Construct with the inputs as a protobuf Struct; the plugin registers
    the component and its children with the engine's resource monitor (here a recording one) and returns the
    component's outputs. Returns (the Construct response, the engine with what was registered)."""
    import grpc
    from google.protobuf import struct_pb2
    from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

    engine = _MockEngine("consumer", "dev")
    server = engine.serve()
    plugin, port = _start_plugin(engine=f"127.0.0.1:{engine.port}", cwd=program_dir)
    inputs = struct_pb2.Struct()
    inputs.update({
        "kubeconfig": KUBECONFIG, "cloud": "local", "clusterName": "grpc",
        "taskPool": {"labelValue": "batch", "taintKey": "dedicated", "taintEffect": "NoExecute"},
        "taskPoolMaxNodes": 3,
        "scaling": scaling,
        "observability": {"scrape": "none"},
    })
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            response = stub.Construct(provider_pb2.ConstructRequest(
                project=engine.project, stack=engine.stack, organization="organization", dryRun=True, parallel=4,
                monitorEndpoint=f"127.0.0.1:{engine.port}", type=f"{provider.NAME}:index:AirflowOnCluster",
                name="grpc", parent=engine.stack_urn, inputs=inputs,
            ), timeout=240)
    finally:
        plugin.terminate()
        plugin.wait(timeout=10)
        server.stop(None)
    return response, engine


def test_the_plugin_constructs_airflow_on_cluster_from_plain_data_over_grpc(tmp_path):
    from google.protobuf import json_format

    response, engine = _construct_airflow_on_cluster(tmp_path, {"mode": "keda", "minWorkers": 0, "maxWorkers": 4})
    assert not (tmp_path / POSTRENDER_COMMAND).exists()  # keda mode needs no post-renderer
    assert response.urn == f"urn:pulumi:dev::consumer::{provider.NAME}:index:AirflowOnCluster::grpc"
    state = json_format.MessageToDict(response.state)
    assert (state["clusterName"], state["airflowNamespace"], state["taskNamespace"]) == ("grpc", "airflow", "airflow-tasks")
    assert state["taskPool"] == {"labelKey": "airflow-on-k8s/pool", "labelValue": "batch", "taintKey": "dedicated",
                                 "taintValue": "tasks", "taintEffect": "NoExecute"}
    assert (state["workerAutoscalerDeployment"], state["metricsServerNamespace"]) == ("", "kube-system")

    by_name = {r["name"]: r for r in engine.registered}
    # One Kubernetes provider, from the kubeconfig given as data, and every Kubernetes object goes through it.
    (k8s_provider,) = [r for r in engine.registered if r["type"] == "pulumi:providers:kubernetes"]
    assert k8s_provider["parent"] == response.urn
    kubeconfig = k8s_provider["inputs"]["kubeconfig"]
    assert kubeconfig["value"] == KUBECONFIG and len(kubeconfig) == 2, "the kubeconfig, sent as a secret"
    k8s_objects = [r for r in engine.registered if r["custom"] and r["type"].startswith("kubernetes:")]
    assert k8s_objects and all(r["provider"].startswith(k8s_provider["urn"] + "::") for r in k8s_objects)
    releases = {r["name"] for r in k8s_objects if r["type"] == "kubernetes:helm.sh/v3:Release"}
    assert releases == {"airflow", "keda", "metrics-server"}
    # The task-pool selector given as data is what the pod mutation hook puts on KubernetesPodOperator pods.
    local_settings = by_name["airflow"]["inputs"]["values"]["airflowLocalSettings"]
    assert '"label_value": "batch"' in local_settings and '"taint_effect": "NoExecute"' in local_settings
    quota = next(r for r in k8s_objects if r["type"] == "kubernetes:core/v1:ResourceQuota")
    assert quota["inputs"]["spec"]["hard"]["pods"] == "330"  # three task nodes' worth
    assert not any(r["type"] == "airflow-on-k8s:scaling:WorkerAutoscaler" for r in engine.registered)


def test_the_plugin_writes_the_task_aware_post_renderer_where_the_kubernetes_provider_runs_it(tmp_path):
    """In task-aware mode the Airflow release names a post-renderer by a path relative to the program's directory.
    Under `pulumi package add` the component provider (a Python plugin) and the Kubernetes provider (which runs
    Helm, pulumi-kubernetes helm_release.go `postrender.NewExec(cmd)`) both run in the program's directory (see
    _construct_airflow_on_cluster), so the script the plugin writes there is the one Helm executes: run it as Helm
    does, from that directory, and it takes the worker Deployment's replicas away."""
    response, engine = _construct_airflow_on_cluster(
        tmp_path, {"mode": "task-aware", "minWorkers": 0, "maxWorkers": 4})
    (release,) = [r for r in engine.registered if r["type"] == "kubernetes:helm.sh/v3:Release" and r["name"] == "airflow"]
    assert release["inputs"]["postrender"] == f"./{POSTRENDER_COMMAND.as_posix()}"
    assert any(r["type"] == "airflow-on-k8s:scaling:WorkerAutoscaler" for r in engine.registered)

    rendered = (
        f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {WORKER_DEPLOYMENT}}}\nspec: {{replicas: 3}}\n"
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: airflow-scheduler}\nspec: {replicas: 1}\n"
    )
    # A clean environment, as the Kubernetes provider's Helm has: the script names its own interpreter and package.
    out = subprocess.run([release["inputs"]["postrender"]], input=rendered, cwd=tmp_path, env=CLEAN_ENV,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out) if d}
    assert "replicas" not in docs[WORKER_DEPLOYMENT]["spec"]
    assert docs["airflow-scheduler"]["spec"]["replicas"] == 1
