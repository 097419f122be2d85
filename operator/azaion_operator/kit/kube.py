"""The operator's I/O with the API server, in one place."""

from __future__ import annotations

import logging
from typing import Any

from azaion_contract import API_GROUP, API_VERSION
from azaion_contract.timefmt import rfc3339
from azaion_operator.kit.apiclient import ApiError, api_client

log = logging.getLogger(__name__)

#: The collections the operator creates in, by kind: (API path prefix, plural).
_COLLECTIONS = {
    "Job": ("/apis/batch/v1", "jobs"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Event": ("/api/v1", "events"),
}
_OURS = f"/apis/{API_GROUP}/{API_VERSION}"
_MERGE_PATCH = "application/merge-patch+json"


def _path(kind: str, namespace: str | None, name: str | None = None) -> str:
    prefix, plural = _COLLECTIONS[kind]
    where = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return f"{where}/{name}" if name else where


def _ours(plural: str, namespace: str | None = None, name: str | None = None) -> str:
    where = f"{_OURS}/namespaces/{namespace}/{plural}" if namespace else f"{_OURS}/{plural}"
    return f"{where}/{name}" if name else where


def _get_or_none(path: str) -> dict[str, Any] | None:
    try:
        return get(path)
    except ApiError as error:
        if error.status == 404:
            return None
        raise


def get(path: str) -> dict[str, Any]:
    """Any API path, read as it is (for APIs without a collection here, such as Kueue's visibility API)."""
    return api_client().request("GET", path)


def get_resource(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    return _get_or_none(_ours(plural, namespace, name))


#: Namespaces the operator manages; empty means all (set once at start-up).
WATCHED_NAMESPACES: list[str] = []


def manages(namespace: str) -> bool:
    return not WATCHED_NAMESPACES or namespace in WATCHED_NAMESPACES


#: How many resources one page of a listing holds.
LIST_PAGE = 250


def list_resources(plural: str, page: int = LIST_PAGE) -> list[dict[str, Any]]:
    """Every resource of ``plural`` in the cluster (the GPU queue spans namespaces), without
    their managedFields, which the operator never reads and which are most of a run's size.

    Read a page at a time, each page trimmed before the next is read: a thousand runs in
    one response would be tens of megabytes held at once. The pages are one consistent
    listing; when the API server has compacted it away (410), the listing starts over.
    """
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        query = {"limit": str(page), **({"continue": token} if token else {})}
        try:
            body = api_client().request("GET", _ours(plural), query)
        except ApiError as error:
            if error.status != 410 or not token:
                raise
            items, token = [], ""
            continue
        items.extend(without_managed_fields(item) for item in body["items"])
        token = (body.get("metadata") or {}).get("continue") or ""
        if not token:
            return items


def without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without its managedFields (a new dict; ``obj`` itself, when it has none)."""
    meta = obj.get("metadata") or {}
    if "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def list_managed(plural: str) -> list[dict[str, Any]]:
    """The resources this operator manages: all, or those in its watched namespaces."""
    if not WATCHED_NAMESPACES:
        return list_resources(plural)
    return [
        item
        for namespace in WATCHED_NAMESPACES
        for item in api_client().request("GET", _ours(plural, namespace))["items"]
    ]


def list_custom(group: str, version: str, plural: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """Another API's objects in one namespace (none when that API is not installed)."""
    path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}"
    try:
        return api_client().request("GET", path, {"labelSelector": label_selector})["items"]
    except ApiError as error:
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
    path = _ours(plural, namespace, name) + "/status"
    if resource_version is None:
        return api_client().request("PATCH", path, body=body, content_type=_MERGE_PATCH)
    body["metadata"] = {"resourceVersion": resource_version}
    try:
        return api_client().request("PATCH", path, body=body, content_type=_MERGE_PATCH)
    except ApiError as error:
        if error.status in (404, 409):
            return None
        raise


def create(obj: dict[str, Any]) -> bool:
    """Create ``obj``; False when it already exists (a replayed decision)."""
    if obj["kind"] not in _COLLECTIONS:
        raise ValueError(f"no create for kind {obj['kind']}")
    try:
        api_client().request("POST", _path(obj["kind"], obj["metadata"]["namespace"]), body=obj)
        return True
    except ApiError as error:
        if error.status == 409:
            return False
        raise


def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    return _get_or_none(_path("Job", namespace, name))


def list_pods(namespace: str | None, label_selector: str) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
    return api_client().request("GET", path, {"labelSelector": label_selector})["items"]


def list_nodes() -> list[dict[str, Any]]:
    return api_client().request("GET", "/api/v1/nodes")["items"]


_IN_BACKGROUND = {"propagationPolicy": "Background"}


def delete_job(namespace: str, name: str) -> None:
    try:
        api_client().request("DELETE", _path("Job", namespace, name), _IN_BACKGROUND)
    except ApiError as error:
        if error.status != 404:
            raise


def delete_jobs(namespace: str, label_selector: str) -> None:
    api_client().request("DELETE", _path("Job", namespace), {**_IN_BACKGROUND, "labelSelector": label_selector})


FIELD_MANAGER = "azaion-operator"


def apply_deployment(obj: dict[str, Any]) -> None:
    """Server-side apply: the Deployment ends up exactly as built, whoever touched it."""
    meta = obj["metadata"]
    api_client().request(
        "PATCH",
        _path("Deployment", meta["namespace"], meta["name"]),
        {"fieldManager": FIELD_MANAGER, "force": "true"},
        body=obj,  # JSON is YAML
        content_type="application/apply-patch+yaml",
    )


def claim_exists(namespace: str, name: str) -> bool:
    return _get_or_none(_path("PersistentVolumeClaim", namespace, name)) is not None


def api_message(error: ApiError) -> str:
    """The API server's own words for a refusal (its Status message), else the HTTP reason."""
    return error.message()


def read_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    return _get_or_none(_path("Deployment", namespace, name))


def post_event(obj: dict[str, Any], event_type: str, reason: str, message: str) -> None:
    """An Event on ``obj`` (best effort: a lost Event must not fail a reconcile).

    Posted directly rather than through kopf, because decisions are also made
    outside kopf's handler context (the resync loop).
    """
    meta = obj["metadata"]
    now = rfc3339()
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
        api_client().request("POST", _path("Event", meta["namespace"]), body=event)
    except ApiError as error:
        log.warning("could not post event %s on %s: %s", reason, meta["name"], error.reason)
