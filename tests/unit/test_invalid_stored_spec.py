"""A stored spec that passed an older CRD but fails this operator's model: a condition, not a crash loop."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from azaion_contract.models.trainingrun import TrainingRunSpec
from azaion_operator.kit.conditions import invalid_spec_message
from azaion_operator.trainingrun.lifecycle import spec_refused

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
META = {"name": "run", "namespace": "ml", "uid": "u-1", "generation": 3}
STORED = {"model": "yolo26n.yaml", "storage": {"claimName": "data"}, "priority": 5000, "training": {"epochs": 0}}


def problems() -> str:
    with pytest.raises(ValidationError) as error:
        TrainingRunSpec.model_validate(STORED)
    return invalid_spec_message(error.value)


def test_the_message_names_every_field_by_its_path_in_the_resource():
    message = problems()
    assert "spec.priority: Input should be less than or equal to 1000" in message
    assert "spec.training.epochs: Input should be greater than or equal to 1" in message


def test_a_refused_spec_stops_progress_with_one_warning_and_starts_nothing():
    decision = spec_refused(META, {}, problems(), NOW)
    assert decision is not None
    assert decision.create_attempt is None and not decision.delete_jobs
    progressing = next(c for c in decision.status["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "False" and progressing["reason"] == "InvalidSpec"
    assert "spec.priority" in progressing["message"] and progressing["observedGeneration"] == 3
    assert decision.status["phase"] == "Pending"
    ((event_type, reason, message),) = decision.events
    assert (event_type, reason) == ("Warning", "InvalidSpec") and "spec.training.epochs" in message
    # Said once: the same refusal again writes nothing and posts no second Event.
    assert spec_refused(META, {**decision.status}, problems(), NOW) is None


def test_a_running_run_keeps_its_phase_and_a_finished_one_is_left_alone():
    running = spec_refused(META, {"phase": "Running"}, problems(), NOW)
    assert running is not None and running.status["phase"] == "Running"
    assert spec_refused(META, {"phase": "Succeeded"}, problems(), NOW) is None
