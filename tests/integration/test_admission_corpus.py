"""Admission is complete: the API server refuses every invalid resource of the corpus, naming the field.

Each case is created with a server-side dry run (the API server still runs the
CRD's schema and CEL rules, and stores nothing) and strict field validation
(kubectl's default). The valid variants are accepted, and so are the children
the operator builds from them: a resource the API server admits must not fail
later when its Job, Deployment or claim is created.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from azaion_contract.models.annotationconsumer import AnnotationConsumerSpec
from azaion_contract.models.trainingrun import TrainingRunSpec
from azaion_operator.annotationconsumer.builders import (
    build_consumer_identity,
    build_deployment,
    build_offset_claim,
)
from azaion_operator.config import OperatorConfig
from azaion_operator.trainingrun.builders import build_job, build_trainer_identity
from tests.admission_corpus import ANNOTATIONCONSUMER, GROUP, KINDS, TRAININGRUN, VERSION, Case, Kind

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crds")]

INVALID = [(kind, case) for kind in KINDS for case in kind.invalid]
VALID = [(kind, case) for kind in KINDS for case in kind.valid]


def _ids(pairs: list[tuple[Kind, Case]]) -> list[str]:
    return [f"{kind.kind}:{case.id}" for kind, case in pairs]


@pytest.fixture(scope="module")
def corpus_namespace(api_client) -> Iterator[str]:
    """One namespace for the whole corpus: dry runs store nothing in it."""
    core = client.CoreV1Api(api_client)
    name = f"t-admission-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def dry_run_create(api_client, namespace: str, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
    return client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, kind.plural, body, dry_run="All", field_validation="Strict"
    )


@pytest.mark.parametrize(("kind", "case"), INVALID, ids=_ids(INVALID))
def test_invalid_resource_is_refused_naming_the_field(api_client, corpus_namespace, kind: Kind, case: Case):
    with pytest.raises(ApiException) as refused:
        dry_run_create(api_client, corpus_namespace, kind, kind.body(case))
    # Strict field validation answers an unknown field with 400, the schema and CEL rules with 422.
    assert refused.value.status in (400, 422), refused.value.body
    message = json.loads(refused.value.body)["message"]
    assert case.field in message, message


@pytest.mark.parametrize(("kind", "case"), VALID, ids=_ids(VALID))
def test_valid_resource_and_its_children_are_accepted(api_client, corpus_namespace, kind: Kind, case: Case):
    body = kind.body(case)
    stored = dry_run_create(api_client, corpus_namespace, kind, body)
    meta = {**stored["metadata"], "namespace": corpus_namespace, "uid": stored["metadata"].get("uid") or "0"}
    for child in children(kind, meta, stored["spec"]):
        create_child(api_client, corpus_namespace, child)


def children(kind: Kind, meta: dict[str, Any], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """What the operator creates for the resource, built by its own builders."""
    config = OperatorConfig()
    if kind is TRAININGRUN:
        run_spec = TrainingRunSpec.model_validate(spec)
        job = build_job(meta, run_spec, 1, run_spec.image or config.training_image, config)
        return [job, *build_trainer_identity(meta)]
    assert kind is ANNOTATIONCONSUMER
    consumer_spec = AnnotationConsumerSpec.model_validate(spec)
    return [
        build_offset_claim(meta, consumer_spec),
        build_deployment(meta, consumer_spec, config),
        *build_consumer_identity(meta),
    ]


def create_child(api_client, namespace: str, child: dict[str, Any]) -> None:
    from kubernetes import utils

    try:
        utils.create_from_dict(api_client, child, namespace=namespace, dry_run="All")
    except utils.FailToCreateError as failed:
        bodies = [json.loads(e.body)["message"] for e in failed.api_exceptions]
        pytest.fail(f"the API server refused the {child['kind']} built from a valid resource: {bodies}")
