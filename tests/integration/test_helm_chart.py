"""The Helm chart, with the real helm binary against the real API server.

The operator's logic runs as a local subprocess (the kwok node runs no
containers) but with the identity the chart gives it: a token of the chart's
ServiceAccount and the arguments and environment of the chart's Deployment.
So these tests show that the chart's RBAC is enough for the real operator, and
that values reach it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from azaion_devtools.cluster import OPERATOR_ENTRY, REPO, Cluster, trainingrun
from azaion_devtools.processes import ManagedProcess, free_port, wait_until
from azaion_operator.annotationconsumer.builders import deployment_name, offset_claim_name
from tests.fixtures.kube import prebound_volume

pytestmark = pytest.mark.integration

CHART = REPO / "charts" / "azaion"
GROUP, VERSION = "ai.azaion.com", "v1alpha1"
HOLD = {"azaion.local/hold": "true"}
CONSUMER_API = f"{GROUP}/{VERSION}/AnnotationConsumer"


# --- helpers ----------------------------------------------------------------------------


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [cluster.tool("helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=180,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def set_args(values: dict[str, Any]) -> list[str]:
    """``--set-json`` for each value, so types survive (strings stay strings)."""
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def base_values(cluster: Cluster) -> dict[str, Any]:
    values: dict[str, Any] = {
        # The session's CRDs come from crds/ (tests/fixtures/operator.py); a second
        # owner would conflict. test_crds_are_installed_and_kept covers crds.install.
        "crds.install": False,
        "operator.reconcileIntervalSeconds": 1,
        # helm test on kwok: the test pod "exits 0" (hack/kwok-stages.yaml).
        "tests.podAnnotations": {"azaion.local/exit-code": "0"},
    }
    if not cluster.simulated:
        # On a real cluster the in-cluster operator (installed separately) does the
        # work; a second one from this release would race it.
        values["replicaCount"] = 0
    return values


def release_name() -> str:
    return f"az{uuid.uuid4().hex[:6]}"


def can_i(cluster: Cluster, account: str, verb: str, resource: str, *where: str) -> bool:
    result = cluster.kubectl("auth", "can-i", f"--as={account}", verb, resource, *where, check=False)
    answer = result.stdout.strip()
    if answer not in ("yes", "no"):
        raise AssertionError(f"kubectl auth can-i {verb} {resource} {where}: {result.stdout}{result.stderr}")
    return answer == "yes"


def check_permissions(cluster: Cluster, account: str, expected: list[tuple[bool, str, str, tuple[str, ...]]]) -> str:
    """Check every (allowed, verb, resource, where) and return the table of what was checked."""
    lines, wrong = [], []
    for allowed, verb, resource, where in expected:
        actual = can_i(cluster, account, verb, resource, *where)
        lines.append(f"{'CAN   ' if actual else 'CANNOT'} {verb} {resource} {' '.join(where)}")
        if actual != allowed:
            wrong.append(f"expected {'allowed' if allowed else 'denied'}: {verb} {resource} {' '.join(where)}")
    table = "\n".join(lines)
    print(f"\npermissions of {account}:\n{table}")
    assert not wrong, "\n".join(wrong) + f"\n\nall checks:\n{table}"
    return table


def service_account_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a short-lived token)."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [server],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": server["name"], "user": account}}],
                "current-context": "sa",
            }
        )
    )
    return path


class ChartOperator:
    """The operator as the chart configures it: its Deployment's args and env, its ServiceAccount."""

    def __init__(self, cluster: Cluster, api_client, namespace: str, release: str, log_dir: Path) -> None:
        self.cluster, self.api_client, self.namespace, self.release = cluster, api_client, namespace, release
        self.log_dir = log_dir
        self.process: ManagedProcess | None = None

    def deployment(self) -> client.V1Deployment:
        return client.AppsV1Api(self.api_client).read_namespaced_deployment(f"{self.release}-azaion", self.namespace)

    def start(self) -> None:
        container = self.deployment().spec.template.spec.containers[0]
        account = self.deployment().spec.template.spec.service_account_name
        kubeconfig = service_account_kubeconfig(
            self.cluster, self.namespace, account, self.log_dir / f"kubeconfig-{uuid.uuid4().hex[:6]}"
        )
        env = {e.name: e.value for e in container.env if e.value is not None}
        health, metrics = free_port(), free_port()
        args = [a for a in container.args if not a.startswith(("--metrics-port", "--liveness"))]
        args += [f"--metrics-port={metrics}", f"--liveness=http://127.0.0.1:{health}/healthz"]
        self.process = ManagedProcess(
            [sys.executable, "-c", OPERATOR_ENTRY, *args],
            log_path=self.log_dir / f"operator-{health}.log",
            env={**self.cluster.env(), **env, "KUBECONFIG": str(kubeconfig)},
        )

        def healthy() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"the operator exited:\n{self.process.log_tail()}")
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1) as response:
                return response.status == 200

        wait_until(healthy, 60, "the operator's liveness endpoint")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart(self) -> None:
        """What a rollout of the operator Deployment does (Recreate: stop, then start)."""
        self.stop()
        self.start()

    def assert_no_permission_errors(self) -> None:
        """The operator, running as the chart's ServiceAccount, was never refused in its namespace.

        (Runs of other namespaces, which a namespaced operator lists for the GPU
        queue but may not touch, are not its business here.)
        """
        if self.process is None:
            return
        log = self.process.log_path.read_text(errors="replace")
        inside = (f'namespace \\"{self.namespace}\\"', f'namespace "{self.namespace}"', "at the cluster scope")
        refused = [line for line in log.splitlines() if "forbidden" in line and any(where in line for where in inside)]
        assert not refused, "the operator was refused by RBAC:\n" + "\n".join(refused[:10])


