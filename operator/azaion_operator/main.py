"""Entry point: ``azaion-operator`` runs kopf with this project's settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

import kopf
from prometheus_client import start_http_server

from azaion_contract import API_GROUP
from azaion_operator import resync
from azaion_operator.config import OperatorConfig
from azaion_operator.kit import apiclient


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's watches and the operator's own calls log in the same way. Without this
    handler kopf would import the official client (when installed) to log in."""
    return apiclient.login()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    memo.resync_task = asyncio.create_task(resync.run_forever(memo.config))
    # Watches can hang silently on a half-open connection: bound them.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # kopf's bookkeeping under our own API group; the status schema is strict,
    # so handler progress lives in annotations rather than in status.
    settings.persistence.finalizer = f"{API_GROUP}/kopf-finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # kopf's own Events ("Handler ... succeeded") are one more write per handled
    # change; the operator posts its own Events on every transition.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    settings.batching.error_delays = [1, 2, 5, 10, 30]


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.resync_task.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The Azaion Kubernetes operator.")
    parser.add_argument("--namespace", action="append", default=[], help="watch only these namespaces")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("AZAION_METRICS_PORT", "8080")))
    parser.add_argument(
        "--liveness", default=os.environ.get("AZAION_LIVENESS", "http://0.0.0.0:8081/healthz"), help="kopf liveness URL"
    )
    args = parser.parse_args(argv)

    # The operator's settings, read once before anything starts (a bad value
    # stops the process with the variable named); handlers get them from the memo.
    config = OperatorConfig.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # kopf says "Handler ... succeeded" for every event of every watched pod and Job:
    # thousands of lines a minute on a busy cluster. Its warnings and errors stay.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    from azaion_operator.kit import kube

    kube.WATCHED_NAMESPACES[:] = args.namespace
    # Importing the handlers registers them with kopf.
    from azaion_operator.annotationconsumer import handlers as _consumer  # noqa: F401
    from azaion_operator.trainingrun import handlers as _trainingrun  # noqa: F401

    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness,
            standalone=True,
            memo=kopf.Memo(config=config),
        )
    )
