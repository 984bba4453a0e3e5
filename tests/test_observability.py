"""Observability of worker scaling: the dashboard, the alert rules and the scrape wiring.

- The dashboard JSON in the repository is the generated one; it is a Grafana dashboard (every key known to
  Grafana's dashboard schema as grafana-foundation-sdk's models read it; unique panel ids; a non-overlapping
  24-column grid; queries on the data-source variable; every $variable defined).
- Every PromQL expression (panels and rules) parses with promql-parser (a port of Prometheus' own parser) and
  names only metrics that exist: the autoscaler's (from its registry) and kube-state-metrics' / StatsD's
  (observability/exporters.py, with the upstream citation).
- The PrometheusRule, PodMonitor and ServiceMonitor objects validate against the prometheus-operator CRDs'
  OpenAPI schemas (read from the Go module cache, `go mod download`ed on first use, never committed).
- Every alert fires on the series it watches, and a near miss does not page: Prometheus' `promtool test rules`
  (on PATH, in ~/go/bin, or built once with `go install`).
- Each alert's runbook_url points at a section of docs/runbooks.md.
- What each stack's program creates (Pulumi mocks): the local preview lists the dashboard ConfigMap and rules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import promql_parser
import pytest
import yaml

from airflow_on_k8s.config import ConfigError, parse_stack_config
from airflow_on_k8s.observability import exporters
from airflow_on_k8s.observability.component import GRAFANA_DASHBOARD_LABEL, TYPE, ObservabilityArgs
from airflow_on_k8s.observability.dashboard import FILE_NAME, REPO_FILE, dashboard, render
from airflow_on_k8s.observability.rules import DRAIN_TIMEOUT_REASON, rule_groups
from airflow_on_k8s.testing.mock_runtime import available_stacks
from tests.conftest import program_run
from tests.test_addons import stack_config
from tests.test_k8s_schema import manifest

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"


class _CrdLoader(yaml.SafeLoader):
    """PyYAML reads a bare `=` (in the CRDs' enums of relabel actions) as the YAML 1.1 "value" tag; it is the string."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def all_rule_groups() -> list[tuple[str, list[dict]]]:
    """The rule groups of every shipped stack (they differ by scaling mode and limits)."""
    return [(s, rule_groups(ObservabilityArgs.from_stack(stack_config(s)).rules)) for s in available_stacks()]


def panel_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    return [r["expr"] for _, groups in all_rule_groups() for g in groups for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


# --- the dashboard ---------------------------------------------------------------------------------------------


def test_the_repositorys_dashboard_file_is_the_generated_one():
    assert REPO_FILE == REPO / "dashboards" / FILE_NAME
    assert REPO_FILE.read_text() == render(dashboard()), (
        "dashboards/ is stale: run python -m airflow_on_k8s.observability.dashboard --write")


def test_every_key_of_the_dashboard_is_in_grafanas_dashboard_schema():
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    model = json.loads(REPO_FILE.read_text())
    decoded = json.loads(json.dumps(Dashboard.from_json(model), cls=JSONEncoder))
    dropped = []

    def compare(ours, theirs, path):
        if isinstance(ours, dict):
            for key, value in ours.items():
                if not isinstance(theirs, dict) or key not in theirs:
                    dropped.append(f"{path}/{key}")
                else:
                    compare(value, theirs[key], f"{path}/{key}")
        elif isinstance(ours, list):
            assert isinstance(theirs, list) and len(ours) == len(theirs), path
            for i, (a, b) in enumerate(zip(ours, theirs)):
                compare(a, b, f"{path}[{i}]")
        else:
            assert ours == theirs, path

    compare(model, decoded, "")
    assert dropped == [], f"keys Grafana's dashboard model does not know: {dropped}"


def test_the_dashboard_is_well_formed_for_grafana():
    model = json.loads(REPO_FILE.read_text())
    assert isinstance(model["schemaVersion"], int) and model["schemaVersion"] >= 36 and model["uid"]
    panels = model["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert set(g) == {"h", "w", "x", "y"} and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    text = json.dumps(panels)
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used <= set(variables), f"undefined dashboard variables: {used - set(variables)}"
    for p in panels:
        for holder in (p, *p["targets"]):
            assert holder["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]


def test_the_dashboard_has_the_seeds_view_and_every_autoscaler_signal():
    model = dashboard()
    first = model["panels"][0]
    assert first["gridPos"]["y"] == 0 and first["gridPos"]["x"] == 0
    first_names = set().union(*(metric_names(t["expr"]) for t in first["targets"]))
    assert {exporters.KUBE_DEPLOYMENT_SPEC_REPLICAS} <= first_names
    assert {n for n in first_names if n.endswith(("_queued_tasks", "_running_tasks"))} == {
        n for n in exporters.autoscaler_metric_names() if n.endswith(("_queued_tasks", "_running_tasks"))}
    shown = set().union(*(metric_names(e) for e in panel_exprs()))
    # Everything the autoscaler exports is on the dashboard, except the loop timestamp (an alerting input).
    missing = {n for n in exporters.autoscaler_metric_names() - shown
               if not n.endswith(("_last_success_timestamp_seconds", "_drain_seconds_sum", "_drain_seconds_count",
                                  "_deaf_workers"))}
    assert missing == set()
    assert {exporters.TASK_POOL_NODES.split("{")[0], exporters.KUBE_POD_STATUS_PHASE} <= shown
    assert {exporters.AIRFLOW_SCHEDULER_HEARTBEAT, exporters.AIRFLOW_EXECUTOR_QUEUED_TASKS} <= shown


# --- PromQL -----------------------------------------------------------------------------------------------------


def test_every_expression_parses_and_names_only_exported_metrics():
    exported = exporters.exported_metric_names()
    exprs = panel_exprs() + rule_exprs()
    assert len(exprs) > 20
    for expr in exprs:
        names = metric_names(expr)  # raises on a syntax error
        assert names, expr
        assert names <= exported, f"{expr}: {names - exported} is exported by nobody"


def test_the_registry_is_the_source_of_autoscaler_names():
    from airflow_on_k8s.autoscaler.metrics import Metrics

    families = {f.name: f.type for f in Metrics().registry.collect()}
    names = exporters.autoscaler_metric_names()
    assert all(n.startswith("airflow_worker_autoscaler_") for n in names)
    assert "airflow_worker_autoscaler_errors_total" in names and families["airflow_worker_autoscaler_errors"] == "counter"
    assert "airflow_worker_autoscaler_deaf_workers" in names


def test_kube_state_metrics_sanitizes_the_task_pool_label_key():
    assert exporters.kube_state_metrics_label("airflow-on-k8s/pool") == "label_airflow_on_k8s_pool"
    assert exporters.TASK_POOL_NODES == 'kube_node_labels{label_airflow_on_k8s_pool="tasks"}'


def test_the_drain_timeout_alert_uses_the_reason_the_controller_counts():
    controller = (REPO / "src/airflow_on_k8s/autoscaler/controller.py").read_text()
    assert f'aborted_drains.labels("{DRAIN_TIMEOUT_REASON}")' in controller


# --- rules ------------------------------------------------------------------------------------------------------


def test_every_alert_has_a_runbook_section():
    runbooks = (REPO / "docs" / "runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbooks, re.M)}
    alerts = {r["alert"]: r for _, groups in all_rule_groups() for g in groups for r in g["rules"]}
    assert set(alerts) == {
        "AirflowWorkerAutoscalerNoLeader", "AirflowWorkerAutoscalerErrors", "AirflowWorkerDrainsTimingOut",
        "AirflowWorkerConsumesNoQueue", "AirflowTasksQueuedTooLong", "AirflowTaskPoolAtMaximum",
        "AirflowWorkersAtMaxWhileTasksWait", "AirflowWorkerScaleDownHeld", "AirflowWorkerForeignPods",
    }
    for name, rule in alerts.items():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/runbooks.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{name}: no section {url} in docs/runbooks.md"
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_alert_thresholds_follow_the_stack_config():
    cfg = parse_stack_config({"cloud": "local", "scaling": {"maxWorkers": 7}, "taskPool": {"maxSize": 5},
                              "observability": {"queuedAlertMinutes": 25}})
    rules = {r["alert"]: r for r in rule_groups(ObservabilityArgs.from_stack(cfg).rules)[0]["rules"]}
    assert ">= 7 and on ()" in rules["AirflowWorkersAtMaxWhileTasksWait"]["expr"]
    assert ">= 5 and on ()" in rules["AirflowTaskPoolAtMaximum"]["expr"]
    assert "[25m:1m]" in rules["AirflowTasksQueuedTooLong"]["expr"]
    # Without the autoscaler (keda/hpa) its alerts are left out and the queue comes from Airflow's executor.
    keda = parse_stack_config({"cloud": "local", "scaling": {"mode": "keda"}})
    rules = {r["alert"]: r for r in rule_groups(ObservabilityArgs.from_stack(keda).rules)[0]["rules"]}
    assert "AirflowWorkerAutoscalerNoLeader" not in rules
    assert metric_names(rules["AirflowTasksQueuedTooLong"]["expr"]) == {exporters.AIRFLOW_EXECUTOR_QUEUED_TASKS}


@pytest.fixture(scope="module")
def operator_crds() -> dict[str, dict]:
    """The prometheus-operator CRDs by kind, from the Go module cache (downloaded once if missing)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("no Go toolchain to fetch the prometheus-operator module (Go 1.26 is a prerequisite, see README)")
    out = subprocess.run([go, "mod", "download", "-json", PROMETHEUS_OPERATOR], capture_output=True, text=True,
                         timeout=600, cwd="/tmp")
    assert out.returncode == 0, out.stdout + out.stderr
    crd_dir = Path(json.loads(out.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    crds = {}
    for path in crd_dir.glob("monitoring.coreos.com_*.yaml"):
        crd = yaml.load(path.read_text(), Loader=_CrdLoader)  # noqa: S506 (a SafeLoader subclass)
        crds[crd["spec"]["names"]["kind"]] = crd
    return crds


def validate_against_crd(obj: dict, crd: dict) -> None:
    [version] = [v for v in crd["spec"]["versions"] if f'{crd["spec"]["group"]}/{v["name"]}' == obj["apiVersion"]]
    schema = version["schema"]["openAPIV3Schema"]
    # The API server's structural-schema checks, minus metadata (the API server's own). No check_schema: a few
    # patterns are Go regexps (`^(?i)...`) that Python's re rejects, on fields these objects do not set.
    jsonschema.Draft7Validator(
        {**schema, "properties": {k: v for k, v in schema["properties"].items()
                                  if k not in ("apiVersion", "kind", "metadata")}}
    ).validate({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")})


def custom_resources(run, api_group: str) -> list[dict]:
    return [manifest(r.inputs) for r in run.resources
            if r.type.startswith(f"kubernetes:{api_group}/")]


def test_monitoring_objects_validate_against_the_prometheus_operator_crds(operator_crds):
    run = program_run("local")
    objects = custom_resources(run, "monitoring.coreos.com")
    assert {o["kind"] for o in objects} >= {"PrometheusRule", "ServiceMonitor"}
    for obj in objects:
        validate_against_crd(obj, operator_crds[obj["kind"]])
    # And a broken rule is caught by the same check (the schema is really applied).
    [rule] = [o for o in objects if o["kind"] == "PrometheusRule"]
    broken = json.loads(json.dumps(rule))
    broken["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    with pytest.raises(jsonschema.ValidationError):
        validate_against_crd(broken, operator_crds["PrometheusRule"])
    # Every stack's rules, as a PrometheusRule.
    for stack, groups in all_rule_groups():
        validate_against_crd({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                              "spec": {"groups": groups}}, operator_crds["PrometheusRule"])


def test_a_task_aware_local_stack_scrapes_each_autoscaler_pod_with_a_labelled_pod_monitor(operator_crds, tmp_path):
    from airflow_on_k8s.airflow.worker_autoscaler import METRICS_PORT, POD_LABELS
    from airflow_on_k8s.testing.mock_runtime import run_program

    (tmp_path / "Pulumi.obs.yaml").write_text(yaml.safe_dump({"config": {
        "airflow-on-k8s:cloud": "local",
        "airflow-on-k8s:scaling": {"mode": "task-aware"},
        "airflow-on-k8s:observability": {"monitorLabels": {"release": "kube-prometheus-stack"}},
    }}))
    run = run_program("obs", stacks_dir=tmp_path)
    objects = {o["kind"]: o for o in custom_resources(run, "monitoring.coreos.com")}
    assert set(objects) == {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    for obj in objects.values():
        validate_against_crd(obj, operator_crds[obj["kind"]])
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    monitor = objects["PodMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"] == POD_LABELS
    # The port name is the autoscaler container's (the Deployment names its METRICS_PORT "metrics").
    [deployment] = [manifest(r.inputs) for r in run.resources if r.type == "kubernetes:apps/v1:Deployment"
                    and "worker-autoscaler" in r.name]
    [port] = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert (port["name"], port["containerPort"]) == (monitor["podMetricsEndpoints"][0]["port"], METRICS_PORT)
    assert objects["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == exporters.STATSD_SCRAPE_PORT
    rules = {r["alert"] for r in objects["PrometheusRule"]["spec"]["groups"][0]["rules"]}
    assert "AirflowWorkerAutoscalerNoLeader" in rules


# --- what each stack creates -------------------------------------------------------------------------------------


def test_the_local_preview_lists_the_dashboard_configmap_and_the_rules():
    run = program_run("local")
    parent = f"{TYPE}::observability"
    children = [r for r in run.resources if r.parent == parent]
    [configmap] = [manifest(r.inputs) for r in children if r.type == "kubernetes:core/v1:ConfigMap"]
    assert GRAFANA_DASHBOARD_LABEL.items() <= configmap["metadata"]["labels"].items()
    assert configmap["metadata"]["namespace"] == stack_config("local").airflow.namespace
    assert json.loads(configmap["data"][FILE_NAME])["uid"] == dashboard()["uid"]
    assert [r.type for r in children if r.type.endswith("PrometheusRule")] == [
        "kubernetes:monitoring.coreos.com/v1:PrometheusRule"]


def test_gcp_stacks_use_managed_prometheus_and_aws_stacks_amp():
    gcp = program_run("gcp-dev")
    kinds = {manifest(r.inputs)["kind"] for r in gcp.resources if r.type.startswith("kubernetes:monitoring.googleapis.com/")}
    assert kinds == {"PodMonitoring", "Rules"}
    for r in gcp.resources:
        if r.type == "kubernetes:monitoring.googleapis.com/v1:PodMonitoring":
            spec = manifest(r.inputs)["spec"]
            assert spec["endpoints"][0]["port"] in ("metrics", exporters.STATSD_SCRAPE_PORT)
            assert "pod" in spec["targetLabels"]["metadata"]  # the leader join is on (namespace, pod)
    [cluster] = gcp.by_type("gcp:container/cluster:Cluster")
    assert cluster.inputs["monitoringConfig"]["managedPrometheus"] == {"enabled": True}
    aws = program_run("aws-dev")
    types = {r.type for r in aws.resources}
    assert {"aws:amp/workspace:Workspace", "aws:amp/ruleGroupNamespace:RuleGroupNamespace",
            "aws:amp/scraper:Scraper", "aws:eks/accessEntry:AccessEntry"} <= types
    rules = yaml.safe_load(aws.one("aws:amp/ruleGroupNamespace:RuleGroupNamespace").inputs["data"])
    assert [g["name"] for g in rules["groups"]] == ["airflow-worker-scaling"]
    scraper = aws.one("aws:amp/scraper:Scraper").inputs
    config = yaml.safe_load(scraper["scrapeConfiguration"])
    assert {j["job_name"] for j in config["scrape_configs"]} == {"worker-autoscaler", "airflow-statsd"}
    for job in config["scrape_configs"]:  # the labels the leader join needs
        assert {r.get("target_label") for r in job["relabel_configs"]} >= {"namespace", "pod"}
    [entry] = [e for e in aws.by_type("aws:eks/accessEntry:AccessEntry") if e.parent.startswith(TYPE)]
    assert entry.inputs["userName"] == "aps-collector-user"


def test_cloud_specific_scrapers_on_another_cloud_are_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"airflow-on-k8s:observability\.scrape: google-managed needs cloud gcp"):
        parse_stack_config({"cloud": "local", "observability": {"scrape": "google-managed"}})
    cfg = parse_stack_config({"cloud": "local", "observability": {"scrape": "none", "dashboard": False}})
    args = ObservabilityArgs.from_stack(cfg)
    assert (args.scraper, args.dashboard) == ("none", False)


def test_the_docs_picture_draws_the_dashboards_panels_from_the_benchmark(tmp_path):
    from bench.dashboard_picture import render as draw

    out = tmp_path / "dashboard.png"
    titles = draw(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panel_titles = [p["title"] for p in dashboard()["panels"]]
    assert all(any(t.startswith(p) for p in panel_titles) for t in titles)
    assert any("(real run)" in t for t in titles)
    assert "docs/dashboard.png" in (REPO / "docs" / "observability.md").read_text()


# --- the alerts fire on the series they watch (promtool test rules) ------------------------------------------

PROMTOOL = "github.com/prometheus/prometheus/cmd/promtool@v0.316.0"


@pytest.fixture(scope="module")
def promtool() -> str:
    """Prometheus' own rule tester: on PATH, in the Go bin dir, or built once with `go install` (minutes)."""
    found = shutil.which("promtool") or next(
        (str(p) for p in [Path.home() / "go" / "bin" / "promtool"] if p.is_file()), None)
    if found:
        return found
    go = shutil.which("go")
    if go is None:
        pytest.fail("no promtool and no Go toolchain to build it (Go 1.26 is a prerequisite, see README)")
    out = subprocess.run([go, "install", PROMTOOL], capture_output=True, text=True, timeout=1800, cwd="/tmp")
    assert out.returncode == 0, out.stderr[-2000:]
    return str(Path(subprocess.check_output([go, "env", "GOPATH"], text=True).strip()) / "bin" / "promtool")


def _expected(rule: dict, labels: dict[str, str]) -> dict:
    annotations = {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
                   for k, v in rule["annotations"].items()}
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}


def test_the_alerts_fire_on_the_series_they_watch_and_not_otherwise(promtool, tmp_path):
    cfg = parse_stack_config({"cloud": "local", "scaling": {"maxWorkers": 3}, "taskPool": {"maxSize": 2},
                              "observability": {"queuedAlertMinutes": 15}})
    groups = rule_groups(ObservabilityArgs.from_stack(cfg).rules)
    rules = {r["alert"]: r for r in groups[0]["rules"]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    ns, pod_a, pod_b = 'namespace="airflow"', 'pod="autoscaler-a"', 'pod="autoscaler-b"'
    leader = "airflow_worker_autoscaler_leader"

    def case(series: dict[str, str], alert: str, at: str, fired: list[dict[str, str]]) -> dict:
        return {"interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [{"eval_time": at, "alertname": alert,
                                     "exp_alerts": [_expected(rules[alert], labels) for labels in fired]}]}

    tests = [
        case({f"{leader}{{{ns},{pod_a}}}": "0x20", f"{leader}{{{ns},{pod_b}}}": "0x20"},
             "AirflowWorkerAutoscalerNoLeader", "6m", [{}]),
        case({f"{leader}{{{ns},{pod_a}}}": "1x20", f"{leader}{{{ns},{pod_b}}}": "0x20"},
             "AirflowWorkerAutoscalerNoLeader", "6m", []),
        case({f'airflow_worker_autoscaler_errors_total{{{ns},{pod_a},source="celery"}}': "0+2x40"},
             "AirflowWorkerAutoscalerErrors", "25m", [{"source": "celery"}]),
        case({f'airflow_worker_autoscaler_errors_total{{{ns},{pod_a},source="celery"}}': "0+0x40"},
             "AirflowWorkerAutoscalerErrors", "25m", []),
        case({f'airflow_worker_autoscaler_aborted_drains_total{{{ns},{pod_a},reason="{DRAIN_TIMEOUT_REASON}"}}':
              "0 0 0 1 1 1 1 1"}, "AirflowWorkerDrainsTimingOut", "5m", [{}]),
        case({f'airflow_worker_autoscaler_aborted_drains_total{{{ns},{pod_a},reason="load rose"}}': "0 0 0 1 1 1"},
             "AirflowWorkerDrainsTimingOut", "5m", []),
        # A standby's stale deaf count does not page; the leader's does.
        case({f"{leader}{{{ns},{pod_a}}}": "1x20", f"{leader}{{{ns},{pod_b}}}": "0x20",
              f"airflow_worker_autoscaler_deaf_workers{{{ns},{pod_a}}}": "1x20",
              f"airflow_worker_autoscaler_deaf_workers{{{ns},{pod_b}}}": "0x20"},
             "AirflowWorkerConsumesNoQueue", "7m", [{}]),
        case({f"{leader}{{{ns},{pod_a}}}": "1x20", f"{leader}{{{ns},{pod_b}}}": "0x20",
              f"airflow_worker_autoscaler_deaf_workers{{{ns},{pod_a}}}": "0x20",
              f"airflow_worker_autoscaler_deaf_workers{{{ns},{pod_b}}}": "2x20"},
             "AirflowWorkerConsumesNoQueue", "7m", []),
        # Held in every loop (10 s) for 40 minutes pages; holds that stop after 20 minutes do not.
        case({f'airflow_worker_autoscaler_held_scale_downs_total{{{ns},{pod_a},reason="rollout"}}': "0+6x45"},
             "AirflowWorkerScaleDownHeld", "40m", [{"reason": "rollout"}]),
        case({f'airflow_worker_autoscaler_held_scale_downs_total{{{ns},{pod_a},reason="rollout"}}': "0+6x20 120x25"},
             "AirflowWorkerScaleDownHeld", "40m", []),
        case({f"{leader}{{{ns},{pod_a}}}": "1x40", f"{leader}{{{ns},{pod_b}}}": "0x40",
              f"airflow_worker_autoscaler_foreign_pods{{{ns},{pod_a}}}": "1x40",
              f"airflow_worker_autoscaler_foreign_pods{{{ns},{pod_b}}}": "0x40"},
             "AirflowWorkerForeignPods", "35m", [{}]),
        case({f"{leader}{{{ns},{pod_a}}}": "1x40", f"{leader}{{{ns},{pod_b}}}": "0x40",
              f"airflow_worker_autoscaler_foreign_pods{{{ns},{pod_a}}}": "1x10 0x30"},
             "AirflowWorkerForeignPods", "35m", []),
        case({f"{leader}{{{ns},{pod_a}}}": "1x30",
              f'airflow_worker_autoscaler_queued_tasks{{{ns},{pod_a},queue="default"}}': "3x30"},
             "AirflowTasksQueuedTooLong", "20m", [{}]),
        case({f"{leader}{{{ns},{pod_a}}}": "1x30",
              f'airflow_worker_autoscaler_queued_tasks{{{ns},{pod_a},queue="default"}}': "3x10 0 3x19"},
             "AirflowTasksQueuedTooLong", "20m", []),
        case({'kube_node_labels{node="n1",label_airflow_on_k8s_pool="tasks"}': "1x20",
              'kube_node_labels{node="n2",label_airflow_on_k8s_pool="tasks"}': "1x20",
              'kube_pod_status_phase{namespace="airflow-tasks",pod="kpo-1",phase="Pending"}': "1x20"},
             "AirflowTaskPoolAtMaximum", "12m", [{}]),
        case({'kube_node_labels{node="n1",label_airflow_on_k8s_pool="tasks"}': "1x20",
              'kube_pod_status_phase{namespace="airflow-tasks",pod="kpo-1",phase="Pending"}': "1x20"},
             "AirflowTaskPoolAtMaximum", "12m", []),
        case({'kube_deployment_spec_replicas{namespace="airflow",deployment="airflow-worker"}': "3x20",
              f"{leader}{{{ns},{pod_a}}}": "1x20",
              f'airflow_worker_autoscaler_queued_tasks{{{ns},{pod_a},queue="default"}}': "4x20"},
             "AirflowWorkersAtMaxWhileTasksWait", "12m", [{}]),
        case({'kube_deployment_spec_replicas{namespace="airflow",deployment="airflow-worker"}': "2x20",
              f"{leader}{{{ns},{pod_a}}}": "1x20",
              f'airflow_worker_autoscaler_queued_tasks{{{ns},{pod_a},queue="default"}}': "4x20"},
             "AirflowWorkersAtMaxWhileTasksWait", "12m", []),
    ]
    assert {t["alert_rule_test"][0]["alertname"] for t in tests} == set(rules)
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    out = subprocess.run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
