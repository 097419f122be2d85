"""Generate the CustomResourceDefinitions from the pydantic models.

    azaion-crdgen            write crds/*.yaml and the chart's copies
    azaion-crdgen --check    exit 1 when the files on disk are stale

pydantic emits JSON Schema 2020-12; the API server wants a structural
OpenAPI v3.0 schema: no $ref, no anyOf-with-null, boolean exclusive bounds,
no titles. :func:`structural` does that translation.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from azaion_contract import API_GROUP, API_VERSION

REPO = Path(__file__).resolve().parents[2]
# The chart renders its copies with .Files.Glob (Helm reads only files inside the chart).
CRD_DIRS = [REPO / "crds", REPO / "charts" / "azaion" / "files" / "crds"]

_DROP = {"title", "discriminator"}


class _FactoryDefaults(GenerateJsonSchema):
    """Also emit defaults that come from a ``default_factory``.

    Nested objects then default to their full default value, so the API server
    stores the effective settings (``kubectl get -o yaml`` shows what a run
    really uses) and ``kubectl explain`` shows every default.
    """

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                value = value.model_dump(by_alias=True, mode="json", exclude_none=True)
            schema = {**schema, "default": value}
            schema.pop("default_factory")
        return super().default_schema(schema)


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline references and rewrite JSON Schema into the API server's dialect."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**structural(target, defs), **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs) if "$ref" in merged else merged

    out: dict[str, Any] = {}
    variants = schema.get("anyOf")
    if variants is not None:
        non_null = [v for v in variants if v.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"unions other than Optional[X] have no structural form: {schema}")
        out.update(structural(non_null[0], defs))
        out["nullable"] = True
    for key, value in schema.items():
        if key in _DROP or key == "anyOf" or key == "$defs":
            continue
        if key == "properties":
            out["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "const":
            out["enum"] = [value]
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if out.get("additionalProperties") is False:
        # Structural schemas forbid it; unknown fields are rejected by strict field
        # validation (kubectl's default) and pruned otherwise.
        del out["additionalProperties"]
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_FactoryDefaults)
    return structural(raw, raw.get("$defs", {}))


@dataclass(frozen=True)
class CrdSource:
    kind: str
    plural: str
    singular: str
    short_names: list[str]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    description: str
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    #: CEL rules on the whole object, for checks that need metadata (the spec model cannot see it).
    object_rules: list[dict[str, str]] = field(default_factory=list)


# The resource's name is a label value on every pod it makes (the operator's
# selectors), and Kubernetes refuses label values over 63 characters: refuse
# the name at apply time instead of failing the pods later.
MAX_NAME_LENGTH = 63


def name_rule(kind: str) -> dict[str, str]:
    return {
        "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        "message": f"metadata.name: at most {MAX_NAME_LENGTH} characters (a {kind}'s name labels its pods)",
    }


def build_crd(source: CrdSource) -> dict[str, Any]:
    spec = openapi_schema(source.spec_model)
    status = openapi_schema(source.status_model)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{source.plural}.{API_GROUP}",
            "annotations": {"helm.sh/resource-policy": "keep"},
            "labels": {"app.kubernetes.io/part-of": "azaion"},
        },
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": source.kind,
                "listKind": f"{source.kind}List",
                "plural": source.plural,
                "singular": source.singular,
                "shortNames": source.short_names,
                "categories": ["azaion"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": source.printer_columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": source.description,
                            "required": ["spec"],
                            "x-kubernetes-validations": [name_rule(source.kind), *source.object_rules],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version of the object."},
                                "kind": {"type": "string", "description": "Kind of the object."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def sources() -> list[CrdSource]:
    from azaion_contract.models import annotationconsumer as ac
    from azaion_contract.models import trainingrun as tr

    return [
        CrdSource(
            kind=tr.KIND,
            plural=tr.PLURAL,
            singular=tr.SINGULAR,
            short_names=tr.SHORT_NAMES,
            spec_model=tr.TrainingRunSpec,
            status_model=tr.TrainingRunStatus,
            description="A YOLO training run: dataset formation, training with resume, export, "
            "encryption and publishing, run as Kubernetes Jobs.",
            printer_columns=[
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Epoch", "type": "integer", "jsonPath": ".status.progress.epoch"},
                {"name": "Epochs", "type": "integer", "jsonPath": ".spec.training.epochs"},
                {"name": "mAP50-95", "type": "number", "jsonPath": ".status.progress.metrics.map50_95"},
                {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts"},
                {"name": "Queue", "type": "integer", "jsonPath": ".status.queuePosition", "priority": 1},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
            object_rules=[
                {
                    "rule": "!has(self.spec.fromRun) || self.spec.fromRun != self.metadata.name",
                    "message": "must name another TrainingRun (a run cannot fine-tune its own model)",
                    "fieldPath": ".spec.fromRun",
                }
            ],
        ),
        CrdSource(
            kind=ac.KIND,
            plural=ac.PLURAL,
            singular=ac.SINGULAR,
            short_names=ac.SHORT_NAMES,
            spec_model=ac.AnnotationConsumerSpec,
            status_model=ac.AnnotationConsumerStatus,
            description="The annotation stream consumer: reads the RabbitMQ stream and writes "
            "annotations to the data volume, keeping its offset on a volume of its own.",
            printer_columns=[
                {
                    "name": "Ready",
                    "type": "string",
                    "jsonPath": ".status.conditions[?(@.type=='Available')].status",
                },
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Offset", "type": "integer", "jsonPath": ".status.offset"},
                {"name": "Last Message", "type": "date", "jsonPath": ".status.lastMessageTime"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
        ),
    ]


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by azaion-crdgen from operator/azaion_operator/models. Do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def expected_files() -> dict[Path, str]:
    files = {}
    for source in sources():
        crd = build_crd(source)
        for directory in CRD_DIRS:
            files[directory / f"{crd['metadata']['name']}.yaml"] = render(crd)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the files on disk are stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print("stale CRD files (run azaion-crdgen): " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
