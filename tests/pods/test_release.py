"""The chart installed with this checkout's images: admitted under the restricted profile, healthy, testable."""

from __future__ import annotations

import re
import time

import pytest
from kubernetes import client

from tests.pods.conftest import RELEASE_NAMESPACE, Release

pytestmark = pytest.mark.e2e


def operator_pod(api_client, release: Release) -> client.V1Pod:
    pods = (
        client.CoreV1Api(api_client)
        .list_namespaced_pod(release.namespace, label_selector="app.kubernetes.io/component=operator")
        .items
    )
    live = [pod for pod in pods if pod.metadata.deletion_timestamp is None]
    assert len(live) == 1, [pod.metadata.name for pod in pods]
    return live[0]


def test_the_operator_pod_runs_its_image_restricted_and_stays_live(api_client, release: Release) -> None:
    namespace = client.CoreV1Api(api_client).read_namespace(RELEASE_NAMESPACE)
    assert namespace.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = operator_pod(api_client, release)
    (container,) = pod.spec.containers
    assert container.image == release.images.ref("operator")
    (state,) = pod.status.container_statuses
    assert state.ready and state.state.running, state
    assert "://" in state.container_id, "a real container runs"
    assert pod.spec.security_context.run_as_non_root is True
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.capabilities.drop == ["ALL"]
    # Its only credential is the ServiceAccount token the kubelet projects.
    assert not [e for e in container.env or [] if e.value_from and e.value_from.secret_key_ref]
    assert not [v for v in pod.spec.volumes if v.secret], "no Secret volumes"
    assert pod.spec.service_account_name

    probe = container.liveness_probe
    assert probe and probe.http_get, "the kubelet probes the operator's liveness endpoint"
    # Outlive a few probe periods: a failing probe would restart the container.
    time.sleep(probe.period_seconds * 2 + (probe.initial_delay_seconds or 0))
    (state,) = operator_pod(api_client, release).status.container_statuses
    assert state.restart_count == 0 and state.ready, state


def test_helm_test_passes_against_the_running_operator(release: Release) -> None:
    # The test pod is deleted once it succeeds (so uninstall leaves nothing behind):
    # its own checks decide, and helm reports its phase.
    result = release.helm("test", release.name, "-n", release.namespace, "--timeout", "3m", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Phase:\s+Succeeded", result.stdout), result.stdout
