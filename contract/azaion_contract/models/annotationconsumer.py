"""The AnnotationConsumer custom resource: the RabbitMQ stream consumer as a Deployment."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from azaion_contract.api import ANNOTATIONCONSUMER_KIND, ANNOTATIONCONSUMER_PLURAL
from azaion_contract.models import rules
from azaion_contract.models.common import ApiModel, ReconciledStatus, SecretKeyRef, Toleration

KIND = ANNOTATIONCONSUMER_KIND
PLURAL = ANNOTATIONCONSUMER_PLURAL
SINGULAR = "annotationconsumer"
SHORT_NAMES = ["ac"]

DURATION_PATTERN = r"^([0-9]+(s|m|h))+$"
# The longest duration CEL's duration() (a Go time.Duration) can hold.
_MAX_DURATION_SECONDS = (2**63 - 1) // 10**9


def duration_seconds(value: str) -> int:
    """``"1h30m"`` -> 5400."""
    total, number = 0, ""
    for char in value:
        if char.isdigit():
            number += char
        else:
            total += int(number) * {"s": 1, "m": 60, "h": 3600}[char]
            number = ""
    return total


class RabbitMQCredentialsRef(ApiModel):
    """A Secret with the stream user's name and password."""

    name: rules.DnsSubdomain
    """Name of the Secret."""
    username_key: rules.SecretKey = "username"
    """Key of the user name in the Secret."""
    password_key: rules.SecretKey = "password"  # noqa: S105 - a key name, not a secret
    """Key of the password in the Secret."""


class TLSSpec(ApiModel):
    """TLS to the broker."""

    cel_rules = (
        # A CA that is never used is a mistake (TLS forgotten), not a setting.
        rules.Rule(
            "!has(self.caSecretRef) || self.enabled",
            "a CA certificate needs enabled: true (TLS is off)",
            lambda tls: tls.ca_secret_ref is None or tls.enabled,
            field="caSecretRef",
        ),
    )

    enabled: bool = False
    """Connect with TLS."""
    ca_secret_ref: SecretKeyRef | None = None
    """A private CA certificate (PEM) to verify the broker with; the system CAs when unset."""


class RabbitMQSpec(ApiModel):
    """Where the annotation stream lives."""

    host: Annotated[str, Field(min_length=1, max_length=253), rules.HOST]
    """Broker host name or IP address (the port, TLS and credentials have fields of their own)."""
    port: int = Field(default=5552, ge=1, le=65535)
    """Stream protocol port."""
    vhost: str = Field(default="/", min_length=1)
    """Virtual host."""
    stream: str = Field(default="azaion-annotations", min_length=1, max_length=255)
    """Stream name."""
    credentials_secret_ref: RabbitMQCredentialsRef
    """Secret with the user name and password (never put them in the spec)."""
    tls: TLSSpec = Field(default_factory=TLSSpec)
    """TLS settings."""


class DataVolumeSpec(ApiModel):
    """The data volume the annotations are written to."""

    claim_name: rules.DnsSubdomain
    """PersistentVolumeClaim holding the data root."""


class OffsetVolumeSpec(ApiModel):
    """The consumer's own volume for its stream offset."""

    size: rules.Quantity = "1Gi"
    """Requested size (a positive quantity)."""
    storage_class_name: rules.DnsSubdomain | None = None
    """StorageClass; the cluster default when unset."""
    delete_policy: Literal["Retain", "Delete"] = "Retain"
    """Retain keeps the volume (and the offset) when the resource is deleted; Delete removes it."""


