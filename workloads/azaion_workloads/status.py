"""Reporting a workload's state to its own custom resource's status.

In a cluster (``AZAION_RESOURCE_NAME`` set and a service-account token mounted)
the reporter merge-patches the resource's ``status`` subresource, touching only
the keys the workload owns; the operator owns phase and conditions. Outside a
cluster it writes the same document to a local JSON file, so a run by hand
shows its progress too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

import azaion_contract as contract
from azaion_contract.models.common import StatusModel
from azaion_workloads.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

_SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


M = TypeVar("M", bound=StatusModel)


def build(model: type[M], /, **fields: Any) -> M:
    """A status model from Python field names; an unknown (or camelCase) name raises ``TypeError``."""
    return model.strict(**fields)


def patch(model: BaseModel) -> dict[str, Any]:
    """The merge-patch document of ``model``: camelCase, only the keys that were set.

    Status reports are merge patches, so a key left out keeps its value on
    the server while a key sent as null would delete it: send only set keys.
    """
    return model.model_dump(by_alias=True, exclude_unset=True, exclude_none=True, mode="json")


class StatusReporter(Protocol):
    def report(self, fields: dict[str, Any]) -> None:
        """Merge ``fields`` into the resource's status (best effort)."""


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class FileStatusReporter:
    """Keeps the status document in a JSON file (runs outside a cluster)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}

    def report(self, fields: dict[str, Any]) -> None:
        document = _deep_merge(self.read(), fields)
        atomic_write_bytes(self.path, json.dumps(document, indent=2, sort_keys=True).encode())


class KubernetesStatusReporter:
    """Merge-patches ``status`` of one custom resource through the API server.

    A failed patch is logged and dropped: progress reporting must never stop
    training or consuming. The next report carries the newest values anyway.
    """

    def __init__(self, plural: str, namespace: str, name: str, api: Any | None = None) -> None:
        self.plural, self.namespace, self.name = plural, namespace, name
        if api is None:
            from kubernetes import client, config

            if _SERVICE_ACCOUNT_TOKEN.exists():
                config.load_incluster_config()
            else:
                config.load_kube_config()
            api = client.CustomObjectsApi()
        self._api = api

    def report(self, fields: dict[str, Any]) -> None:
        try:
            self._api.patch_namespaced_custom_object_status(
                contract.API_GROUP,
                contract.API_VERSION,
                self.namespace,
                self.plural,
                self.name,
                {"status": fields},
                _request_timeout=10,
            )
        except Exception as error:  # any API or network error: report later
            log.warning("status report to %s/%s failed: %s", self.plural, self.name, error)


def reporter_from_env(plural: str, fallback_file: Path) -> StatusReporter:
    """The Kubernetes reporter inside a pod that names its resource, else a file."""
    name = os.environ.get(contract.ENV_RESOURCE_NAME)
    namespace = os.environ.get(contract.ENV_RESOURCE_NAMESPACE, "default")
    if name and _SERVICE_ACCOUNT_TOKEN.exists():
        return KubernetesStatusReporter(plural, namespace, name)
    return FileStatusReporter(fallback_file)
