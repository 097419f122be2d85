"""The contract between the operator and the programs it runs in pods.

Both sides import this package and it imports neither: the API group and
kinds, labels, exit codes, mounts and environment names (:mod:`.pod`), the
resource models (:mod:`.models`), and the table that maps each spec field to
the environment variable the workload reads it from (:mod:`.env`). A rename
here breaks both sides at once instead of letting them drift apart.
"""

from __future__ import annotations

from azaion_contract.api import (
    ANNOTATIONCONSUMER_KIND,
    ANNOTATIONCONSUMER_PLURAL,
    API_GROUP,
    API_VERSION,
    LABEL_ANNOTATIONCONSUMER,
    LABEL_ATTEMPT,
    LABEL_MANAGED_BY,
    LABEL_TRAININGRUN,
    MANAGED_BY,
    TRAININGRUN_KIND,
    TRAININGRUN_PLURAL,
)
from azaion_contract.pod import (
    CONSUMER_HTTP_PORT,
    CONSUMER_OFFSET_FILE,
    CONSUMER_OFFSET_MOUNT,
    CONSUMER_TLS_CA_FILE,
    CONSUMER_TLS_CA_MOUNT,
    DEFAULT_ROOT_DIR,
    ENCRYPTION_KEY_FILE,
    ENCRYPTION_KEY_MOUNT,
    ENV_DATA_DELETED_DIR,
    ENV_DATA_DIR,
    ENV_DATA_SEED_DIR,
    ENV_HEARTBEAT_FILE,
    ENV_IMAGE,
    ENV_RESOURCE_NAME,
    ENV_RESOURCE_NAMESPACE,
    ENV_ROOT_DIR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PERMANENT,
    HEARTBEAT_FILE,
    HEARTBEAT_PROBE_MODULE,
    IMAGE_EXTENSIONS,
    TRAINER_CONTAINER,
)

__all__ = [
    "ANNOTATIONCONSUMER_KIND",
    "ANNOTATIONCONSUMER_PLURAL",
    "API_GROUP",
    "API_VERSION",
    "CONSUMER_HTTP_PORT",
    "CONSUMER_OFFSET_FILE",
    "CONSUMER_OFFSET_MOUNT",
    "CONSUMER_TLS_CA_FILE",
    "CONSUMER_TLS_CA_MOUNT",
    "DEFAULT_ROOT_DIR",
    "ENCRYPTION_KEY_FILE",
    "ENCRYPTION_KEY_MOUNT",
    "ENV_DATA_DELETED_DIR",
    "ENV_DATA_DIR",
    "ENV_DATA_SEED_DIR",
    "ENV_HEARTBEAT_FILE",
    "ENV_IMAGE",
    "ENV_RESOURCE_NAME",
    "ENV_RESOURCE_NAMESPACE",
    "ENV_ROOT_DIR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PERMANENT",
    "HEARTBEAT_FILE",
    "HEARTBEAT_PROBE_MODULE",
    "IMAGE_EXTENSIONS",
    "LABEL_ANNOTATIONCONSUMER",
    "LABEL_ATTEMPT",
    "LABEL_MANAGED_BY",
    "LABEL_TRAININGRUN",
    "MANAGED_BY",
    "TRAINER_CONTAINER",
    "TRAININGRUN_KIND",
    "TRAININGRUN_PLURAL",
]
