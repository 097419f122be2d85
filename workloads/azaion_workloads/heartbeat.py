"""Liveness heartbeat: the worker touches a file, the probe checks its age.

The probe runs as ``python -m azaion_workloads.heartbeat --max-age SECONDS``
in the pod every few seconds, so this module imports nothing heavy (no torch,
no ultralytics): only the standard library and the contract.

The worker beats from inside its work loop (per training batch, per chunk
encrypted, per part uploaded), never from a free-running thread, so a hung
loop stops the beats and the probe restarts the pod.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import azaion_contract as contract


def heartbeat_path() -> Path:
    return Path(os.environ.get(contract.ENV_HEARTBEAT_FILE) or contract.HEARTBEAT_FILE)


class Heartbeat:
    """Touches the heartbeat file, at most once per ``interval`` seconds."""

    def __init__(self, path: Path | None = None, interval: float = 5.0) -> None:
        self.path = path or heartbeat_path()
        self.interval = interval
        self._last: float | None = None

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Content is informational; the probe reads the modification time.
            self.path.write_text(f"{time.time():.3f}\n", encoding="ascii")
        except OSError:
            # A full or read-only tmp must not stop the work; the probe will say so.
            pass


def age_seconds(path: Path, now: float | None = None) -> float | None:
    """Seconds since the last beat, or None when there never was one."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return max(0.0, (time.time() if now is None else now) - mtime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m azaion_workloads.heartbeat",
        description="Exit 0 when the heartbeat file is younger than --max-age seconds.",
    )
    parser.add_argument("--max-age", type=float, required=True, help="allowed age in seconds")
    parser.add_argument("--file", type=Path, default=None, help="heartbeat file to check")
    args = parser.parse_args(argv)
    path = args.file or heartbeat_path()
    age = age_seconds(path)
    if age is None:
        print(f"no heartbeat at {path}", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"heartbeat {path} is {age:.0f}s old (max {args.max_age:.0f}s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
