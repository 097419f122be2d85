#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, without Docker.

    hack/cluster.sh up [--gpus N] [--pvs N] [--real-node]
                                              start (or reuse) the plane; prints the kubeconfig path
    hack/cluster.sh env                       shell exports: KUBECONFIG, PATH with kubectl/helm, and
                                              with a real node AZAION_HOST_ADDRESS, AZAION_CONTAINERD_SOCK
    hack/cluster.sh load-image REF...         put images of hack/images.sh into the real node
    hack/cluster.sh status                    which components run, and whether the API is ready
    hack/cluster.sh down                      stop exactly the processes it started, remove its state

It runs etcd, kube-apiserver (RBAC, service-account signing keys, a token for
an admin user), kube-controller-manager, kube-scheduler and kwok, which plays
the kubelet of one fake node shaped like the target machine: a GPU node with
``nvidia.com/gpu`` allocatable, a RuntimeClass ``nvidia``, a default
StorageClass and hostPath PersistentVolumes so that claims bind.

With ``--real-node`` (or AZAION_REAL_NODE=1; Linux, root) a second node runs
real containers: a kubelet on containerd and runc with a CNI bridge, and
kube-proxy, so pods reach the API server and this machine's servers. See
hack/realnode.py. The API server then also listens on the host address.

Only the standard library is used, so it runs before any virtualenv exists.
Settings come from the environment: AZAION_CLUSTER_DIR (state, default
.state/cluster in the repository), AZAION_CLUSTER_PORT_BASE (default 26400),
AZAION_TOOLS_DIR (binary cache, see hack/build-tools.sh), AZAION_NODE_IMAGE_STORE (the real
node's containerd image store, default ~/.cache/azaion/node-containerd).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import realnode

HACK_DIR = Path(__file__).resolve().parent
REPO_DIR = HACK_DIR.parent
STATE_DIR = Path(os.environ.get("AZAION_CLUSTER_DIR", REPO_DIR / ".state" / "cluster")).resolve()
NODE_IMAGE_STORE = Path(
    os.environ.get("AZAION_NODE_IMAGE_STORE", Path.home() / ".cache" / "azaion" / "node-containerd")
).resolve()
PORT_BASE = int(os.environ.get("AZAION_CLUSTER_PORT_BASE", "26400"))
NODE_NAME = "azaion-gpu-0"
STORAGE_CLASS = "local"


class ClusterError(RuntimeError):
    """A problem the user can act on; printed without a traceback."""


@dataclass(frozen=True)
class Ports:
    etcd_client: int = PORT_BASE + 1
    etcd_peer: int = PORT_BASE + 2
    apiserver: int = PORT_BASE + 43
    controller_manager: int = PORT_BASE + 57
    scheduler: int = PORT_BASE + 59
    kwok: int = PORT_BASE + 80
    kubelet: int = PORT_BASE + 50
    kubelet_healthz: int = PORT_BASE + 48
    proxy_metrics: int = PORT_BASE + 49
    proxy_healthz: int = PORT_BASE + 47

    def named(self) -> dict[str, int]:
        return {
            "etcd": self.etcd_client,
            "etcd (peer)": self.etcd_peer,
            "kube-apiserver": self.apiserver,
            "kube-controller-manager": self.controller_manager,
            "kube-scheduler": self.scheduler,
            "kwok": self.kwok,
        }

    def node(self) -> realnode.NodePorts:
        return realnode.NodePorts(self.kubelet, self.kubelet_healthz, self.proxy_metrics, self.proxy_healthz)

    def named_node(self) -> dict[str, int]:
        return {
            "kubelet": self.kubelet,
            "kubelet healthz": self.kubelet_healthz,
            "kube-proxy metrics": self.proxy_metrics,
            "kube-proxy healthz": self.proxy_healthz,
        }


PORTS = Ports()
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
NODE_COMPONENTS = ["containerd", "kubelet", "kube-proxy"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- tools ---------------------------------------------------------------------------


def build_tools(real_node: bool = False) -> Path:
    """Build (or find in the cache) the binaries; returns the bin directory."""
    argv = [str(HACK_DIR / "build-tools.sh"), "node" if real_node else "all"]
    result = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError("building the control-plane tools failed (see the messages above)")
    return Path(result.stdout.strip().splitlines()[-1])


# --- state ---------------------------------------------------------------------------


def state_file() -> Path:
    return STATE_DIR / "cluster.json"


def read_state() -> dict:
    try:
        return json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}


def write_state(state: dict) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_file())


