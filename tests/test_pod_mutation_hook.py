"""The pod mutation hook, installed the way Airflow installs it, on pods built by the real cncf.kubernetes provider.

The local settings text and the `kubernetes_default` connection are taken from the Helm values the program
ships (local stack), written as `airflow_local_settings.py` on sys.path and loaded by Airflow's own
`airflow.settings.import_local_settings()`. Pods come from `KubernetesPodOperator.build_pod_request_obj`
(which calls `airflow.settings.pod_mutation_hook`) and, for a non-KPO pod, from the provider's
`PodGenerator.construct_pod(with_mutation_hook=True)` (KubernetesExecutor's path). The hook's in-cluster
connection runs the kubernetes client's real in-cluster loader against a fake service-account token; no
request is sent anywhere.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import types

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))

import pytest  # noqa: E402
from kubernetes.client import models as k8s  # noqa: E402

from airflow_on_k8s.task_pool import TASK_POOL  # noqa: E402
from tests.conftest import program_run  # noqa: E402

OPT_OUT = {"airflow-on-k8s/task-pool": "skip"}
NO_EVICTION = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false", "karpenter.sh/do-not-disrupt": "true"}


def shipped_values() -> dict:
    return program_run("local").one("kubernetes:helm.sh/v3:Release", "airflow").inputs["values"]


@pytest.fixture(scope="module")
def local_settings(tmp_path_factory):
    """The shipped airflow_local_settings, imported and registered by Airflow's own loader; removed afterwards."""
    import airflow.settings as settings

    folder = tmp_path_factory.mktemp("airflow-config")
    (folder / "airflow_local_settings.py").write_text(shipped_values()["airflowLocalSettings"])
    manager = settings.get_policy_plugin_manager()
    for name, plugin in manager.list_name_plugin():
        if name == "AirflowLocalSettingsPolicy":  # loaded earlier in this process from elsewhere
            manager.unregister(plugin)
    sys.modules.pop("airflow_local_settings", None)
    sys.path.insert(0, str(folder))
    before = set(manager.get_plugins())
    try:
        settings.import_local_settings()
        yield sys.modules["airflow_local_settings"]
    finally:
        for plugin in set(manager.get_plugins()) - before:
            manager.unregister(plugin)
        sys.modules.pop("airflow_local_settings", None)
        sys.path.remove(str(folder))


@pytest.fixture
def in_cluster(monkeypatch, tmp_path):
    """What a worker pod sees: the shipped env (kubernetes_default) and a mounted service-account token."""
    import kubernetes.config.incluster_config as incluster

    for item in shipped_values()["env"]:
        monkeypatch.setenv(item["name"], item["value"])
    (tmp_path / "token").write_text("service-account-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")


def build_pod(local_settings, in_cluster, task_id: str = "task", **kpo_kwargs) -> k8s.V1Pod:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import DAG

    with DAG("hook_test", schedule=None, start_date=datetime.datetime(2025, 1, 1)) as dag:
        operator = KubernetesPodOperator(task_id=task_id, name=task_id, image="busybox:1.37", **kpo_kwargs)
    # The task-instance fields the provider reads while labelling the pod.
    ti = types.SimpleNamespace(dag_id=dag.dag_id, task_id=task_id, map_index=-1, try_number=1)
    return operator.build_pod_request_obj({"ti": ti, "run_id": "manual__2025-01-01", "dag": dag})


def task_pool_expression() -> k8s.V1NodeSelectorRequirement:
    return k8s.V1NodeSelectorRequirement(key=TASK_POOL.label_key, operator="In", values=[TASK_POOL.label_value])


def task_pool_toleration() -> k8s.V1Toleration:
    t = TASK_POOL.toleration()
    return k8s.V1Toleration(key=t["key"], operator=t["operator"], value=t["value"], effect=t["effect"])


def test_plain_kpo_pod_goes_to_the_task_pool_in_the_task_namespace(local_settings, in_cluster):
    pod = build_pod(local_settings, in_cluster)

    assert pod.metadata.labels["kubernetes_pod_operator"] == "True"
    assert pod.metadata.labels["airflow_kpo_in_cluster"] == "True"  # the shipped connection's in-cluster auth
    assert pod.metadata.namespace == "airflow-tasks"
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert [t.match_expressions for t in terms] == [[task_pool_expression()]]
    assert pod.spec.tolerations == [task_pool_toleration()]
    assert pod.metadata.annotations == NO_EVICTION


