"""The contract's env tables: every spec field has a way into the pod, and both sides agree on defaults."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import azaion_contract as contract
from azaion_contract.env import (
    CONSUMER_ENV,
    CONSUMER_POD_SPEC_FIELDS,
    TRAINING_ENV,
    TRAINING_POD_SPEC_FIELDS,
    Binding,
)
from azaion_contract.models.annotationconsumer import AnnotationConsumerSpec
from azaion_contract.models.trainingrun import TrainingRunSpec
from azaion_operator.annotationconsumer.builders import consumer_env
from azaion_operator.config import OperatorConfig
from azaion_operator.trainingrun.builders import trainer_env
from azaion_workloads.queue.config import QueueSettings, load_config
from azaion_workloads.training.config import TrainingSettings, load_settings

pytestmark = pytest.mark.unit

SECRETS = {"username": "user", "password": "pw", "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None`` or ``Optional[X]``, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            found = _model_of(member)
            if found:
                return found
    return None


def leaf_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every scalar (or list/dict) field of a spec model, as dotted Python attribute paths."""
    leaves: set[str] = set()
    for name, info in model.model_fields.items():
        nested = _model_of(info.annotation)
        path = f"{prefix}{name}"
        if nested is not None and typing.get_origin(info.annotation) is not list:
            leaves |= leaf_fields(nested, f"{path}.")
        else:
            leaves.add(path)
    return leaves


def covered(table: tuple[Binding, ...]) -> set[str]:
    return {field for binding in table for field in binding.fields}


@pytest.mark.parametrize(
    ("spec_model", "table", "pod_fields"),
    [
        (TrainingRunSpec, TRAINING_ENV, TRAINING_POD_SPEC_FIELDS),
        (AnnotationConsumerSpec, CONSUMER_ENV, CONSUMER_POD_SPEC_FIELDS),
    ],
    ids=["TrainingRun", "AnnotationConsumer"],
)
def test_every_spec_field_reaches_the_pod_one_way(spec_model, table, pod_fields) -> None:
    leaves = leaf_fields(spec_model)
    through_env = covered(table)
    assert leaves - through_env - pod_fields == set(), "spec fields with no variable and no place in the pod spec"
    assert (through_env | pod_fields) - leaves == set(), "the table names fields the spec does not have"
    assert through_env & pod_fields == set(), "a field listed both as a variable and as pod spec"
    names = [binding.env for binding in table]
    assert len(names) == len(set(names)), "a variable bound twice"


def test_the_training_table_names_settings_the_trainer_has() -> None:
    for binding in TRAINING_ENV:
        if binding.setting is not None:
            assert binding.setting in TrainingSettings.model_fields, binding


def test_the_consumer_reads_each_setting_from_the_tables_variable() -> None:
    for binding in CONSUMER_ENV:
        assert QueueSettings.model_fields[binding.setting].alias == binding.env, binding


def _process_env(entries: list[dict[str, Any]]) -> dict[str, str]:
    env = {}
    for entry in entries:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry["valueFrom"]:
            env[entry["name"]] = SECRETS[entry["valueFrom"]["secretKeyRef"]["key"]]
    return env


def test_a_default_trainingrun_trains_like_a_run_by_hand(tmp_path: Path) -> None:
    """The spec's defaults, passed through the pod, equal the trainer's own defaults."""
    spec = TrainingRunSpec.model_validate(
        {
            "model": "yolo26m.yaml",
            "storage": {"claimName": "data"},
            "publish": {
                "s3": {"bucket": "models", "credentialsSecretRef": {"name": "s3"}},
                "encryptionKeySecretRef": {"name": "key", "key": "key"},
            },
        }
    )
    env = _process_env(trainer_env(spec, "local", "run-1", OperatorConfig()))
    identity = {contract.ENV_ROOT_DIR: str(tmp_path), contract.ENV_RESOURCE_NAME: "run-1"}
    on_cluster = load_settings({**env, contract.ENV_ROOT_DIR: str(tmp_path)})
    by_hand = load_settings({**identity, "S3_BUCKET": "models", "TRAINING_MODEL": "yolo26m.yaml"})
    differing = {
        binding.env: (getattr(on_cluster, binding.setting), getattr(by_hand, binding.setting))
        for binding in TRAINING_ENV
        if binding.setting is not None and getattr(on_cluster, binding.setting) != getattr(by_hand, binding.setting)
    }
    assert differing == {}, "spec default vs trainer default"


def root(path: Path) -> dict[str, str]:
    return {contract.ENV_ROOT_DIR: str(path)}


def test_a_default_annotationconsumer_consumes_like_one_started_by_hand(tmp_path: Path) -> None:
    spec = AnnotationConsumerSpec.model_validate(
        {"rabbitmq": {"host": "broker", "credentialsSecretRef": {"name": "rmq"}}, "dataVolume": {"claimName": "d"}}
    )
    meta = {"name": "main", "namespace": "azaion"}
    env = _process_env(consumer_env(meta, spec, OperatorConfig()))
    on_cluster = load_config({**env, contract.ENV_ROOT_DIR: str(tmp_path)}).settings
    by_hand = load_config(
        {
            "RABBITMQ_HOST": "broker",
            "RABBITMQ_USER": "user",
            "RABBITMQ_PASSWORD": "pw",
            "AZAION_ROOT_DIR": str(tmp_path),
        }
    ).settings
    differing = {
        binding.env: (getattr(on_cluster, binding.setting), getattr(by_hand, binding.setting))
        for binding in CONSUMER_ENV
        if getattr(on_cluster, binding.setting) != getattr(by_hand, binding.setting)
    }
    assert differing == {}, "spec default vs consumer default"
    assert on_cluster.offset_file == by_hand.offset_file and on_cluster.http_port == by_hand.http_port
