"""Deterministic names and labels of the objects the operator creates.

A restarted operator computes the same names, so creating an object that
already exists is a harmless conflict instead of a duplicate.
"""

from __future__ import annotations

import hashlib

_MAX_LABEL_VALUE = 63


def bounded(base: str, suffix: str, limit: int = _MAX_LABEL_VALUE) -> str:
    """``base + suffix`` cut to ``limit`` characters, keeping it unique with a hash."""
    name = f"{base}{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-.')}-{digest}{suffix}"


def job_name(run: str, attempt: int) -> str:
    """The Job of one attempt; also a label value (job-name), so at most 63 characters."""
    return bounded(run, f"-a{attempt}")


def trainer_service_account(run: str) -> str:
    """The identity a run's pods patch their own status with."""
    return bounded(run, "-trainer", 253)
