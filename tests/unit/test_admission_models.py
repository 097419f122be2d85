"""The pydantic models refuse the admission corpus' invalid specs too, naming the same field.

The operator validates every spec with these models; the CRD's rules are
generated from them. Agreement here and in tests/integration/
test_admission_corpus.py means the API server, ``kubectl explain`` and the
operator hold one definition of a valid resource.
"""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel, ValidationError

from azaion_contract.models.annotationconsumer import AnnotationConsumerSpec
from azaion_contract.models.rules import is_positive_quantity, is_rfc3339
from azaion_contract.models.trainingrun import TrainingRunSpec
from tests.admission_corpus import ANNOTATIONCONSUMER, KINDS, TRAININGRUN, Case, Kind

MODELS: dict[str, type[BaseModel]] = {
    TRAININGRUN.kind: TrainingRunSpec,
    ANNOTATIONCONSUMER.kind: AnnotationConsumerSpec,
}

# Cases that need the object's metadata are the API server's alone (model=False).
INVALID = [(kind, case) for kind in KINDS for case in kind.invalid if case.model]
VALID = [(kind, case) for kind in KINDS for case in kind.valid]


def _ids(pairs: list[tuple[Kind, Case]]) -> list[str]:
    return [f"{kind.kind}:{case.id}" for kind, case in pairs]


def named_fields(error: ValidationError) -> list[str]:
    """Each error as the API server would name it: ``spec.a.b[0].c``, then the message."""
    named = []
    for detail in error.errors():
        path = "spec" + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in detail["loc"])
        # A rule about several fields reports the object and names its member first ("warnPercent: ...").
        member = re.match(r"Value error, ([\w.]+): ", detail["msg"])
        if member:
            path += f".{member.group(1)}"
        named.append(f"{path}: {detail['msg']}")
    return named


@pytest.mark.parametrize(("kind", "case"), INVALID, ids=_ids(INVALID))
def test_model_refuses_the_invalid_spec_naming_the_field(kind: Kind, case: Case):
    with pytest.raises(ValidationError) as refused:
        MODELS[kind.kind].model_validate(kind.body(case)["spec"])
    named = named_fields(refused.value)
    assert any(case.field in entry for entry in named), named


@pytest.mark.parametrize(("kind", "case"), VALID, ids=_ids(VALID))
def test_model_accepts_the_valid_spec(kind: Kind, case: Case):
    MODELS[kind.kind].model_validate(kind.body(case)["spec"])


def test_corpus_is_large_enough():
    for kind in KINDS:
        assert len(kind.invalid) >= 100 and len(kind.valid) >= 10, kind.kind


@pytest.mark.parametrize(
    ("value", "positive"),
    [("1", True), ("500m", True), (".5", True), ("1.", True), ("2e3", True), ("1Ei", True), ("+1", True)],
)
def test_quantity_grammar_accepts_what_kubernetes_parses(value: str, positive: bool):
    assert is_positive_quantity(value) is positive


@pytest.mark.parametrize("value", ["2026-01-31T12:00:00Z", "2024-02-29T23:59:59.5+01:00"])
def test_rfc3339_times_that_exist_are_accepted(value: str):
    assert is_rfc3339(value)


def test_the_spec_models_still_round_trip_their_defaults():
    # Defaults must satisfy the rules too (the CRD stores them on every object).
    for kind in KINDS:
        spec = MODELS[kind.kind].model_validate(kind.body(Case({}))["spec"])
        MODELS[kind.kind].model_validate(spec.wire())