@pytest.fixture
def local_operator_stopped(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[None]:
    """These tests run their own operator (the chart's identity); the session's one pauses meanwhile."""
    if not cluster.simulated:
        pytest.skip("runs the operator locally with the chart's identity; needs the local control plane")
    if request.config.getoption("--external-operator"):
        pytest.skip("an in-cluster operator runs; these tests run their own")
    handle = request.getfixturevalue("operator")
    handle.stop()
    yield
    handle.start()


def dedicated_volume(api_client, namespace: str, claim: str, tmp_path: Path) -> str:
    """A PV pre-bound to ``claim`` (storage class ``local``), so the shared PV pool is left alone."""
    directory = tmp_path / claim
    directory.mkdir()
    return prebound_volume(api_client, namespace, claim, directory, storage_class="local")


def custom(api_client) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def get_obj(api_client, plural: str, namespace: str, name: str) -> dict[str, Any]:
    return custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)


def training_run(name: str, **spec: Any) -> dict[str, Any]:
    # A CPU run: it never waits in the GPU queue behind other tests' runs.
    return trainingrun(name, **{"resources": {"gpus": 0}, **spec})


def annotation_consumer(name: str, image: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "rabbitmq": {"host": "rabbitmq.invalid", "credentialsSecretRef": {"name": "rabbitmq-credentials"}},
        "dataVolume": {"claimName": "azaion-data"},
    }
    if image:
        spec["image"] = image
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AnnotationConsumer", "metadata": {"name": name}, "spec": spec}


def jobs(api_client, namespace: str, run: str) -> list[client.V1Job]:
    return (
        client.BatchV1Api(api_client)
        .list_namespaced_job(namespace, label_selector=f"ai.azaion.com/trainingrun={run}")
        .items
    )


