"""Pure builders of an AnnotationConsumer's children: Deployment, offset claim, identity."""

from __future__ import annotations

from typing import Any

import azaion_contract as contract
from azaion_contract import LABEL_ANNOTATIONCONSUMER, LABEL_MANAGED_BY, MANAGED_BY
from azaion_contract.env import CONSUMER_ENV
from azaion_contract.models.annotationconsumer import KIND, PLURAL, AnnotationConsumerSpec
from azaion_operator.config import OperatorConfig
from azaion_operator.kit.names import bounded
from azaion_operator.kit.objects import (
    container_security_context,
    env_from_spec,
    env_value,
    owner_reference,
    pod_security_context,
    status_reporter_identity,
)

CONTAINER = "consumer"
HTTP_PORT = contract.CONSUMER_HTTP_PORT


def deployment_name(name: str) -> str:
    return bounded(name, "-consumer")


def offset_claim_name(name: str) -> str:
    return bounded(name, "-offset", 253)


def service_account_name(name: str) -> str:
    return bounded(name, "-consumer", 253)


def consumer_labels(name: str) -> dict[str, str]:
    return {
        LABEL_ANNOTATIONCONSUMER: name,
        LABEL_MANAGED_BY: MANAGED_BY,
        "app.kubernetes.io/name": "azaion-annotation-consumer",
    }


def consumer_env(meta: dict[str, Any], spec: AnnotationConsumerSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """The consumer's settings: the spec through the contract's table, and who and where it is."""
    return [
        *env_from_spec(CONSUMER_ENV, spec),
        env_value("QUEUE_OFFSET_FILE", contract.CONSUMER_OFFSET_FILE),
        env_value("QUEUE_CONSUMER_NAME", f"{meta['namespace']}.{meta['name']}"),
        env_value("QUEUE_HTTP_PORT", contract.CONSUMER_HTTP_PORT),
        env_value(contract.ENV_ROOT_DIR, config.data_mount_path),
        env_value(contract.ENV_RESOURCE_NAME, meta["name"]),
        env_value(contract.ENV_RESOURCE_NAMESPACE, meta["namespace"]),
    ]


def build_deployment(meta: dict[str, Any], spec: AnnotationConsumerSpec, config: OperatorConfig) -> dict[str, Any]:
    """One replica, Recreate: never two consumers on one offset file."""
    name, namespace = meta["name"], meta["namespace"]
    labels = consumer_labels(name)
    limits = {k: v for k, v in (("cpu", spec.resources.cpu), ("memory", spec.resources.memory)) if v}
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": spec.data_volume.claim_name}},
        {"name": "offset", "persistentVolumeClaim": {"claimName": offset_claim_name(name)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "data", "mountPath": config.data_mount_path},
        {"name": "offset", "mountPath": contract.CONSUMER_OFFSET_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir; the root filesystem is read-only
    ]
    ca = spec.rabbitmq.tls.ca_secret_ref
    if ca:
        volumes.append(
            {"name": "rabbitmq-ca", "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]}}
        )
        mounts.append({"name": "rabbitmq-ca", "mountPath": contract.CONSUMER_TLS_CA_MOUNT, "readOnly": True})
    container = {
        "name": CONTAINER,
        "image": spec.image or config.queue_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["azaion-queue"],
        "env": consumer_env(meta, spec, config),
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": {"limits": limits, "requests": dict(limits)},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 2,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(KIND, meta)],
        },
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {LABEL_ANNOTATIONCONSUMER: name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": service_account_name(name),
                    "securityContext": pod_security_context(config.run_as_user),
                    "terminationGracePeriodSeconds": 30,
                    "nodeSelector": dict(spec.resources.node_selector),
                    "tolerations": [toleration.wire() for toleration in spec.resources.tolerations],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def build_offset_claim(meta: dict[str, Any], spec: AnnotationConsumerSpec) -> dict[str, Any]:
    """The offset volume; owned by the resource only when it should die with it."""
    volume = spec.offset_volume
    metadata: dict[str, Any] = {
        "name": offset_claim_name(meta["name"]),
        "namespace": meta["namespace"],
        "labels": consumer_labels(meta["name"]),
    }
    if volume.delete_policy == "Delete":
        metadata["ownerReferences"] = [owner_reference(KIND, meta)]
    claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": volume.size}}}
    if volume.storage_class_name:
        claim_spec["storageClassName"] = volume.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": claim_spec}


def build_consumer_identity(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding allowing only patches of this resource's status."""
    name = meta["name"]
    return status_reporter_identity(KIND, PLURAL, meta, service_account_name(name), consumer_labels(name))
