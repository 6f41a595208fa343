"""The chart's CRDs (helm/freeatm/files/crds/) are the generated ones: byte copies of crds/, equal to api/."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from freeatm.api.crd import all_crds

REPO = Path(__file__).resolve().parents[1]
CHART_CRDS = REPO / "helm" / "freeatm" / "files" / "crds"
FIX = "regenerate with `freeatm crds --out crds/ && python tests/test_helm_crds.py`"


def test_chart_ships_one_file_per_generated_crd():
    assert sorted(p.name for p in CHART_CRDS.glob("*.yaml")) == sorted(all_crds()), FIX


def test_chart_crds_equal_the_models():
    for name, crd in all_crds().items():
        assert yaml.safe_load((CHART_CRDS / name).read_text()) == crd, f"{name} drifted from api/: {FIX}"


def test_chart_crds_are_copies_of_the_committed_crds():
    for path in sorted((REPO / "crds").glob("*.yaml")):
        assert (CHART_CRDS / path.name).read_bytes() == path.read_bytes(), (
            f"{path.name} differs from crds/: {FIX}"
        )


def test_chart_crd_files_have_one_top_level_metadata_block():
    """templates/crds.yaml injects labels and the keep annotation after the top-level `metadata:` line."""
    for path in CHART_CRDS.glob("*.yaml"):
        lines = path.read_text().splitlines()
        assert lines.count("metadata:") == 1, path.name
        assert "annotations" not in yaml.safe_load(path.read_text())["metadata"], path.name


def sync() -> None:
    """Copy crds/*.yaml into the chart."""
    for stale in CHART_CRDS.glob("*.yaml"):
        stale.unlink()
    for path in sorted((REPO / "crds").glob("*.yaml")):
        shutil.copyfile(path, CHART_CRDS / path.name)
        print(f"copied {path.name}")


if __name__ == "__main__":
    sync()
