"""Work redone per interruption: mid-epoch resume vs ultralytics' own epoch-boundary resume.

    .venv/bin/python -m bench.resume [--interruptions 10] [--model yolo26n.yaml]

One training run (the real ``azaion-train run`` entrypoint on CPU, a tiny
synthetic dataset, up to 20 epochs of 207 batches) is interrupted at 10 random
moments, alternately by SIGTERM (a pod stopped: drain, suspend, preemption)
and SIGKILL (OOM kill, lost node), with a checkpoint interval of a few
seconds. After each interruption the next attempt resumes; the batches it
trains again are what it reports (``progress.resumedFrom.redoneBatches``,
from the position the killed attempt had reached). ultralytics' own resume
restarts the interrupted epoch from its last end-of-epoch checkpoint, so it
redoes every batch of that epoch trained before the interruption.

Also printed: the time a mid-epoch checkpoint took to save, relative to the
time of an epoch here (a tiny model on tiny images: the ratio for a real run,
a 2.3-hour epoch and a checkpoint of a few hundred MB, is far smaller).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from azaion_devtools.synthetic import write_annotations
from azaion_workloads.training.train import POSITION_FILE, PositionFile

IMAGES, BATCHES, IMGSZ = 460, 207, 64
INTERVAL_SECONDS = 3.0


def _env(root: Path, model: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AZAION_", "TRAINING_", "S3_", "AWS_"))},
        "HOME": str(root / "home"),
        "YOLO_CONFIG_DIR": str(root / "ultralytics"),
        "AZAION_ROOT_DIR": str(root / "data-root"),
        "AZAION_RESOURCE_NAME": "bench",
        "AZAION_HEARTBEAT_FILE": str(root / "heartbeat"),
        "TRAINING_MODEL": model,
        "TRAINING_EPOCHS": "20",
        "TRAINING_IMGSZ": str(IMGSZ),
        "TRAINING_BATCH_SIZE": "2",
        "TRAINING_WORKERS": "0",
        "TRAINING_DEVICE": "cpu",
        "TRAINING_EXTRA_ARGS": json.dumps({"plots": False}),
        "TRAINING_CHECKPOINT_INTERVAL_MINUTES": str(INTERVAL_SECONDS / 60),
        "DATASET_SPLIT": "0.9,0.05,0.05",
        "EXPORT_ONNX": "false",
    }


class Run:
    def __init__(self, root: Path, model: str) -> None:
        self.root = root
        self.env = _env(root, model)
        self.run_dir = root / "data-root" / "models" / "local" / "bench"
        write_annotations(root / "data-root" / "data", IMAGES, size=IMGSZ)
        self.logs: list[Path] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.root / f"attempt-{len(self.logs) + 1}.log"
        self.logs.append(log)
        command = [sys.executable, "-m", "azaion_workloads.training.cli", "run"]
        with log.open("wb") as handle:
            return subprocess.Popen(command, env=self.env, stdout=handle, stderr=subprocess.STDOUT)

    def position(self) -> tuple[int, int] | None:
        reached = PositionFile(self.run_dir / POSITION_FILE).read()
        return None if reached is None else (reached.epochs, reached.batches)

    def resumed_from(self) -> dict[str, int]:
        status = json.loads((self.run_dir / "status.json").read_text())
        return dict(status["progress"]["resumedFrom"])


def _wait_for_training(run: Run, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    start = run.position()
    while time.monotonic() < deadline and process.poll() is None:
        if run.position() not in (None, start):
            return
        time.sleep(0.05)
    raise RuntimeError(f"no training progress; see {run.logs[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interruptions", type=int, default=10)
    parser.add_argument("--model", default="yolo26n.yaml")
    args = parser.parse_args()
    rng = random.Random()
    with tempfile.TemporaryDirectory(prefix="azaion-bench-resume-") as temp:
        run = Run(Path(temp), args.model)
        rows: list[tuple[str, tuple[int, int], dict[str, int], int]] = []
        rates: list[float] = []
        pending: tuple[str, tuple[int, int]] | None = None
        for index in range(args.interruptions + 1):
            process = run.start()
            _wait_for_training(run, process)
            if pending is not None:
                kind, reached = pending
                rows.append((kind, reached, run.resumed_from(), reached[1]))
            if index == args.interruptions:
                process.send_signal(signal.SIGTERM)  # what the last attempt resumed from is all we need
                process.wait()
                break
            first_seen, first = time.monotonic(), run.position()
            time.sleep(rng.uniform(1.5, 3.5 * INTERVAL_SECONDS))
            last = run.position()
            kind = "SIGTERM" if index % 2 == 0 else "SIGKILL"
            process.send_signal(signal.SIGTERM if kind == "SIGTERM" else signal.SIGKILL)
            process.wait()
            reached = run.position()
            assert first is not None and last is not None and reached is not None
            progressed = (last[0] - first[0]) * BATCHES + last[1] - first[1]
            rates.append(progressed / (time.monotonic() - first_seen))
            pending = (kind, reached)

        print("epoch:batch reached by the interrupted attempt, where the next one resumed, batches redone")
        print(f"{'interruption':>12} {'kind':>8} {'reached':>10} {'resumed at':>10} {'redone':>7} {'ultralytics':>11}")
        ours, theirs = [], []
        for number, (kind, reached, resumed, own) in enumerate(rows, 1):
            redone = int(resumed.get("redoneBatches", 0))
            ours.append(redone)
            theirs.append(own)
            at = f"{resumed['epoch'] + 1}:{resumed['batch']}"
            where = f"{reached[0] + 1}:{reached[1]}"
            print(f"{number:>12} {kind:>8} {where:>10} {at:>10} {redone:>7} {own:>11}")
        print(
            f"batches redone per interruption: mean {statistics.mean(ours):.1f} (ours) vs "
            f"{statistics.mean(theirs):.1f} (ultralytics' own resume); "
            f"ratio {statistics.mean(ours) / max(statistics.mean(theirs), 1e-9):.3f}"
        )

        saves = [
            float(m)
            for log in run.logs
            for m in re.findall(r"mid-epoch checkpoint \S+ \(([\d.]+) s\)", log.read_text())
        ]
        epoch_seconds = BATCHES / statistics.mean(rates)
        print(
            f"mid-epoch checkpoint save: mean {statistics.mean(saves):.3f} s over {len(saves)} saves; "
            f"an epoch here: {epoch_seconds:.1f} s; save / epoch = {statistics.mean(saves) / epoch_seconds:.4f}"
        )


if __name__ == "__main__":
    main()
