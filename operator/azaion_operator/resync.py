"""One periodic loop for everything that time, not an event, decides.

Handler modules register a function; the loop runs each every reconcile
interval in a worker thread. It replaces kopf timers, which would put a
finalizer on every object so that a stopped operator blocks deletions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from azaion_operator.config import OperatorConfig

log = logging.getLogger(__name__)

_tasks: list[Callable[[OperatorConfig], None]] = []


def register(task: Callable[[OperatorConfig], None]) -> Callable[[OperatorConfig], None]:
    _tasks.append(task)
    return task


async def run_forever(config: OperatorConfig) -> None:
    """Every registered task, every ``reconcile_interval_seconds``, each in a worker thread."""
    while True:
        await asyncio.sleep(config.reconcile_interval_seconds)
        for task in _tasks:
            try:
                await asyncio.to_thread(task, config)
            except Exception:
                log.exception("periodic %s failed", task.__name__)