def release_objects(api_client, namespace: str, release: str) -> list[str]:
    """Everything in the namespace and cluster that carries the release's instance label."""
    selector = f"app.kubernetes.io/instance={release}"
    core, apps, rbac = (
        client.CoreV1Api(api_client),
        client.AppsV1Api(api_client),
        client.RbacAuthorizationV1Api(api_client),
    )
    listings = {
        "Deployment": apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        "Pod": core.list_namespaced_pod(namespace, label_selector=selector).items,
        "Service": core.list_namespaced_service(namespace, label_selector=selector).items,
        "ServiceAccount": core.list_namespaced_service_account(namespace, label_selector=selector).items,
        "Role": rbac.list_role_for_all_namespaces(label_selector=selector).items,
        "RoleBinding": rbac.list_role_binding_for_all_namespaces(label_selector=selector).items,
        "ClusterRole": rbac.list_cluster_role(label_selector=selector).items,
        "ClusterRoleBinding": rbac.list_cluster_role_binding(label_selector=selector).items,
        "Secret": core.list_namespaced_secret(namespace, label_selector=selector).items,
        "ConfigMap": core.list_namespaced_config_map(namespace, label_selector=selector).items,
        "NetworkPolicy": client.NetworkingV1Api(api_client)
        .list_namespaced_network_policy(namespace, label_selector=selector)
        .items,
        "PodDisruptionBudget": client.PolicyV1Api(api_client)
        .list_namespaced_pod_disruption_budget(namespace, label_selector=selector)
        .items,
        "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items,
    }
    # Release records are Secrets labelled owner=helm,name=<release>.
    listings["Secret"] += core.list_namespaced_secret(namespace, label_selector=f"owner=helm,name={release}").items
    return [f"{kind}/{item.metadata.name}" for kind, items in listings.items() for item in items]


# --- static checks --------------------------------------------------------------------


