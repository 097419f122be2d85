"""Real CPU training through the ``azaion-train`` entrypoint, in a subprocess.

A tiny synthetic dataset (drawn boxes, some broken labels among them), a
model built from ``yolo26n.yaml``, a few epochs at 64 px. Every run happens
with outbound connections refused by an audit hook in the child process
(only the local S3 server may be reached where a test publishes), and the
tests assert that nothing even tried to connect anywhere else.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import azaion_contract as contract
from azaion_devtools.processes import ManagedProcess, wait_until
from azaion_devtools.synthetic import write_annotations, write_bad_annotations
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.integration

GOOD, RESUME_GOOD, IMGSZ = 24, 80, 64

_GUARD = textwrap.dedent(
    """
    # Loaded at interpreter start (sitecustomize): refuse every outbound
    # connection and name lookup except to the addresses in NETGUARD_ALLOW,
    # and record each attempt in NETGUARD_LOG.
    import os, socket, sys

    _allow = {a for a in os.environ.get("NETGUARD_ALLOW", "").split(",") if a}
    _hosts = {a.rsplit(":", 1)[0] for a in _allow}
    _log = os.environ["NETGUARD_LOG"]

    def _record(what):
        with open(_log, "a") as handle:
            handle.write(what + "\\n")

    def _guard(event, args):
        if event == "socket.connect":
            sock, address = args
            if sock.family == getattr(socket, "AF_UNIX", None):
                return
            if f"{address[0]}:{address[1]}" in _allow:
                return
            _record(f"connect {address!r}")
            raise ConnectionRefusedError(111, "outbound connections are blocked in this test")
        if event == "socket.getaddrinfo":
            host = args[0]
            if host is None or (host.decode() if isinstance(host, bytes) else str(host)) in _hosts:
                return
            _record(f"getaddrinfo {host!r}")
            raise socket.gaierror(-2, "name lookups are blocked in this test")

    sys.addaudithook(_guard)
    """
)


class Run:
    """One data root and the environment of the entrypoint for it."""

    def __init__(self, tmp: Path, name: str, **extra: str) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.name = name
        self.run_dir = self.root / "models" / "local" / name
        guard_dir = tmp / "guard"
        guard_dir.mkdir(exist_ok=True)
        (guard_dir / "sitecustomize.py").write_text(_GUARD)
        self.netlog = tmp / "network-attempts.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AZAION_", "TRAINING_", "S3_", "AWS_"))},
            "PYTHONPATH": os.pathsep.join([str(guard_dir), os.environ.get("PYTHONPATH", "")]),
            "NETGUARD_LOG": str(self.netlog),
            "HOME": str(tmp / "home"),
            "YOLO_CONFIG_DIR": str(tmp / "ultralytics"),
            "AZAION_ROOT_DIR": str(self.root),
            "AZAION_RESOURCE_NAME": name,
            "AZAION_HEARTBEAT_FILE": str(tmp / "heartbeat"),
            "TRAINING_MODEL": "yolo26n.yaml",
            "TRAINING_EPOCHS": "2",
            "TRAINING_IMGSZ": str(IMGSZ),
            "TRAINING_BATCH_SIZE": "4",
            "TRAINING_WORKERS": "0",
            "TRAINING_DEVICE": "auto",
            "TRAINING_EXTRA_ARGS": json.dumps({"plots": False}),
            "EXPORT_ONNX_IMGSZ": str(IMGSZ),
            "EXPORT_ONNX_BATCH": "2",
            **extra,
        }

    def start(self, log_name: str) -> ManagedProcess:
        return ManagedProcess(
            [sys.executable, "-m", "azaion_workloads.training.cli", "run"],
            self.tmp / log_name,
            env=self.env,
        )

    def run(self, log_name: str, timeout: float = 240) -> tuple[int, str]:
        process = self.start(log_name)
        try:
            code = process.proc.wait(timeout=timeout)
        finally:
            process.stop()
        return code, (self.tmp / log_name).read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def results_epochs(self) -> list[int]:
        path = self.run_dir / "results.csv"
        if not path.exists():
            return []
        with path.open() as handle:
            return [int(float(row["epoch"])) for row in csv.DictReader(handle)]

    def network_attempts(self) -> str:
        return self.netlog.read_text() if self.netlog.exists() else ""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dataset(root: Path, good: int = GOOD) -> dict[str, str]:
    write_annotations(root / "data", good, size=IMGSZ)
    return write_bad_annotations(root / "data", size=IMGSZ)


def decrypt_cli(encrypted: Path, output: Path, key_file: Path) -> subprocess.CompletedProcess[str]:
    """``azaion-train decrypt``, as a user runs it."""
    command = [sys.executable, "-m", "azaion_workloads.training.cli", "decrypt", str(encrypted), str(output)]
    return subprocess.run([*command, "--key-file", str(key_file)], capture_output=True, text=True, timeout=120)


def test_full_run_publishes_an_encrypted_onnx(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    key = os.urandom(32)
    (tmp_path / "key").write_text(key.hex())
    endpoint_host = s3_server.endpoint.removeprefix("http://")
    run = Run(
        tmp_path,
        "e2e",
        **s3_server.env(),
        S3_BUCKET=bucket,
        ENCRYPTION_KEY_FILE=str(tmp_path / "key"),
        PUBLISH_PROMOTE="true",
        AZAION_IMAGE="registry.local/azaion-training:test",
        TRAINING_EXTRA_ARGS="{}",  # plots on: ultralytics' font check must not reach out either
        NETGUARD_ALLOW=endpoint_host if s3_server.started else "",
    )
    if not s3_server.started:
        pytest.skip("the network guard can only allow a local S3 server")
    bad = _dataset(run.root)

    code, log = run.run("run-1.log")
    assert code == 0, log[-4000:]
    assert run.network_attempts() == "", "the run tried to reach the network"

    status = run.status()
    assert status["progress"]["step"] == "done"
    assert status["progress"]["epochs"] == 2 and status["progress"]["epoch"] == 2
    assert "map50" in status["progress"]["metrics"]
    artifacts = status["artifacts"]
    assert artifacts["dataset"]["corrupted"] == len(bad)
    assert artifacts["dataset"]["train"] + artifacts["dataset"]["valid"] + artifacts["dataset"]["test"] == GOOD
    assert artifacts["promoted"] is True
    assert status["lastCheckpoint"]["epoch"] == 2

    client = s3_server.client()
    manifest_key = f"models/runs/local/{run.name}/manifest.json"
    assert artifacts["manifestUri"] == f"s3://{bucket}/{manifest_key}"
    manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    (artifact,) = manifest["artifacts"]
    blob = client.get_object(Bucket=bucket, Key=artifact["key"])["Body"].read()
    assert _sha256(blob) == artifact["sha256"] == artifacts["encryptedSha256"]
    assert artifact["key"] == f"models/blobs/sha256/{artifact['sha256']}"
    assert artifact["size"] == len(blob)
    assert manifest["dataset"]["manifestSha256"] == artifacts["dataset"]["manifestSha256"]
    assert manifest["run"] == {"namespace": "local", "name": run.name}
    assert manifest["image"] == "registry.local/azaion-training:test"
    current = json.loads(client.get_object(Bucket=bucket, Key="models/current.json")["Body"].read())
    assert current["manifest"] == artifacts["manifestUri"]

    # Decrypt what was published, with the CLI, and run it in onnxruntime.
    (tmp_path / "published.enc").write_bytes(blob)
    decrypted = tmp_path / "model.onnx"
    result = decrypt_cli(tmp_path / "published.enc", decrypted, tmp_path / "key")
    assert result.returncode == 0, result.stderr
    assert _sha256(decrypted.read_bytes()) == artifacts["onnxSha256"] == artifact["plainSha256"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(decrypted), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, IMGSZ, IMGSZ), np.float32)})
    assert output.shape[0] == 2 and output.shape[-1] == 6  # boxes with score and class, NMS inside

    # Promotion: the current model is this run's best, byte for byte.
    assert (run.root / "models" / "azaion.pt").read_bytes() == (run.run_dir / "weights" / "best.pt").read_bytes()

    # A retry after success changes nothing: no new objects, the manifest untouched.
    before = {o["Key"]: (o["ETag"], o["LastModified"]) for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    code, log = run.run("run-2.log")
    assert code == 0, log[-4000:]
    assert "training already finished" in log and "already published" in log
    after = {o["Key"]: (o["ETag"], o["LastModified"]) for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert after == before
    assert run.network_attempts() == ""

    # Wrong key: a clear error, no output file.
    (tmp_path / "wrong").write_bytes(os.urandom(32))
    result = decrypt_cli(tmp_path / "published.enc", tmp_path / "nope.onnx", tmp_path / "wrong")
    assert result.returncode == contract.EXIT_PERMANENT
    assert "wrong key" in result.stderr
    assert not (tmp_path / "nope.onnx").exists()


def _wait_for_checkpoint(run: Run, process: ManagedProcess, epoch: int) -> None:
    wait_until(
        lambda: run.status().get("lastCheckpoint", {}).get("epoch") == epoch or not process.alive(),
        timeout=240,
        what=f"the checkpoint of epoch {epoch}",
        interval=0.05,
    )
    assert process.alive(), process.log_tail()


def test_kill_sigterm_and_corrupt_checkpoint_resume(tmp_path: Path) -> None:
    # Epochs long enough (a few seconds) that a kill or SIGTERM sent after one
    # checkpoint lands well before the next epoch ends.
    run = Run(tmp_path, "resume", TRAINING_EPOCHS="3", TRAINING_BATCH_SIZE="2", EXPORT_ONNX="false")
    _dataset(run.root, good=RESUME_GOOD)

    # 1. kill -9 during epoch 2: the rerun resumes at epoch 2, not 1.
    first = run.start("run-1.log")
    try:
        _wait_for_checkpoint(run, first, 1)
        time.sleep(0.3)  # into epoch 2's batches
    finally:
        first.kill()
    assert run.results_epochs() == [1], "killed too late: epoch 2 had already finished"
    assert (run.run_dir / "checkpoints" / "epoch-0001.pt").exists()

    # 2. The rerun resumes at epoch 2; SIGTERM after epoch 2's checkpoint stops
    #    it at the next safe point with the retryable "interrupted" code.
    second = run.start("run-2.log")
    try:
        _wait_for_checkpoint(run, second, 2)
        second.stop(timeout=120)
    finally:
        second.stop()
    log = (tmp_path / "run-2.log").read_text()
    assert "resuming at epoch 2 of 3" in log, log[-3000:]
    assert second.proc.returncode == contract.EXIT_INTERRUPTED, log[-3000:]
    assert "interrupted" in log
    assert run.results_epochs() == [1, 2]

    # 3. The newest checkpoints are damaged (as by a disk fault): the mid-epoch
    #    one the SIGTERM wrote, epoch 2's copy and last.pt. The rerun says so,
    #    falls back to epoch 1 and trains on.
    (mid_epoch,) = (run.run_dir / "checkpoints").glob("epoch-0002-batch-*.pt")
    for damaged in (mid_epoch, run.run_dir / "checkpoints" / "epoch-0002.pt", run.run_dir / "weights" / "last.pt"):
        data = damaged.read_bytes()
        damaged.write_bytes(data[: len(data) // 2])
    code, log = run.run("run-3.log")
    assert code == 0, log[-4000:]
    assert f"{mid_epoch.name} does not load" in log, log[-3000:]
    assert "epoch-0002.pt does not load" in log and "falling back" in log, log[-3000:]
    assert "resuming at epoch 2 of 3" in log
    assert run.results_epochs() == [1, 2, 3]
    status = run.status()
    assert status["progress"]["step"] == "done" and status["lastCheckpoint"]["epoch"] == 3
    assert (run.run_dir / "weights" / "best.pt").exists()
    assert run.network_attempts() == ""


def test_network_guard_refuses_and_records(tmp_path: Path) -> None:
    """The guard the other tests rely on really blocks and logs an attempt."""
    run = Run(tmp_path, "guard")
    probe = textwrap.dedent(
        """
        import socket
        for attempt in (lambda: socket.socket().connect(("192.0.2.1", 80)),
                        lambda: socket.getaddrinfo("example.com", 443)):
            try:
                attempt()
            except OSError as error:
                print(type(error).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], env=run.env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["ConnectionRefusedError", "gaierror"]
    assert "192.0.2.1" in run.network_attempts() and "example.com" in run.network_attempts()


