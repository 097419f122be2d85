"""Pure builders of a TrainingRun's children: the per-attempt Job and its identity."""

from __future__ import annotations

from typing import Any

import azaion_contract as contract
from azaion_contract import LABEL_ATTEMPT, LABEL_MANAGED_BY, LABEL_TRAININGRUN, MANAGED_BY, TRAINER_CONTAINER
from azaion_contract.env import TRAINING_ENV
from azaion_contract.models.trainingrun import KIND, PLURAL, TrainingRunSpec
from azaion_operator.config import OperatorConfig
from azaion_operator.kit.names import job_name, trainer_service_account
from azaion_operator.kit.objects import (
    container_security_context,
    downward_env,
    env_from_spec,
    env_value,
    owner_reference,
    pod_security_context,
    status_reporter_identity,
)
from azaion_operator.trainingrun.kueue import PRIORITY_CLASS_LABEL, QUEUE_LABEL, local_queue

TMP_MOUNT = "/tmp"  # noqa: S108 - an emptyDir: the root filesystem is read-only


def run_labels(run: str) -> dict[str, str]:
    return {
        LABEL_TRAININGRUN: run,
        LABEL_MANAGED_BY: MANAGED_BY,
        "app.kubernetes.io/name": "azaion-trainer",
    }


def trainer_env(spec: TrainingRunSpec, namespace: str, name: str, config: OperatorConfig) -> list[dict[str, Any]]:
    """The trainer's settings: the spec through the contract's table, and who and where it is."""
    return [
        env_value(contract.ENV_ROOT_DIR, config.data_mount_path),
        env_value(contract.ENV_RESOURCE_NAME, name),
        env_value(contract.ENV_RESOURCE_NAMESPACE, namespace),
        *env_from_spec(TRAINING_ENV, spec),
        env_value(contract.ENV_HEARTBEAT_FILE, contract.HEARTBEAT_FILE),
        env_value("HOME", TMP_MOUNT),
        *downward_env(),
    ]


def trainer_resources(spec: TrainingRunSpec) -> dict[str, Any]:
    limits: dict[str, str] = {}
    if spec.resources.gpus > 0:
        limits["nvidia.com/gpu"] = str(spec.resources.gpus)
    if spec.resources.cpu:
        limits["cpu"] = spec.resources.cpu
    if spec.resources.memory:
        limits["memory"] = spec.resources.memory
    return {"limits": limits, "requests": dict(limits)}


def volumes(spec: TrainingRunSpec, data_mount_path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts: data, in-memory /dev/shm, writable /tmp, the encryption key."""
    vols: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": spec.storage.claim_name}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "data", "mountPath": data_mount_path},
        {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108 - the pod's own shared memory
        {"name": "tmp", "mountPath": TMP_MOUNT},
    ]
    key_ref = spec.publish.encryption_key_secret_ref
    if key_ref:
        vols.append(
            {
                "name": "encryption-key",
                "secret": {
                    "secretName": key_ref.name,
                    "items": [{"key": key_ref.key, "path": "key"}],
                    "defaultMode": 0o400,
                },
            }
        )
        mounts.append({"name": "encryption-key", "mountPath": contract.ENCRYPTION_KEY_MOUNT, "readOnly": True})
    return vols, mounts


def build_job(
    meta: dict[str, Any],
    spec: TrainingRunSpec,
    attempt: int,
    image: str,
    config: OperatorConfig,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The Job of attempt ``attempt`` of the TrainingRun described by ``meta``/``spec``."""
    name, namespace = meta["name"], meta["namespace"]
    labels = {**run_labels(name), LABEL_ATTEMPT: str(attempt)}
    vols, mounts = volumes(spec, config.data_mount_path)
    runtime_class = spec.resources.runtime_class_name or ("nvidia" if spec.resources.gpus > 0 else None)
    failure_rules: list[dict[str, Any]] = []
    permanent = sorted(set(spec.failure_policy.permanent_exit_codes))
    if permanent:  # the Job refuses a rule without exit codes; none means every failure is retried
        failure_rules.append(
            {
                # Bad configuration or data: another attempt would fail the same way.
                "action": "FailJob",
                "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "In", "values": permanent},
            }
        )
    failure_rules.append(
        {
            # Eviction, preemption, node drain: not the trainer's fault. The Job
            # replaces the pod (after the old one is gone) and it resumes.
            "action": "Ignore",
            "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
        }
    )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": trainer_service_account(name),
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "securityContext": pod_security_context(config.run_as_user),
        "nodeSelector": dict(spec.resources.node_selector),
        "tolerations": [t.wire() for t in spec.resources.tolerations],
        "containers": [
            {
                "name": TRAINER_CONTAINER,
                "image": image,
                "imagePullPolicy": config.image_pull_policy,
                "command": ["azaion-train", "run"],
                # The image, so the published manifest records what trained the model.
                "env": [*trainer_env(spec, namespace, name, config), env_value(contract.ENV_IMAGE, image)],
                "resources": trainer_resources(spec),
                "securityContext": container_security_context(),
                "volumeMounts": mounts,
                "livenessProbe": {
                    "exec": {
                        "command": [
                            "python",
                            "-m",
                            contract.HEARTBEAT_PROBE_MODULE,
                            "--max-age",
                            str(spec.liveness_timeout_seconds),
                        ]
                    },
                    "initialDelaySeconds": 60,
                    "periodSeconds": 60,
                    "timeoutSeconds": 20,
                    "failureThreshold": 2,
                },
            }
        ],
        "volumes": vols,
    }
    if runtime_class:
        pod_spec["runtimeClassName"] = runtime_class
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {"rules": failure_rules},
        "template": {
            "metadata": {
                "labels": {**spec.pod_labels, **labels},
                "annotations": dict(spec.pod_annotations),
            },
            "spec": pod_spec,
        },
    }
    if active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = active_deadline_seconds
    queue = local_queue(spec, config)
    if queue is not None:
        job_spec["suspend"] = True  # Kueue unsuspends it on admission
        labels = {**labels, QUEUE_LABEL: queue}
        if spec.workload_priority_class:
            labels[PRIORITY_CLASS_LABEL] = spec.workload_priority_class
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, attempt),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(KIND, meta)],
        },
        "spec": job_spec,
    }


def build_trainer_identity(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The identity the run's pods patch only this run's status with."""
    name = meta["name"]
    return status_reporter_identity(KIND, PLURAL, meta, trainer_service_account(name), run_labels(name))
