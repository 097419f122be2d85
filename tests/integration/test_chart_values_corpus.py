"""The chart's AnnotationConsumer values: a corpus of values files, through the real helm.

Each bad values file (a base good one with a few changes) must be refused by
``helm template`` with the value's path in the message (``helm lint`` would
show template-time ``fail`` only as INFO). Each good one must render an
AnnotationConsumer whose spec the pydantic model accepts, and, with the
control plane, that the API server accepts (server-side dry run).

The schemas of these values are generated from the CRD (azaion-chartschema);
tests/unit/test_chart_schema.py checks that the table behind it is complete.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from azaion_contract.models.annotationconsumer import AnnotationConsumerSpec
from azaion_operator import chartschema

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = Path(os.environ.get("AZAION_CHART_DIR", REPO / "charts" / "azaion"))
CONSUMER_API = "ai.azaion.com/v1alpha1/AnnotationConsumer"

BASE: dict[str, Any] = {
    "annotationConsumer": {
        "enabled": True,
        "rabbitmq": {"host": "rabbitmq.example", "credentialsSecretRef": {"name": "rabbitmq"}},
    }
}
AC = "annotationConsumer"

#: (changes at dotted paths, the dotted path helm's message must name, a word it must say).
BAD: list[tuple[dict[str, Any], str, str]] = [
    ({f"{AC}.name": "Annotations"}, f"{AC}.name", "pattern"),
    ({f"{AC}.name": "a" * 64}, f"{AC}.name", "maxLength"),
    ({f"{AC}.name": ""}, f"{AC}.name", "minLength"),
    ({f"{AC}.image": "Not An Image"}, f"{AC}.image", "anyOf"),
    ({f"{AC}.image": "registry.local/queue:bad tag"}, f"{AC}.image", "anyOf"),
    ({f"{AC}.rabbitmq.host": "amqp://rabbitmq:5552"}, f"{AC}.rabbitmq.host", "anyOf"),
    ({f"{AC}.rabbitmq.host": "rabbit mq"}, f"{AC}.rabbitmq.host", "anyOf"),
    ({f"{AC}.rabbitmq.host": "a" * 254}, f"{AC}.rabbitmq.host", "anyOf"),
    ({f"{AC}.rabbitmq.host": ""}, f"{AC}.rabbitmq.host", "minLength"),
    ({f"{AC}.rabbitmq.port": 0}, f"{AC}.rabbitmq.port", "minimum"),
    ({f"{AC}.rabbitmq.port": 65536}, f"{AC}.rabbitmq.port", "maximum"),
    ({f"{AC}.rabbitmq.port": "5552"}, f"{AC}.rabbitmq.port", "want integer"),
    ({f"{AC}.rabbitmq.vhost": ""}, f"{AC}.rabbitmq.vhost", "minLength"),
    ({f"{AC}.rabbitmq.stream": ""}, f"{AC}.rabbitmq.stream", "minLength"),
    ({f"{AC}.rabbitmq.stream": "s" * 256}, f"{AC}.rabbitmq.stream", "maxLength"),
    ({f"{AC}.rabbitmq.credentialsSecretRef.name": "Rabbit_MQ"}, f"{AC}.rabbitmq.credentialsSecretRef.name", "anyOf"),
    ({f"{AC}.rabbitmq.credentialsSecretRef.name": ""}, f"{AC}.rabbitmq.credentialsSecretRef.name", "minLength"),
    (
        {f"{AC}.rabbitmq.credentialsSecretRef.usernameKey": "user name"},
        f"{AC}.rabbitmq.credentialsSecretRef.usernameKey",
        "pattern",
    ),
    (
        {f"{AC}.rabbitmq.credentialsSecretRef.usernameKey": "."},
        f"{AC}.rabbitmq.credentialsSecretRef.usernameKey",
        "not",
    ),
    (
        {f"{AC}.rabbitmq.credentialsSecretRef.passwordKey": "..password"},
        f"{AC}.rabbitmq.credentialsSecretRef.passwordKey",
        "not",
    ),
    ({f"{AC}.rabbitmq.credentialsSecretRef.passwordKey": ""}, f"{AC}.rabbitmq.credentialsSecretRef.passwordKey", "min"),
    ({f"{AC}.rabbitmq.tls.enabled": "yes"}, f"{AC}.rabbitmq.tls.enabled", "want boolean"),
    ({f"{AC}.rabbitmq.tls.caSecretRef": {"name": "ca", "key": "ca.crt"}}, f"{AC}.rabbitmq.tls", "'caSecretRef'"),
    ({f"{AC}.rabbitmq.hots": "rabbitmq.example"}, f"{AC}.rabbitmq", "'hots' not allowed"),
    ({f"{AC}.dataClaimName": "Data_Claim"}, f"{AC}.dataClaimName", "anyOf"),
    ({"data.claimName": ""}, "data.claimName", "minLength"),
    ({f"{AC}.offsetVolume.size": "0"}, f"{AC}.offsetVolume.size", "not"),
    ({f"{AC}.offsetVolume.size": "-1Gi"}, f"{AC}.offsetVolume.size", "not"),
    ({f"{AC}.offsetVolume.size": "lots"}, f"{AC}.offsetVolume.size", "pattern"),
    ({f"{AC}.offsetVolume.storageClassName": "Fast SSD"}, f"{AC}.offsetVolume.storageClassName", "anyOf"),
    ({f"{AC}.offsetVolume.deletePolicy": "Keep"}, f"{AC}.offsetVolume.deletePolicy", "one of"),
    ({f"{AC}.resources.cpu": "0"}, f"{AC}.resources.cpu", "anyOf"),
    ({f"{AC}.resources.memory": "512MB"}, f"{AC}.resources.memory", "anyOf"),
    ({f"{AC}.resources.cpu": 2}, f"{AC}.resources.cpu", "want string"),
    ({f"{AC}.resources.nodeSelector": {"gpu": "yes"}}, f"{AC}.resources", "'nodeSelector' not allowed"),
    ({f"{AC}.startFrom": "yesterday"}, f"{AC}.startFrom", "pattern"),
    ({f"{AC}.startFrom": "2026-01-31 12:00:00Z"}, f"{AC}.startFrom", "pattern"),
    ({f"{AC}.startFrom": "2026-01-31T12:00:00"}, f"{AC}.startFrom", "pattern"),
    ({f"{AC}.startFrom": "2026-01-31T12:00Z"}, f"{AC}.startFrom", "pattern"),
    ({f"{AC}.offsetCommit.everyMessages": 0}, f"{AC}.offsetCommit.everyMessages", "minimum"),
    ({f"{AC}.offsetCommit.everyMessages": 100001}, f"{AC}.offsetCommit.everyMessages", "maximum"),
    ({f"{AC}.offsetCommit.intervalMilliseconds": 5}, f"{AC}.offsetCommit.intervalMilliseconds", "minimum"),
    ({f"{AC}.offsetCommit.intervalMilliseconds": 600001}, f"{AC}.offsetCommit.intervalMilliseconds", "maximum"),
    ({f"{AC}.offsetCommit.every": 10}, f"{AC}.offsetCommit", "'every' not allowed"),
    ({f"{AC}.disk.warnPercent": 0}, f"{AC}.disk.warnPercent", "minimum"),
    ({f"{AC}.disk.criticalPercent": 101}, f"{AC}.disk.criticalPercent", "maximum"),
    ({f"{AC}.disk.warnPercent": 95}, f"{AC}.disk.warnPercent", "must be below"),
    ({f"{AC}.stallAfter": "0m"}, f"{AC}.stallAfter", "not"),
    ({f"{AC}.stallAfter": "30 minutes"}, f"{AC}.stallAfter", "pattern"),
    ({f"{AC}.stallAfter": "1d"}, f"{AC}.stallAfter", "pattern"),
    ({f"{AC}.stallAfter": "1" * 33 + "s"}, f"{AC}.stallAfter", "maxLength"),
    ({"operator.extraEnv": [{"name": "TZ", "valu": "UTC"}]}, "operator.extraEnv.0", "'valu' not allowed"),
    ({"operator.extraEnv": [{"name": "A=B", "value": "1"}]}, "operator.extraEnv.0.name", "pattern"),
    ({"operator.extraEnv": [{"value": "1"}]}, "operator.extraEnv.0", "missing property 'name'"),
    # The monitoring blocks (templates/prometheusrule.yaml, grafana-dashboard.yaml, podmonitor.yaml).
    ({"prometheusRule.enabled": "yes"}, "prometheusRule.enabled", "want boolean"),
    ({"prometheusRule.dataVolume.warningPercent": "80"}, "prometheusRule.dataVolume.warningPercent", "want number"),
    ({"prometheusRule.dataVolume.criticalPercent": 0}, "prometheusRule.dataVolume.criticalPercent", "exclusiveMinimum"),
    ({"prometheusRule.dataVolume.warningPercent": 95}, "prometheusRule.dataVolume.warningPercent", "must be below"),
    ({"prometheusRule.offsetStalled.for": 30}, "prometheusRule.offsetStalled.for", "want string"),
    ({"prometheusRule.offsetStalled.for": "30 min"}, "prometheusRule.offsetStalled.for", "pattern"),
    ({"prometheusRule.attemptFailures.window": "0s"}, "prometheusRule.attemptFailures.window", "not"),
    ({"prometheusRule.alertLabels": {"severity level": "x"}}, "prometheusRule.alertLabels", "not allowed"),
    ({"grafana.dashboards.labelValue": 1}, "grafana.dashboards.labelValue", "want string"),
    ({"grafana.dashboards.label": ""}, "grafana.dashboards.label", "pattern"),
    ({"grafana.dashboards.namespace": "Grafana"}, "grafana.dashboards.namespace", "anyOf"),
    ({"grafana.dashboards.folder": "Azaion"}, "grafana.dashboards", "'folder' not allowed"),
    ({"consumerPodMonitor.enabled": 1}, "consumerPodMonitor.enabled", "want boolean"),
]

#: Good variants: every value set, and the edges of what the CRD takes.
GOOD: list[dict[str, Any]] = [
    {},
    {
        f"{AC}.name": "consumer.a",
        f"{AC}.image": "registry.local:5000/azaion/annotation-queue:1.2.3",
        f"{AC}.rabbitmq.host": "10.0.0.5",
        f"{AC}.rabbitmq.port": 5551,
        f"{AC}.rabbitmq.vhost": "/azaion",
        f"{AC}.rabbitmq.stream": "s",
        f"{AC}.rabbitmq.credentialsSecretRef.usernameKey": "user",
        f"{AC}.rabbitmq.credentialsSecretRef.passwordKey": "pass.word",
        f"{AC}.rabbitmq.tls.enabled": True,
        f"{AC}.dataClaimName": "other-claim",
        f"{AC}.offsetVolume.size": "0.5Gi",
        f"{AC}.offsetVolume.storageClassName": "fast-ssd",
        f"{AC}.offsetVolume.deletePolicy": "Delete",
        f"{AC}.resources.cpu": "500m",
        f"{AC}.resources.memory": "512Mi",
        f"{AC}.startFrom": "2026-01-31T12:00:00Z",
        f"{AC}.offsetCommit.everyMessages": 1,
        f"{AC}.offsetCommit.intervalMilliseconds": 10,
        f"{AC}.disk.warnPercent": 1,
        f"{AC}.disk.criticalPercent": 100,
        f"{AC}.stallAfter": "1h30m",
    },
    {
        f"{AC}.name": "a" * 63,
        f"{AC}.rabbitmq.host": "fd00::1",
        f"{AC}.rabbitmq.port": 65535,
        f"{AC}.rabbitmq.stream": "s" * 255,
        f"{AC}.resources.cpu": "1",
        f"{AC}.startFrom": "2026-01-31T12:00:00.5+02:00",
        f"{AC}.offsetCommit.everyMessages": 100000,
        f"{AC}.offsetCommit.intervalMilliseconds": 600000,
        f"{AC}.disk.warnPercent": 94,
        f"{AC}.stallAfter": "45s",
        "data.claimName": "data.example",
        "queueImage.digest": "sha256:" + "0123456789abcdef" * 4,
    },
    {f"{AC}.startFrom": "last", f"{AC}.rabbitmq.host": "RabbitMQ-1.Example", f"{AC}.resources.memory": "1.5G"},
    # The monitoring blocks on, every value set (they leave the consumer's spec alone).
    {
        "prometheusRule.enabled": True,
        "prometheusRule.labels": {"release": "kube-prometheus-stack"},
        "prometheusRule.alertLabels": {"team": "ml"},
        "prometheusRule.consumerNotReady.for": "10m",
        "prometheusRule.offsetStalled.for": "1h",
        "prometheusRule.dataVolume.warningPercent": 75.5,
        "prometheusRule.dataVolume.criticalPercent": 100,
        "prometheusRule.dataVolume.for": "0s",
        "prometheusRule.attemptFailures.window": "1d",
        "prometheusRule.gpuWait.for": "2h30m",
        "grafana.dashboards.enabled": True,
        "grafana.dashboards.label": "grafana.example/dashboard",
        "grafana.dashboards.labelValue": "",
        "grafana.dashboards.namespace": "monitoring",
        "grafana.dashboards.labels": {"team": "ml"},
        "grafana.dashboards.annotations": {"grafana_folder": "Azaion"},
        "consumerPodMonitor.enabled": True,
        "consumerPodMonitor.interval": "1m",
        "consumerPodMonitor.labels": {"release": "kube-prometheus-stack"},
    },
]

# The values whose spec fields GOOD[1] renders only when set.
EVERY_VALUE = 1


def helm_binary() -> str:
    """helm from the tools cache (hack/build-tools.sh), else from PATH."""
    versions = (REPO / "hack" / "versions.env").read_text()
    version = re.search(r"^HELM_VERSION=(\S+)", versions, re.MULTILINE).group(1)
    tools = Path(os.environ.get("AZAION_TOOLS_DIR", Path.home() / ".cache" / "azaion" / "tools"))
    cached = tools / f"helm-{version}" / "helm"
    if cached.exists():
        return str(cached)
    found = shutil.which("helm")
    if not found:
        pytest.skip("helm is not installed (hack/setup.sh installs it)")
    return found


def values_with(changes: dict[str, Any]) -> dict[str, Any]:
    values = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = values
        *parents, name = path.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return values


def helm_template(values: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    return subprocess.run(
        [helm_binary(), "template", "corpus", str(CHART), "--api-versions", CONSUMER_API, "-f", str(values_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def is_named(path: str, message: str) -> bool:
    """The value's path in helm's message: the schema's JSON pointer, or the template's dotted path."""
    return f"at '/{path.replace('.', '/')}'" in message or path in message


def consumer_of(rendered: str) -> dict[str, Any]:
    found = [doc for doc in yaml.safe_load_all(rendered) if doc and doc.get("kind") == "AnnotationConsumer"]
    assert len(found) == 1, f"{len(found)} AnnotationConsumers rendered"
    return found[0]


def leaves(tree: dict[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for key, value in tree.items():
        found |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}"}
    return found


def _id(case: tuple[dict[str, Any], str, str]) -> str:
    changes = ",".join(f"{k.removeprefix(AC + '.')}={str(v)[:20]}" for k, v in case[0].items())
    return re.sub(r"[^A-Za-z0-9_.=,:/+-]", "_", changes)


def test_the_corpus_is_big_enough():
    assert len(BAD) >= 30 and len(GOOD) >= 3


@pytest.mark.parametrize(("changes", "path", "says"), BAD, ids=[_id(c) for c in BAD])
def test_bad_values_are_refused_by_helm_template_naming_the_value(changes, path, says, tmp_path):
    result = helm_template(values_with(changes), tmp_path)
    assert result.returncode != 0, f"helm template accepted {changes}"
    assert is_named(path, result.stderr), f"{path} not named:\n{result.stderr}"
    assert says in result.stderr, result.stderr


@pytest.mark.parametrize("changes", GOOD, ids=[f"good{i}" for i in range(len(GOOD))])
def test_good_values_render_a_spec_the_model_accepts(changes, tmp_path):
    result = helm_template(values_with(changes), tmp_path)
    assert result.returncode == 0, result.stderr
    consumer = consumer_of(result.stdout)
    AnnotationConsumerSpec.model_validate(consumer["spec"])


def test_every_rendered_spec_field_has_a_mapping(tmp_path):
    """The template renders exactly the spec fields of the mapping table (a new one cannot be forgotten)."""
    result = helm_template(values_with(GOOD[EVERY_VALUE]), tmp_path)
    assert result.returncode == 0, result.stderr
    rendered = leaves(consumer_of(result.stdout)["spec"])
    mapped = {m.spec for m in chartschema.MAPPINGS}
    assert rendered - mapped == set(), "rendered without a mapping in chartschema.MAPPINGS"
    assert mapped - rendered == set(), "mapped but not rendered by templates/annotationconsumer.yaml"


def test_each_mapped_value_reaches_its_spec_field(tmp_path):
    """Set each mapped value to a distinct valid value: it shows up at its spec path."""
    values = values_with(GOOD[EVERY_VALUE])
    spec = consumer_of(helm_template(values, tmp_path).stdout)["spec"]
    for mapping in chartschema.MAPPINGS:
        if mapping.values == "data.claimName":
            continue  # the fallback of annotationConsumer.dataClaimName, which GOOD[EVERY_VALUE] sets
        expected = values
        for name in mapping.values.split("."):
            expected = expected[name]
        node = spec
        for name in mapping.spec.split("."):
            node = node[name]
        assert node == expected, f"{mapping.values} -> spec.{mapping.spec}: {node!r} != {expected!r}"
    fallback = consumer_of(helm_template(values_with({"data.claimName": "fallback-claim"}), tmp_path).stdout)
    assert fallback["spec"]["dataVolume"]["claimName"] == "fallback-claim"


def test_good_values_pass_a_server_side_dry_run(crds, namespace, tmp_path):
    """The rendered AnnotationConsumers against the real CRD (schema and CEL rules)."""
    for changes in GOOD:
        consumer = consumer_of(helm_template(values_with(changes), tmp_path).stdout)
        consumer["metadata"]["namespace"] = namespace
        result = crds.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(consumer), check=False)
        assert result.returncode == 0, f"{changes}: {result.stderr}"
