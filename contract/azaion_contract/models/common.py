"""Building blocks shared by the custom resources."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from azaion_contract.models.rules import LABEL_VALUE, TAINT_KEY, DnsSubdomain, Rule, SecretKey


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = ()
    """Rules about several fields of the object: CEL on the CRD's object schema, and checked here."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = super().__get_pydantic_json_schema__(schema, handler)
        if cls.cel_rules:
            definition = handler.resolve_ref_schema(json_schema)
            definition.setdefault("x-kubernetes-validations", []).extend(rule.crd_entry() for rule in cls.cel_rules)
        return json_schema

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in type(self).cel_rules:
            rule.validate(self)
        return self

    def wire(self) -> dict[str, Any]:
        """The object as it appears in the API (camelCase, without unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    """Status documents are written by several parties: tolerate what we don't know when reading."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def strict(cls, **fields: Any) -> Self:
        """The model of exactly ``fields`` (Python names), refusing unknown ones.

        Reading tolerates unknown keys (several parties write one status);
        writing does not: a misspelt field is a ``TypeError`` here instead of a
        key nobody reads.
        """
        unknown = sorted(set(fields) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
        return cls(**fields)

    @classmethod
    def patch(cls, **fields: Any) -> dict[str, Any]:
        """A merge patch of exactly ``fields``; fields set to None stay in it (a merge patch removes them)."""
        return cls.strict(**fields).model_dump(by_alias=True, exclude_unset=True, mode="json")

    @classmethod
    def checked(cls, patch: dict[str, Any]) -> dict[str, Any]:
        """``patch`` (wire names) unchanged, once every key is a field and every value has its type."""
        known = {info.alias or name for name, info in cls.model_fields.items()}
        unknown = sorted(set(patch) - known)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
        cls.model_validate({key: value for key, value in patch.items() if value is not None})
        return patch


class SecretKeyRef(ApiModel):
    """A key in a Secret in the resource's namespace."""

    name: DnsSubdomain
    """Name of the Secret."""
    key: SecretKey
    """Key within the Secret."""


class Toleration(ApiModel):
    """A pod toleration (same fields as core/v1 Toleration)."""

    # The checks of the pod validation (ValidateTolerations), so a toleration
    # the API server would refuse on the pod is refused on the resource instead.
    cel_rules = (
        Rule(
            "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            "must be Exists when key is empty (that tolerates every taint)",
            lambda t: bool(t.key) or t.operator == "Exists",
            field="operator",
        ),
        Rule(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "must be empty when operator is Exists",
            lambda t: t.operator != "Exists" or not t.value,
            field="value",
        ),
        Rule(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "must be NoExecute when tolerationSeconds is set",
            lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
            field="effect",
        ),
    )

    key: Annotated[str, Field(max_length=317), TAINT_KEY] | None = None
    """Taint key the toleration applies to; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""
    value: Annotated[str, Field(max_length=63), LABEL_VALUE] | None = None
    """Taint value the toleration matches (with operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated before eviction."""


class Condition(StatusModel):
    """A standard Kubernetes condition."""

    type: str
    """Condition type, e.g. Ready, Failed, Queued."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = ""
    """Machine-readable CamelCase reason, e.g. OOMKilled, FailureBudgetExhausted."""
    message: str = ""
    """Human-readable explanation naming the cause (and exit code, where there is one)."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The .metadata.generation the condition was computed from."""


class ReconciledStatus(StatusModel):
    """The status keys the operator owns on every resource kind."""

    conditions: list[Condition] | None = None
    """Conditions with machine-readable reasons and human messages."""
    observed_generation: int | None = None
    """The .metadata.generation the operator last acted on."""
