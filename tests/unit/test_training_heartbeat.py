"""The liveness probe: fresh heartbeat -> 0, stale or missing -> 1, and it stays cheap."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from azaion_workloads.heartbeat import Heartbeat, main

pytestmark = pytest.mark.unit


def test_fresh_stale_missing(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    assert main(["--max-age", "60", "--file", str(path)]) == 1
    Heartbeat(path).beat()
    assert main(["--max-age", "60", "--file", str(path)]) == 0
    old = time.time() - 120
    os.utime(path, (old, old))
    assert main(["--max-age", "60", "--file", str(path)]) == 1


def test_beats_are_throttled(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    heartbeat = Heartbeat(path, interval=3600)
    heartbeat.beat()
    old = time.time() - 100
    os.utime(path, (old, old))
    heartbeat.beat()
    assert path.stat().st_mtime == pytest.approx(old)
    heartbeat.beat(force=True)
    assert path.stat().st_mtime > old + 50


def test_probe_imports_nothing_heavy(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    Heartbeat(path).beat()
    code = (
        "import sys, runpy; sys.argv = ['hb', '--max-age', '30', '--file', sys.argv[1]];\n"
        "try:\n    runpy.run_module('azaion_workloads.heartbeat', run_name='__main__')\n"
        "except SystemExit as e:\n    heavy = [m for m in ('torch', 'ultralytics', 'numpy') if m in sys.modules]\n"
        "    print(e.code, heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "0 []", result.stderr


def test_the_probe_module_the_operator_runs_is_the_heartbeat_check() -> None:
    import importlib

    import azaion_contract as contract

    probe = importlib.import_module(contract.HEARTBEAT_PROBE_MODULE)
    assert probe.main is main
