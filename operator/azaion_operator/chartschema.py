"""Generate the chart's schema for the AnnotationConsumer values from the CRD.

    azaion-chartschema            write charts/azaion/values.schema.json
    azaion-chartschema --check    exit 1 when the file on disk is stale

The chart renders ``.Values.annotationConsumer`` into an AnnotationConsumer's
spec (templates/annotationconsumer.yaml). :data:`MAPPINGS` says, for each
value, which spec field it becomes; the generator copies that field's schema
from the CRD's openAPIV3Schema (which azaion-crdgen makes of the pydantic
models) into values.schema.json at the value's path, so the chart and the CRD
cannot disagree. Everything else in values.schema.json (the operator's
values, ``annotationConsumer.enabled``) is kept as written.

Helm evaluates JSON Schema, not CEL: each CEL rule (x-kubernetes-validations)
of a mapped field is replaced by its JSON Schema equivalent from
:func:`cel_translations`, or acknowledged there with the reason the chart does
not check it. A CEL rule the table does not know stops the generator, so a new
rule in the models cannot be dropped silently.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from azaion_contract.models import rules
from azaion_operator import crdgen

VALUES_SCHEMA = crdgen.REPO / "charts" / "azaion" / "values.schema.json"
CONSUMER = "annotationConsumer"

#: How a mapped value may be the empty string.
#: ``never``: it may not. ``unset``: "" leaves the spec field to a fallback
#: (the template's ``default``/``if``). ``required``: "" only while
#: ``annotationConsumer.enabled`` is false (no default exists; the user must set it).
Empty = Literal["never", "unset", "required"]


@dataclass(frozen=True)
class Mapping:
    values: str
    """Dotted path in the chart's values."""
    spec: str
    """Dotted path (wire names) of the AnnotationConsumerSpec field it renders into."""
    empty: Empty = "never"
    empty_means: str = ""
    """What "" stands for, where ``empty`` is ``unset`` (the values' documentation)."""


MAPPINGS: tuple[Mapping, ...] = (
    # queueImage is composed by the template from its own (chart-only) values.
    Mapping(f"{CONSUMER}.image", "image", "unset", "the image of queueImage"),
    Mapping(f"{CONSUMER}.rabbitmq.host", "rabbitmq.host", "required"),
    Mapping(f"{CONSUMER}.rabbitmq.port", "rabbitmq.port"),
    Mapping(f"{CONSUMER}.rabbitmq.vhost", "rabbitmq.vhost"),
    Mapping(f"{CONSUMER}.rabbitmq.stream", "rabbitmq.stream"),
    Mapping(f"{CONSUMER}.rabbitmq.credentialsSecretRef.name", "rabbitmq.credentialsSecretRef.name", "required"),
    Mapping(f"{CONSUMER}.rabbitmq.credentialsSecretRef.usernameKey", "rabbitmq.credentialsSecretRef.usernameKey"),
    Mapping(f"{CONSUMER}.rabbitmq.credentialsSecretRef.passwordKey", "rabbitmq.credentialsSecretRef.passwordKey"),
    Mapping(f"{CONSUMER}.rabbitmq.tls.enabled", "rabbitmq.tls.enabled"),
    # The "azaion.dataClaimName" helper falls back to data.claimName, mapped as well.
    Mapping(f"{CONSUMER}.dataClaimName", "dataVolume.claimName", "unset", "data.claimName"),
    Mapping("data.claimName", "dataVolume.claimName"),
    Mapping(f"{CONSUMER}.offsetVolume.size", "offsetVolume.size"),
    Mapping(
        f"{CONSUMER}.offsetVolume.storageClassName", "offsetVolume.storageClassName", "unset", "the cluster's default"
    ),
    Mapping(f"{CONSUMER}.offsetVolume.deletePolicy", "offsetVolume.deletePolicy"),
    Mapping(f"{CONSUMER}.resources.cpu", "resources.cpu", "unset", "no CPU request or limit"),
    Mapping(f"{CONSUMER}.resources.memory", "resources.memory", "unset", "no memory request or limit"),
    Mapping(f"{CONSUMER}.startFrom", "startFrom"),
    Mapping(f"{CONSUMER}.offsetCommit.everyMessages", "offsetCommit.everyMessages"),
    Mapping(f"{CONSUMER}.offsetCommit.intervalMilliseconds", "offsetCommit.intervalMilliseconds"),
    Mapping(f"{CONSUMER}.disk.warnPercent", "disk.warnPercent"),
    Mapping(f"{CONSUMER}.disk.criticalPercent", "disk.criticalPercent"),
    Mapping(f"{CONSUMER}.stallAfter", "stallAfter"),
)

#: Spec fields the chart does not offer (the operator's defaults apply); a new spec
#: field must be mapped or listed here (tests/unit/test_chart_schema.py).
NOT_EXPOSED: dict[str, str] = {
    "rabbitmq.tls.caSecretRef": "a private CA: edit the AnnotationConsumer, or add a value and a mapping",
    "resources.nodeSelector": "placement of the consumer: edit the AnnotationConsumer",
    "resources.tolerations": "placement of the consumer: edit the AnnotationConsumer",
}

