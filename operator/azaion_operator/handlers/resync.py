"""One periodic loop for everything that time, not an event, decides.

Handler modules register a function; the loop runs each every reconcile
interval in a worker thread. It replaces kopf timers, which would put a
finalizer on every object so that a stopped operator blocks deletions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import kopf

from azaion_operator.config import OperatorConfig

log = logging.getLogger(__name__)

_tasks: list[Callable[[], None]] = []


def register(task: Callable[[], None]) -> Callable[[], None]:
    _tasks.append(task)
    return task


async def _forever(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        for task in _tasks:
            try:
                await asyncio.to_thread(task)
            except Exception:
                log.exception("periodic %s failed", task.__name__)


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    memo.resync_task = asyncio.create_task(_forever(OperatorConfig.from_env().reconcile_interval_seconds))


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    memo.resync_task.cancel()
