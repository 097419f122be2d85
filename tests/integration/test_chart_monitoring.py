"""The chart's Grafana dashboard, PrometheusRule and PodMonitor.

Static checks (the real helm, Prometheus's PromQL grammar in ``promql_parser``):
the dashboard is a Grafana dashboard (panels with targets, unique ids, a
data source variable), the rendered PrometheusRule is one of the right kind
with alerts that parse, and every value of the new blocks reaches the output.

The metric-name test scrapes a live operator (the session's, against the
control plane, after a TrainingRun failed) and a live consumer (after it
applied and quarantined messages from a real RabbitMQ stream), so that the
labelled series exist, and checks that every metric a panel or an alert names
is in one of the two scrapes, with every label it selects, groups or matches
by, or writes in a legend. Labels that Prometheus and the Prometheus
operator's Service and PodMonitors attach to every scraped series
(``TARGET_LABELS``) are not in ``/metrics`` and are allowed as such.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from azaion_devtools.broker import consume_raw, publish
from azaion_devtools.cluster import trainingrun
from azaion_devtools.processes import wait_until
from azaion_operator.annotationconsumer.builders import consumer_labels
from tests.fixtures import scenarios
from tests.fixtures.queue_process import QueueProcess
from tests.integration.test_chart_values_corpus import helm_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "azaion"
DASHBOARD = CHART / "files" / "dashboards" / "azaion.json"

#: Labels a scrape gets from its target, not from /metrics: ``job`` and
#: ``instance`` from Prometheus, the others from the Prometheus operator's
#: ServiceMonitor and PodMonitor relabelling.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint", "service"})

#: What a Grafana variable stands for when an expression is parsed.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "namespace": ".*"}

ALERTS = {
    "AzaionConsumerNotReady",
    "AzaionConsumerOffsetStalled",
    "AzaionDataVolumeFilling",
    "AzaionDataVolumeFull",
    "AzaionTrainingRunFailed",
    "AzaionTrainingAttemptsFailing",
    "AzaionTrainingRunWaitingForGPU",
}


# --- reading the files ------------------------------------------------------------------


def helm_template(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [helm_binary(), "template", "mon", str(CHART), "-n", "monitoring-test", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def rendered(*args: str) -> list[dict[str, Any]]:
    result = helm_template(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def substitute_variables(expr: str) -> str:
    """Grafana's ``$name`` and ``${name}`` replaced by a value PromQL can parse; an unknown one fails."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown Grafana variable ${name} in {expr!r}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) of every panel target and of every query variable."""
    found = []
    for panel in all_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel['title']!r} target {target['refId']}"
            found.append((where, substitute_variables(target["expr"]), target.get("legendFormat", "")))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: not label_values(expr, label): {query!r}"
        # The label asked for counts as a legend: it must be on the series.
        found.append((f"variable {variable['name']}", match.group(1), "{{" + match.group(2) + "}}"))
    return found


def rule_of(*args: str) -> dict[str, Any]:
    rules = of_kind(rendered("--set", "prometheusRule.enabled=true", *args), "PrometheusRule")
    assert len(rules) == 1
    return rules[0]