def pid_is_ours(pid: int) -> bool:
    """True when ``pid`` runs and is one of our components (its argv names the state dir)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return str(STATE_DIR).encode() in cmdline


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- PKI and kubeconfig ---------------------------------------------------------------


def openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise ClusterError("openssl is needed to create the cluster's certificates (apt-get install openssl)")
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(pki: Path, host_address: str | None) -> str:
    """CA, serving certificate, service-account key pair and an admin token."""
    pki.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"), "-subj", "/CN=azaion-local-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki / "apiserver.key"),
            "-out", str(pki / "apiserver.csr"), "-subj", "/CN=kube-apiserver")  # fmt: skip
    sans = (
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,"
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    )
    if host_address:
        sans += f",IP:{host_address}"
    (pki / "san.ext").write_text(sans + "\n")
    openssl("x509", "-req", "-in", str(pki / "apiserver.csr"), "-CA", str(pki / "ca.crt"),
            "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "3650",
            "-out", str(pki / "apiserver.crt"), "-extfile", str(pki / "san.ext"))  # fmt: skip
    # The front proxy: the identity the API server proxies requests to aggregated APIs
    # (Kueue's visibility API) with, which those servers trust through its own CA.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            "-keyout", str(pki / "front-proxy-ca.key"), "-out", str(pki / "front-proxy-ca.crt"),
            "-subj", "/CN=front-proxy-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki / "front-proxy-client.key"),
            "-out", str(pki / "front-proxy-client.csr"), "-subj", "/CN=front-proxy-client")  # fmt: skip
    openssl("x509", "-req", "-in", str(pki / "front-proxy-client.csr"), "-CA", str(pki / "front-proxy-ca.crt"),
            "-CAkey", str(pki / "front-proxy-ca.key"), "-CAcreateserial", "-days", "3650",
            "-out", str(pki / "front-proxy-client.crt"))  # fmt: skip
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    token = secrets.token_hex(24)
    (pki / "tokens.csv").write_text(f"{token},admin,admin-uid,system:masters\n")
    for path in pki.iterdir():
        path.chmod(0o600)
    return token


def write_kubeconfig(path: Path, token: str) -> None:
    ca = STATE_DIR / "pki" / "ca.crt"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: azaion-local
  cluster:
    server: https://127.0.0.1:{PORTS.apiserver}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: azaion-local
  context:
    cluster: azaion-local
    user: admin
current-context: azaion-local
"""
    )
    path.chmod(0o600)


def kubeconfig_path() -> Path:
    return STATE_DIR / "kubeconfig"


# --- readiness ------------------------------------------------------------------------


