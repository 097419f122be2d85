"""The chart's values.schema.json: generated from the CRD where values render into the spec."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from azaion_operator import chartschema

pytestmark = pytest.mark.unit

VALUES = chartschema.VALUES_SCHEMA.parent / "values.yaml"


def test_values_schema_is_generated():
    assert chartschema.main(["--check"]) == 0, "values.schema.json is stale: run python -m azaion_operator.chartschema"


def test_every_spec_field_is_mapped_or_declared_not_exposed():
    """A new field in AnnotationConsumerSpec must get a chart value (and a mapping) or a reason."""
    spec = chartschema.crd_spec_schema()
    mapped = {m.spec for m in chartschema.MAPPINGS}
    declared = set(chartschema.NOT_EXPOSED)
    leaves = set(chartschema.spec_leaves(spec))

    def hidden(leaf: str) -> bool:  # NOT_EXPOSED names a field or a whole subtree
        return any(leaf == d or leaf.startswith(f"{d}.") for d in declared)

    assert {leaf for leaf in leaves - mapped if not hidden(leaf)} == set(), "neither in MAPPINGS nor NOT_EXPOSED"
    assert mapped - leaves == set(), "MAPPINGS name fields the spec does not have"
    for path in declared:
        chartschema.spec_node(spec, path)  # KeyError: NOT_EXPOSED names a field the spec does not have
    assert {leaf for leaf in mapped if hidden(leaf)} == set()


def test_each_value_is_mapped_once():
    paths = [m.values for m in chartschema.MAPPINGS]
    assert len(paths) == len(set(paths))


def _at(tree: dict[str, Any], path: str) -> Any:
    for name in path.split("."):
        tree = tree[name]
    return tree


def test_chart_defaults_are_the_crd_defaults():
    """values.yaml and the CRD agree on every default (and "" stands where the spec has none)."""
    values = yaml.safe_load(VALUES.read_text())
    spec = chartschema.crd_spec_schema()
    for mapping in chartschema.MAPPINGS:
        value = _at(values, mapping.values)
        node = chartschema.spec_node(spec, mapping.spec)
        if mapping.empty != "never":
            assert value == "", f"{mapping.values}: {value!r}, expected '' ({mapping.empty})"
        elif "default" in node:
            assert value == node["default"], f"{mapping.values}: {value!r} != the CRD's {node['default']!r}"


def _objects(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if "properties" in node and node.get("type") == "object":
            found.append((where, node))
        for key, sub in node.items():
            if key not in ("if", "then"):  # partial schemas that only add to the properties
                found += _objects(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            found += _objects(sub, f"{where}/{index}")
    return found


def test_every_object_with_properties_refuses_unknown_keys():
    schema = json.loads(chartschema.VALUES_SCHEMA.read_text())
    open_objects = [where for where, node in _objects(schema) if node.get("additionalProperties") is not False]
    assert open_objects == []


def test_an_unknown_cel_rule_stops_the_generator():
    node = {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() % 2 == 0", "message": "even"}]}
    with pytest.raises(chartschema.UnknownRule, match=r"spec\.demo"):
        chartschema.values_schema_of(node, "spec.demo", chartschema.cel_translations())


@pytest.mark.parametrize(
    ("cel", "pattern"),
    [
        ("self.matches('^[a-z]+$')", "^[a-z]+$"),
        ("self.matches('^a\\\\.b$')", "^a\\.b$"),
        ("self.matches('^a$') || isIP(self)", None),
    ],
)
def test_plain_patterns_are_read_back_from_cel(cel, pattern):
    assert chartschema._plain_pattern(cel) == pattern
