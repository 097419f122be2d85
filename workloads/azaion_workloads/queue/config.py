"""The consumer's settings, read from the environment in one place.

One pydantic model validates every variable, so a bad Deployment fails at once
with a single message naming every problem (exit code ``EXIT_PERMANENT``)
instead of failing on the first one, then the next, one restart at a time.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

import azaion_contract as contract
from azaion_contract.env import CONSUMER_ENV, env_name
from azaion_workloads.layout import DataLayout, UnsafePathError

#: The original deployment named the stream in this variable; still accepted.
LEGACY_STREAM_VARIABLE = "RABBITMQ_QUEUE_NAME"


class ConfigError(ValueError):
    """The environment does not describe a valid consumer; lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid consumer settings:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class StartFrom:
    """Where to begin when neither the offset file nor the server knows an offset."""

    kind: Literal["first", "last", "next", "timestamp"]
    timestamp: dt.datetime | None = None

    @classmethod
    def parse(cls, text: str) -> StartFrom:
        lowered = text.strip().lower()
        if lowered in ("first", "last", "next"):
            return cls(lowered)  # type: ignore[arg-type]
        try:
            when = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError("must be first, last, next or an RFC 3339 timestamp") from None
        if when.tzinfo is None:
            raise ValueError("an RFC 3339 timestamp needs a UTC offset (e.g. 2025-01-31T00:00:00Z)")
        return cls("timestamp", when)

    def __str__(self) -> str:
        return self.timestamp.isoformat() if self.timestamp else self.kind


def _env(setting: str) -> str:
    """The variable the operator fills this setting from (the contract's table)."""
    return env_name(CONSUMER_ENV, setting)


class QueueSettings(BaseModel):
    """Everything the consumer reads from its environment (names are the contract)."""

    model_config = ConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True)

    host: str = Field(alias=_env("host"), min_length=1)
    port: int = Field(5552, alias=_env("port"), ge=1, le=65535)
    vhost: str = Field("/", alias=_env("vhost"), min_length=1)
    user: str = Field(alias=_env("user"), min_length=1)
    password: SecretStr = Field(alias=_env("password"))
    stream: str = Field("azaion-annotations", alias=_env("stream"), min_length=1, max_length=255)
    tls: bool = Field(False, alias=_env("tls"))
    tls_ca_file: Path | None = Field(None, alias=_env("tls_ca_file"))

    offset_file: Path = Field(Path(contract.CONSUMER_OFFSET_FILE), alias="QUEUE_OFFSET_FILE")
    consumer_name: str = Field("azaion-queue", alias="QUEUE_CONSUMER_NAME", min_length=1, max_length=255)
    start_from: StartFrom = Field(StartFrom("first"), alias=_env("start_from"))
    commit_every: int = Field(500, alias=_env("commit_every"), ge=1)
    commit_interval_ms: int = Field(1000, alias=_env("commit_interval_ms"), ge=10)
    #: How a batch is made durable before its offset is stored (see queue.durability).
    durability: Literal["syncfs", "fsync"] = Field("syncfs", alias="QUEUE_DURABILITY")
    disk_warn_percent: float = Field(80.0, alias=_env("disk_warn_percent"), gt=0, le=100)
    disk_critical_percent: float = Field(95.0, alias=_env("disk_critical_percent"), gt=0, le=100)
    http_port: int = Field(contract.CONSUMER_HTTP_PORT, alias="QUEUE_HTTP_PORT", ge=1, le=65535)
    status_interval_seconds: float = Field(5.0, alias="QUEUE_STATUS_INTERVAL_SECONDS", gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="QUEUE_LOG_LEVEL")

    @field_validator("tls", mode="before")
    @classmethod
    def _boolean(cls, value: Any) -> Any:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be true or false")
        return value

    @field_validator("start_from", mode="before")
    @classmethod
    def _start(cls, value: Any) -> Any:
        return StartFrom.parse(value) if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("tls_ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _thresholds(self) -> QueueSettings:
        if self.disk_warn_percent > self.disk_critical_percent:
            raise ValueError("QUEUE_DISK_WARN_PERCENT must not exceed QUEUE_DISK_CRITICAL_PERCENT")
        return self

    @property
    def status_file(self) -> Path:
        """Where the status goes outside a cluster: next to the offset file."""
        return self.offset_file.parent / "status.json"


@dataclass(frozen=True)
class Config:
    settings: QueueSettings
    layout: DataLayout


def _alias_of(field_name: str) -> str:
    info = QueueSettings.model_fields.get(field_name)
    return info.alias if info and info.alias else field_name


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from ``env``; raise :class:`ConfigError` naming every problem.

    Empty values count as unset, so a template that renders ``""`` for an
    optional variable gets the default. Values are never echoed back: the
    password must not reach the logs.
    """
    env = os.environ if env is None else env
    values = {key: value for key, value in env.items() if value != ""}
    if "RABBITMQ_STREAM" not in values and LEGACY_STREAM_VARIABLE in values:
        values["RABBITMQ_STREAM"] = values[LEGACY_STREAM_VARIABLE]

    problems: list[str] = []
    layout: DataLayout | None = None
    try:
        layout = DataLayout.from_env(values)
    except UnsafePathError as error:
        problems.append(f"data directories (AZAION_*_DIR): {error}")

    settings: QueueSettings | None = None
    try:
        settings = QueueSettings.model_validate(values)
    except ValidationError as error:
        for item in error.errors(include_input=False, include_url=False):
            location = ".".join(str(part) for part in item["loc"])
            name = _alias_of(location) if location else "settings"
            message = "missing" if item["type"] == "missing" else item["msg"]
            problems.append(f"{name}: {message}")

    if problems or settings is None or layout is None:
        raise ConfigError(problems)
    return Config(settings=settings, layout=layout)
