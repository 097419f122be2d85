"""The consumer's environment: defaults, the legacy alias, one error listing every problem."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from azaion_workloads.queue.config import ConfigError, StartFrom, load_config

pytestmark = pytest.mark.unit

MINIMAL = {"RABBITMQ_HOST": "rabbit", "RABBITMQ_USER": "azaion_receiver", "RABBITMQ_PASSWORD": "s3cret!"}


def test_defaults_match_the_contract() -> None:
    config = load_config(MINIMAL)
    s = config.settings
    assert (s.host, s.port, s.vhost, s.user) == ("rabbit", 5552, "/", "azaion_receiver")
    assert s.password.get_secret_value() == "s3cret!"
    assert s.stream == "azaion-annotations"
    assert s.tls is False and s.tls_ca_file is None
    assert s.offset_file == Path("/var/lib/azaion-queue/offset.yaml")
    assert s.status_file == Path("/var/lib/azaion-queue/status.json")
    assert s.consumer_name == "azaion-queue"
    assert s.start_from == StartFrom("first")
    assert (s.commit_every, s.commit_interval_ms) == (500, 1000)
    assert (s.disk_warn_percent, s.disk_critical_percent) == (80, 95)
    assert (s.http_port, s.status_interval_seconds) == (8080, 5)
    assert config.layout.root == Path("/azaion")
    assert config.layout.seed.name == "data-seed"


def test_every_variable_is_read(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {
        **MINIMAL,
        "RABBITMQ_PORT": "5551",
        "RABBITMQ_VHOST": "azaion",
        "RABBITMQ_STREAM": "annotations-2",
        "RABBITMQ_TLS": "true",
        "RABBITMQ_TLS_CA_FILE": str(ca),
        "QUEUE_OFFSET_FILE": str(tmp_path / "o" / "offset.yaml"),
        "QUEUE_CONSUMER_NAME": "site-a",
        "QUEUE_START_FROM": "2025-01-31T10:00:00Z",
        "QUEUE_COMMIT_EVERY": "50",
        "QUEUE_COMMIT_INTERVAL_MS": "250",
        "QUEUE_DISK_WARN_PERCENT": "70",
        "QUEUE_DISK_CRITICAL_PERCENT": "90.5",
        "QUEUE_HTTP_PORT": "9000",
        "QUEUE_STATUS_INTERVAL_SECONDS": "2.5",
        "AZAION_ROOT_DIR": str(tmp_path),
        "AZAION_DATA_DIR": "validated",
    }
    s = load_config(env).settings
    assert (s.port, s.vhost, s.stream, s.tls, s.tls_ca_file) == (5551, "azaion", "annotations-2", True, ca)
    assert s.offset_file == tmp_path / "o" / "offset.yaml"
    assert s.start_from == StartFrom("timestamp", dt.datetime(2025, 1, 31, 10, tzinfo=dt.UTC))
    assert (s.commit_every, s.commit_interval_ms, s.http_port) == (50, 250, 9000)
    assert (s.disk_warn_percent, s.disk_critical_percent, s.status_interval_seconds) == (70, 90.5, 2.5)
    assert load_config(env).layout.data == tmp_path / "validated"


def test_the_original_variable_names_the_stream_too() -> None:
    assert load_config({**MINIMAL, "RABBITMQ_QUEUE_NAME": "legacy"}).settings.stream == "legacy"
    both = {**MINIMAL, "RABBITMQ_QUEUE_NAME": "legacy", "RABBITMQ_STREAM": "new"}
    assert load_config(both).settings.stream == "new"


@pytest.mark.parametrize("value, kind", [("first", "first"), ("LAST", "last"), (" next ", "next")])
def test_start_positions(value: str, kind: str) -> None:
    assert load_config({**MINIMAL, "QUEUE_START_FROM": value}).settings.start_from.kind == kind


def test_one_error_lists_every_problem_and_no_secret() -> None:
    env = {
        "RABBITMQ_PASSWORD": "hunter2-very-secret",
        "RABBITMQ_PORT": "70000",
        "RABBITMQ_TLS": "maybe",
        "QUEUE_START_FROM": "yesterday",
        "QUEUE_COMMIT_EVERY": "0",
        "QUEUE_DISK_CRITICAL_PERCENT": "120",
        "AZAION_DATA_DIR": "../outside",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    text = str(caught.value)
    for name in (
        "RABBITMQ_HOST: missing",
        "RABBITMQ_USER: missing",
        "RABBITMQ_PORT",
        "RABBITMQ_TLS",
        "QUEUE_START_FROM",
        "QUEUE_COMMIT_EVERY",
        "QUEUE_DISK_CRITICAL_PERCENT",
        "AZAION_",
    ):
        assert name in text, name
    assert "hunter2" not in text
    assert len(caught.value.problems) == 8


def test_empty_values_count_as_unset_and_thresholds_must_be_ordered() -> None:
    assert load_config({**MINIMAL, "RABBITMQ_TLS_CA_FILE": "", "RABBITMQ_PORT": ""}).settings.port == 5552
    with pytest.raises(ConfigError, match="WARN"):
        load_config({**MINIMAL, "QUEUE_DISK_WARN_PERCENT": "96"})
    with pytest.raises(ConfigError, match="RABBITMQ_PASSWORD: missing"):
        load_config({**MINIMAL, "RABBITMQ_PASSWORD": ""})
    with pytest.raises(ConfigError, match="UTC offset"):
        load_config({**MINIMAL, "QUEUE_START_FROM": "2025-01-31T10:00:00"})
    with pytest.raises(ConfigError, match="no such file"):
        load_config({**MINIMAL, "RABBITMQ_TLS_CA_FILE": "/nonexistent/ca.pem"})