def test_bad_settings_exit_78_and_write_nothing(tmp_path: Path) -> None:
    run = Run(tmp_path, "bad", TRAINING_MODEL="../../outside.pt", DATASET_CLASSES_FILE="/etc/passwd")
    _dataset(run.root)
    before = sorted(p for p in tmp_path.rglob("*"))
    started = time.monotonic()
    code, log = run.run("bad.log", timeout=120)
    assert code == contract.EXIT_PERMANENT
    assert "TRAINING_MODEL" in log and "DATASET_CLASSES_FILE" in log
    assert time.monotonic() - started < 60
    after = sorted(p for p in tmp_path.rglob("*") if p.name != "bad.log")
    assert after == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"TRAINING_MODEL": "models/local/earlier/weights/best.pt"}, "does not exist in the data root"),
        ({"S3_BUCKET": "models", "ENCRYPTION_KEY_FILE": "/nonexistent/key"}, "ENCRYPTION_KEY_FILE"),
    ],
    ids=["missing-start-model", "publishing-without-key"],
)
def test_permanent_problems_are_found_before_training(tmp_path: Path, extra: dict[str, str], message: str) -> None:
    run = Run(tmp_path, "early", **extra)
    _dataset(run.root)
    code, log = run.run("early.log", timeout=120)
    assert code == contract.EXIT_PERMANENT, log[-3000:]
    assert message in log
    assert not (run.root / "datasets" / "local" / "early").exists()
    assert not (run.run_dir / "weights").exists()


def test_unknown_model_yaml_is_permanent(tmp_path: Path) -> None:
    run = Run(tmp_path, "unknown", TRAINING_MODEL="yolo99x.yaml")
    _dataset(run.root)
    code, log = run.run("unknown.log", timeout=120)
    assert code == contract.EXIT_PERMANENT, log[-3000:]
    assert "TRAINING_MODEL" in log and "yolo99" in log


def test_dataset_subcommand_forms_only_the_dataset(tmp_path: Path) -> None:
    run = Run(tmp_path, "only-data")
    bad = _dataset(run.root)
    result = subprocess.run(
        [sys.executable, "-m", "azaion_workloads.training.cli", "dataset"],
        env=run.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dataset = run.status()["artifacts"]["dataset"]
    assert (dataset["train"], dataset["valid"], dataset["test"]) == (17, 5, 2)  # 24 at 0.7/0.2/0.1
    assert dataset["corrupted"] == len(bad)
    assert (run.root / dataset["path"] / "data.yaml").exists()
    assert not (run.run_dir / "weights").exists()
    assert run.network_attempts() == ""