def test_helm_lint_is_clean(cluster):
    for values in (
        {},
        {"watchNamespaces": ["team-a", "team-b"], "networkPolicy.enabled": True, "podDisruptionBudget.enabled": True},
        {
            "annotationConsumer.enabled": True,
            "annotationConsumer.rabbitmq.host": "rabbitmq.example",
            "annotationConsumer.rabbitmq.credentialsSecretRef.name": "rabbitmq",
            "data.create": True,
            "serviceMonitor.enabled": True,
            "consumerPodMonitor.enabled": True,
            "prometheusRule.enabled": True,
            "grafana.dashboards.enabled": True,
        },
    ):
        result = helm(cluster, "lint", "--strict", str(CHART), *set_args(values))
        assert "0 chart(s) failed" in result.stdout, result.stdout
        assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_chart_crds_are_the_generated_ones():
    """The chart renders files/crds; they must be what azaion-crdgen made of the models."""
    chart_crds = {p.name: p.read_text() for p in (CHART / "files" / "crds").glob("*.yaml")}
    generated = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    assert chart_crds == generated, "charts/azaion/files/crds differs from crds/: run azaion-crdgen"
    for text in chart_crds.values():
        assert yaml.safe_load(text)["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_rendered_manifests_are_accepted_by_the_api_server(cluster, crds, namespace):
    """helm template with every option on, then a server-side dry run of all of it."""
    for mode in ({"watchNamespaces": [namespace]}, {}):
        values = {
            "crds.install": True,
            "data.create": True,
            "annotationConsumer.enabled": True,
            "annotationConsumer.rabbitmq.host": "rabbitmq.example",
            "annotationConsumer.rabbitmq.credentialsSecretRef.name": "rabbitmq",
            "annotationConsumer.resources.memory": "512Mi",
            "networkPolicy.enabled": True,
            "podDisruptionBudget.enabled": True,
            # The dashboard's ConfigMap (the PrometheusRule and PodMonitor need the
            # Prometheus operator's CRDs, which this cluster does not have).
            "grafana.dashboards.enabled": True,
            **mode,
        }
        rendered = helm(
            cluster, "template", "dry", str(CHART), "-n", namespace, "--api-versions", CONSUMER_API, *set_args(values)
        ).stdout
        kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
        assert {
            "CustomResourceDefinition",
            "Deployment",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "PersistentVolumeClaim",
            "AnnotationConsumer",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Pod",
            "ConfigMap",
        } <= kinds, kinds
        if mode:
            assert {"Role", "RoleBinding"} <= kinds
        result = cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=helm-chart-dry-run",
            "--dry-run=server",
            "-n",
            namespace,
            "-f",
            "-",
            input=rendered,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "(server dry run)" in result.stdout


BAD_VALUES = [
    ({"replicaCount": 2}, "/replicaCount", "one of 0, 1"),
    ({"image.repository": "Not An Image"}, "/image/repository", "does not match pattern"),
    ({"trainingImage.digest": "sha256:short"}, "/trainingImage/digest", "does not match pattern"),
    ({"operator.runAsUser": 0}, "/operator/runAsUser", "minimum"),
    ({"operator.metricsPort": 80}, "/operator/metricsPort", "minimum"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", "does not match pattern"),
    ({"operator.queueing": "volcano"}, "/operator/queueing", "one of"),
    ({"kueue.preemption": "Sometimes"}, "/kueue/preemption", "one of"),
    ({"kueue.quota.gpus": -1}, "/kueue/quota/gpus", "minimum"),
    ({"data.size": "lots"}, "/data/size", "does not match pattern"),
    (
        {"annotationConsumer.offsetVolume.deletePolicy": "Keep"},
        "/annotationConsumer/offsetVolume/deletePolicy",
        "one of",
    ),
    ({"annotationConsumer.enabled": True}, "/annotationConsumer/rabbitmq/host", "minLength"),
    ({"annotationConsumer.stallAfter": "soon"}, "/annotationConsumer/stallAfter", "does not match pattern"),
    ({"resourses": {}}, "additional properties 'resourses' not allowed", ""),
    ({"prometheusRule.dataVolume.criticalPercent": "95"}, "/prometheusRule/dataVolume/criticalPercent", "want number"),
    ({"prometheusRule.gpuWait.for": "1 hour"}, "/prometheusRule/gpuWait/for", "does not match pattern"),
    ({"grafana.dashboards.labelValue": 1}, "/grafana/dashboards/labelValue", "want string"),
    ({"grafana.dashboards.enabled": "true"}, "/grafana/dashboards/enabled", "want boolean"),
    ({"annotationConsumer.disk.warnPercent": 96}, "annotationConsumer.disk.warnPercent (96) must be below", ""),
]


@pytest.mark.parametrize(("values", "names", "says"), BAD_VALUES, ids=[v[1] for v in BAD_VALUES])
def test_bad_values_are_rejected_with_the_value_named(cluster, values, names, says):
    result = helm(cluster, "template", "bad", str(CHART), *set_args(values), check=False)
    assert result.returncode != 0, f"accepted {values}"
    assert names in result.stderr, result.stderr
    assert says in result.stderr, result.stderr


# --- install: RBAC ----------------------------------------------------------------------


def test_cluster_wide_rbac_is_enough_and_no_more(cluster, crds, namespace):
    release = release_name()
    helm(
        cluster,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--wait",
        "--timeout=60s",
        *set_args(base_values(cluster)),
    )
    try:
        account = f"system:serviceaccount:{namespace}:{release}-azaion"
        anywhere = ("-n", "default")
        own = ("-n", namespace)
        all_ns = ("--all-namespaces",)
        status = ("--subresource=status",)
        expected = [
            # What it needs.
            *[(True, v, "trainingruns.ai.azaion.com", all_ns) for v in ("get", "list", "watch", "patch")],
            *[(True, v, "annotationconsumers.ai.azaion.com", all_ns) for v in ("get", "list", "watch", "patch")],
            *[(True, v, "trainingruns.ai.azaion.com", (*anywhere, *status)) for v in ("get", "patch", "update")],
            *[(True, v, "annotationconsumers.ai.azaion.com", (*anywhere, *status)) for v in ("patch", "update")],
            *[(True, v, "jobs.batch", anywhere) for v in ("create", "delete", "deletecollection", "watch")],
            (True, "list", "pods", all_ns),
            (True, "watch", "pods", all_ns),
            (True, "list", "nodes", ()),
            (True, "watch", "nodes", ()),
            *[(True, "create", r, anywhere) for r in ("serviceaccounts", "roles.rbac.authorization.k8s.io")],
            (True, "create", "rolebindings.rbac.authorization.k8s.io", anywhere),
            (True, "create", "events", anywhere),
            (True, "patch", "events.events.k8s.io", anywhere),
            *[(True, v, "deployments.apps", anywhere) for v in ("create", "patch", "update", "delete")],
            *[(True, v, "persistentvolumeclaims", anywhere) for v in ("create", "delete", "watch")],
            (True, "watch", "customresourcedefinitions.apiextensions.k8s.io", ()),
            # No Secrets, anywhere, in any way.
            *[(False, v, "secrets", all_ns) for v in ("get", "list", "watch", "create", "patch", "delete")],
            (False, "get", "secrets", own),
            (False, "list", "secrets", ("-n", "kube-system")),
            # Nothing beyond its job.
            (False, "get", "configmaps", anywhere),
            (False, "create", "pods", anywhere),
            (False, "create", "pods", (*anywhere, "--subresource=exec")),
            (False, "delete", "pods", anywhere),
            (False, "patch", "nodes", ()),
            (False, "delete", "nodes", ()),
            (False, "delete", "trainingruns.ai.azaion.com", anywhere),
            (False, "create", "trainingruns.ai.azaion.com", anywhere),
            (False, "update", "jobs.batch", anywhere),
            (False, "patch", "serviceaccounts", anywhere),
            (False, "delete", "serviceaccounts", anywhere),
            (False, "patch", "roles.rbac.authorization.k8s.io", anywhere),
            (False, "escalate", "roles.rbac.authorization.k8s.io", anywhere),
            (False, "bind", "roles.rbac.authorization.k8s.io", anywhere),
            (False, "create", "clusterroles.rbac.authorization.k8s.io", ()),
            (False, "create", "clusterrolebindings.rbac.authorization.k8s.io", ()),
            (False, "create", "customresourcedefinitions.apiextensions.k8s.io", ()),
            (False, "delete", "customresourcedefinitions.apiextensions.k8s.io", ()),
            (False, "impersonate", "serviceaccounts", anywhere),
            (False, "impersonate", "users", ()),
            (False, "create", "namespaces", ()),
            (False, "create", "serviceaccounts", (*anywhere, "--subresource=token")),
        ]
        check_permissions(cluster, account, expected)

        # The escalation check: as the operator, a per-run Role like the ones it
        # creates is allowed, one that reaches Secrets is refused.
        def role(rules: list[dict[str, Any]]) -> str:
            return yaml.safe_dump(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "Role",
                    "metadata": {"name": "probe", "namespace": namespace},
                    "rules": rules,
                }
            )

        own_status = [
            {
                "apiGroups": [GROUP],
                "resources": ["trainingruns/status"],
                "resourceNames": ["r"],
                "verbs": ["get", "patch"],
            }
        ]
        as_operator = (f"--as={account}", "create", "--dry-run=server", "-f", "-")
        assert cluster.kubectl(*as_operator, input=role(own_status), check=False).returncode == 0
        reach = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
        refused = cluster.kubectl(*as_operator, input=role(reach), check=False)
        assert refused.returncode != 0 and "permissions not currently held" in refused.stderr, refused.stderr
    finally:
        helm(cluster, "uninstall", release, "-n", namespace, "--wait")


def test_namespaced_rbac_stays_in_its_namespaces(cluster, crds, namespace, api_client):
    other = f"{namespace}-b"[:63]
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    release = release_name()
    try:
        values = {**base_values(cluster), "watchNamespaces": [namespace, other]}
        helm(cluster, "install", release, str(CHART), "-n", namespace, "--wait", "--timeout=60s", *set_args(values))
        account = f"system:serviceaccount:{namespace}:{release}-azaion"
        deployment = client.AppsV1Api(api_client).read_namespaced_deployment(f"{release}-azaion", namespace)
        args = deployment.spec.template.spec.containers[0].args
        assert f"--namespace={namespace}" in args and f"--namespace={other}" in args
        expected = []
        for ns in (namespace, other):
            expected += [
                (True, "create", "jobs.batch", ("-n", ns)),
                (True, "patch", "trainingruns.ai.azaion.com", ("-n", ns, "--subresource=status")),
                (True, "create", "deployments.apps", ("-n", ns)),
                (True, "create", "roles.rbac.authorization.k8s.io", ("-n", ns)),
                (False, "get", "secrets", ("-n", ns)),
            ]
        expected += [
            # GPU accounting and the one cluster-wide queue: reads only.
            (True, "list", "pods", ("--all-namespaces",)),
            (True, "list", "nodes", ()),
            (True, "list", "trainingruns.ai.azaion.com", ("--all-namespaces",)),
            # Outside its namespaces it changes nothing.
            (False, "create", "jobs.batch", ("-n", "default")),
            (False, "delete", "jobs.batch", ("-n", "default")),
            (False, "patch", "trainingruns.ai.azaion.com", ("-n", "default")),
            (False, "patch", "trainingruns.ai.azaion.com", ("-n", "default", "--subresource=status")),
            (False, "create", "deployments.apps", ("-n", "default")),
            (False, "create", "persistentvolumeclaims", ("-n", "default")),
            (False, "create", "roles.rbac.authorization.k8s.io", ("-n", "default")),
            (False, "create", "serviceaccounts", ("-n", "kube-system")),
            (False, "list", "secrets", ("--all-namespaces",)),
            (False, "create", "jobs.batch", ("--all-namespaces",)),
        ]
        check_permissions(cluster, account, expected)
    finally:
        helm(cluster, "uninstall", release, "-n", namespace, "--wait", check=False)
        core.delete_namespace(other, propagation_policy="Background")


# --- upgrade, rollback, uninstall with the operator running ---------------------------


def test_upgrade_rollback_uninstall_keep_runs_and_a_running_job_untouched(
    cluster, api_client, namespace, data_claim, local_operator_stopped, tmp_path
):
    release = release_name()
    values = {
        **base_values(cluster),
        "watchNamespaces": [namespace],
        "trainingImage.repository": "registry.local/azaion/training",
        "trainingImage.tag": "v1",
        "image.tag": "v1",
        "data.create": True,
        "data.claimName": "chart-data",
        "networkPolicy.enabled": True,
        "podDisruptionBudget.enabled": True,
    }
    pv = dedicated_volume(api_client, namespace, "chart-data", tmp_path)
    operator = ChartOperator(cluster, api_client, namespace, release, tmp_path)
    helm(cluster, "install", release, str(CHART), "-n", namespace, "--wait", "--timeout=60s", *set_args(values))
    try:
        helm(cluster, "test", release, "-n", namespace, "--timeout=60s")
        operator.start()
        trs = "trainingruns"
        custom(api_client).create_namespaced_custom_object(
            GROUP, VERSION, namespace, trs, training_run("held", podAnnotations=HOLD)
        )
        user_consumer = custom(api_client).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "annotationconsumers", annotation_consumer("by-hand", image="example/queue:1")
        )
        wait_until(lambda: jobs(api_client, namespace, "held"), 30, "the held run's Job")
        wait_until(lambda: get_obj(api_client, trs, namespace, "held")["status"]["phase"] == "Running", 30, "Running")
        (job,) = jobs(api_client, namespace, "held")
        run = get_obj(api_client, trs, namespace, "held")
        assert job.spec.template.spec.containers[0].image == "registry.local/azaion/training:v1"

        def unchanged() -> None:
            (now,) = jobs(api_client, namespace, "held")
            assert now.metadata.uid == job.metadata.uid
            assert now.spec.template.spec.containers[0].image == "registry.local/azaion/training:v1"
            status = get_obj(api_client, trs, namespace, "held")["status"]
            assert status["attempts"] == 1 and status["phase"] == "Running", status
            assert status["image"] == "registry.local/azaion/training:v1"
            assert get_obj(api_client, trs, namespace, "held")["metadata"]["uid"] == run["metadata"]["uid"]
            consumer = get_obj(api_client, "annotationconsumers", namespace, "by-hand")
            assert consumer["metadata"]["uid"] == user_consumer["metadata"]["uid"]

        # Upgrade: new operator and training images. The operator restarts with them.
        upgraded = {**values, "trainingImage.tag": "v2", "image.tag": "v2"}
        helm(cluster, "upgrade", release, str(CHART), "-n", namespace, "--wait", "--timeout=60s", *set_args(upgraded))
        container = operator.deployment().spec.template.spec.containers[0]
        assert container.image == "ghcr.io/azaion/operator:v2"
        assert {"name": "AZAION_TRAINING_IMAGE", "value": "registry.local/azaion/training:v2"} in [
            {"name": e.name, "value": e.value} for e in container.env
        ]
        operator.restart()
        time.sleep(3)  # several reconcile intervals of the new operator
        unchanged()
        # ... while a new run gets the new image.
        custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, trs, training_run("fresh"))
        wait_until(lambda: jobs(api_client, namespace, "fresh"), 30, "the new run's Job")
        assert jobs(api_client, namespace, "fresh")[0].spec.template.spec.containers[0].image.endswith(":v2")
        wait_until(lambda: get_obj(api_client, trs, namespace, "fresh")["status"]["phase"] == "Succeeded", 30, "done")

        # Rollback: the old operator configuration again; the held run still untouched.
        helm(cluster, "rollback", release, "1", "-n", namespace, "--wait", "--timeout=60s")
        assert operator.deployment().spec.template.spec.containers[0].image == "ghcr.io/azaion/operator:v1"
        operator.restart()
        time.sleep(3)
        unchanged()
        history = json.loads(helm(cluster, "history", release, "-n", namespace, "-o", "json").stdout)
        assert [h["revision"] for h in history] == [1, 2, 3] and history[-1]["status"] == "deployed"

        # The operator still does its job after all that: the held trainer finishes.
        for pod in (
            client.CoreV1Api(api_client)
            .list_namespaced_pod(namespace, label_selector="ai.azaion.com/trainingrun=held")
            .items
        ):
            client.CoreV1Api(api_client).patch_namespaced_pod(
                pod.metadata.name, namespace, {"metadata": {"annotations": {"azaion.local/hold": None}}}
            )
        wait_until(lambda: get_obj(api_client, trs, namespace, "held")["status"]["phase"] == "Succeeded", 30, "done")
        operator.assert_no_permission_errors()
        operator.stop()

        # Uninstall: nothing of the release is left but the kept data claim; the
        # CRDs, the runs and the consumer stay.
        helm(cluster, "uninstall", release, "-n", namespace, "--wait")
        left = release_objects(api_client, namespace, release)
        assert left == ["PersistentVolumeClaim/chart-data"], left
        assert get_obj(api_client, trs, namespace, "held")["metadata"]["uid"] == run["metadata"]["uid"]
        assert get_obj(api_client, "annotationconsumers", namespace, "by-hand")
        for crd in ("trainingruns.ai.azaion.com", "annotationconsumers.ai.azaion.com"):
            assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0
    finally:
        operator.stop()
        helm(cluster, "uninstall", release, "-n", namespace, check=False)
        client.CoreV1Api(api_client).delete_persistent_volume(pv)


