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

from airflow_on_k8s import provider
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


def _start_plugin() -> tuple[subprocess.Popen, int]:
    # The engine starts a plugin as `<program> <engine address>` and reads the gRPC port from its first line.
    plugin = subprocess.Popen(
        [sys.executable, str(REPO / "provider" / "__main__.py"), "127.0.0.1:1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO / "provider",
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
    )
    out = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", code], cwd=tmp_path, check=True, env=CLEAN_ENV,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0].startswith(str(fresh_venv)), out[0]
    assert "example_task_pool.py" in out[1]
    assert int(out[2]) > 10


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