def api_get(path: str, token: str, timeout: float = 2.0) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(STATE_DIR / "pki" / "ca.crt"))
    request = urllib.request.Request(
        f"https://127.0.0.1:{PORTS.apiserver}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def api_ready(token: str) -> bool:
    try:
        return api_get("/readyz", token)[0] == 200
    except OSError:
        return False


def wait_for(check, what: str, timeout: float, component: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        if component and exited(component):
            raise ClusterError(f"{component} exited during start-up; see {log_path(component)}:\n{log_tail(component)}")
        time.sleep(0.2)
    hint = f"; see {log_path(component)}" if component else ""
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{hint}")


def etcd_healthy() -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORTS.etcd_client}/health", timeout=2) as r:
        return json.loads(r.read()).get("health") == "true"


# --- processes ------------------------------------------------------------------------


def log_path(component: str) -> Path:
    return STATE_DIR / "logs" / f"{component}.log"


def log_tail(component: str, lines: int = 15) -> str:
    try:
        return "\n".join(log_path(component).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def component_alive(component: str) -> bool:
    pid = read_state().get("pids", {}).get(component)
    return bool(pid) and pid_is_ours(pid)


# The processes this invocation started. Right after a fork the kernel may show an
# empty /proc/PID/cmdline for a moment (the new program's arguments are not mapped
# yet), so start-up checks ask the handle, not the command line.
STARTED: dict[str, subprocess.Popen] = {}


def exited(component: str) -> bool:
    if component in STARTED:
        return STARTED[component].poll() is not None
    return not component_alive(component)


def start(component: str, argv: list[str]) -> None:
    log_path(component).parent.mkdir(parents=True, exist_ok=True)
    with log_path(component).open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    STARTED[component] = proc
    state = read_state()
    state.setdefault("pids", {})[component] = proc.pid
    write_state(state)


def stop_component(component: str) -> bool:
    """SIGTERM, then SIGKILL after 15 s, if the recorded pid is still ours; True when it ran."""
    pid = read_state().get("pids", {}).get(component)
    if not pid or not pid_is_ours(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 15
    while pid_is_ours(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_is_ours(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def stop_all() -> list[str]:
    """Stop the real node (if any) and every recorded component still ours; returns what was stopped."""
    stopped = []
    state = read_state()
    if state.get("real_node") and state.get("bin_dir"):
        stopped += real_node(Path(state["bin_dir"])).stop()
    for component in reversed(COMPONENTS):
        if stop_component(component):
            stopped.append(component)
    return stopped


def node_paths() -> realnode.NodePaths:
    return realnode.NodePaths(STATE_DIR, NODE_IMAGE_STORE)


def real_node(bin_dir: Path) -> realnode.RealNode:
    return realnode.RealNode(
        paths=node_paths(),
        ports=PORTS.node(),
        bin_dir=bin_dir,
        api_port=PORTS.apiserver,
        start_process=start,
        alive=component_alive,
        stop_process=stop_component,
        wait_for=wait_for,
        log=log,
    )


def advertise_address_args() -> list[str]:
    """The API server derives its advertise address from the default route; without one, name one."""
    try:
        routes = subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        routes = "unknown"
    if routes.strip():
        return []
    for address in socket.gethostbyname_ex(socket.gethostname())[2]:
        if not address.startswith("127."):
            return [f"--advertise-address={address}"]
    raise ClusterError("no default route and no non-loopback address for kube-apiserver to advertise")


#: Every API request's metadata (who, verb, resource, user agent), one JSON line each:
#: what the benchmarks count calls per run from, and a record of who changed what.
AUDIT_LOG = STATE_DIR / "audit.log"
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
"""


def audit_args() -> list[str]:
    policy = STATE_DIR / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    return [f"--audit-policy-file={policy}", f"--audit-log-path={AUDIT_LOG}",
            "--audit-log-maxsize=200", "--audit-log-maxbackup=1"]  # fmt: skip


def aggregation_args(pki: Path) -> list[str]:
    """Aggregated APIs (Kueue's visibility API): the API server proxies to their endpoints
    directly (no kube-proxy here), as the front proxy."""
    return [f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--enable-aggregator-routing=true"]  # fmt: skip


def start_plane(bin_dir: Path, gpus: int, pvs: int, host: str | None) -> None:
    """The control plane; with ``host`` (the host address) also the real node."""
    ports = PORTS.named() | (PORTS.named_node() if host else {})
    for name, port in ports.items():
        if port_in_use(port):
            raise ClusterError(
                f"port {port} ({name}) is in use by another process; stop it, or choose other "
                f"ports with AZAION_CLUSTER_PORT_BASE (now {PORT_BASE})"
            )
    remove_state_dir()
    STATE_DIR.mkdir(parents=True)
    pki = STATE_DIR / "pki"
    token = make_pki(pki, host)
    write_state({"token": token, "pids": {}, "gpus": gpus, "bin_dir": str(bin_dir), "real_node": bool(host),
                 "host_address": host})  # fmt: skip
    node = real_node(bin_dir) if host else None
    kubeconfig = kubeconfig_path()
    write_kubeconfig(kubeconfig, token)

    started = time.monotonic()
    etcd_url = f"http://127.0.0.1:{PORTS.etcd_client}"
    peer_url = f"http://127.0.0.1:{PORTS.etcd_peer}"
    start("etcd", [str(bin_dir / "etcd"), "--name=default", f"--data-dir={STATE_DIR / 'etcd'}",
                   f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                   f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                   f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync",
                   "--log-level=warn", "--quota-backend-bytes=4294967296"])  # fmt: skip
    wait_for(etcd_healthy, "etcd to be healthy", 30, "etcd")

    start("kube-apiserver", [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        f"--secure-port={PORTS.apiserver}",
        f"--cert-dir={STATE_DIR / 'apiserver-certs'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--token-auth-file={pki / 'tokens.csv'}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={realnode.SERVICE_CIDR}",
        "--allow-privileged=true",
        "--enable-admission-plugins=NodeRestriction,DefaultStorageClass,RuntimeClass,PodSecurity",
        "--event-ttl=1h",
        *aggregation_args(pki),
        *audit_args(),
        *(api_server_node_args(node, host) if node and host else ["--bind-address=127.0.0.1",
                                                                  *advertise_address_args()]),
    ])  # fmt: skip
    wait_for(lambda: api_ready(token), "kube-apiserver /readyz", 90, "kube-apiserver")
    log(f"kube-apiserver ready after {time.monotonic() - started:.1f}s")

    common = [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
              f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}"]  # fmt: skip
    start("kube-controller-manager", [
        str(bin_dir / "kube-controller-manager"), *common,
        f"--secure-port={PORTS.controller_manager}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        "--use-service-account-credentials=true",
        "--controllers=*,-nodeipam",
        "--concurrent-job-syncs=20",
        # A claim created just after its PV can be synced before the PV is in the binder's
        # cache; it is then bound by the next periodic sync (15 s by default).
        "--pvclaimbinder-sync-period=2s",
    ])  # fmt: skip
    start("kube-scheduler", [str(bin_dir / "kube-scheduler"), *common, f"--secure-port={PORTS.scheduler}"])
    start("kwok", [
        str(bin_dir / "kwok"), f"--kubeconfig={kubeconfig}",
        f"--config={HACK_DIR / 'kwok-stages.yaml'}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--server-address=127.0.0.1:{PORTS.kwok}",
        "--node-lease-duration-seconds=40",
    ])  # fmt: skip

    bootstrap(bin_dir, gpus, pvs, workload_owned=bool(host))
    wait_for(lambda: service_account_ready(token), "the default ServiceAccount", 60, "kube-controller-manager")
    wait_for(lambda: node_ready(token), f"node {NODE_NAME} to be Ready", 60, "kwok")
    if node and host:
        try:
            node.start(host)
        except realnode.NodeError as error:
            raise ClusterError(str(error)) from error
        wait_for(lambda: node_ready(token, realnode.NODE_NAME), f"node {realnode.NODE_NAME} to be Ready", 90,
                 "kubelet")  # fmt: skip
        advertise_gpus(bin_dir, realnode.NODE_NAME, gpus)
    log(f"control plane ready after {time.monotonic() - started:.1f}s")


def api_server_node_args(node: realnode.RealNode, host: str) -> list[str]:
    """Pods reach the API server at the host address; it reaches the kubelet by the node's IP."""
    cert, key = node.api_server_kubelet_client()
    return [
        # Every address, so the kubernetes Service's endpoint (host:port) answers as well as loopback.
        "--bind-address=0.0.0.0",
        f"--advertise-address={host}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-client-certificate={cert}",
        f"--kubelet-client-key={key}",
    ]


def advertise_gpus(bin_dir: Path, node: str, gpus: int) -> None:
    """A fake ``nvidia.com/gpu`` count on the real node (no device plugin: the pods run on CPU)."""
    patch = json.dumps({"status": {"capacity": {"nvidia.com/gpu": str(gpus)}}})
    subprocess.run(
        [str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig_path()}", "patch", "node", node,
         "--subresource=status", "--type=merge", "-p", patch],
        check=True, capture_output=True,
    )  # fmt: skip


def remove_state_dir() -> None:
    """The state directory, after whatever a crashed real node left mounted under it."""
    if not STATE_DIR.exists():
        return
    if os.geteuid() == 0:
        realnode.unmount_under(STATE_DIR)
    shutil.rmtree(STATE_DIR)


def service_account_ready(token: str) -> bool:
    return api_get("/api/v1/namespaces/default/serviceaccounts/default", token)[0] == 200


def node_ready(token: str, name: str = NODE_NAME) -> bool:
    status, body = api_get(f"/api/v1/nodes/{name}", token)
    if status != 200:
        return False
    conditions = json.loads(body).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# --- the fake GPU machine ---------------------------------------------------------------


def bootstrap_manifest(gpus: int, pvs: int, workload_owned: bool = False) -> str:
    """A node shaped like the target GPU server, its runtime class and storage."""
    documents = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-4090",
                },
            },
            "spec": {},
            "status": {
                "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": str(gpus)},
                "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": str(gpus)},
            },
        },
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "nvidia"},
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Retain",
        },
    ]
    for index in range(pvs):
        path = STATE_DIR / "volumes" / f"pv-{index:03d}"
        path.mkdir(parents=True, exist_ok=True)
        if workload_owned:  # real pods run as the images' uid and write here
            os.chown(path, realnode.WORKLOAD_UID, realnode.WORKLOAD_UID)
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"local-pv-{index:03d}", "labels": {"azaion.local/pool": "default"}},
                "spec": {
                    "capacity": {"storage": "100Gi"},
                    "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": STORAGE_CLASS,
                    "hostPath": {"path": str(path)},
                },
            }
        )
    return "\n---\n".join(json.dumps(document) for document in documents)