class ConsumerResources(ApiModel):
    """CPU, memory and placement of the consumer pod."""

    cpu: rules.Quantity | None = None
    """CPU request and limit (a positive quantity)."""
    memory: rules.Quantity | None = None
    """Memory request and limit (a positive quantity)."""
    node_selector: rules.Labels = Field(default_factory=dict)
    """Node labels the pod must match (the node that mounts the data volume, on a multi-node cluster)."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=rules.MAX_LABELS)
    """Taints the pod tolerates."""


class OffsetCommit(ApiModel):
    """How often the offset is stored (always also at shutdown)."""

    every_messages: int = Field(default=500, ge=1, le=100000)
    """Store after this many messages."""
    interval_milliseconds: int = Field(default=1000, ge=10, le=600000)
    """... or after this much time, whichever comes first."""


class DiskThresholds(ApiModel):
    """Data-volume usage thresholds."""

    cel_rules = (
        rules.Rule(
            "self.warnPercent < self.criticalPercent",
            "must be below criticalPercent (the warning comes before consuming stops)",
            lambda disk: disk.warn_percent < disk.critical_percent,
            field="warnPercent",
        ),
    )

    warn_percent: int = Field(default=80, ge=1, le=100)
    """Warn (DiskPressure condition) above this usage."""
    critical_percent: int = Field(default=95, ge=1, le=100)
    """Stop consuming (not ready) above this usage instead of failing writes."""


class AnnotationConsumerSpec(ApiModel):
    """Desired state of an AnnotationConsumer."""

    image: rules.Image | None = None
    """Consumer image; the operator's configured default when unset."""
    rabbitmq: RabbitMQSpec
    """The stream to read."""
    data_volume: DataVolumeSpec
    """The data volume."""
    offset_volume: OffsetVolumeSpec = Field(default_factory=OffsetVolumeSpec)
    """The offset volume (created by the operator when absent)."""
    resources: ConsumerResources = Field(default_factory=ConsumerResources)
    """Container resources."""
    start_from: Annotated[
        str,
        Field(max_length=64),
        # timestamp() fails on a time that does not exist (February 30th, hour 25):
        # the API server then refuses the object with this rule's message.
        rules.Rule(
            f"self in ['first', 'last', 'next'] || (self.matches('{rules.cel_string(rules.RFC3339_PATTERN)}')"
            " && timestamp(self) >= timestamp('0001-01-01T00:00:00Z'))",
            "must be first, last, next or an RFC 3339 time that exists, e.g. 2026-01-31T12:00:00Z",
            lambda value: value in ("first", "last", "next") or rules.is_rfc3339(value),
        ),
    ] = "first"
    """Where to start when no offset is stored: first, last, next, or an RFC 3339 time."""
    offset_commit: OffsetCommit = Field(default_factory=OffsetCommit)
    """Offset batching."""
    disk: DiskThresholds = Field(default_factory=DiskThresholds)
    """Disk thresholds."""
    stall_after: Annotated[
        str,
        Field(max_length=32),
        rules.Rule(
            f"self.matches('{DURATION_PATTERN}') && duration(self) > duration('0s')",
            "must be a positive duration of hours, minutes and seconds, e.g. 30m or 1h30m",
            lambda value: (
                re.fullmatch(DURATION_PATTERN, value) is not None
                and 0 < duration_seconds(value) <= _MAX_DURATION_SECONDS
            ),
        ),
    ] = "30m"
    """Report Stalled when the offset has not advanced this long while messages wait, or reports stop."""


class ConsumerPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    DEGRADED = "Degraded"


class AnnotationConsumerStatus(ReconciledStatus):
    """Observed state. The operator writes phase, conditions and bookkeeping; the consumer its counters."""

    phase: ConsumerPhase | None = None
    """Pending, Running or Degraded (running but stalled or short of disk); conditions: Available,
    Progressing, Stalled and DiskPressure."""
    deployment_name: str | None = None
    """The consumer Deployment."""
    offset_claim_name: str | None = None
    """The offset PersistentVolumeClaim."""
    offset_changed_at: str | None = None
    """When the operator last saw the offset advance (RFC 3339)."""
    seen_offset: int | None = None
    """The offset the operator last compared against."""
    offset: int | None = None
    """Offset of the last message whose effects are durable (reported; the stored offset may trail by one batch)."""
    messages_processed: int | None = None
    """Messages applied in total, stored with the offset so replays count once (reported)."""
    messages_quarantined: int | None = None
    """Messages quarantined in total (reported)."""
    messages_waiting: int | None = None
    """Messages in the stream after the offset, when known (reported)."""
    last_message_time: str | None = None
    """When the broker stored the last processed message (reported, RFC 3339)."""
    disk_usage_percent: float | None = None
    """Data-volume usage (reported)."""
    connected: bool | None = None
    """Whether the consumer is connected to the broker (reported)."""
    reported_at: str | None = None
    """When the consumer last reported (RFC 3339)."""
