"""runtime/shapesbench/study.py: the paired ShapesBench study — its statistics and gates on hand-made numbers, the control arms'
masks, and the whole machinery at a tiny size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from freeatm.runtime.shapes import CLUTTER_SHAPES, render
from freeatm.runtime.shapesbench.study import (
    ARM_SETS,
    ARMS,
    GPU_PROTOCOL,
    PROTOCOL,
    area_matched_map,
    attention_unavailable,
    degrade_mask,
    gates,
    main,
    object_ious,
    paired,
    resolve_arms,
    shuffled_maps,
    study,
    t975,
    write_random_dual_encoder,
    write_shapes_dataset,
)


def test_paired_difference_and_its_t_interval_by_hand() -> None:
    # mean 0.03, sample sd sqrt(0.001 / 4) = 0.015811, se 0.0070711, t(0.975, 4) = 2.776
    result = paired([0.01, 0.03, 0.02, 0.04, 0.05])
    half = 2.776 * 0.015811388 / math.sqrt(5)
    assert result["mean_diff"] == pytest.approx(0.03)
    assert result["ci_low"] == pytest.approx(0.03 - half) and result["ci_high"] == pytest.approx(0.03 + half)
    assert (result["wins"], result["losses"], result["seeds"]) == (5, 0, 5)
    mixed = paired([0.02, -0.01, 0.0])  # mean 0.003333, sd 0.015275, t(2) = 4.303
    assert mixed["ci_low"] == pytest.approx(0.0033333 - 4.303 * 0.0152753 / math.sqrt(3), abs=1e-6)
    assert (mixed["wins"], mixed["losses"]) == (1, 1)
    assert paired([0.05])["ci_low"] is None  # one seed has no interval


def test_t_quantiles() -> None:
    assert t975(1) == 12.706 and t975(4) == 2.776 and t975(9) == 2.262
    assert t975(11) == 2.228  # between entries: the smaller df's, wider value
    assert t975(500) == 1.96
    with pytest.raises(ValueError):
        t975(0)


def test_gates_arithmetic() -> None:
    ok = gates(0.80, [0.40, 0.44], 0.31, [0.20, 0.22], 0.15)
    assert ok["baseline-beats-random-init"]["value"] == pytest.approx(0.11)
    assert ok["probe-sees-learnt-shapes"]["value"] == pytest.approx(0.49)
    assert all(g["passed"] for g in ok.values())
    # a ceiling 19 points up, a baseline 9 points up, semseg on the floor: each gate fails on its own
    low = gates(0.50, [0.40, 0.40], 0.31, [0.15, 0.15], 0.15)
    assert not any(g["passed"] for g in low.values())


def test_degraded_masks_reach_their_iou() -> None:
    rng = np.random.default_rng(0)
    for scene in (render(0, i, 32, "clutter") for i in range(20)):
        for obj in scene.objects:
            for target in (0.9, 0.7, 0.5):
                got = degrade_mask(obj.mask, target, rng)
                iou = (got & obj.mask).sum() / (got | obj.mask).sum()
                assert abs(iou - target) < 0.06, (target, iou, obj.mask.sum())


def test_negative_control_masks_keep_areas_not_places() -> None:
    rng = np.random.default_rng(1)
    truth = [render(0, i, 32, "clutter").label_map() for i in range(40)]
    boxes = [area_matched_map(t, rng) for t in truth]
    for t, b in zip(truth, boxes, strict=True):
        for k in range(1, int(t.max()) + 1):
            assert abs(int((b == k).sum()) - int((t == k).sum())) <= max(3, 0.2 * (t == k).sum())
    shuffled = shuffled_maps(truth, rng)
    assert all(s is not t for s, t in zip(shuffled, truth, strict=True))  # nobody keeps its own masks
    assert sorted(id(s) for s in shuffled) == sorted(id(t) for t in truth)  # every map used once
    for maps in (boxes, shuffled):
        ious = [v for t, m in zip(truth, maps, strict=True) for v in object_ious(t, m)]
        assert np.mean(ious) < 0.15


def test_arms_resolve_with_what_they_are_compared_against() -> None:
    assert resolve_arms("iou-0.5") == ["baseline", "iou-0.5"]
    assert resolve_arms("mae-guided") == ["baseline", "mae-uniform", "mae-guided"]
    assert resolve_arms("core") == [
        "baseline",
        "true-masks",
        "shuffled-masks",
        "area-matched",
        "baseline-generated",
        "attention-masks",
    ]
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        resolve_arms("core,nope")
    assert not set(ARMS) & set(ARM_SETS)  # a name in --arms means one thing


def test_vlp_arms_resolve_without_the_contrastive_baseline() -> None:
    assert resolve_arms("vlp") == [
        "vlp-baseline",
        "vlp-true-masks",
        "vlp-shuffled-masks",
        "vlp-baseline-generated",
        "vlp-attention-masks",
    ]
    assert resolve_arms("vlp-attention-masks") == ["vlp-baseline-generated", "vlp-attention-masks"]
    assert resolve_arms("vlp-shuffled-masks") == ["vlp-baseline", "vlp-shuffled-masks"]
    assert resolve_arms("vlp-true-masks,mae-guided") == [
        "baseline",
        "mae-uniform",
        "mae-guided",
        "vlp-baseline",
        "vlp-true-masks",
    ]


def test_the_silhouette_arms_train_the_silhouette_term_on_their_masks() -> None:
    from freeatm.api import parse_resource
    from freeatm.runtime.shapesbench.study import _pretrain_doc

    assert resolve_arms("silhouette-attention") == ["baseline", "baseline-generated", "silhouette-attention"]
    for name in ARM_SETS["silhouette"]:
        method = parse_resource(_pretrain_doc(ARMS[name], 0, "file:///d", "file:///o", PROTOCOL)).spec.method
        assert method.fixes() == {
            "maskAwareCrop": True,
            "objectContrast": False,
            "silhouette": True,
        }
        assert method.image_level() == (name == "silhouette-simclr")
        assert ARMS[name].versus == ("baseline-generated" if name == "silhouette-attention" else "baseline")
    assert [ARMS[n].masks for n in ARM_SETS["silhouette"]] == [
        "true",
        "shuffled",
        "area-matched",
        "true",
        "attention",
    ]


def test_the_primary_metric_belongs_to_the_arms_framework() -> None:
    assert ARMS["true-masks"].scoring.primary == "object-probe/top1"
    assert ARMS["mae-guided"].scoring.primary == "object-probe/top1"
    for name in ("vlp-baseline", "vlp-true-masks", "vlp-shuffled-masks"):
        scoring = ARMS[name].scoring
        assert scoring.primary == "grounding/mean_iou"
        assert {"grounding", "zero-shot", "retrieval"} <= set(scoring.benchmarks)
        assert "zero-shot/top1" in scoring.secondary


def test_the_vlp_random_init_keeps_random_inits_backbone(tmp_path: Path) -> None:
    import torch

    from freeatm.runtime.backbones import load_export
    from freeatm.runtime.dual_encoder import load_vlp_export
    from freeatm.runtime.shapesbench.study import PROTOCOL

    p = {**PROTOCOL, "textTower": {"tokenizer": "toy://shapesbench", "width": 32, "layers": 1, "heads": 2}}
    write_random_dual_encoder(f"file://{tmp_path}", p)
    model, meta = load_vlp_export(f"file://{tmp_path}")
    assert meta["textTower"]["width"] == 32 and meta["backbone"] == p["backbone"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # as the EvalJob loads random://
        random_init, _ = load_export(f"random://{p['backbone']}?imageSize={p['imageSize']}")
    for name, tensor in random_init.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name


def test_only_a_toy_model_of_the_variant_gives_attention_masks() -> None:
    from freeatm.runtime.shapesbench.study import PROTOCOL

    assert PROTOCOL["attentionModel"] == "toy://shapes-clutter" and attention_unavailable(PROTOCOL) is None
    why = attention_unavailable({**PROTOCOL, "attentionModel": "toy://shapes"})
    assert why is not None and "plain ShapesBench scenes" in why
    why = attention_unavailable({**PROTOCOL, "attentionModel": "toy://shapes-random"})
    assert why is not None and "not a trained toy model" in why


def test_clutter_dataset_in_the_synthetic_format(tmp_path: Path) -> None:
    doc = write_shapes_dataset(f"file://{tmp_path}", 4, variant="clutter", shard_size=2)
    assert doc["classes"] == list(CLUTTER_SHAPES) and doc["generator"]["variant"] == "clutter"
    assert len(doc["shards"]) == 2 and (tmp_path / "manifest.json").exists()


def test_bad_options_are_refused_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--arms", "nope"]) == 2
    assert main(["--first-seed", "-1"]) == 2
    assert main(["--seeds", "0"]) == 2
    assert "unknown arm" in capsys.readouterr().err


def test_pilot_options_change_the_scenes_and_pixels(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import freeatm.runtime.shapesbench.study as module

    seen: list[dict[str, object]] = []

    def refuse(workdir: Path, protocol: dict[str, object], log: object) -> dict[str, object]:
        seen.append(protocol)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(module, "study", refuse)
    argv = ["--variant", "plain", "--image-size", "64", "--backbone", "vit_test_patch8"]
    assert main(argv) == 2
    assert seen[0]["variant"] == "plain" and seen[0]["imageSize"] == 64
    assert (
        seen[0]["backbone"] == "vit_test_patch8" and seen[0]["epochs"] == 20
    )  # the rest stays the protocol's
    assert main(["--image-size", "0"]) == 2 and len(seen) == 1
    assert "--image-size must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--variant", "nope"])


def test_the_gpu_form_needs_a_gpu(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--protocol", "gpu", "--seeds", "1"]) == 2
    assert "trains on 1 GPU, and this machine has no CUDA device" in capsys.readouterr().err


def test_the_vlp_arms_refuse_captions_longer_than_their_text_tower(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="text tower reads 24 tokens; crowd captions take up to 33"):
        study(tmp_path, {"variant": "crowd", "arms": "vlp-true-masks"})
    assert not any(tmp_path.iterdir())  # refused before any work


@pytest.mark.slow
def test_the_whole_study_runs_at_a_tiny_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    torch.set_num_threads(1)
    argv = ["--seeds", "2", "--first-seed", "1", "--images", "16", "--epochs", "1", "--val-images", "16"]
    argv += ["--batch-size", "8", "--arms", "true-masks,iou-0.5,attention-masks,silhouette-true"]
    argv += ["--workdir", str(tmp_path)]
    code = main(argv)
    assert code in (0, 1)  # gates may fail at this size; the machinery must not
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    arms = summary["arms"]
    names = {"baseline", "true-masks", "iou-0.5", "baseline-generated", "attention-masks", "silhouette-true"}
    assert set(arms) == names
    for name in names:
        entry = arms[name]
        assert entry["seeds"] == 2 and entry["ci_low"] <= entry["mean_diff"] <= entry["ci_high"]
        assert entry["wins"] + entry["losses"] <= 2
    assert arms["baseline"]["vs"] == "random-init" and arms["true-masks"]["vs"] == "baseline"
    assert arms["attention-masks"]["vs"] == "baseline-generated"
    # the toy model drew the captions of the seed's rendered scenes, with attention masks
    manifest = json.loads((tmp_path / "seed-1" / "data" / "generated" / "manifest.json").read_text())
    assert manifest["model"]["uri"] == "toy://shapes-clutter" and manifest["hasMasks"]
    assert manifest["classes"] == list(CLUTTER_SHAPES) and manifest["images"] == 16
    assert (tmp_path / "seed-2").is_dir() and not (tmp_path / "seed-0").exists()  # --first-seed 1
    assert 0.35 < arms["iou-0.5"]["maskIoU"] < 0.65
    assert set(summary["gates"]) == {
        "probe-sees-learnt-shapes",
        "baseline-beats-random-init",
        "semseg-beats-all-background",
    }
    assert code == (0 if summary["passed"] else 1)
    assert "ShapesBench study" in out and "supervised (ceiling)" in out
    assert "gate baseline-beats-random-init" in out


@pytest.mark.slow
def test_the_gpu_form_runs_at_a_tiny_size_on_the_cpu(tmp_path: Path) -> None:
    """The GPU protocol's machinery (crowd scenes at 64 px, detection among the object-centric scores) with the
    CPU's device settings and a tiny size."""
    import torch

    torch.set_num_threads(1)
    tiny = {
        "seeds": 2,
        "images": 16,
        "epochs": 1,
        "valImages": 16,
        "batchSize": 8,
        "backbone": "vit_test_patch4",
    }
    cpu = {"gpus": 0, "precision": "fp32", "loaderWorkers": 0}
    result = study(
        tmp_path, GPU_PROTOCOL | tiny | cpu | {"arms": "true-masks,attention-masks"}, log=lambda _: None
    )
    arms = result["arms"]
    assert arms["attention-masks"]["status"] == (
        "unavailable: toy://shapes-clutter was trained on the clutter ShapesBench scenes; it cannot draw the crowd ones"
    )
    entry = arms["true-masks"]
    assert entry["status"] == "ok" and "detection/map" in entry["secondary"]
    assert 0.0 <= entry["mean"]["detection/map"] <= 1.0
    manifest = json.loads((tmp_path / "seed-0" / "data" / "true" / "manifest.json").read_text())
    assert manifest["resolution"] == 64 and manifest["generator"]["variant"] == "crowd"


