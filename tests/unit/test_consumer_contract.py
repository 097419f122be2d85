"""The consumer Deployment the operator builds, and its env accepted by the consumer's settings."""

from __future__ import annotations

import json

import pytest

from azaion_contract.models.annotationconsumer import AnnotationConsumerSpec, duration_seconds
from azaion_operator.annotationconsumer.builders import build_consumer_identity, build_deployment, build_offset_claim
from azaion_operator.config import OperatorConfig
from azaion_workloads.queue.config import load_config

pytestmark = pytest.mark.unit

META = {"name": "main", "namespace": "azaion", "uid": "u-1"}
SECRETS = {"username": "azaion_receiver", "password": "s3cr3t-value", "ca.pem": "-----BEGIN CERTIFICATE-----"}


def spec(**overrides) -> AnnotationConsumerSpec:
    return AnnotationConsumerSpec.model_validate(
        {
            "rabbitmq": {"host": "rabbitmq.azaion", "credentialsSecretRef": {"name": "rmq"}},
            "dataVolume": {"claimName": "azaion-data"},
            **overrides,
        }
    )


def process_env(container: dict) -> dict[str, str]:
    """What the kubelet hands the container, with Secret refs resolved."""
    env = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            env[entry["name"]] = SECRETS[entry["valueFrom"]["secretKeyRef"]["key"]]
    return env


def test_deployment_env_loads_into_the_consumer_settings():
    deployment = build_deployment(META, spec(startFrom="last", offsetCommit={"everyMessages": 50}), OperatorConfig())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = load_config(process_env(container)).settings
    assert (settings.host, settings.port, settings.stream) == ("rabbitmq.azaion", 5552, "azaion-annotations")
    assert settings.user == "azaion_receiver"
    assert settings.password.get_secret_value() == "s3cr3t-value"
    assert settings.commit_every == 50
    assert str(settings.offset_file).startswith("/var/lib/azaion-queue/")
    assert settings.http_port == container["ports"][0]["containerPort"]
    assert "s3cr3t-value" not in json.dumps(deployment)


def test_private_ca_is_mounted_and_named():
    deployment = build_deployment(
        META,
        spec(
            rabbitmq={
                "host": "h",
                "credentialsSecretRef": {"name": "rmq"},
                "tls": {"enabled": True, "caSecretRef": {"name": "ca", "key": "ca.pem"}},
            }
        ),
        OperatorConfig(),
    )
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "rabbitmq-ca")
    assert env["RABBITMQ_TLS"] == "true"
    assert env["RABBITMQ_TLS_CA_FILE"] == f"{mount['mountPath']}/ca.crt"
    assert mount["readOnly"] is True
    assert next(v for v in pod["volumes"] if v["name"] == "rabbitmq-ca")["secret"]["items"] == [
        {"key": "ca.pem", "path": "ca.crt"}
    ]


def test_offset_claim_is_owned_only_with_delete_policy_delete():
    assert "ownerReferences" not in build_offset_claim(META, spec())["metadata"]
    owned = build_offset_claim(META, spec(offsetVolume={"deletePolicy": "Delete"}))
    assert owned["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_consumer_identity_may_only_patch_its_own_status():
    _, role, _ = build_consumer_identity(META)
    assert role["rules"] == [
        {
            "apiGroups": ["ai.azaion.com"],
            "resources": ["annotationconsumers/status"],
            "resourceNames": ["main"],
            "verbs": ["get", "patch"],
        }
    ]


def test_durations():
    assert duration_seconds("30m") == 1800
    assert duration_seconds("1h30m") == 5400
    assert duration_seconds("45s") == 45


def test_the_consumer_pod_is_placed_where_its_spec_says():
    placement = {
        "nodeSelector": {"azaion.local/data": "here"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    }
    pod = build_deployment(META, spec(resources=placement), OperatorConfig())["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"azaion.local/data": "here"}
    assert pod["tolerations"] == placement["tolerations"]
    unplaced = build_deployment(META, spec(), OperatorConfig())["spec"]["template"]["spec"]
    assert unplaced["nodeSelector"] == {} and unplaced["tolerations"] == []