#: ``annotationConsumer.name`` becomes the resource's metadata.name, which the CRD
#: limits with a CEL rule on the object (crdgen.name_rule), and the API server to a
#: DNS subdomain.
NAME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": crdgen.MAX_NAME_LENGTH,
    "pattern": rules.DNS_SUBDOMAIN_PATTERN,
    "description": "Name of the AnnotationConsumer resource (its metadata.name; it labels the consumer's pods).",
}

CONSUMER_DESCRIPTION = (
    "An AnnotationConsumer managed by the release. The schemas of the values that render into its spec "
    "are generated from the CRD (azaion-chartschema); do not edit them here."
)

_EMPTY = {"type": "string", "maxLength": 0}
_DROP = {"default", "nullable"}


@dataclass(frozen=True)
class Translation:
    """What the chart checks instead of one CEL rule."""

    schema: dict[str, Any] | None
    """JSON Schema that the value must also match; None: the chart does not check the rule."""
    note: str = ""
    """Where the chart's check differs from the rule (or why there is none)."""


def _rule_of(annotated: Any) -> rules.Rule:
    return next(m for m in get_args(annotated)[1:] if isinstance(m, rules.Rule))


def _field_rule(model: Any, name: str) -> rules.Rule:
    return next(m for m in model.model_fields[name].metadata if isinstance(m, rules.Rule))


def _either(*patterns: str) -> str:
    """One pattern that matches what any of the anchored ``patterns`` matches."""
    return "|".join(patterns)


_MATCHES = re.compile(r"^self\.matches\('((?:[^'\\]|\\.)*)'\)$")


def _plain_pattern(cel: str) -> str | None:
    """The regular expression of a rule that is exactly ``self.matches('...')``."""
    found = _MATCHES.match(cel)
    if not found:
        return None
    pattern = re.sub(r"\\(.)", r"\1", found.group(1))
    return pattern if rules.cel_string(pattern) == found.group(1) else None


def cel_translations() -> dict[str, Translation]:
    """The CEL rules of mapped fields (and of the objects holding them) that are not a plain pattern."""
    from azaion_contract.models import annotationconsumer as ac

    zero_or_negative = r"^(-|[+]?[0.]*([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$)"
    return {
        rules.HOST.cel: Translation(
            {"pattern": _either(rules.HOSTNAME_PATTERN, r"^[0-9A-Fa-f.:]*:[0-9A-Fa-f.:]*$")},
            "an IPv6 address is checked for its characters only; the API server checks it fully",
        ),
        _rule_of(rules.SecretKey).cel: Translation(
            {"pattern": rules.SECRET_KEY_PATTERN, "not": {"pattern": r"^\.(\.|$)"}}
        ),
        rules.POSITIVE_QUANTITY.cel: Translation(
            {"pattern": rules.QUANTITY_PATTERN, "not": {"pattern": zero_or_negative}}
        ),
        _field_rule(ac.AnnotationConsumerSpec, "start_from").cel: Translation(
            {"pattern": _either("^(first|last|next)$", rules.RFC3339_PATTERN)},
            "a time that does not exist (February 30th) passes the chart; the API server refuses it",
        ),
        _field_rule(ac.AnnotationConsumerSpec, "stall_after").cel: Translation(
            {"pattern": ac.DURATION_PATTERN, "not": {"pattern": r"^(0+(s|m|h))+$"}},
            "a duration over about 292 years (CEL's limit) passes the chart; the API server refuses it",
        ),
        ac.DiskThresholds.cel_rules[0].cel: Translation(
            None, "warnPercent < criticalPercent compares two values: checked by the template (azaion.validate)"
        ),
        ac.TLSSpec.cel_rules[0].cel: Translation(
            None, "about caSecretRef, which the chart does not render (NOT_EXPOSED): it always holds"
        ),
    }


class UnknownRule(ValueError):
    """A CEL rule on a mapped field that the generator cannot translate."""


def _translate(rule: dict[str, Any], where: str, known: dict[str, Translation]) -> dict[str, Any] | None:
    cel = rule["rule"]
    pattern = _plain_pattern(cel)
    if pattern is not None:
        return {"pattern": pattern}
    if cel not in known:
        raise UnknownRule(f"{where}: no JSON Schema for the CEL rule {cel!r}: add it to cel_translations()")
    return known[cel].schema


