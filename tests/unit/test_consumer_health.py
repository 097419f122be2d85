"""The AnnotationConsumer's conditions from its Deployment, its pods and its reports (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from azaion_contract.models.annotationconsumer import AnnotationConsumerSpec
from azaion_operator.annotationconsumer.health import assess
from azaion_operator.kit.pods import pod_problem

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
META = {"name": "c", "namespace": "n", "generation": 2}
SPEC = AnnotationConsumerSpec.model_validate(
    {"rabbitmq": {"host": "rabbitmq", "credentialsSecretRef": {"name": "rabbitmq"}}, "dataVolume": {"claimName": "d"}}
)
NOT_AVAILABLE = {
    "status": {"conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}]}
}
WAITING_FOR_SECRET = {
    "status": {
        "containerStatuses": [
            {
                "image": "queue:1",
                "state": {
                    "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "rabbitmq" not found'}
                },
            }
        ]
    }
}


def available(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "Available")


def test_a_pod_that_cannot_start_names_its_cause_once() -> None:
    issue = pod_problem([WAITING_FOR_SECRET])
    assert issue == ("CreateContainerConfigError", 'secret "rabbitmq" not found')
    first = assess(META, SPEC, {}, NOT_AVAILABLE, NOW, issue)
    condition = available(first.status)
    assert (condition["status"], condition["reason"]) == ("False", "CreateContainerConfigError")
    assert 'secret "rabbitmq" not found' in condition["message"]
    assert first.events == [("Warning", "CreateContainerConfigError", 'secret "rabbitmq" not found')]
    # The same cause on the next look: no second Event.
    again = assess(META, SPEC, first.status, NOT_AVAILABLE, NOW, issue)
    assert again.events == [] and available(again.status)["reason"] == "CreateContainerConfigError"


def test_without_a_pod_issue_the_deployment_speaks() -> None:
    health = assess(META, SPEC, {}, NOT_AVAILABLE, NOW, None)
    assert available(health.status)["reason"] == "MinimumReplicasUnavailable"
    assert health.events == []


def test_an_unschedulable_pod_is_named() -> None:
    pod = {
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes fit"}
            ]
        }
    }
    assert pod_problem([pod]) == ("Unschedulable", "0/1 nodes fit")
