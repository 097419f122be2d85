"""The operator's I/O with the API server, in one place."""

from __future__ import annotations

import functools
import json
import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from azaion_contract import API_GROUP, API_VERSION

log = logging.getLogger(__name__)


#: Longest one API call may take (seconds). Without a bound, one stuck connection holds a
#: worker thread, and the periodic resync waiting on it, forever.
REQUEST_TIMEOUT_SECONDS = 60.0


class BoundedApiClient(client.ApiClient):
    """An API client whose every call has a timeout, unless the caller gives one."""

    def call_api(  # type: ignore[no-untyped-def]
        self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None
    ):
        timeout = REQUEST_TIMEOUT_SECONDS if _request_timeout is None else _request_timeout
        return super().call_api(method, url, header_params, body, post_params, _request_timeout=timeout)


#: How the operator's own calls show in the API server's audit log (kopf's say ``kopf/...``).
USER_AGENT = "azaion-operator"
#: Connections kept open to the API server. The client's default (five per CPU)
#: is below the threads that call it at once in a burst (kopf's workers, the
#: follow-ups, the resync, the queue's wake), and each call past it pays a new
#: TLS handshake.
CONNECTION_POOL_SIZE = 32


@functools.cache
def api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    api = BoundedApiClient(configuration)
    api.user_agent = USER_AGENT
    return api


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())


def core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


def batch() -> client.BatchV1Api:
    return client.BatchV1Api(api_client())


def get_resource(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return custom().get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


#: Namespaces the operator manages; empty means all (set once at start-up).
WATCHED_NAMESPACES: list[str] = []


def manages(namespace: str) -> bool:
    return not WATCHED_NAMESPACES or namespace in WATCHED_NAMESPACES


def list_resources(plural: str) -> list[dict[str, Any]]:
    """Every resource of ``plural`` in the cluster (the GPU queue spans namespaces)."""
    return custom().list_cluster_custom_object(API_GROUP, API_VERSION, plural)["items"]


def list_managed(plural: str) -> list[dict[str, Any]]:
    """The resources this operator manages: all, or those in its watched namespaces."""
    if not WATCHED_NAMESPACES:
        return list_resources(plural)
    return [
        item
        for namespace in WATCHED_NAMESPACES
        for item in custom().list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural)["items"]
    ]


def list_custom(group: str, version: str, plural: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """Another API's objects in one namespace (none when that API is not installed)."""
    try:
        return custom().list_namespaced_custom_object(group, version, namespace, plural, label_selector=label_selector)[
            "items"
        ]
    except ApiException as error:
        if error.status == 404:
            return []
        raise


def patch_status(
    plural: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
) -> dict[str, Any] | None:
    """Merge ``status`` into the resource's status; the resource as the API server stored it.

    With ``resource_version`` the patch applies only if the resource is still at
    that version, and None says it changed meanwhile (409 Conflict) or is gone.
    """
    body: dict[str, Any] = {"status": status}
    if resource_version is None:
        return custom().patch_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace, plural, name, body)
    body["metadata"] = {"resourceVersion": resource_version}
    try:
        return custom().patch_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace, plural, name, body)
    except ApiException as error:
        if error.status in (404, 409):
            return None
        raise


def create(obj: dict[str, Any]) -> bool:
    """Create ``obj``; False when it already exists (a replayed decision)."""
    try:
        _dynamic_create(obj)
        return True
    except ApiException as error:
        if error.status == 409:
            return False
        raise


def _dynamic_create(obj: dict[str, Any]) -> None:
    namespace = obj["metadata"]["namespace"]
    kind = obj["kind"]
    raw = {"_preload_content": False}  # the created object is not read back
    if kind == "Job":
        response = batch().create_namespaced_job(namespace, obj, **raw)
    elif kind == "ServiceAccount":
        response = core().create_namespaced_service_account(namespace, obj, **raw)
    elif kind == "PersistentVolumeClaim":
        response = core().create_namespaced_persistent_volume_claim(namespace, obj, **raw)
    elif kind == "Role":
        response = client.RbacAuthorizationV1Api(api_client()).create_namespaced_role(namespace, obj, **raw)
    elif kind == "RoleBinding":
        response = client.RbacAuthorizationV1Api(api_client()).create_namespaced_role_binding(namespace, obj, **raw)
    elif kind == "Deployment":
        response = client.AppsV1Api(api_client()).create_namespaced_deployment(namespace, obj, **raw)
    else:
        raise ValueError(f"no create for kind {kind}")
    _json(response)


def _json(response: Any) -> Any:
    """A response read with ``_preload_content=False``, as plain JSON.

    The typed models the client otherwise builds (and the operator would turn
    back into dicts) cost more CPU than the rest of a reconcile. The body is read
    to its end and the connection handed back to the pool: one left unread is
    never reused, and every later call would pay a new TLS handshake.
    """
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _json(batch().read_namespaced_job(name, namespace, _preload_content=False))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def list_pods(namespace: str | None, label_selector: str) -> list[dict[str, Any]]:
    if namespace is None:
        pods = core().list_pod_for_all_namespaces(label_selector=label_selector, _preload_content=False)
    else:
        pods = core().list_namespaced_pod(namespace, label_selector=label_selector, _preload_content=False)
    return _json(pods)["items"]


def list_nodes() -> list[dict[str, Any]]:
    return _json(core().list_node(_preload_content=False))["items"]


def delete_job(namespace: str, name: str) -> None:
    try:
        batch().delete_namespaced_job(name, namespace, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


def delete_jobs(namespace: str, label_selector: str) -> None:
    batch().delete_collection_namespaced_job(namespace, label_selector=label_selector, propagation_policy="Background")


FIELD_MANAGER = "azaion-operator"


def apply_deployment(obj: dict[str, Any]) -> None:
    """Server-side apply: the Deployment ends up exactly as built, whoever touched it."""
    client.AppsV1Api(api_client()).patch_namespaced_deployment(
        obj["metadata"]["name"],
        obj["metadata"]["namespace"],
        obj,
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
    )


def claim_exists(namespace: str, name: str) -> bool:
    try:
        core().read_namespaced_persistent_volume_claim(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def api_message(error: ApiException) -> str:
    """The API server's own words for a refusal (its Status message), else the HTTP reason."""
    try:
        return json.loads(error.body or "{}").get("message") or str(error.reason)
    except (ValueError, AttributeError):
        return str(error.reason)


def read_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _json(client.AppsV1Api(api_client()).read_namespaced_deployment(name, namespace, _preload_content=False))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def post_event(obj: dict[str, Any], event_type: str, reason: str, message: str) -> None:
    """An Event on ``obj`` (best effort: a lost Event must not fail a reconcile).

    Posted directly rather than through kopf, because decisions are also made
    outside kopf's handler context (the resync loop).
    """
    meta = obj["metadata"]
    now = datetime.now(UTC)
    event = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        _json(core().create_namespaced_event(meta["namespace"], event, _preload_content=False))
    except ApiException as error:
        log.warning("could not post event %s on %s: %s", reason, meta["name"], error.reason)
