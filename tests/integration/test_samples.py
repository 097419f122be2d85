"""The samples in samples/ are what users copy first: each applies cleanly, strictly validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from azaion_devtools.cluster import REPO, Cluster

pytestmark = pytest.mark.integration

SAMPLES = sorted((REPO / "samples").glob("*.yaml"))


def test_there_is_a_sample_per_kind() -> None:
    assert [sample.stem for sample in SAMPLES] == ["annotationconsumer", "trainingrun"]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda path: path.stem)
def test_the_sample_applies_cleanly(crds: Cluster, namespace: str, sample: Path) -> None:
    result = crds.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(sample))
    assert "created (server dry run)" in result.stdout
