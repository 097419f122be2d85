"""The local plane's real node: a kubelet running pods on containerd with runc.

``hack/cluster.sh up --real-node`` adds it beside the kwok node. Everything it
makes lives under the plane's state directory or is named ``azaion``:

- a second containerd (its own config, root, state and socket; the CRI plugin
  with ``restrict_oom_score_adj``, because this sandbox may not lower a
  process's OOM score, and a runtime ``nvidia`` that is plain runc, so the
  operator's GPU Jobs run here on CPU);
- a pause image built from ``hack/gobuild/pause`` and imported as an OCI
  archive, so no registry is needed;
- a CNI bridge ``azaion0`` (10.244.0.0/24, Debian's CNI plugins) and an
  iptables chain that lets pod traffic reach only pods and this machine;
- a kubelet with a node credential (Node authorizer, NodeRestriction), webhook
  authentication and authorisation, labelled and tainted
  ``azaion.local/real-node`` so only pods that ask for it land here, and a fake
  ``nvidia.com/gpu`` capacity;
- kube-proxy in iptables mode, so pods reach the API server through the
  ``kubernetes`` Service.

``stop`` undoes all of it: pods removed through the CRI, processes stopped by
pid, leftover shims killed, mounts under the state directory unmounted, the
bridge deleted, kube-proxy's, the kubelet's and our own iptables rules removed,
IPv4 forwarding put back as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "azaion-real-0"
NODE_LABEL = "azaion.local/real-node"
BRIDGE = "azaion0"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
EGRESS_CHAIN = "AZAION-POD-EGRESS"
CNI_BIN_DIR = Path("/usr/lib/cni")
FORWARD_SYSCTL = Path("/proc/sys/net/ipv4/ip_forward")
# The uid the project's images run as: pool volumes are handed to it.
WORKLOAD_UID = 1000


class NodeError(RuntimeError):
    """A problem the user can act on; printed without a traceback."""


@dataclass(frozen=True)
class NodePorts:
    kubelet: int
    kubelet_healthz: int
    proxy_metrics: int
    proxy_healthz: int


@dataclass(frozen=True)
class NodePaths:
    """Where the node keeps its files: under the plane's state directory, but for
    containerd's image store, a cache that outlives the plane (a multi-gigabyte
    training image is imported once per machine, not once per ``up``)."""

    root: Path
    image_store: Path

    @property
    def containerd(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def kubelet(self) -> Path:
        return self.root / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_state(self) -> Path:
        return self.root / "cni" / "networks"

    @property
    def pki(self) -> Path:
        return self.root / "pki"


# --- prerequisites ---------------------------------------------------------------------


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the node, as things a user can install."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root (containerd, the CNI bridge and iptables need it)")
    for command, package in (("containerd", "containerd"), ("ctr", "containerd"), ("runc", "runc"),
                             ("iptables", "iptables"), ("ip", "iproute2")):  # fmt: skip
        if shutil.which(command) is None:
            problems.append(f"{command} (apt-get install {package})")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        if not (CNI_BIN_DIR / plugin).exists():
            problems.append(f"CNI plugin {plugin} (apt-get install containernetworking-plugins)")
            break
    return problems


def host_address() -> str:
    """This machine's address on its default route: where pods reach the host's servers."""
    route = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True).stdout.split()
    if "dev" not in route:
        raise NodeError("no IPv4 default route: the real node needs a host address that pods can reach")
    device = route[route.index("dev") + 1]
    addresses = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", device], capture_output=True, text=True)
    for line in addresses.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    raise NodeError(f"the default route's device {device} has no IPv4 address")


# --- configuration (pure) ----------------------------------------------------------------


def containerd_config(paths: NodePaths, pause_ref: str) -> str:
    runc = '    runtime_type = "io.containerd.runc.v2"\n'
    return (
        "version = 2\n"
        f'root = "{paths.image_store}"\n'
        f'state = "{paths.containerd / "state"}"\n'
        "[grpc]\n"
        f'  address = "{paths.containerd_socket}"\n'
        "[ttrpc]\n"
        f'  address = "{paths.containerd / "containerd.sock.ttrpc"}"\n'
        '[plugins."io.containerd.grpc.v1.cri"]\n'
        f'  sandbox_image = "{pause_ref}"\n'
        "  restrict_oom_score_adj = true\n"
        '  stream_server_address = "127.0.0.1"\n'
        '  stream_server_port = "0"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd]\n'
        '  default_runtime_name = "runc"\n'
        '  snapshotter = "overlayfs"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
        f"{runc}"
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n'
        f"{runc}"
        '[plugins."io.containerd.grpc.v1.cri".cni]\n'
        f'  bin_dir = "{CNI_BIN_DIR}"\n'
        f'  conf_dir = "{paths.cni_conf}"\n'
        # Collect garbage after every deletion, not after a hundred changes: the
        # store is a cache kept between runs, and layers of replaced images are
        # gigabytes.
        '[plugins."io.containerd.gc.v1.scheduler"]\n'
        "  deletion_threshold = 1\n"
    )


def cni_conflist(paths: NodePaths, host: str) -> dict:
    """The pod network: a bridge, and routes to Services and this machine only (no default route)."""
    return {
        "cniVersion": "0.4.0",
        "name": "azaion",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # No masquerade: pods talk to pods and to this machine, nothing beyond.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": SERVICE_CIDR}, {"dst": f"{host}/32"}],
                    "dataDir": str(paths.cni_state),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(paths: NodePaths, ports: NodePorts, address: str, ca: Path) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": address,
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.kubelet_healthz,
        "tlsCertFile": str(paths.pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(paths.pki / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "podLogsDir": str(paths.pod_logs),
        "clusterDomain": "cluster.local",
        "registerWithTaints": [{"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}],
        # A shared development disk: evict only when it is really full, keep the images.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "serializeImagePulls": False,
    }


def kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
            "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        },
        indent=2,
    )


def oci_archive(binary: bytes, ref: str) -> bytes:
    """A one-layer OCI image archive holding ``/pause``, named ``ref`` for ``ctr images import``."""
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        info = tarfile.TarInfo("pause")
        info.size, info.mode, info.mtime = len(binary), 0o755, 0
        layer.addfile(info, io.BytesIO(binary))
    layer_bytes = layer_buffer.getvalue()
    compressed = gzip.compress(layer_bytes, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]},
        }
    ).encode()

    def descriptor(media_type: str, blob: bytes) -> dict:
        return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(blob).hexdigest()}", "size": len(blob)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", compressed)],
        }
    ).encode()
    manifest_descriptor = descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
    manifest_descriptor["annotations"] = {
        "io.containerd.image.name": ref,
        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
    }
    index = json.dumps({"schemaVersion": 2, "manifests": [manifest_descriptor]}).encode()

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", index)
        for blob in (config, compressed, manifest):
            add(f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", blob)
    return archive.getvalue()


# --- the node ---------------------------------------------------------------------------


@dataclass
class RealNode:
    """Starts and stops the node's processes; starting, stopping and waiting for them come from the plane."""

    paths: NodePaths
    ports: NodePorts
    bin_dir: Path
    api_port: int
    start_process: Callable[[str, list[str]], None]
    alive: Callable[[str], bool]
    stop_process: Callable[[str], bool]
    # The plane's wait: it also notices a component that exited and quotes its log.
    wait_for: Callable[[Callable[[], bool], str, float, str], None]
    log: Callable[[str], None]

    @property
    def ca(self) -> Path:
        """The plane's CA (in the shared pki directory): it signs the node's certificates."""
        return self.paths.pki / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.paths.pki / "ca.key"

    @property
    def ctr(self) -> list[str]:
        return ["ctr", "-a", str(self.paths.containerd_socket), "-n", "k8s.io"]

    # -- certificates

    def sign(self, name: str, subject: str, extensions: str | None = None) -> tuple[Path, Path]:
        key, cert, csr = (self.paths.pki / f"{name}.{suffix}" for suffix in ("key", "crt", "csr"))
        self.paths.pki.mkdir(parents=True, exist_ok=True)
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", subject])  # fmt: skip
        argv = ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
                "-CAcreateserial", "-days", "3650", "-out", str(cert)]  # fmt: skip
        if extensions:
            ext = self.paths.pki / f"{name}.ext"
            ext.write_text(extensions + "\n")
            argv += ["-extfile", str(ext)]
        run(argv)
        key.chmod(0o600)
        return cert, key

    def api_server_kubelet_client(self) -> tuple[Path, Path]:
        """The API server's client certificate towards the kubelet (logs, exec)."""
        return self.sign("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")

    # -- start

    def start(self, address: str) -> None:
        started = time.monotonic()
        enable_forwarding(self.paths.root)
        guard_pod_egress()
        self.write_cni(address)
        self.start_containerd()
        self.drop_leftover_containers()
        self.import_pause()
        self.start_kubelet(address)
        self.start_kube_proxy()
        self.log(f"real node {NODE_NAME} running pods after {time.monotonic() - started:.1f}s")

    def write_cni(self, host: str) -> None:
        self.paths.cni_conf.mkdir(parents=True, exist_ok=True)
        self.paths.cni_state.mkdir(parents=True, exist_ok=True)
        (self.paths.cni_conf / "10-azaion.conflist").write_text(json.dumps(cni_conflist(self.paths, host), indent=2))

    def pause_ref(self) -> str:
        digest = hashlib.sha256((self.bin_dir / "pause").read_bytes()).hexdigest()[:12]
        return f"azaion.local/pause:{digest}"

    def start_containerd(self) -> None:
        self.paths.containerd.mkdir(parents=True, exist_ok=True)
        config = self.paths.containerd / "config.toml"
        config.write_text(containerd_config(self.paths, self.pause_ref()))
        self.start_process("containerd", ["containerd", f"--config={config}", "--log-level=warn"])
        self.wait_for(lambda: run([*self.ctr, "version"], check=False) == 0, "containerd", 30, "containerd")

    def drop_leftover_containers(self) -> None:
        """A node that starts runs nothing yet: a container in the store is a leftover
        of an earlier node, and it pins the layers of the image it ran, replaced or not."""
        listed = subprocess.run([*self.ctr, "containers", "ls", "-q"], capture_output=True, text=True)
        leftovers = listed.stdout.split()
        for container in leftovers:
            run([*self.ctr, "tasks", "rm", "-f", container], check=False)
        if leftovers:
            run([*self.ctr, "containers", "rm", *leftovers], check=False)
            self.log(f"removed {len(leftovers)} containers an earlier node left in the image store")

    def import_pause(self) -> None:
        archive = self.paths.containerd / "pause.oci.tar"
        archive.write_bytes(oci_archive((self.bin_dir / "pause").read_bytes(), self.pause_ref()))
        run([*self.ctr, "images", "import", str(archive)])

    def start_kubelet(self, address: str) -> None:
        cert, key = self.sign("node", f"/O=system:nodes/CN=system:node:{NODE_NAME}")
        self.sign("kubelet", f"/CN={NODE_NAME}", f"subjectAltName=IP:{address},DNS:{NODE_NAME}")
        server = f"https://127.0.0.1:{self.api_port}"
        node_kubeconfig = self.paths.kubelet / "kubeconfig"
        self.paths.kubelet.mkdir(parents=True, exist_ok=True)
        node_kubeconfig.write_text(kubeconfig(server, self.ca, cert, key, f"system:node:{NODE_NAME}"))
        config = self.paths.kubelet / "config.json"
        config.write_text(json.dumps(kubelet_config(self.paths, self.ports, address, self.ca), indent=2))
        self.paths.pod_logs.mkdir(parents=True, exist_ok=True)
        labels = f"{NODE_LABEL}=true,nvidia.com/gpu.present=true"
        self.start_process("kubelet", [
            str(self.bin_dir / "kubelet"), f"--config={config}", f"--kubeconfig={node_kubeconfig}",
            f"--root-dir={self.paths.kubelet / 'root'}", f"--cert-dir={self.paths.kubelet / 'certs'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={address}", f"--node-labels={labels}", "--v=1",
        ])  # fmt: skip

    def start_kube_proxy(self) -> None:
        cert, key = self.sign("kube-proxy", "/CN=system:kube-proxy")
        proxy_kubeconfig = self.paths.root / "kube-proxy.kubeconfig"
        proxy_kubeconfig.write_text(
            kubeconfig(f"https://127.0.0.1:{self.api_port}", self.ca, cert, key, "system:kube-proxy")
        )
        self.start_process("kube-proxy", [
            str(self.bin_dir / "kube-proxy"), f"--kubeconfig={proxy_kubeconfig}",
            f"--hostname-override={NODE_NAME}", "--proxy-mode=iptables", f"--cluster-cidr={CLUSTER_CIDR}",
            # Pod -> Service -> pod on the same bridge comes back through the host, not around it.
            "--masquerade-all=true",
            "--conntrack-max-per-core=0",
            f"--metrics-bind-address=127.0.0.1:{self.ports.proxy_metrics}",
            f"--healthz-bind-address=127.0.0.1:{self.ports.proxy_healthz}",
        ])  # fmt: skip

    # -- stop

    def stop(self) -> list[str]:
        """Undo everything ``start`` did, whatever state it was left in; returns what was stopped."""
        stopped = [name for name in ("kube-proxy", "kubelet") if self.stop_process(name)]
        if self.paths.containerd_socket.exists() and self.alive("containerd"):
            crictl = self.bin_dir / "crictl"
            if crictl.exists():
                run([str(crictl), "-r", f"unix://{self.paths.containerd_socket}", "rmp", "-fa"], check=False)
        if self.stop_process("containerd"):
            stopped.append("containerd")
        stopped += kill_leftover_shims(self.paths.root)
        unmount_under(self.paths.root)
        run(["ip", "link", "delete", BRIDGE], check=False, quiet=True)
        kube_proxy = self.bin_dir / "kube-proxy"
        if kube_proxy.exists():
            run([str(kube_proxy), "--cleanup"], check=False, quiet=True)
        remove_iptables_leftovers()
        restore_forwarding(self.paths.root)
        return stopped


