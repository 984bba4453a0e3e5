"""The component provider: what `pulumi package add` gives TypeScript, Go, C#, Java and YAML programs.

Pulumi's Python component-provider host (`pulumi.provider.experimental`) infers the schema from the components'
type annotations: the `args` TypedDict of `__init__` gives the inputs, the class's `pulumi.Output[...]`
annotations the outputs, and the docstring under each their descriptions. `provider/` at the repository root is
the plugin folder (PulumiPlugin.yaml); `python -m airflow_on_k8s.tools.schema` writes the inferred schema to
`provider/schema.json` so a change to a component's inputs or outputs shows up in review.

Two kinds of component cross the language boundary. `AirflowOnKubernetes` is the whole platform from a stack config.
The finer building blocks are in `airflow_on_k8s.portable`: `EksCluster` and `GkeCluster` build a cluster and give
its kubeconfig and task-pool selector as plain outputs; `AirflowOnCluster` takes those (or any cluster's) as plain
data and installs metrics-server, KEDA, Airflow, the worker autoscaler and observability on it. The Python
components they wrap take each other (a cluster, its services) as Python objects; the host's analyzer can reference
resources of other packages only (pulumi/provider/experimental/analyzer.py, `is_resource` ->
`get_dependency_for_type`), so those stay Python-only and the portable ones are thin adapters over them.
"""

import json
from typing import Any

from airflow_on_k8s import __version__
from airflow_on_k8s.platform import AirflowOnKubernetes
from airflow_on_k8s.portable.airflow import AirflowOnCluster
from airflow_on_k8s.portable.clusters import EksCluster, GkeCluster

NAME = "airflow-on-k8s"
COMPONENTS = [AirflowOnKubernetes, EksCluster, GkeCluster, AirflowOnCluster]


def schema() -> dict[str, Any]:
    """The package schema Pulumi infers from COMPONENTS, as the plugin serves it."""
    from pulumi.provider.experimental.component import ComponentProvider

    return json.loads(ComponentProvider(COMPONENTS, NAME, None, __version__).schema)


def serve() -> None:
    """Run as the plugin: the Pulumi engine starts `provider/__main__.py`, which calls this."""
    from pulumi.provider.experimental import component_provider_host

    component_provider_host(components=COMPONENTS, name=NAME, version=__version__)