def bootstrap(bin_dir: Path, gpus: int, pvs: int, workload_owned: bool = False) -> None:
    subprocess.run(
        [str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig_path()}", "apply", "--server-side",
         "--force-conflicts", "-f", "-"],
        input=bootstrap_manifest(gpus, pvs, workload_owned), text=True, check=True, capture_output=True,
    )  # fmt: skip


def recycle_released_volumes(bin_dir: Path) -> int:
    """Make Released pool volumes Available again, emptied (what a recycler would do).

    The pool's PVs keep their data when a claim goes away (Retain); a reused
    plane would otherwise run out of volumes after a few test sessions.
    """
    kubectl = [str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig_path()}"]
    listing = subprocess.run(
        [*kubectl, "get", "pv", "-l", "azaion.local/pool=default", "-o", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    recycled = 0
    for pv in json.loads(listing.stdout)["items"]:
        if pv.get("status", {}).get("phase") != "Released":
            continue
        path = Path(pv["spec"]["hostPath"]["path"])
        if STATE_DIR in path.parents:
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, exist_ok=True)
            if read_state().get("real_node"):
                os.chown(path, realnode.WORKLOAD_UID, realnode.WORKLOAD_UID)
        subprocess.run(
            [*kubectl, "patch", "pv", pv["metadata"]["name"], "--type=json",
             "-p", '[{"op":"remove","path":"/spec/claimRef"}]'],
            capture_output=True, check=True,
        )  # fmt: skip
        recycled += 1
    return recycled


# --- commands -------------------------------------------------------------------------


def components(state: dict) -> list[str]:
    return COMPONENTS + (NODE_COMPONENTS if state.get("real_node") else [])


def healthy() -> bool:
    state = read_state()
    token = state.get("token")
    return bool(token) and all(component_alive(c) for c in components(state)) and api_ready(token)


def cmd_up(args: argparse.Namespace) -> None:
    started = time.monotonic()
    host = None
    if args.real_node:
        problems = realnode.missing_prerequisites()
        if problems:
            raise ClusterError("the real node needs: " + "; ".join(problems))
        host = realnode.host_address()
    bin_dir = build_tools(real_node=args.real_node)
    state = read_state()
    # A plane with a real node serves callers that do not need one too.
    reusable = state.get("gpus") == args.gpus and (state.get("real_node") or not args.real_node)
    if reusable and healthy():
        recycled = recycle_released_volumes(bin_dir)
        log(f"reusing the running control plane ({recycled} volumes recycled, {time.monotonic() - started:.1f}s)")
    else:
        stopped = stop_all()
        if stopped:
            log("stopped an unhealthy or different plane: " + ", ".join(stopped))
        start_plane(bin_dir, args.gpus, args.pvs, host)
    print(kubeconfig_path())


def cmd_down(_: argparse.Namespace) -> None:
    stopped = stop_all()
    log("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    if STATE_DIR.exists():
        remove_state_dir()
        log(f"removed {STATE_DIR}")


def cmd_env(_: argparse.Namespace) -> None:
    state = read_state()
    if not state:
        raise ClusterError("no control plane here; run: hack/cluster.sh up")
    print(f"export KUBECONFIG={kubeconfig_path()}")
    if state.get("bin_dir"):
        print(f"export PATH={state['bin_dir']}:$PATH")
    if state.get("real_node"):
        print(f"export AZAION_HOST_ADDRESS={state['host_address']}")
        print(f"export AZAION_CONTAINERD_SOCK={node_paths().containerd_socket}")


def cmd_load_image(args: argparse.Namespace) -> None:
    """Images from hack/images.sh's Docker daemon into the real node's containerd."""
    state = read_state()
    if not state.get("real_node"):
        raise ClusterError("no real node here; run: hack/cluster.sh up --real-node")
    socket = node_paths().containerd_socket
    for ref in args.refs:
        started = time.monotonic()
        name, _, tag = ref.removeprefix("azaion.local/").partition(":")
        if not ref.startswith("azaion.local/") or not tag:
            raise ClusterError(f"{ref}: only images of hack/images.sh (azaion.local/NAME:TAG) can be loaded")
        result = subprocess.run(
            [str(HACK_DIR / "images.sh"), "load-containerd", str(socket), name],
            env={**os.environ, "AZAION_IMAGE_TAG": tag}, capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise ClusterError(f"loading {ref} failed:\n{result.stderr[-3000:]}")
        log(f"{ref}: {result.stdout.strip()} ({time.monotonic() - started:.1f}s)")


def cmd_status(_: argparse.Namespace) -> None:
    state = read_state()
    for component in components(state):
        pid = state.get("pids", {}).get(component)
        print(f"{component:<24} {'running' if component_alive(component) else 'stopped'}  pid={pid}")
    token = state.get("token")
    print(f"{'api':<24} {'ready' if token and api_ready(token) else 'not ready'}  kubeconfig={kubeconfig_path()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start or reuse the control plane")
    up.add_argument("--gpus", type=int, default=int(os.environ.get("AZAION_CLUSTER_GPUS", "1")))
    up.add_argument("--pvs", type=int, default=40, help="hostPath PersistentVolumes to create")
    up.add_argument(
        "--real-node",
        action="store_true",
        default=os.environ.get("AZAION_REAL_NODE") == "1",
        help="also a node that runs containers (kubelet, containerd, runc; Linux, root)",
    )
    up.set_defaults(run=cmd_up)
    load = commands.add_parser("load-image", help="images of hack/images.sh into the real node")
    load.add_argument("refs", nargs="+", metavar="REF")
    load.set_defaults(run=cmd_load_image)
    commands.add_parser("down").set_defaults(run=cmd_down)
    commands.add_parser("env").set_defaults(run=cmd_env)
    commands.add_parser("status").set_defaults(run=cmd_status)
    args = parser.parse_args()
    try:
        args.run(args)
    except ClusterError as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