# --- host networking and cleanup ------------------------------------------------------------


def run(argv: list[str], check: bool = True, quiet: bool = False) -> int:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv[:4])} ... failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return result.returncode


def enable_forwarding(root: Path) -> None:
    """Pods reach each other through Services only with IPv4 forwarding; remember how it was."""
    saved = root / "ip_forward.saved"
    if not saved.exists():
        saved.write_text(FORWARD_SYSCTL.read_text())
    FORWARD_SYSCTL.write_text("1\n")


def restore_forwarding(root: Path) -> None:
    saved = root / "ip_forward.saved"
    if saved.exists():
        FORWARD_SYSCTL.write_text(saved.read_text())
        saved.unlink()


def guard_pod_egress() -> None:
    """Forwarded traffic from pods may go to pods only: nothing leaves this machine."""
    run(["iptables", "-N", EGRESS_CHAIN], check=False, quiet=True)
    run(["iptables", "-F", EGRESS_CHAIN])
    run(["iptables", "-A", EGRESS_CHAIN, "-d", CLUSTER_CIDR, "-j", "RETURN"])
    run(["iptables", "-A", EGRESS_CHAIN, "-j", "DROP"])
    rule = ["FORWARD", "-s", CLUSTER_CIDR, "-j", EGRESS_CHAIN]
    if run(["iptables", "-C", *rule], check=False) != 0:
        run(["iptables", "-I", *rule])


def remove_iptables_leftovers() -> None:
    run(["iptables", "-D", "FORWARD", "-s", CLUSTER_CIDR, "-j", EGRESS_CHAIN], check=False)
    run(["iptables", "-F", EGRESS_CHAIN], check=False)
    run(["iptables", "-X", EGRESS_CHAIN], check=False)
    # The kubelet's chains (kube-proxy --cleanup leaves them), in both families and every table.
    for command in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            for chain in ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"):
                for hook in ("INPUT", "OUTPUT"):
                    while run([command, "-t", table, "-D", hook, "-j", chain], check=False) == 0:
                        pass
                run([command, "-t", table, "-F", chain], check=False)
                run([command, "-t", table, "-X", chain], check=False)


def kill_leftover_shims(root: Path) -> list[str]:
    """containerd's shims outlive it: kill the ones whose command line names our state."""
    killed = []
    marker = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and marker in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(f"shim (pid {entry.name})")
            except ProcessLookupError:
                pass
    return killed


def unmount_under(root: Path) -> None:
    """Container rootfs, volumes and sandbox shm mounts the node left under its state directory."""
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == str(root) or target.startswith(f"{root}/"):
            mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        run(["umount", "-l", target], check=False, quiet=True)
