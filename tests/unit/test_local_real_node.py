"""The local plane's real node: what it writes for containerd, the CNI and the kubelet.

The node itself is exercised by tests/pods (real containers); these check the
parts that must hold before any process starts.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import ipaddress
import json
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HACK = Path(__file__).resolve().parents[2] / "hack"


def load_realnode():
    spec = importlib.util.spec_from_file_location("realnode", HACK / "realnode.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["realnode"] = module
    spec.loader.exec_module(module)
    return module


realnode = load_realnode()


def node_paths(tmp_path: Path):
    return realnode.NodePaths(tmp_path / "state", tmp_path / "images")


def blob(archive: tarfile.TarFile, digest: str) -> bytes:
    algorithm, hex_digest = digest.split(":")
    data = archive.extractfile(f"blobs/{algorithm}/{hex_digest}").read()
    assert hashlib.sha256(data).hexdigest() == hex_digest, f"blob {digest} does not match its digest"
    return data


def test_the_pause_archive_is_a_consistent_oci_image_named_for_containerd() -> None:
    program = b"\x7fELF fake pause program"
    with tarfile.open(fileobj=io.BytesIO(realnode.oci_archive(program, "azaion.local/pause:abc")), mode="r") as oci:
        assert json.loads(oci.extractfile("oci-layout").read())["imageLayoutVersion"] == "1.0.0"
        (entry,) = json.loads(oci.extractfile("index.json").read())["manifests"]
        assert entry["annotations"]["io.containerd.image.name"] == "azaion.local/pause:abc"
        manifest = json.loads(blob(oci, entry["digest"]))
        assert entry["size"] == len(blob(oci, entry["digest"]))
        config = json.loads(blob(oci, manifest["config"]["digest"]))
        assert config["config"]["Entrypoint"] == ["/pause"]
        (layer_descriptor,) = manifest["layers"]
        layer_bytes = gzip.decompress(blob(oci, layer_descriptor["digest"]))
        assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]
        with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as layer:
            member = layer.getmember("pause")
            assert member.mode & 0o111, "the pause program is executable"
            assert layer.extractfile(member).read() == program


def test_the_same_program_gives_the_same_archive() -> None:
    assert realnode.oci_archive(b"x", "a:1") == realnode.oci_archive(b"x", "a:1")


def test_containerd_runs_the_nvidia_class_on_runc_and_keeps_oom_scores(tmp_path: Path) -> None:
    config = realnode.containerd_config(node_paths(tmp_path), "azaion.local/pause:abc")
    assert "restrict_oom_score_adj = true" in config
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]' in config
    assert 'sandbox_image = "azaion.local/pause:abc"' in config
    assert f'address = "{tmp_path / "state"}' in config, "its socket is under the state directory"
    assert f'root = "{tmp_path / "images"}"' in config, "its image store outlives the plane"


def test_pods_get_addresses_inside_the_cluster_cidr_and_routes_only_to_services_and_the_host(
    tmp_path: Path,
) -> None:
    bridge, _portmap = realnode.cni_conflist(node_paths(tmp_path), "192.0.2.2")["plugins"]
    routes = [route["dst"] for route in bridge["ipam"]["routes"]]
    assert routes == [realnode.SERVICE_CIDR, "192.0.2.2/32"], "no default route: nothing beyond this machine"
    assert "isDefaultGateway" not in bridge
    subnet = ipaddress.ip_network(bridge["ipam"]["ranges"][0][0]["subnet"])
    assert subnet.subnet_of(ipaddress.ip_network(realnode.CLUSTER_CIDR))
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["dataDir"].startswith(str(tmp_path / "state"))


def test_the_kubelet_is_tainted_authenticated_and_reachable_only_by_the_api_server(tmp_path: Path) -> None:
    ports = realnode.NodePorts(1, 2, 3, 4)
    config = realnode.kubelet_config(node_paths(tmp_path), ports, "192.0.2.2", tmp_path / "ca.crt")
    assert config["registerWithTaints"] == [{"key": realnode.NODE_LABEL, "value": "true", "effect": "NoSchedule"}]
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["readOnlyPort"] == 0
    assert config["healthzBindAddress"] == "127.0.0.1"
