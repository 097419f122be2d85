"""Pieces every child object shares: owner references, security contexts, env."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from azaion_contract import API_GROUP, API_VERSION
from azaion_contract.env import Binding, SecretKey, encode

RBAC_API = "rbac.authorization.k8s.io"


def owner_reference(kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Makes the child go away with its resource (garbage collection)."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_security_context(run_as_user: int) -> dict[str, Any]:
    """Restricted pod security standard: non-root, default seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "runAsGroup": run_as_user,
        "fsGroup": run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }


def env_value(name: str, value: object) -> dict[str, Any]:
    return {"name": name, "value": encode(value)}


def env_from_secret(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    """An env var filled by the kubelet from a Secret: the value never appears in the spec."""
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def env_from_spec(table: Iterable[Binding], spec: Any) -> list[dict[str, Any]]:
    """The pod's environment for ``spec``, one entry per binding of the contract's table that has a value."""
    env = []
    for binding in table:
        value = binding.value(spec)
        if value is None:
            continue
        if isinstance(value, SecretKey):
            env.append(env_from_secret(binding.env, value.secret, value.key, value.optional))
        else:
            env.append(env_value(binding.env, value))
    return env


def downward_env() -> list[dict[str, Any]]:
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]


def status_reporter_identity(
    kind: str, plural: str, meta: dict[str, Any], account: str, labels: dict[str, str]
) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding that may only read and patch one resource's status.

    Workload pods report progress with it; they can touch nothing else, not
    even their own resource's spec or another resource's status.
    """
    namespace = meta["namespace"]
    common = {"namespace": namespace, "labels": labels, "ownerReferences": [owner_reference(kind, meta)]}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, **common}},
        {
            "apiVersion": f"{RBAC_API}/v1",
            "kind": "Role",
            "metadata": {"name": account, **common},
            "rules": [
                {
                    "apiGroups": [API_GROUP],
                    "resources": [f"{plural}/status"],
                    "resourceNames": [meta["name"]],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": f"{RBAC_API}/v1",
            "kind": "RoleBinding",
            "metadata": {"name": account, **common},
            "roleRef": {"apiGroup": RBAC_API, "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]
