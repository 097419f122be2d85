"""What the operator benchmarks share: the local control plane, a client that does
not count as the operator's, and figures of the operator process."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from azaion_devtools.audit import AuditLog
from azaion_devtools.cluster import REPO, Cluster, apply_crds

#: The benchmarks' own calls say so in the audit log (never counted as the operator's).
BENCH_AGENT = "azaion-bench"


@dataclass(frozen=True)
class Plane:
    cluster: Cluster
    api: client.ApiClient
    audit: AuditLog

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


def local_plane() -> Plane:
    """Starts (or reuses) the local control plane, with the CRDs installed."""
    result = subprocess.run([str(REPO / "hack" / "cluster.sh"), "up"], capture_output=True, text=True, check=True)
    kubeconfig = Path(result.stdout.strip().splitlines()[-1])
    state = json.loads((kubeconfig.parent / "cluster.json").read_text())
    cluster = Cluster(kubeconfig=kubeconfig, bin_dir=Path(state["bin_dir"]), simulated=True)
    apply_crds(cluster)
    config.load_kube_config(str(kubeconfig))
    api = client.ApiClient()
    api.user_agent = BENCH_AGENT
    return Plane(cluster, api, AuditLog(kubeconfig.parent / "audit.log"))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] if ordered else float("nan")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
