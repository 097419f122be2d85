"""The operator's own settings (chart values reach it as environment variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class OperatorConfig(BaseModel):
    """Defaults for the children the operator creates, and its timing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    training_image: str = Field(default="ghcr.io/azaion/training:latest", min_length=1)
    """Image of training Jobs whose TrainingRun names none."""
    queue_image: str = Field(default="ghcr.io/azaion/annotation-queue:latest", min_length=1)
    """Image of consumer Deployments whose AnnotationConsumer names none."""
    image_pull_policy: str = Field(default="IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    """Pull policy of every child pod."""
    data_mount_path: str = "/azaion"
    """Where the data volume is mounted in workload pods (their AZAION_ROOT_DIR)."""
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    """How often queued and retrying runs are looked at again."""
    run_as_user: int = Field(default=1000, ge=1)
    """UID of workload containers (non-root)."""
    queueing: Literal["builtin", "kueue"] = "builtin"
    """Who admits GPU runs: the built-in queue, or Kueue (every run's Jobs go to a LocalQueue)."""
    kueue_queue_name: str = Field(default="azaion", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    """The LocalQueue of runs that name none, with kueue queueing."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        names = {
            "training_image": "AZAION_TRAINING_IMAGE",
            "queue_image": "AZAION_QUEUE_IMAGE",
            "image_pull_policy": "AZAION_IMAGE_PULL_POLICY",
            "data_mount_path": "AZAION_DATA_MOUNT_PATH",
            "reconcile_interval_seconds": "AZAION_RECONCILE_INTERVAL_SECONDS",
            "run_as_user": "AZAION_RUN_AS_USER",
            "queueing": "AZAION_QUEUEING",
            "kueue_queue_name": "AZAION_KUEUE_QUEUE_NAME",
        }
        values = {field: env[var] for field, var in names.items() if env.get(var)}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(f"{names[str(e['loc'][0])]}: {e['msg']}" for e in error.errors())
            raise SystemExit(f"invalid operator configuration: {problems}") from None
