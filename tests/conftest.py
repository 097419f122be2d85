"""Test wiring: markers, options for using existing servers, fixture plugins.

By default the integration fixtures start real servers on loopback (a local
Kubernetes control plane, RabbitMQ with the stream plugin, an S3 server) and
stop exactly what they started. Options point them at existing ones instead.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

# Real pods need the images built and a node that runs containers, and their
# operator is the chart's: they run in a session of their own (hack/test-pods.sh).
collect_ignore = [] if os.environ.get("AZAION_REAL_PODS") == "1" else ["pods"]

pytest_plugins = [
    "tests.fixtures.kube",
    "tests.fixtures.kueue",
    "tests.fixtures.mlflow",
    "tests.fixtures.operator",
    "tests.fixtures.rabbitmq",
    "tests.fixtures.s3",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("azaion", "servers used by integration tests")
    group.addoption(
        "--kubeconfig",
        default=None,
        help="use the cluster in this kubeconfig (kind, k3s...) instead of starting "
        "the local control plane; the cluster needs a node with nvidia.com/gpu capacity",
    )
    group.addoption(
        "--external-operator",
        action="store_true",
        help="an operator already runs in the cluster (installed with helm): start none",
    )
    group.addoption(
        "--rabbitmq",
        default=None,
        metavar="HOST:PORT",
        help="use this RabbitMQ stream endpoint (user/password from RABBITMQ_USER / "
        "RABBITMQ_PASSWORD) instead of starting a local broker",
    )
    group.addoption(
        "--s3-endpoint",
        default=None,
        metavar="URL",
        help="use this S3-compatible endpoint (credentials from AWS_* env) instead of starting a local S3 server",
    )
    group.addoption(
        "--image-tag",
        default=None,
        help="e2e: tag of the azaion.local/{operator,queue,training} images (default $AZAION_IMAGE_TAG or dev); "
        "built and loaded on the local plane, expected loaded with --kubeconfig",
    )
    group.addoption(
        "--host-address",
        default=None,
        help="e2e: this machine's address as pods see it (servers the pods use bind there); default: the local plane's",
    )


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)