def test_consumer_image_follows_helm_upgrade_and_rollback(
    cluster, api_client, namespace, data_claim, local_operator_stopped, tmp_path
):
    release, name = release_name(), "annotations"
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="rabbitmq-credentials"),
            string_data={"username": "azaion", "password": "never-in-a-spec"},
        ),
    )
    pv = dedicated_volume(api_client, namespace, offset_claim_name(name), tmp_path)
    values = {
        **base_values(cluster),
        "watchNamespaces": [namespace],
        "queueImage.repository": "registry.local/azaion/annotation-queue",
        "queueImage.tag": "v1",
        "annotationConsumer.enabled": True,
        "annotationConsumer.name": name,
        "annotationConsumer.rabbitmq.host": "rabbitmq.invalid",
        "annotationConsumer.rabbitmq.credentialsSecretRef.name": "rabbitmq-credentials",
        "annotationConsumer.dataClaimName": data_claim,
    }
    operator = ChartOperator(cluster, api_client, namespace, release, tmp_path)

    def consumer_image() -> str | None:
        try:
            deployment = apps.read_namespaced_deployment(deployment_name(name), namespace)
        except ApiException:
            return None
        return deployment.spec.template.spec.containers[0].image

    try:
        helm(cluster, "install", release, str(CHART), "-n", namespace, "--wait", "--timeout=60s", *set_args(values))
        operator.start()
        first = get_obj(api_client, "annotationconsumers", namespace, name)
        v1, v2 = "registry.local/azaion/annotation-queue:v1", "registry.local/azaion/annotation-queue:v2"
        wait_until(lambda: consumer_image() == v1, 30, f"the consumer Deployment with {v1} (now {consumer_image()})")
        deployment = apps.read_namespaced_deployment(deployment_name(name), namespace)
        assert "never-in-a-spec" not in json.dumps(api_client.sanitize_for_serialization(deployment))

        helm(cluster, "upgrade", release, str(CHART), "-n", namespace, "--wait", "--timeout=60s",
             *set_args({**values, "queueImage.tag": "v2"}))  # fmt: skip
        operator.restart()
        wait_until(lambda: consumer_image() == v2, 30, f"the consumer Deployment with {v2} (now {consumer_image()})")

        helm(cluster, "rollback", release, "1", "-n", namespace, "--wait", "--timeout=60s")
        operator.restart()
        wait_until(lambda: consumer_image() == v1, 30, f"the consumer Deployment back on {v1} (now {consumer_image()})")
        assert (
            get_obj(api_client, "annotationconsumers", namespace, name)["metadata"]["uid"] == first["metadata"]["uid"]
        )
        operator.assert_no_permission_errors()

        # Uninstall: the release's consumer goes (its Deployment with it); the offset stays.
        helm(cluster, "uninstall", release, "-n", namespace, "--wait")
        wait_until(lambda: consumer_image() is None, 30, "the consumer Deployment to go")
        claim = core.read_namespaced_persistent_volume_claim(offset_claim_name(name), namespace)
        assert claim.metadata.deletion_timestamp is None
        assert release_objects(api_client, namespace, release) == []
    finally:
        operator.stop()
        helm(cluster, "uninstall", release, "-n", namespace, check=False)
        client.CoreV1Api(api_client).delete_persistent_volume(pv)