def values_schema_of(node: dict[str, Any], where: str, known: dict[str, Translation]) -> dict[str, Any]:
    """A CRD (OpenAPI v3.0, structural) schema as JSON Schema 2020-12 for helm."""
    out: dict[str, Any] = {}
    extra: list[dict[str, Any]] = []
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "x-kubernetes-validations":
            extra += [s for s in (_translate(rule, where, known) for rule in value) if s]
        elif key.startswith("x-kubernetes-"):
            continue
        elif key == "properties":
            out[key] = {name: values_schema_of(sub, f"{where}.{name}", known) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = values_schema_of(value, f"{where}[]", known)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if value:
                out[key] = node[bound]
        else:
            out[key] = value
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if exclusive in out:
            out.pop(bound, None)
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    for fragment in extra:
        if any(key in out for key in fragment):
            out.setdefault("allOf", []).append(fragment)
        else:
            out.update(fragment)
    return out


def crd_spec_schema() -> dict[str, Any]:
    source = next(s for s in crdgen.sources() if s.kind == "AnnotationConsumer")
    crd = crdgen.build_crd(source)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def spec_node(spec: dict[str, Any], path: str) -> dict[str, Any]:
    node = spec
    for name in path.split("."):
        node = node["properties"][name]
    return node


def spec_leaves(spec: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the spec's fields that are not objects with properties of their own."""
    found = []
    for name, sub in spec.get("properties", {}).items():
        path = f"{prefix}{name}"
        found += spec_leaves(sub, f"{path}.") if "properties" in sub else [path]
    return found


def _rules_on_the_way(spec: dict[str, Any], path: str, known: dict[str, Translation]) -> None:
    """Rules on the objects that hold a mapped field must be known too."""
    node = spec
    for name in path.split(".")[:-1]:
        node = node["properties"][name]
        for rule in node.get("x-kubernetes-validations", []):
            _translate(rule, name, known)


def _field_schema(mapping: Mapping, spec: dict[str, Any], known: dict[str, Translation]) -> dict[str, Any]:
    _rules_on_the_way(spec, mapping.spec, known)
    schema = values_schema_of(spec_node(spec, mapping.spec), f"spec.{mapping.spec}", known)
    if mapping.empty == "never":
        return schema
    if schema.get("type") != "string":
        raise ValueError(f"{mapping.values}: only a string can be empty")
    description = schema.pop("description", "")
    wrapped: dict[str, Any] = {"anyOf": [dict(_EMPTY), schema]}
    if mapping.empty == "required":
        wrapped["description"] = f"{description} Required when annotationConsumer.enabled is true."
    else:
        wrapped["description"] = f"{description} Empty: {mapping.empty_means}."
    return wrapped


def _object(description: str | None) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if description:
        node["description"] = description
    node["properties"] = {}
    return node


def _place(
    root: dict[str, Any], values_path: str, schema: dict[str, Any], spec: dict[str, Any], spec_path: str
) -> None:
    """Put ``schema`` at ``values_path``, making the objects on the way (described from the spec)."""
    names = values_path.split(".")
    spec_names = spec_path.split(".")
    node = root
    for depth, name in enumerate(names[:-1]):
        properties = node.setdefault("properties", {})
        if name not in properties:
            # The spec object at the same relative place, when the layouts agree there.
            relative = names[1 : depth + 1]
            described = None
            if relative and spec_names[: len(relative)] == relative:
                described = spec_node(spec, ".".join(relative)).get("description")
            properties[name] = _object(described)
        node = properties[name]
    node.setdefault("properties", {})[names[-1]] = schema


def _required_when_enabled(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``then`` of ``if enabled``: the values without a default must be set."""
    then: dict[str, Any] = {}
    for mapping in MAPPINGS:
        if mapping.empty != "required":
            continue
        names = mapping.values.split(".")[1:]
        node = then
        for name in names[:-1]:
            node.setdefault("required", [])
            if name not in node["required"]:
                node["required"].append(name)
            node = node.setdefault("properties", {}).setdefault(name, {})
        node.setdefault("required", []).append(names[-1])
        node.setdefault("properties", {})[names[-1]] = {"minLength": 1}
    return then


def build(current: dict[str, Any]) -> dict[str, Any]:
    """values.schema.json: ``current`` with the mapped values' schemas generated."""
    spec = crd_spec_schema()
    known = cel_translations()
    schema = copy.deepcopy(current)
    top = schema["properties"]
    old = top[CONSUMER]
    consumer = {
        "type": "object",
        "additionalProperties": False,
        "description": CONSUMER_DESCRIPTION,
        "properties": {
            # Chart-only: whether the release manages a consumer at all.
            "enabled": old["properties"]["enabled"],
            "name": dict(NAME_SCHEMA),
        },
    }
    top[CONSUMER] = consumer
    for mapping in MAPPINGS:
        field = _field_schema(mapping, spec, known)
        if mapping.values.startswith(f"{CONSUMER}."):
            _place(consumer, mapping.values.removeprefix(f"{CONSUMER}."), field, spec, mapping.spec)
        else:
            # A value outside annotationConsumer: replace that one property, keep its object.
            *parents, name = mapping.values.split(".")
            node = schema
            for parent in parents:
                node = node["properties"][parent]
            node["properties"][name] = field
    consumer["if"] = {"properties": {"enabled": {"const": True}}, "required": ["enabled"]}
    consumer["then"] = _required_when_enabled(spec)
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def expected_text(path: Path = VALUES_SCHEMA) -> str:
    return render(build(json.loads(path.read_text())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when values.schema.json is stale")
    args = parser.parse_args(argv)
    text = expected_text()
    if VALUES_SCHEMA.read_text() == text:
        return 0
    if args.check:
        print(f"stale {VALUES_SCHEMA} (run azaion-chartschema)", file=sys.stderr)
        return 1
    VALUES_SCHEMA.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