def test_author_affinity_is_extended_not_replaced(local_settings, in_cluster):
    zone = k8s.V1NodeSelectorRequirement(key="topology.kubernetes.io/zone", operator="In", values=["eu-west-1a"])
    arch = k8s.V1NodeSelectorRequirement(key="kubernetes.io/arch", operator="In", values=["arm64"])
    preferred = k8s.V1PreferredSchedulingTerm(
        weight=10,
        preference=k8s.V1NodeSelectorTerm(
            match_expressions=[k8s.V1NodeSelectorRequirement(key="disk", operator="In", values=["ssd"])]
        ),
    )
    anti = k8s.V1PodAntiAffinity(
        required_during_scheduling_ignored_during_execution=[
            k8s.V1PodAffinityTerm(
                label_selector=k8s.V1LabelSelector(match_labels={"app": "crunch"}),
                topology_key="kubernetes.io/hostname",
            )
        ]
    )
    affinity = k8s.V1Affinity(
        node_affinity=k8s.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                node_selector_terms=[
                    k8s.V1NodeSelectorTerm(match_expressions=[zone]),
                    k8s.V1NodeSelectorTerm(match_expressions=[arch]),
                ]
            ),
            preferred_during_scheduling_ignored_during_execution=[preferred],
        ),
        pod_anti_affinity=anti,
    )

    pod = build_pod(local_settings, in_cluster, affinity=affinity)

    node = pod.spec.affinity.node_affinity
    terms = node.required_during_scheduling_ignored_during_execution.node_selector_terms
    # Terms are ORed: each alternative must also require the task pool.
    assert [t.match_expressions for t in terms] == [[zone, task_pool_expression()], [arch, task_pool_expression()]]
    assert node.preferred_during_scheduling_ignored_during_execution == [preferred]
    assert pod.spec.affinity.pod_anti_affinity == anti


def test_a_term_that_already_names_the_task_pool_label_is_the_authors_choice(local_settings, in_cluster):
    own = k8s.V1NodeSelectorRequirement(key=TASK_POOL.label_key, operator="In", values=["gpu-tasks"])
    affinity = k8s.V1Affinity(
        node_affinity=k8s.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                node_selector_terms=[k8s.V1NodeSelectorTerm(match_expressions=[own])]
            )
        )
    )
    pod = build_pod(local_settings, in_cluster, affinity=affinity)
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert [t.match_expressions for t in terms] == [[own]]


def test_author_tolerations_and_annotations_are_kept(local_settings, in_cluster):
    gpu = k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    pod = build_pod(
        local_settings,
        in_cluster,
        tolerations=[gpu],
        annotations={"cluster-autoscaler.kubernetes.io/safe-to-evict": "true", "team": "data"},
    )
    assert pod.spec.tolerations == [gpu, task_pool_toleration()]
    assert pod.metadata.annotations == {
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "true",
        "team": "data",
        "karpenter.sh/do-not-disrupt": "true",
    }


def test_an_existing_task_pool_toleration_is_not_duplicated(local_settings, in_cluster):
    pod = build_pod(local_settings, in_cluster, tolerations=[task_pool_toleration()])
    assert pod.spec.tolerations == [task_pool_toleration()]


@pytest.mark.parametrize("where", ["labels", "annotations"])
def test_opt_out_leaves_the_pod_as_the_author_built_it(local_settings, in_cluster, where):
    pod = build_pod(local_settings, in_cluster, **{where: dict(OPT_OUT)})
    assert not pod.spec.affinity or pod.spec.affinity.node_affinity is None
    assert not pod.spec.tolerations
    assert not set(NO_EVICTION) & set(pod.metadata.annotations or {})


def test_kubernetes_executor_worker_pods_are_left_alone(local_settings):
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    base = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="base"),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", image="apache/airflow")]),
    )
    pod = PodGenerator.construct_pod(
        dag_id="d",
        task_id="t",
        pod_id="worker",
        try_number=1,
        kube_image="apache/airflow",
        date=None,
        args=["airflow", "tasks", "run"],
        pod_override_object=None,
        base_worker_pod=base,
        namespace="airflow",
        scheduler_job_id="1",
        run_id="manual__1",
        with_mutation_hook=True,
    )
    assert "kubernetes_pod_operator" not in pod.metadata.labels
    assert pod.spec.affinity is None
    assert not pod.spec.tolerations
    assert not set(NO_EVICTION) & set(pod.metadata.annotations or {})


def test_the_hook_is_what_airflow_calls(local_settings):
    """Airflow's hook caller dispatches to the shipped module (not a stand-in defined in this test)."""
    import airflow.settings as settings

    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="p", labels={"kubernetes_pod_operator": "True"}),
        spec=k8s.V1PodSpec(containers=[]),
    )
    settings.pod_mutation_hook(pod)
    assert local_settings.TASK_POOL == TASK_POOL.as_dict()
    assert pod.spec.tolerations == [task_pool_toleration()]


def test_the_unrendered_template_refuses_to_load():
    from airflow_on_k8s.airflow.local_settings import LOCAL_SETTINGS_TEMPLATE

    with pytest.raises(ImportError, match="without rendering"):
        exec(compile(LOCAL_SETTINGS_TEMPLATE.read_text(), "airflow_local_settings.py", "exec"), {})
