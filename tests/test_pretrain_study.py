"""runtime/study.py: the ShapesBench baseline-vs-mask-guided study, on a tiny scale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from freeatm.runtime.study import format_table, study

torch.set_num_threads(1)


def test_study_pretrains_both_variants_per_seed(tmp_path: Path) -> None:
    result = study(
        tmp_path, seeds=[3], images=16, epochs=1, batch_size=8, evaluate=False, backbone="vit_tiny_patch8",
        log=lambda _: None,
    )  # fmt: skip
    assert result["seeds"] == [3] and len(result["runs"]) == 1
    run = result["runs"][0]
    assert set(run["seconds"]) == {"baseline", "mask-guided"}
    assert run["fixes"] == {"maskAwareCrop": True, "objectContrast": True}
    for variant in ("baseline", "mask-guided"):
        assert (tmp_path / "seed-3" / variant / "export" / "backbone.pt").exists()
    assert "ShapesBench study: contrastive on vit_tiny" in format_table(result)


@pytest.mark.slow
def test_study_evaluates_with_a_linear_probe(tmp_path: Path) -> None:
    pytest.importorskip("freeatm.runtime.evaluate")
    result = study(
        tmp_path,
        seeds=2,
        images=16,
        epochs=1,
        batch_size=8,
        benchmarks=("linear-probe",),
        backbone="vit_tiny_patch8",
        log=lambda _: None,
    )
    row = result["summary"]["linear-probe/top1"]
    assert set(row) == {"random-init", "baseline", "mask-guided", "difference", "guidedWins"}
    assert 0.0 <= row["baseline"]["mean"] <= 1.0 and row["difference"]["std"] >= 0.0
    table = format_table(result)
    assert "linear-probe/top1" in table and "±" in table
