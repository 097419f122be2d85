"""The contract between the operator and the programs it runs.

The operator builds Jobs and Deployments from these names; the workloads read
them. Keeping them in one module means a rename breaks both sides at once
instead of silently drifting apart.
"""

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

API_GROUP: Final = "ai.azaion.com"
API_VERSION: Final = "v1alpha1"
TRAININGRUN_PLURAL: Final = "trainingruns"
ANNOTATIONCONSUMER_PLURAL: Final = "annotationconsumers"

# Identity of the resource a pod reports to (set by the operator through the
# downward API / plain values). Without them a workload reports to a local file.
ENV_RESOURCE_NAME: Final = "AZAION_RESOURCE_NAME"
ENV_RESOURCE_NAMESPACE: Final = "AZAION_RESOURCE_NAMESPACE"

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
HEARTBEAT_FILE: Final = "/tmp/azaion/heartbeat"  # noqa: S108 - an emptyDir in the pod
