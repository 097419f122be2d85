"""What a workload pod can rely on: exit codes, mounts, and the names of its environment."""

from __future__ import annotations

from typing import Final

# Exit codes of every workload (sysexits.h values, so they never collide with
# a Python traceback's 1 or a signal's 128+N).
EXIT_OK: Final = 0
#: Bad configuration or bad data: retrying cannot help; the run fails at once.
EXIT_PERMANENT: Final = 78  # EX_CONFIG
#: Stopped at a safe point (SIGTERM, suspend, preemption): resume later.
EXIT_INTERRUPTED: Final = 75  # EX_TEMPFAIL
# Any other non-zero code is a retryable failure.

#: The trainer's container in a training pod (the operator reads its exit code).
TRAINER_CONTAINER: Final = "trainer"

# Identity of the resource a pod reports to (set by the operator through the
# downward API / plain values). Without them a workload reports to a local file.
ENV_RESOURCE_NAME: Final = "AZAION_RESOURCE_NAME"
ENV_RESOURCE_NAMESPACE: Final = "AZAION_RESOURCE_NAMESPACE"
#: The image the pod runs, recorded in what it publishes.
ENV_IMAGE: Final = "AZAION_IMAGE"

#: Extensions an image file may have on the data volume: what the consumer
#: writes is what dataset formation takes (ultralytics reads all of them).
IMAGE_EXTENSIONS: Final[tuple[str, ...]] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# The data root and its directory names (original-system.md).
ENV_ROOT_DIR: Final = "AZAION_ROOT_DIR"
ENV_DATA_DIR: Final = "AZAION_DATA_DIR"
ENV_DATA_SEED_DIR: Final = "AZAION_DATA_SEED_DIR"
ENV_DATA_DELETED_DIR: Final = "AZAION_DATA_DELETED_DIR"
DEFAULT_ROOT_DIR: Final = "/azaion"

# Where Secrets are mounted as files inside workload pods.
ENCRYPTION_KEY_MOUNT: Final = "/var/run/secrets/azaion/encryption"
ENCRYPTION_KEY_FILE: Final = f"{ENCRYPTION_KEY_MOUNT}/key"

# Liveness of a trainer: the workload touches this file at least once per
# progress event; the probe fails when it grows older than the allowed age.
ENV_HEARTBEAT_FILE: Final = "AZAION_HEARTBEAT_FILE"
HEARTBEAT_FILE: Final = "/tmp/azaion/heartbeat"  # noqa: S108 - an emptyDir in the pod
#: The liveness probe: ``python -m HEARTBEAT_PROBE_MODULE --max-age SECONDS`` in the training image.
HEARTBEAT_PROBE_MODULE: Final = "azaion_workloads.heartbeat"

# The consumer pod: its offset volume, its private broker CA, its HTTP port
# (probes and metrics).
CONSUMER_OFFSET_MOUNT: Final = "/var/lib/azaion-queue"
CONSUMER_OFFSET_FILE: Final = f"{CONSUMER_OFFSET_MOUNT}/offset.yaml"
CONSUMER_TLS_CA_MOUNT: Final = "/var/run/secrets/azaion/rabbitmq-ca"
CONSUMER_TLS_CA_FILE: Final = f"{CONSUMER_TLS_CA_MOUNT}/ca.crt"
CONSUMER_HTTP_PORT: Final = 8080
