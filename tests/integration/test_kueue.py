"""TrainingRuns queued by the real Kueue: quota, admission, preemption, deletion.

Kueue's controller (built from its Go module) admits the runs' Jobs from a
ClusterQueue with a quota of one GPU; pods are played by kwok
(``azaion.local/hold`` keeps a trainer running, see hack/kwok-stages.yaml).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from azaion_devtools.cluster import KWOK_NODE_ANNOTATION
from azaion_devtools.processes import wait_until
from tests.integration.test_trainingrun_operator import (
    HOLD,
    create_run,
    jobs_of,
    pods_of,
    release,
    run_body,
    status_of,
    wait_phase,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator", "data_claim", "kueue")]

KUEUE = ("kueue.x-k8s.io", "v1beta2")


def _create(api_client, plural: str, body: dict[str, Any], namespace: str | None = None) -> None:
    api = client.CustomObjectsApi(api_client)
    if namespace is None:
        api.create_cluster_custom_object(*KUEUE, plural, body)
    else:
        api.create_namespaced_custom_object(*KUEUE, namespace, plural, body)


@pytest.fixture
def local_queue(api_client, namespace: str) -> Iterator[str]:
    """A LocalQueue in the test's namespace, on a ClusterQueue of one GPU that preempts lower priorities."""
    with _queues(api_client, namespace, gpus=1) as suffix:
        yield suffix


@contextlib.contextmanager
def _queues(api_client, namespace: str, gpus: int) -> Iterator[str]:
    """The LocalQueue ``gpus`` in ``namespace`` on a ClusterQueue of ``gpus`` GPUs, and two priorities."""
    suffix = uuid.uuid4().hex[:6]
    flavor, cluster_queue = f"gpu-{suffix}", f"gpus-{suffix}"
    _create(
        api_client,
        "resourceflavors",
        {"apiVersion": "/".join(KUEUE), "kind": "ResourceFlavor", "metadata": {"name": flavor}},
    )
    resources = [
        {"name": "nvidia.com/gpu", "nominalQuota": gpus},
        {"name": "cpu", "nominalQuota": 64},
        {"name": "memory", "nominalQuota": "512Gi"},
    ]
    _create(
        api_client,
        "clusterqueues",
        {
            "apiVersion": "/".join(KUEUE),
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": [r["name"] for r in resources],
                        "flavors": [{"name": flavor, "resources": resources}],
                    }
                ],
            },
        },
    )
    body = {
        "apiVersion": "/".join(KUEUE),
        "kind": "LocalQueue",
        "metadata": {"name": "gpus"},
        "spec": {"clusterQueue": cluster_queue},
    }
    _create(api_client, "localqueues", body, namespace)
    scheduling = client.SchedulingV1Api(api_client)
    for name, value in ((f"low-{suffix}", 10), (f"high-{suffix}", 1000)):
        scheduling.create_priority_class(client.V1PriorityClass(metadata=client.V1ObjectMeta(name=name), value=value))
        # Kueue's own priorities: the same names, for workloads only.
        wpc = {"apiVersion": "/".join(KUEUE), "kind": "WorkloadPriorityClass", "metadata": {"name": name}}
        _create(api_client, "workloadpriorityclasses", {**wpc, "value": value})
    try:
        yield suffix
    finally:
        _delete_queues(api_client, suffix, flavor, cluster_queue)


def _delete_queues(api_client, suffix: str, flavor: str, cluster_queue: str) -> None:
    scheduling, api = client.SchedulingV1Api(api_client), client.CustomObjectsApi(api_client)
    for name in (f"low-{suffix}", f"high-{suffix}"):
        scheduling.delete_priority_class(name)
        api.delete_cluster_custom_object(*KUEUE, "workloadpriorityclasses", name)
    api.delete_cluster_custom_object(*KUEUE, "clusterqueues", cluster_queue)
    api.delete_cluster_custom_object(*KUEUE, "resourceflavors", flavor)


def _kueue_run(name: str, priority_class: str | None = None, kind: str = "pod") -> dict[str, Any]:
    """``kind``: the priority as the pods' PriorityClass, or as a Kueue WorkloadPriorityClass only."""
    resources: dict[str, Any] = {"gpus": 1, "cpu": "1", "memory": "1Gi"}
    extra: dict[str, Any] = {}
    if priority_class and kind == "pod":
        resources["priorityClassName"] = priority_class
    elif priority_class:
        extra["workloadPriorityClass"] = priority_class
    return run_body(name, queueName="gpus", resources=resources, podAnnotations=HOLD, **extra)


def _suspended(api_client, namespace: str, run: str) -> bool:
    (job,) = jobs_of(api_client, namespace, run)
    return bool(job.spec.suspend)


