"""Failure kinds of the training workload, mapped to exit codes by the CLI."""

from __future__ import annotations


class PermanentError(Exception):
    """Bad configuration or data: a retry cannot help (exit ``EXIT_PERMANENT``)."""


class Interrupted(Exception):
    """Stopped at a safe point after SIGTERM (exit ``EXIT_INTERRUPTED``)."""
