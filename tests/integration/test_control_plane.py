"""The cluster behaves like a single-node GPU server (local control plane or --kubeconfig).

These are the behaviours the operator relies on: GPU requests are scheduled
and counted, claims bind, Deployments become available, RBAC is enforced.
"""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from azaion_devtools.cluster import Cluster
from azaion_devtools.processes import wait_until
from tests.fixtures.kube import client_as_service_account

pytestmark = pytest.mark.integration

IMAGE = "busybox:1.36"
RESTRICTED = client.V1SecurityContext(
    run_as_non_root=True,
    run_as_user=65534,
    allow_privilege_escalation=False,
    capabilities=client.V1Capabilities(drop=["ALL"]),
    seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
)


def gpu_job(name: str, *, hold: bool, seconds: int = 0) -> client.V1Job:
    """A Job asking for one GPU. ``hold`` keeps its pod running until released."""
    annotations = {"azaion.local/hold": "true"} if hold else {}
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(annotations=annotations),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    runtime_class_name="nvidia",
                    containers=[
                        client.V1Container(
                            name="trainer",
                            image=IMAGE,
                            command=["sleep", str(seconds)],
                            resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}),
                            security_context=RESTRICTED,
                        )
                    ],
                ),
            ),
        ),
    )


def job_pods(core: client.CoreV1Api, namespace: str, job: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items


def job_succeeded(batch: client.BatchV1Api, namespace: str, name: str) -> bool:
    conditions = batch.read_namespaced_job_status(name, namespace).status.conditions or []
    return any(c.type == "Complete" and c.status == "True" for c in conditions)


def release(core: client.CoreV1Api, cluster: Cluster, namespace: str, job: str) -> None:
    """Let a held pod finish (simulated) or wait for its sleep to end (real cluster)."""
    if not cluster.simulated:
        return
    for pod in job_pods(core, namespace, job):
        core.patch_namespaced_pod(
            pod.metadata.name, namespace, {"metadata": {"annotations": {"azaion.local/hold": None}}}
        )


def test_gpu_job_is_scheduled_on_the_gpu_node_and_completes(api_client, cluster, namespace):
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    batch.create_namespaced_job(namespace, gpu_job("train", hold=False))

    wait_until(lambda: job_succeeded(batch, namespace, "train"), 90, "the GPU Job to complete")
    (pod,) = job_pods(core, namespace, "train")
    node = core.read_node(pod.spec.node_name)
    assert int(node.status.allocatable["nvidia.com/gpu"]) >= 1
    assert pod.spec.runtime_class_name == "nvidia"
    assert pod.status.phase == "Succeeded"


def test_second_gpu_job_waits_for_the_only_gpu(api_client, cluster, namespace):
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    gpus = sum(int((n.status.allocatable or {}).get("nvidia.com/gpu", 0)) for n in core.list_node().items)
    if gpus != 1:
        pytest.skip(f"needs a cluster with exactly one GPU, this one has {gpus}")

    batch.create_namespaced_job(namespace, gpu_job("first", hold=True, seconds=20))
    wait_until(
        lambda: any(p.status.phase == "Running" for p in job_pods(core, namespace, "first")),
        90,
        "the first GPU pod to run",
    )
    batch.create_namespaced_job(namespace, gpu_job("second", hold=False))

    def second_unschedulable() -> bool:
        pods = job_pods(core, namespace, "second")
        conditions = pods[0].status.conditions or [] if pods else []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    wait_until(second_unschedulable, 60, "the second GPU pod to be reported unschedulable")
    (waiting,) = job_pods(core, namespace, "second")
    assert waiting.status.phase == "Pending"
    assert not waiting.spec.node_name
    assert not job_succeeded(batch, namespace, "first")

    release(core, cluster, namespace, "first")
    wait_until(lambda: job_succeeded(batch, namespace, "first"), 90, "the first Job to complete")
    wait_until(lambda: job_succeeded(batch, namespace, "second"), 120, "the second Job to complete")


def test_claim_binds_and_a_pod_using_it_runs(api_client, namespace):
    core = client.CoreV1Api(api_client)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="data"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="user"),
            spec=client.V1PodSpec(
                containers=[
                    client.V1Container(
                        name="main",
                        image=IMAGE,
                        command=["sleep", "3600"],
                        volume_mounts=[client.V1VolumeMount(name="data", mount_path="/data")],
                        security_context=RESTRICTED,
                    )
                ],
                volumes=[
                    client.V1Volume(
                        name="data",
                        persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name="data"),
                    )
                ],
            ),
        ),
    )
    wait_until(
        lambda: core.read_namespaced_persistent_volume_claim("data", namespace).status.phase == "Bound",
        60,
        "the claim to bind",
    )
    wait_until(
        lambda: core.read_namespaced_pod("user", namespace).status.phase == "Running",
        90,
        "the pod using the claim to run",
    )


def test_deployment_becomes_available(api_client, namespace):
    apps = client.AppsV1Api(api_client)
    labels = {"app": "probe"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="probe"),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                strategy=client.V1DeploymentStrategy(type="Recreate"),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[
                            client.V1Container(
                                name="main", image=IMAGE, command=["sleep", "3600"], security_context=RESTRICTED
                            )
                        ]
                    ),
                ),
            ),
        ),
    )

    def available() -> bool:
        conditions = apps.read_namespaced_deployment_status("probe", namespace).status.conditions or []
        return any(c.type == "Available" and c.status == "True" for c in conditions)

    wait_until(available, 90, "the Deployment to become Available")
    assert apps.read_namespaced_deployment("probe", namespace).status.ready_replicas == 1


def test_rbac_is_enforced_for_a_service_account_token(api_client, cluster, namespace):
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    with client_as_service_account(api_client, namespace, "reader") as reader_api:
        reader = client.CoreV1Api(reader_api)
        with pytest.raises(ApiException) as forbidden:
            reader.list_namespaced_pod(namespace)
        assert forbidden.value.status == 403
        assert "forbidden" in forbidden.value.body.lower()

        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="pod-reader"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="pod-reader"),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
            ),
        )

        def allowed() -> bool:
            reader.list_namespaced_pod(namespace)
            return True

        wait_until(allowed, 30, "the Role to take effect")
        # The grant is exactly what the Role says: other namespaces stay forbidden.
        with pytest.raises(ApiException) as elsewhere:
            reader.list_namespaced_pod("default")
        assert elsewhere.value.status == 403
