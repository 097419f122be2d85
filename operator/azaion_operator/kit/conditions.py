"""Kubernetes-style conditions, shared by every resource the operator manages."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def condition(kind: str, holds: bool, reason: str, message: str, now: str, generation: int) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if holds else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
        "observedGeneration": generation,
    }


def find(conditions: list[dict[str, Any]] | None, kind: str) -> dict[str, Any] | None:
    """The condition of type ``kind`` in a status's list, if there is one."""
    return next((entry for entry in conditions or [] if entry.get("type") == kind), None)


def find_in(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The condition of type ``kind`` of any object (Job, pod, Deployment, our resources)."""
    return find(((obj or {}).get("status") or {}).get("conditions"), kind)


def keep_transition_times(new: list[dict[str, Any]], old: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A condition whose status and reason did not change keeps its old transition time."""
    previous = {c.get("type"): c for c in old or []}
    for entry in new:
        before = previous.get(entry["type"])
        if before and before.get("status") == entry["status"] and before.get("reason") == entry["reason"]:
            entry["lastTransitionTime"] = before.get("lastTransitionTime", entry["lastTransitionTime"])
    return new


def invalid_spec_message(error: ValidationError) -> str:
    """What is wrong with a stored spec, field by field (``spec.training.epochs: ...``).

    The API server checks every spec against the CRD's schema; a spec stored
    before a stricter version of it (an upgrade) can still fail this operator's model.
    """
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in ("spec", *item["loc"]))
        problems.append(f"{where}: {str(item['msg']).removeprefix('Value error, ')}")
    return "; ".join(problems)