def alerts_of(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def rule_queries() -> list[tuple[str, str, str]]:
    return [(f"alert {name}", alert["expr"], "") for name, alert in alerts_of(rule_of()).items()]


# --- what an expression names -----------------------------------------------------------


def selectors(expr: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(expr, visit)
    return found


def uses(expr: promql_parser.Expr) -> list[tuple[str, set[str], set[str]]]:
    """(metric, labels its selector matches on, labels grouped or matched by around it)."""
    found: list[tuple[str, set[str], set[str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name: {node}"
            matched = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            found.append((node.name, matched, set()))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouped = set(node.modifier.labels)
            found.extend((s.name, set(), grouped) for s in selectors(node.expr))
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            modifier = node.modifier
            labels = set(modifier.matching.labels) if modifier.matching else set()
            labels |= set(modifier.group_labels or [])
            if labels:
                found.extend((s.name, set(), labels) for s in selectors(node.lhs) + selectors(node.rhs))

    promql_parser.walk(expr, visit)
    return found


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))


# --- static checks ----------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard():
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    panels = list(all_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"], panel["title"]
    # The panels the issue asks for: the metrics they show.
    shown = {s.name for _, expr, _ in dashboard_queries() for s in selectors(promql_parser.parse(expr))}
    assert {
        "azaion_trainingruns",
        "azaion_trainingrun_attempts_total",
        "azaion_trainingrun_failures_total",
        "azaion_trainingrun_preemptions_total",
        "azaion_trainingrun_queue_length",
        "azaion_queue_offset",
        "azaion_queue_committed_offset",
        "azaion_queue_messages_total",
        "azaion_queue_quarantined_total",
        "azaion_queue_messages_waiting",
        "azaion_queue_last_message_age_seconds",
        "azaion_queue_data_volume_usage_percent",
        "azaion_queue_ready",
        "azaion_queue_connected",
    } <= shown


def test_every_dashboard_query_is_promql():
    queries = dashboard_queries()
    assert len(queries) >= 20
    for where, expr, _ in queries:
        try:
            promql_parser.parse(expr)
        except ValueError as error:
            pytest.fail(f"{where}: {expr!r} does not parse: {error}")


def test_a_wrong_query_does_not_parse():
    """The parser is strict enough to catch what a typo makes."""
    for bad in ("sum by (phase (azaion_trainingruns)", "rate(azaion_queue_messages_total)", "azaion_queue_ready =="):
        with pytest.raises(ValueError):
            promql_parser.parse(bad)


def test_the_dashboard_configmap_is_off_by_default_and_carries_the_file():
    assert of_kind(rendered(), "ConfigMap") == []
    maps = of_kind(rendered("--set", "grafana.dashboards.enabled=true"), "ConfigMap")
    assert len(maps) == 1
    assert maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert maps[0]["metadata"]["namespace"] == "monitoring-test"
    assert json.loads(maps[0]["data"]["azaion.json"]) == dashboard()


def test_the_dashboard_values_reach_the_configmap():
    (config_map,) = of_kind(
        rendered(
            "--set",
            "grafana.dashboards.enabled=true",
            "--set",
            "grafana.dashboards.label=grafana.example/dashboard",
            "--set-string",
            "grafana.dashboards.labelValue=azaion",
            "--set",
            "grafana.dashboards.namespace=grafana",
            "--set",
            "grafana.dashboards.labels.team=ml",
            "--set",
            "grafana.dashboards.annotations.grafana_folder=Azaion",
        ),
        "ConfigMap",
    )
    meta = config_map["metadata"]
    assert meta["namespace"] == "grafana"
    assert meta["labels"]["grafana.example/dashboard"] == "azaion" and "grafana_dashboard" not in meta["labels"]
    assert meta["labels"]["team"] == "ml"
    assert meta["annotations"] == {"grafana_folder": "Azaion"}


def test_the_prometheusrule_is_off_by_default_and_valid_when_on():
    assert of_kind(rendered(), "PrometheusRule") == []
    rule = rule_of()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "monitoring-test"
    alerts = alerts_of(rule)
    assert set(alerts) == ALERTS
    for name, alert in alerts.items():
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        if "for" in alert:
            promql_parser.parse_duration(alert["for"])
        try:
            promql_parser.parse(alert["expr"])
        except ValueError as error:
            pytest.fail(f"{name}: {alert['expr']!r} does not parse: {error}")
    assert alerts["AzaionDataVolumeFull"]["labels"]["severity"] == "critical"


def test_the_alert_thresholds_come_from_the_values():
    alerts = alerts_of(
        rule_of(
            "--set",
            "prometheusRule.dataVolume.warningPercent=70",
            "--set-json",
            "prometheusRule.dataVolume.criticalPercent=90.5",
            "--set",
            "prometheusRule.dataVolume.for=2m",
            "--set",
            "prometheusRule.consumerNotReady.for=7m",
            "--set",
            "prometheusRule.offsetStalled.for=1h30m",
            "--set",
            "prometheusRule.attemptFailures.window=2h",
            "--set",
            "prometheusRule.gpuWait.for=3h",
            "--set",
            "prometheusRule.alertLabels.team=ml",
            "--set",
            "prometheusRule.labels.release=kube-prometheus-stack",
        )
    )
    assert alerts["AzaionDataVolumeFilling"]["expr"] == "azaion_queue_data_volume_usage_percent > 70"
    assert alerts["AzaionDataVolumeFull"]["expr"] == "azaion_queue_data_volume_usage_percent > 90.5"
    assert alerts["AzaionDataVolumeFull"]["for"] == "2m"
    assert alerts["AzaionConsumerNotReady"]["for"] == "7m"
    assert alerts["AzaionConsumerOffsetStalled"]["for"] == "1h30m"
    assert "[2h]" in alerts["AzaionTrainingAttemptsFailing"]["expr"]
    assert alerts["AzaionTrainingRunWaitingForGPU"]["for"] == "3h"
    assert all(alert["labels"]["team"] == "ml" for alert in alerts.values())
    for alert in alerts.values():
        promql_parser.parse(alert["expr"])
    rule = rule_of("--set", "prometheusRule.labels.release=kube-prometheus-stack")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_podmonitor_selects_the_consumer_pods():
    assert of_kind(rendered(), "PodMonitor") == []
    (monitor,) = of_kind(rendered("--set", "consumerPodMonitor.enabled=true"), "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= consumer_labels("any").items()
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    (namespaced,) = of_kind(
        rendered("--set", "consumerPodMonitor.enabled=true", "--set-json", 'watchNamespaces=["azaion"]'), "PodMonitor"
    )
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["azaion"]}


BAD_VALUES = [
    (["--set-string", "prometheusRule.enabled=yes"], "/prometheusRule/enabled", "want boolean"),
    (["--set-string", "prometheusRule.dataVolume.warningPercent=80"], "/prometheusRule/dataVolume/warningPercent", ""),
    (["--set", "prometheusRule.dataVolume.criticalPercent=101"], "/prometheusRule/dataVolume/criticalPercent", ""),
    (["--set", "prometheusRule.gpuWait.for=an hour"], "/prometheusRule/gpuWait/for", "pattern"),
    (["--set-string", "prometheusRule.consumerNotReady.for=5"], "/prometheusRule/consumerNotReady/for", "pattern"),
    (["--set", "prometheusRule.consumerNotReady.for=5"], "/prometheusRule/consumerNotReady/for", "want string"),
    (["--set", "prometheusRule.attemptFailures.window=0m"], "/prometheusRule/attemptFailures/window", "not"),
    (["--set", "prometheusRule.alertLabels.bad-name=x"], "/prometheusRule/alertLabels", "'bad-name' not allowed"),
    (["--set", "prometheusRule.severity=page"], "/prometheusRule", "'severity' not allowed"),
    (
        ["--set", "prometheusRule.dataVolume.warningPercent=96"],
        "prometheusRule.dataVolume.warningPercent (96) must be below",
        "",
    ),
    (["--set-string", "grafana.dashboards.enabled=true"], "/grafana/dashboards/enabled", "want boolean"),
    (["--set", "grafana.dashboards.labelValue=1"], "/grafana/dashboards/labelValue", "want string"),
    (["--set", "grafana.dashboards.label=grafana dashboard"], "/grafana/dashboards/label", "pattern"),
    (["--set", "grafana.dashboards.namespace=Monitoring"], "/grafana/dashboards/namespace", ""),
    (["--set", "grafana.dashboard.enabled=true"], "/grafana", "'dashboard' not allowed"),
    (["--set", "consumerPodMonitor.interval=often"], "/consumerPodMonitor/interval", "pattern"),
]


@pytest.mark.parametrize(("args", "names", "says"), BAD_VALUES, ids=[" ".join(v[0][1:]) for v in BAD_VALUES])
def test_bad_monitoring_values_are_refused_naming_the_value(args, names, says):
    result = helm_template(*args)
    assert result.returncode != 0, f"accepted {args}"
    assert names in result.stderr, result.stderr
    assert says in result.stderr, result.stderr


# --- the names against live scrapes -----------------------------------------------------


def scraped(text: str) -> dict[str, set[str]]:
    """Each sample name of an exposition with the labels its samples carry, and each declared
    family (HELP/TYPE) with none: a labelled metric with no child yet has no samples."""
    found: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in text_string_to_metric_families(text):
        for suffix in ("", *suffixes.get(family.type, ())):
            found.setdefault(family.name + suffix, set())
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


@pytest.fixture
def operator_scrape(operator, api_client, namespace, data_claim, cluster) -> dict[str, set[str]]:
    """The operator's /metrics after a TrainingRun started an attempt and failed for good, and
    while another waits for GPUs."""
    if operator is None:
        pytest.skip("the operator runs outside the tests (--external-operator): its metrics are not here")
    if not cluster.simulated:
        pytest.skip("plays a failing trainer through kwok; needs the local control plane")
    from kubernetes import client

    run = trainingrun(
        "fails",
        resources={"gpus": 0},
        failurePolicy={"backoffSeconds": 0},
        podAnnotations={"azaion.local/exit-code": "78"},
    )
    api = client.CustomObjectsApi(api_client)
    api.create_namespaced_custom_object("ai.azaion.com", "v1alpha1", namespace, "trainingruns", run)

    def failed() -> bool:
        status = api.get_namespaced_custom_object("ai.azaion.com", "v1alpha1", namespace, "trainingruns", "fails")
        return (status.get("status") or {}).get("phase") == "Failed"

    wait_until(failed, 60, "the TrainingRun to fail")
    # A run no GPU node can hold, last in line: it waits in the GPU queue with a place.
    waiting = trainingrun("waits", resources={"gpus": 16}, priority=-1000)
    api.create_namespaced_custom_object("ai.azaion.com", "v1alpha1", namespace, "trainingruns", waiting)
    # What a trainer reports as it trains (kwok runs no trainer): the per-run gauges' source.
    progress = {"epoch": 1, "epochs": 2, "percent": 50.0, "etaSeconds": 30, "metrics": {"map50": 0.5, "boxLoss": 1.0}}
    api.patch_namespaced_custom_object_status(
        "ai.azaion.com", "v1alpha1", namespace, "trainingruns", "fails", {"status": {"progress": progress}}
    )
    wait_until(
        lambda: (
            'phase="Failed"' in operator.metrics()
            and "azaion_trainingrun_failures_total{" in operator.metrics()
            and "azaion_trainingrun_map50{" in operator.metrics()
            and "azaion_trainingrun_queue_position{" in operator.metrics()
        ),
        30,
        "the failure, the run's progress and the queued run's place in the operator's metrics",
    )
    return scraped(operator.metrics())


@pytest.fixture
def consumer_scrape(rabbitmq, stream_name, tmp_path) -> Iterator[dict[str, set[str]]]:
    """The consumer's /metrics after it applied and quarantined messages of a real stream."""
    steps = scenarios.build_scenario(seed=16, count=30, malformed_every=5)
    asyncio.run(publish(rabbitmq.endpoint, stream_name, [step.wire for step in steps]))
    last = asyncio.run(consume_raw(rabbitmq.endpoint, stream_name, len(steps)))[-1][0]
    queue = QueueProcess(
        rabbitmq.endpoint,
        stream_name,
        tmp_path / "root",
        tmp_path / "state",
        tmp_path / "consumer.log",
        QUEUE_CONSUMER_NAME="monitoring",
    ).start()
    try:
        queue.wait_ready()
        queue.wait_for_offset(last)
        code, text = queue.get("/metrics")
        assert code == 200 and isinstance(text, str)
        yield scraped(text)
    finally:
        assert queue.terminate() == 0, queue.log_tail()


def check_names(queries: list[tuple[str, str, str]], exported: dict[str, set[str]]) -> list[str]:
    problems = []
    for where, expr, legend in queries:
        parsed = promql_parser.parse(expr)
        available = set(TARGET_LABELS)
        for metric, matched, grouped in uses(parsed):
            if metric not in exported:
                problems.append(f"{where}: {metric} is in neither /metrics")
                continue
            if not exported[metric] and (matched | grouped) - TARGET_LABELS:
                # Declared but without samples: its labels cannot be checked.
                problems.append(f"{where}: {metric} has no samples in the scrape to check its labels against")
                continue
            for label in (matched | grouped) - exported[metric] - TARGET_LABELS:
                problems.append(f"{where}: {metric} has no label {label!r} (it has {sorted(exported[metric])})")
            available |= exported[metric]
        root = parsed
        while isinstance(root, promql_parser.BinaryExpr) and isinstance(root.rhs, promql_parser.NumberLiteral):
            root = root.lhs
        if isinstance(root, promql_parser.AggregateExpr) and root.modifier is not None:
            if root.modifier.type == promql_parser.AggModifierType.By:
                available = set(root.modifier.labels)
        elif isinstance(root, promql_parser.AggregateExpr):
            available = set()
        for label in legend_labels(legend) - available:
            problems.append(f"{where}: the legend names {label!r}, which the result does not have")
    return list(dict.fromkeys(problems))


def test_the_name_check_finds_a_wrong_name_and_a_wrong_label():
    exported = {"azaion_trainingruns": {"phase"}, "azaion_queue_ready": set()}
    problems = check_names(
        [
            ("a", "sum by (phase) (azaion_trainingrun)", "{{phase}}"),
            ("b", 'azaion_trainingruns{state="Failed"}', ""),
            ("c", "sum(azaion_trainingruns)", "{{phase}}"),
            ("d", "max by (namespace) (azaion_queue_ready)", "{{namespace}}"),
        ],
        exported,
    )
    assert problems == [
        "a: azaion_trainingrun is in neither /metrics",
        "b: azaion_trainingruns has no label 'state' (it has ['phase'])",
        "c: the legend names 'phase', which the result does not have",
    ]


def test_every_metric_and_label_of_the_dashboard_and_the_rule_is_exported(operator_scrape, consumer_scrape):
    overlap = (set(operator_scrape) & set(consumer_scrape)) - {"target_info"}
    assert not {name for name in overlap if name.startswith("azaion_")}, "a name in both scrapes"
    exported = {**operator_scrape, **consumer_scrape}
    queries = dashboard_queries() + rule_queries()
    problems = check_names(queries, exported)
    assert problems == [], "\n".join(problems)
    # The labelled series the dashboard groups by were really in the scrapes.
    assert {"phase"} <= operator_scrape["azaion_trainingruns"]
    assert {"reason"} <= operator_scrape["azaion_trainingrun_failures_total"]
    assert {"type", "outcome"} <= consumer_scrape["azaion_queue_messages_total"]
    assert {"reason"} <= consumer_scrape["azaion_queue_quarantined_total"]
