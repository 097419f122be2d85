"""A run's parameters, per-epoch metrics and artifacts logged to MLflow, never in training's way.

With ``tracking.mlflow`` (``TRACKING_MLFLOW_URI``) the trainer logs to an
MLflow tracking server: the run's parameters and dataset counts once the
dataset is formed, the metrics of every epoch as it ends, and at the end the
ONNX export, ``results.csv``, ``results.png`` and the dataset manifest (the
unencrypted weights only with ``logWeights``). A published model becomes a
version of the registered model, its source the encrypted model's S3 URI.

Training never waits for the server. Every record goes into a queue that one
background thread sends in order; a request that fails (the server is down,
slow, or refuses the credentials) stays at the head of the queue and is tried
again, with a growing pause, while training goes on. What the tracker does is
reported in ``status.mlflow`` (and the operator turns it into the run's
``Tracking`` condition): ``Logging``, ``Retrying`` with the last error and how
many records wait, ``Logged`` once everything, the model version included when
the run published one, is on the server and the MLflow run is ended. A record
the server refuses for what it is (a parameter that changed between attempts)
is dropped and counted, not retried forever.

The MLflow run is created once per TrainingRun and recorded in ``mlflow.json``
in the run directory, so every attempt logs into the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azaion_contract.timefmt import rfc3339
from azaion_workloads.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

RECORD_FILE = "mlflow.json"
#: Pauses between tries of a failed request: doubling from the first to the last (seconds).
FIRST_RETRY_SECONDS = 1.0
LAST_RETRY_SECONDS = 60.0
#: One request's limit: the server answers within this or counts as down.
REQUEST_TIMEOUT_SECONDS = 10
#: Records kept while the server is down; past this the oldest metrics go (and are counted).
MAX_PENDING = 10_000
#: How long the end of the run waits for what is still queued (the pod's exit is not held up longer).
DRAIN_SECONDS = 30.0
#: Statuses are reported on every change of state and otherwise at most this often.
REPORT_EVERY_SECONDS = 10.0
#: Tag that ties an MLflow run to its TrainingRun.
RUN_TAG = "azaion.trainingrun"


@dataclass
class _Record:
    """One call to the server: what to send, and whether losing it when the queue is full is acceptable."""

    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    droppable: bool = False


class _Rejected(Exception):
    """The server refused the record itself (4xx): sending it again cannot help."""


class MlflowTracker:
    """Logs one TrainingRun to MLflow from a thread of its own (see the module docstring)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        model_name: str,
        record_dir: Path,
        *,
        on_status: Callable[..., None] = lambda **_: None,
        client: Any = None,
        first_retry: float = FIRST_RETRY_SECONDS,
        last_retry: float = LAST_RETRY_SECONDS,
    ) -> None:
        self.tracking_uri, self.experiment, self.run_name, self.model_name = (
            tracking_uri,
            experiment,
            run_name,
            model_name,
        )
        self.record_file = record_dir / RECORD_FILE
        self.on_status = on_status
        self.first_retry, self.last_retry = first_retry, last_retry
        self._client = client
        self._queue: queue.Queue[_Record | None] = queue.Queue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._stop = threading.Event()
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.model_version: str | None = None
        #: The MLflow run was ended (the last record of a run that finished).
        self.finished = False
        self.failures = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.state = "Logging"
        self._reported_at = 0.0
        self._reported_state: str | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-tracker", daemon=True)
        self._thread.start()

    # What training calls: each returns at once ---------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        self._put(_Record("params", {"params": {k: str(v) for k, v in params.items() if v is not None}}))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        self._put(_Record("metrics", {"metrics": dict(metrics), "step": step, "timestamp": stamp}, droppable=True))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._put(_Record("artifact", {"path": str(path), "artifact_path": artifact_path}))

    def register_model(self, source_uri: str, tags: dict[str, str] | None = None) -> None:
        """A version of the registered model whose source is ``source_uri`` (once per MLflow run)."""
        self._put(_Record("register", {"source": source_uri, "tags": dict(tags or {})}))

    def finish(self, status: str = "FINISHED") -> None:
        self._put(_Record("finish", {"status": status}))

    def close(self, timeout: float = DRAIN_SECONDS) -> bool:
        """Wait up to ``timeout`` for the queue to be sent; True when it was. Reports the final state
        (with what is left unsent, when the server stayed away)."""
        self._idle.wait(timeout)
        self._closed = True
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=REQUEST_TIMEOUT_SECONDS + 1)
        self._report(force=True)
        return self._pending == 0

    @property
    def pending(self) -> int:
        return self._pending

    # The sender thread ---------------------------------------------------------

    def _put(self, record: _Record) -> None:
        if self._closed:
            return
        with self._pending_lock:
            if self._pending >= MAX_PENDING and record.droppable:
                self.dropped += 1
                return
            self._pending += 1
            self._idle.clear()
        self._queue.put(record)

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None or not self._send_until_done(record):
                return  # closed: what is left stays counted as pending
            with self._pending_lock:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()
            self._report()

    def _send_until_done(self, record: _Record) -> bool:
        """Send ``record``, trying again until it is sent or refused (True), or the tracker is closed (False)."""
        pause = self.first_retry
        while True:
            try:
                self._ensure_run()
                self._send(record)
                self._set_state("Logging")
                return True
            except _Rejected as error:
                self.failures += 1
                self.dropped += 1
                self.last_error = f"{record.kind} refused: {error}"
                log.warning("MLflow refused a %s record (dropped): %s", record.kind, error)
                return True
            except Exception as error:  # down, slow, a proxy in the way: try again later
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {_short(error)}"
                log.warning("MLflow at %s: %s; trying again in %.1fs", self.tracking_uri, self.last_error, pause)
                self._set_state("Retrying")
                if self._stop.wait(pause):
                    return False
                pause = min(pause * 2, self.last_retry)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._report(force=True)

    def _report(self, force: bool = False) -> None:
        state = self.state
        if not self._pending and state == "Logging" and self.finished:
            state = "Logged"
        now = time.monotonic()
        if not force and state == self._reported_state and now - self._reported_at < REPORT_EVERY_SECONDS:
            return
        self._reported_at, self._reported_state = now, state
        fields: dict[str, Any] = {
            "state": state,
            "pending": self._pending,
            "failures": self.failures,
            "updated_at": rfc3339(),
        }
        for name, value in (
            ("run_id", self.run_id),
            ("experiment_id", self.experiment_id),
            ("model_version", self.model_version),
            ("last_error", self.last_error),
        ):
            if value is not None:
                fields[name] = value
        try:
            self.on_status(**fields)
        except Exception:  # a status report must never stop the tracker
            log.exception("reporting the MLflow state failed")

    # Talking to the server -------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            # The client's own retries would hold this thread for minutes per call; this one retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(REQUEST_TIMEOUT_SECONDS))
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _ensure_run(self) -> None:
        if self.run_id is not None:
            return
        recorded = _read_record(self.record_file)
        if recorded.get("trackingUri") == self.tracking_uri and recorded.get("runId"):
            self.run_id, self.experiment_id = recorded["runId"], recorded.get("experimentId")
            self.model_version = recorded.get("modelVersion")
            return
        client = self.client
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(self.experiment)
            except Exception:  # another run created it meanwhile
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
        run = client.create_run(experiment_id, run_name=self.run_name, tags={RUN_TAG: self.run_name})
        self.run_id, self.experiment_id = run.info.run_id, experiment_id
        self._write_record()
        log.info("MLflow run %s in experiment %s (%s)", self.run_id, self.experiment, self.tracking_uri)

    def _write_record(self) -> None:
        document = {
            "trackingUri": self.tracking_uri,
            "experimentId": self.experiment_id,
            "runId": self.run_id,
            **({"modelVersion": self.model_version} if self.model_version else {}),
        }
        atomic_write_bytes(self.record_file, json.dumps(document, indent=2).encode())

    def _send(self, record: _Record) -> None:
        from mlflow.entities import Metric, Param

        client, run_id, payload = self.client, self.run_id, record.payload
        assert run_id is not None
        try:
            if record.kind == "params":
                client.log_batch(run_id, params=[Param(k, v) for k, v in payload["params"].items()])
            elif record.kind == "metrics":
                metrics = [
                    Metric(k, float(v), payload["timestamp"], payload["step"]) for k, v in payload["metrics"].items()
                ]
                client.log_batch(run_id, metrics=metrics)
            elif record.kind == "artifact":
                if Path(payload["path"]).exists():
                    client.log_artifact(run_id, payload["path"], payload["artifact_path"])
            elif record.kind == "register":
                self._register(payload["source"], payload["tags"])
            elif record.kind == "finish":
                client.set_terminated(run_id, payload["status"])
                self.finished = True
        except Exception as error:
            if _refused(error):
                raise _Rejected(_short(error)) from error
            raise

    def _register(self, source: str, tags: dict[str, str]) -> None:
        if self.model_version is not None:
            return
        client, run_id = self.client, self.run_id
        existing = client.search_model_versions(f"name='{self.model_name}' and run_id='{run_id}'")
        if existing:
            self.model_version = str(existing[0].version)
        else:
            try:
                client.create_registered_model(self.model_name)
            except Exception as error:
                if "RESOURCE_ALREADY_EXISTS" not in str(getattr(error, "error_code", "")):
                    raise
            version = client.create_model_version(
                self.model_name, source, run_id=run_id, tags={RUN_TAG: self.run_name, **tags}
            )
            self.model_version = str(version.version)
        self._write_record()
        log.info("registered %s version %s (%s)", self.model_name, self.model_version, source)


def _refused(error: Exception) -> bool:
    """Whether the server answered and refused the request itself (4xx but for 401/403/408/429)."""
    code = getattr(error, "get_http_status_code", None)
    status = code() if callable(code) else None
    return isinstance(status, int) and 400 <= status < 500 and status not in (401, 403, 408, 429)


def _short(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
