"""``azaion-queue``: the annotation consumer's entrypoint.

Exit codes follow :mod:`azaion_workloads.contract`: 0 after SIGTERM, 78 for a
configuration that can never work (invalid settings, or credentials the broker
refused three times in a row), 1 when the environment failed (the pod is
restarted and resumes from its stored offset).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import azaion_contract as contract
from azaion_workloads.queue import logs
from azaion_workloads.queue.config import ConfigError, load_config
from azaion_workloads.queue.consumer import EXIT_RETRYABLE, StreamConsumer
from azaion_workloads.queue.health import HealthServer
from azaion_workloads.status import FileStatusReporter, StatusReporter, reporter_from_env

log = logging.getLogger("azaion_workloads.queue")


def _reporter(fallback_file: os.PathLike[str] | str) -> StatusReporter:
    from pathlib import Path

    try:
        return reporter_from_env(contract.ANNOTATIONCONSUMER_PLURAL, Path(fallback_file))
    except Exception as error:  # no API access must not stop consuming
        log.warning("status goes to a local file: %s", error)
        return FileStatusReporter(Path(fallback_file))


def _stop_before_consuming(signum: int, _frame: object) -> None:
    # Until the event loop takes SIGTERM over, nothing is in hand: leave cleanly.
    raise SystemExit(contract.EXIT_OK)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_before_consuming)
    logs.configure(os.environ.get("QUEUE_LOG_LEVEL", "INFO").upper() or "INFO")
    try:
        config = load_config()
    except ConfigError as error:
        log.error("invalid configuration", extra={"problems": error.problems})
        print(error, file=sys.stderr)
        return contract.EXIT_PERMANENT
    settings = config.settings
    logs.configure(settings.log_level)
    log.info(
        "starting",
        extra={
            "stream": settings.stream,
            "broker": f"{settings.host}:{settings.port}",
            "vhost": settings.vhost,
            "tls": settings.tls,
            "consumer": settings.consumer_name,
            "dataRoot": str(config.layout.root),
            "offsetFile": str(settings.offset_file),
        },
    )
    consumer = StreamConsumer(config, _reporter(settings.status_file))
    try:
        health = HealthServer(settings.http_port, consumer.state, consumer.metrics)
    except OSError as error:
        log.error("cannot listen on QUEUE_HTTP_PORT %d: %s", settings.http_port, error)
        return EXIT_RETRYABLE
    return asyncio.run(consumer.run(health))


if __name__ == "__main__":
    sys.exit(main())
