"""Every Kubernetes object the program writes is valid for the stack's Kubernetes version, and every container
it configures (in objects or in Helm values) asks for CPU and memory.

Objects are validated strictly (unknown fields fail) with kubernetes-validate's OpenAPI schemas for the
stack's `kubernetesVersion`. Charts' own templates are not rendered offline; for them the test checks the
values the program passes: every `resources` block has requests, and every container the Airflow chart runs
in this configuration has a `resources` block.
"""

from __future__ import annotations

from typing import Any, Iterator

import kubernetes_validate
import pytest

from tests.conftest import program_run
from tests.test_addons import stack_config
from airflow_on_k8s.testing.mock_runtime import ProgramRun, RecordedResource, available_stacks

NOT_OBJECTS = ("kubernetes:helm.sh/", "pulumi:providers:")
# Custom resources have no schema in Kubernetes' own: tests/test_observability.py validates them against their
# CRDs.
CUSTOM_RESOURCES = ("kubernetes:monitoring.coreos.com/", "kubernetes:monitoring.googleapis.com/")


@pytest.fixture(params=available_stacks())
def run(request) -> ProgramRun:
    return program_run(request.param)


def manifest(value: Any) -> Any:
    """Recorded inputs as a manifest: Pulumi secrets unwrapped, whole-number floats (protobuf) back to ints."""
    if isinstance(value, dict):
        if set(value) == {"secret"}:
            return manifest(value["secret"])
        return {k: manifest(v) for k, v in value.items()}
    if isinstance(value, list):
        return [manifest(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def kubernetes_objects(run: ProgramRun) -> list[RecordedResource]:
    return [r for r in run.resources if r.type.startswith("kubernetes:") and not r.type.startswith(NOT_OBJECTS)]


def test_every_object_validates_against_the_kubernetes_schema(run):
    version = stack_config(run.stack).kubernetes_version
    objects = kubernetes_objects(run)
    kinds = {r.inputs["kind"] for r in objects}
    assert {"Namespace", "Secret", "Role", "RoleBinding", "LimitRange", "ResourceQuota", "NetworkPolicy"} <= kinds
    for r in objects:
        body = manifest(r.inputs)
        assert "<computed>" not in str(body), r.name
        if not r.type.startswith(CUSTOM_RESOURCES):
            kubernetes_validate.validate(body, version, strict=True)


def test_an_invalid_object_is_caught():
    bad = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "x"}, "spec": {"limits": [{"typo": 1}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.34", strict=True)


def containers(value: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Container specs anywhere in an object (pods, pod templates, jobs)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("containers", "initContainers") and isinstance(item, list):
                for c in item:
                    yield f"{path}.{key}[{c.get('name')}]", c
            else:
                yield from containers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from containers(item, f"{path}[{i}]")


def resource_blocks(value: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every `resources` block in Helm values (all are container resources in these charts)."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            if key == "resources" and isinstance(item, dict):
                yield here, item
            else:
                yield from resource_blocks(item, here)


def has_requests(resources: dict) -> bool:
    requests = resources.get("requests") or {}
    return bool(requests.get("cpu")) and bool(requests.get("memory"))


def test_every_container_in_written_objects_has_requests(run):
    for r in kubernetes_objects(run):
        for where, container in containers(r.inputs):
            assert has_requests(container.get("resources") or {}), (r.name, where)


def test_every_resources_block_in_helm_values_has_requests(run):
    releases = run.by_type("kubernetes:helm.sh/v3:Release")
    assert releases
    for release in releases:
        blocks = list(resource_blocks(release.inputs["values"]))
        assert blocks, release.name
        for where, block in blocks:
            if release.inputs["chart"] == "keda":
                # KEDA's values nest one block per part: resources.operator, .metricServer, .webhooks.
                assert set(block) == {"operator", "metricServer", "webhooks"}
                assert all(has_requests(part) for part in block.values()), where
            else:
                assert has_requests(block), (release.name, where)


def test_every_container_the_airflow_chart_runs_is_sized(run):
    cfg = stack_config(run.stack)
    values = run.one("kubernetes:helm.sh/v3:Release", "airflow").inputs["values"]
    sized = {path.removesuffix(".resources") for path, _ in resource_blocks(values)}
    # The chart's containers in this configuration (flower, cleanup, database cleanup and kerberos are off by
    # the chart's defaults); wait-for-migrations init containers reuse their component's block.
    expected = {
        "scheduler",
        "scheduler.logGroomerSidecar",
        "apiServer",
        "dagProcessor",
        "dagProcessor.logGroomerSidecar",
        "triggerer",
        "triggerer.logGroomerSidecar",
        "workers.celery",
        "workers.celery.logGroomerSidecar",
        "redis",
        "statsd",
        "migrateDatabaseJob",
        "createUserJob",
    }
    if cfg.airflow.database == "managed":
        expected |= {"pgbouncer", "pgbouncer.metricsExporterSidecar"}
    else:
        expected |= {"postgresql.primary"}
    if cfg.airflow.git_sync.repo:
        expected |= {"dags.gitSync"}
    assert expected <= sized, expected - sized
