"""The data volume's fill level, and the thresholds that pause consuming.

Above the critical threshold the consumer stops taking messages (and reports
not ready) rather than letting writes fail half way; it resumes by itself
when space is freed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def usage_percent(path: Path) -> float:
    """Used space as ``df`` shows it: used / (used + available to non-root)."""
    info = os.statvfs(path)
    used = (info.f_blocks - info.f_bfree) * info.f_frsize
    available = info.f_bavail * info.f_frsize
    total = used + available
    return 100.0 * used / total if total else 0.0


class DiskGuard:
    """Tracks one volume against warn/critical thresholds and logs each crossing once."""

    def __init__(
        self,
        path: Path,
        warn_percent: float,
        critical_percent: float,
        measure: Callable[[Path], float] = usage_percent,
    ) -> None:
        self.path = path
        self.warn = warn_percent
        self.critical = critical_percent
        self._measure = measure
        self.percent: float | None = None
        self.level = "ok"

    def check(self) -> float:
        percent = self._measure(self.path)
        self.percent = percent
        level = "critical" if percent >= self.critical else "warn" if percent >= self.warn else "ok"
        if level != self.level:
            fields = {"usagePercent": round(percent, 2), "path": str(self.path)}
            if level == "critical":
                log.error("data volume critically full: consuming paused", extra=fields)
            elif level == "warn":
                log.warning("data volume filling up", extra=fields)
            else:
                log.info("data volume usage back to normal", extra=fields)
            self.level = level
        return percent

    @property
    def is_critical(self) -> bool:
        return self.level == "critical"