def test_crds_are_installed_and_kept(cluster, crds, namespace, api_client):
    """crds.install: the release takes over the CRDs; uninstall leaves them, with every run."""
    if not cluster.simulated:
        pytest.skip("would take the CRDs away from the release that owns them on this cluster")
    test_chart_crds_are_the_generated_ones()  # never replace the live CRDs with stale ones
    release = release_name()
    custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", training_run("kept"))
    values = {**base_values(cluster), "crds.install": True, "replicaCount": 0}
    helm(cluster, "install", release, str(CHART), "-n", namespace, "--take-ownership", "--wait", *set_args(values))
    try:
        manifest = helm(cluster, "get", "manifest", release, "-n", namespace).stdout
        names = {
            d["metadata"]["name"] for d in yaml.safe_load_all(manifest) if d and d["kind"] == "CustomResourceDefinition"
        }
        assert names == {"trainingruns.ai.azaion.com", "annotationconsumers.ai.azaion.com"}
        helm(cluster, "upgrade", release, str(CHART), "-n", namespace, "--wait", *set_args(values))
        helm(cluster, "rollback", release, "1", "-n", namespace, "--wait")
    finally:
        uninstall = helm(cluster, "uninstall", release, "-n", namespace, "--wait")
    assert "kept due to the resource policy" in uninstall.stdout + uninstall.stderr
    for crd in names:
        assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0
    assert get_obj(api_client, "trainingruns", namespace, "kept")