@pytest.mark.slow
def test_the_vlp_arms_run_at_a_tiny_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    torch.set_num_threads(1)
    argv = ["--seeds", "2", "--images", "16", "--epochs", "1", "--val-images", "16", "--batch-size", "8"]
    assert main([*argv, "--arms", "vlp", "--workdir", str(tmp_path)]) == 0  # no gate is about a VLP arm
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    arms = summary["arms"]
    assert list(arms) == [
        "vlp-baseline", "vlp-true-masks", "vlp-shuffled-masks", "vlp-baseline-generated", "vlp-attention-masks"
    ]  # fmt: skip
    assert arms["vlp-baseline"]["vs"] == arms["vlp-baseline-generated"]["vs"] == "random-init"
    assert arms["vlp-attention-masks"]["vs"] == "vlp-baseline-generated"
    for name in arms:
        entry = arms[name]
        assert entry["metric"] == "grounding/mean_iou" and entry["seeds"] == 2
        assert entry["ci_low"] <= entry["mean_diff"] <= entry["ci_high"]
        assert entry["wins"] + entry["losses"] <= 2
    assert arms["vlp-true-masks"]["vs"] == arms["vlp-shuffled-masks"]["vs"] == "vlp-baseline"
    assert arms["vlp-shuffled-masks"]["maskIoU"] < 0.15
    assert summary["gates"] == {} and summary["passed"] is True
    # a VLP-only run trains neither the contrastive baseline nor the probe's ceiling
    assert not (tmp_path / "seed-0" / "baseline").exists() and not (tmp_path / "supervised").exists()
    assert "ShapesBench study (text)" in out and "primary grounding/mean_iou" in out