def test_kueue_admits_by_its_quota_and_the_next_run_waits_in_kueue(api_client, namespace, local_queue):
    create_run(api_client, namespace, _kueue_run("first"))
    wait_phase(api_client, namespace, "first", "Running")
    (job,) = jobs_of(api_client, namespace, "first")
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpus"

    create_run(api_client, namespace, _kueue_run("second"))
    status = wait_phase(api_client, namespace, "second", "Queued")
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "WaitingForKueue" and "LocalQueue gpus" in progressing["message"]
    assert status["attempts"] == 1 and _suspended(api_client, namespace, "second")
    assert pods_of(api_client, namespace, "second") == [], "Kueue holds the Job: no pod takes a GPU"

    release(api_client, namespace, "first")
    wait_phase(api_client, namespace, "first", "Succeeded")
    wait_phase(api_client, namespace, "second", "Running", timeout=60)
    assert not _suspended(api_client, namespace, "second")
    release(api_client, namespace, "second")
    status = wait_phase(api_client, namespace, "second", "Succeeded")
    assert (status["attempts"], status["failures"], status["preemptions"]) == (1, 0, 0)


WAITING = ("urgent", "early", "late")


def test_queued_runs_show_their_place_from_kueues_visibility_api(api_client, namespace, local_queue):
    """Kueue orders by priority, then arrival; each waiting run's status shows its place in the
    ClusterQueue as Kueue's visibility API serves it, and the places move up as runs start."""
    # As high as the urgent run, so that Kueue does not preempt it for that one.
    create_run(api_client, namespace, _kueue_run("holder", f"high-{local_queue}", "workload"))
    wait_phase(api_client, namespace, "holder", "Running")
    for name, priority in (("early", None), ("late", None), ("urgent", f"high-{local_queue}")):
        time.sleep(1.1)  # Kueue orders by creation time, which the API server keeps to the second
        create_run(api_client, namespace, _kueue_run(name, priority, "workload"))
        wait_phase(api_client, namespace, name, "Queued")

    def places() -> dict[str, int | None]:
        return {name: status_of(api_client, namespace, name).get("queuePosition") for name in WAITING}

    wait_until(lambda: places() == {"urgent": 1, "early": 2, "late": 3}, 30, "Kueue's places in line")
    progressing = next(c for c in status_of(api_client, namespace, "late")["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "WaitingForKueue"
    assert progressing["message"].endswith("(LocalQueue gpus; position 3 in its ClusterQueue)"), progressing

    release(api_client, namespace, "holder")
    status = wait_phase(api_client, namespace, "urgent", "Running", timeout=60)
    assert status.get("queuePosition") is None, "an admitted run shows no place"
    wait_until(lambda: places() == {"urgent": None, "early": 1, "late": 2}, 30, "the places to move up")
    for name in WAITING:
        wait_phase(api_client, namespace, name, "Running", timeout=60)
        release(api_client, namespace, name)
        wait_phase(api_client, namespace, name, "Succeeded")


@pytest.mark.parametrize("kind", ["pod", "workload"])
def test_a_higher_priority_run_preempts_and_the_victim_counts_a_preemption_and_resumes(
    api_client, namespace, local_queue, kind
):
    create_run(api_client, namespace, _kueue_run("victim", f"low-{local_queue}", kind))
    wait_phase(api_client, namespace, "victim", "Running")
    (first_pod,) = pods_of(api_client, namespace, "victim")
    (job,) = jobs_of(api_client, namespace, "victim")
    if kind == "workload":
        assert job.metadata.labels["kueue.x-k8s.io/priority-class"] == f"low-{local_queue}"
        assert not job.spec.template.spec.priority_class_name, "the pods' own priority is untouched"

    create_run(api_client, namespace, _kueue_run("urgent", f"high-{local_queue}", kind))
    wait_phase(api_client, namespace, "urgent", "Running", timeout=60)
    wait_until(lambda: status_of(api_client, namespace, "victim").get("preemptions") == 1, 30, "the preemption counted")
    status = wait_phase(api_client, namespace, "victim", "Queued")
    assert status["failures"] == 0 and status["attempts"] == 1, status
    (entry,) = status["attemptHistory"]
    assert entry["evictions"] == 1 and entry["outcome"] == "Running", entry
    assert _suspended(api_client, namespace, "victim")

    release(api_client, namespace, "urgent")
    wait_phase(api_client, namespace, "urgent", "Succeeded")
    wait_phase(api_client, namespace, "victim", "Running", timeout=60)
    (second_pod,) = pods_of(api_client, namespace, "victim")
    assert second_pod.metadata.uid != first_pod.metadata.uid, "the same Job, admitted again, runs a new pod"
    release(api_client, namespace, "victim")
    status = wait_phase(api_client, namespace, "victim", "Succeeded")
    assert (status["attempts"], status["failures"], status["preemptions"]) == (1, 0, 1)


def test_deleting_a_queued_run_deletes_its_job_and_kueue_forgets_it(api_client, namespace, local_queue):
    create_run(api_client, namespace, _kueue_run("holder"))
    wait_phase(api_client, namespace, "holder", "Running")
    create_run(api_client, namespace, _kueue_run("waiting"))
    wait_phase(api_client, namespace, "waiting", "Queued")
    api = client.CustomObjectsApi(api_client)

    def workloads() -> list[dict[str, Any]]:
        return api.list_namespaced_custom_object(*KUEUE, namespace, "workloads")["items"]

    assert len(workloads()) == 2
    api.delete_namespaced_custom_object("ai.azaion.com", "v1alpha1", namespace, "trainingruns", "waiting")
    wait_until(lambda: jobs_of(api_client, namespace, "waiting") == [], 30, "the run's Job to go")
    wait_until(lambda: len(workloads()) == 1, 30, "Kueue to drop the Job's Workload")
    release(api_client, namespace, "holder")
    wait_phase(api_client, namespace, "holder", "Succeeded")


@pytest.fixture
def gpu_nodes(api_client) -> Iterator[list[str]]:
    """Two more kwok GPU nodes of 2 GPUs each, beside the plane's node of one."""
    core = client.CoreV1Api(api_client)
    names = [f"kq-gpu-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "2"}
    for name in names:
        labels = {"kubernetes.io/hostname": name, "type": "kwok", "nvidia.com/gpu.present": "true"}
        body = {
            "metadata": {"name": name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
            "status": {"capacity": resources, "allocatable": resources},
        }
        core.create_node(body)
    wait_until(
        lambda: all(
            any(c.type == "Ready" and c.status == "True" for c in core.read_node(n).status.conditions or [])
            for n in names
        ),
        30,
        "the kwok GPU nodes to be Ready",
    )
    yield names
    for name in names:
        core.delete_node(name)


def test_kueue_admits_runs_up_to_its_quota_across_gpu_nodes_each_run_on_one_node(api_client, namespace, gpu_nodes):
    """A ClusterQueue of 4 GPUs over three nodes (1, 2 and 2 GPUs): two 2-GPU runs start at
    once, each with its 2 GPUs on one node of its own; a third run waits for quota, not for a node."""
    with _queues(api_client, namespace, gpus=4):
        for name, gpus in (("a", 2), ("b", 2), ("c", 1)):
            time.sleep(1.1)  # in this order: Kueue orders by creation time, kept to the second
            body = _kueue_run(name)
            body["spec"]["resources"]["gpus"] = gpus
            create_run(api_client, namespace, body)
        for name in ("a", "b"):
            wait_phase(api_client, namespace, name, "Running", timeout=60)
        status = wait_phase(api_client, namespace, "c", "Queued")
        progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
        assert progressing["reason"] == "WaitingForKueue", progressing
        placed = {}
        for name in ("a", "b"):
            (pod,) = pods_of(api_client, namespace, name)
            (container,) = [c for c in pod.spec.containers if c.resources.limits.get("nvidia.com/gpu")]
            assert container.resources.limits["nvidia.com/gpu"] == "2"
            placed[name] = pod.spec.node_name
        assert set(placed.values()) == set(gpu_nodes), f"one 2-GPU node each, never the 1-GPU one: {placed}"

        release(api_client, namespace, "a")
        wait_phase(api_client, namespace, "a", "Succeeded")
        wait_phase(api_client, namespace, "c", "Running", timeout=60)
        for name in ("b", "c"):
            release(api_client, namespace, name)
            wait_phase(api_client, namespace, name, "Succeeded")


def test_the_charts_default_queue_admits_a_run(api_client, cluster, namespace):
    """kueue.create renders a ResourceFlavor, a ClusterQueue and LocalQueues that Kueue accepts and uses."""
    from tests.integration.test_helm_chart import CHART, helm, set_args

    suffix = uuid.uuid4().hex[:6]
    values = {
        "kueue.create": True,
        "kueue.resourceFlavor": f"flavor-{suffix}",
        "kueue.clusterQueue": f"queue-{suffix}",
        "kueue.localQueueNamespaces": [namespace],
    }
    rendered = helm(cluster, "template", "kq", str(CHART), "-s", "templates/kueue.yaml", *set_args(values)).stdout
    cluster.kubectl("apply", "-f", "-", input=rendered)
    try:
        create_run(api_client, namespace, run_body("charted", queueName="azaion", resources={"gpus": 1}))
        status = wait_phase(api_client, namespace, "charted", "Succeeded", timeout=60)
        assert (status["attempts"], status["failures"]) == (1, 0)
    finally:
        cluster.kubectl("delete", "--wait=false", "-f", "-", input=rendered, check=False)
