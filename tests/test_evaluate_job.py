"""EvalJob end to end: side-by-side report, resume, progress, metrics, errors; VOC and COCO layouts through the
`freeatm-runtime evaluate` command. Backbones are ViT-tiny at 32 px (2x2 patches): fast on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import evaluate_fixtures as fx  # noqa: E402

from freeatm.api import parse_resource  # noqa: E402
from freeatm.api.vocabulary import EXIT_INVALID  # noqa: E402
from freeatm.runtime import metrics  # noqa: E402
from freeatm.runtime.backbones import create_backbone, save_export  # noqa: E402
from freeatm.runtime.errors import InvalidInput  # noqa: E402
from freeatm.runtime.evaluate import job  # noqa: E402
from freeatm.runtime.evaluate.common import clear_feature_cache  # noqa: E402

RANDOM = "random://vit_tiny?imageSize=32"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    clear_feature_cache()
    monkeypatch.setenv("FREEATM_PROGRESS_INTERVAL", "0")


def eval_job(
    output: Path, checkpoints: list[dict[str, Any]], benchmarks: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "EvalJob",
        "metadata": {"name": "eval-test"},
        "spec": {"checkpoints": checkpoints, "benchmarks": benchmarks, "output": {"uri": output.as_uri()}},
    }


def pretrained_export(path: Path) -> str:
    """A MaskPretrainJob-style export (export/backbone.pt + metadata.json) of a ViT-tiny with its own weights."""
    torch.manual_seed(123)
    backbone = create_backbone("vit_tiny", 32)
    meta = {
        "framework": "contrastive",
        "useMasks": True,
        "fixes": {"maskAwareCrop": True, "objectContrast": True},
    }
    save_export(backbone, meta, path.as_uri())
    return path.as_uri()


SHAPES = "toy://shapesbench/val?images=40"


def test_shapesbench_probe_random_vs_pretrained_side_by_side_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress_file = tmp_path / "progress.jsonl"
    monkeypatch.setenv("FREEATM_PROGRESS_FILE", str(progress_file))
    ckpts = [
        {"uri": RANDOM, "label": "random-init"},
        {"uri": pretrained_export(tmp_path / "mpj"), "label": "freeatm"},
    ]
    benches = [
        {"name": "linear-probe", "dataset": {"format": "shapes", "uri": SHAPES}, "epochs": 20},
        {"name": "knn", "dataset": {"format": "shapes", "uri": SHAPES}, "k": 5},
    ]
    out = tmp_path / "eval"
    before = metrics.EVAL_BENCHMARKS_DONE._value.get()
    result = job.run(parse_resource(eval_job(out, ckpts, benches)))  # type: ignore[arg-type]

    assert result["uri"] == out.as_uri() and result["reportUri"] == (out / "report.md").as_uri()
    rows = {(r["checkpoint"], r["benchmark"], r["metric"]): r["value"] for r in result["results"]}
    assert set(rows) == {(c, b, "top1") for c in ("random-init", "freeatm") for b in ("linear-probe", "knn")}
    assert all(0.0 <= v <= 1.0 for v in rows.values())
    report = (out / "report.md").read_text()
    assert "| benchmark | metric | random-init | freeatm | Δ (freeatm − random-init) |" in report
    assert "| linear-probe | top1 |" in report and "![scores](plots/scores.png)" in report
    assert "maskAwareCrop, objectContrast" in report  # which fixes the checkpoint was trained with
    assert (out / "plots" / "scores.png").read_bytes().startswith(b"\x89PNG")
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"] == result["results"] and len(saved["runs"]) == 4
    assert metrics.EVAL_BENCHMARKS_DONE._value.get() == before + 4
    assert metrics.EVAL_SCORE.labels(
        checkpoint="freeatm", benchmark="knn", metric="top1"
    )._value.get() == pytest.approx(rows[("freeatm", "knn", "top1")], abs=1e-6)
    updates = [json.loads(line) for line in progress_file.read_text().splitlines()]
    assert (
        updates[-1]["benchmarksDone"] == 4
        and updates[-1]["total"] == 4
        and updates[-1]["unit"] == "benchmarks"
    )
    assert [u["benchmarksDone"] for u in updates] == sorted(u["benchmarksDone"] for u in updates)

    # A rerun of the same spec computes nothing and reports the same table.
    def boom(*args: Any) -> dict[str, float]:
        raise AssertionError("a finished benchmark ran again")

    monkeypatch.setattr(job, "PROTOCOLS", {k: (task, boom) for k, (task, _) in job.PROTOCOLS.items()})
    again = job.run(parse_resource(eval_job(out, ckpts, benches)))  # type: ignore[arg-type]
    assert again["results"] == result["results"]

    # Changing one benchmark's parameters re-runs that benchmark only (for both checkpoints).
    calls: list[tuple[str, str]] = []

    def record(ckpt: Any, train: Any, val: Any, settings: Any) -> dict[str, float]:
        calls.append((ckpt.label, settings.k))
        return {"top1": 0.5}

    monkeypatch.setattr(job, "PROTOCOLS", {**job.PROTOCOLS, "knn": ("classification", record)})
    benches[1]["k"] = 7
    third = job.run(parse_resource(eval_job(out, ckpts, benches)))  # type: ignore[arg-type]
    assert calls == [("random-init", 7), ("freeatm", 7)]
    assert {r["value"] for r in third["results"] if r["benchmark"] == "knn"} == {0.5}


def test_segmentation_detection_retrieval_on_shapesbench(tmp_path: Path) -> None:
    ds = {"format": "shapes", "uri": "toy://shapesbench/val?images=16"}
    benches = [
        {"name": "semseg", "dataset": ds, "epochs": 3},
        {"name": "semseg", "id": "semseg-ft", "dataset": ds, "epochs": 1, "finetune": True, "batchSize": 8},
        {"name": "detection", "dataset": ds, "epochs": 1, "batchSize": 8},
        {"name": "retrieval", "dataset": ds, "epochs": 3, "k": 3},
    ]
    result = job.run(parse_resource(eval_job(tmp_path / "out", [{"uri": RANDOM}], benches)))  # type: ignore[arg-type]
    metrics_by_bench = {(r["benchmark"], r["metric"]) for r in result["results"]}
    assert metrics_by_bench == {
        ("semseg", "miou"), ("semseg", "pixel_acc"), ("semseg-ft", "miou"), ("semseg-ft", "pixel_acc"),
        ("detection", "map"), ("detection", "map50"),
        ("retrieval", "recall@1"), ("retrieval", "recall@3"), ("retrieval", "recall@5"),
    }  # fmt: skip
    assert all(0.0 <= r["value"] <= 1.0 for r in result["results"])


def test_ade20k_cityscapes_imagefolder(tmp_path: Path) -> None:
    benches = [
        {
            "name": "semseg",
            "id": "ade",
            "dataset": {"format": "ade20k", "uri": fx.make_ade20k(tmp_path / "ade").as_uri()},
            "epochs": 2,
        },
        {
            "name": "semseg",
            "id": "cs",
            "dataset": {"format": "cityscapes", "uri": fx.make_cityscapes(tmp_path / "cs").as_uri()},
            "epochs": 2,
        },
        {
            "name": "knn",
            "dataset": {"format": "imagefolder", "uri": fx.make_imagefolder(tmp_path / "if").as_uri()},
            "k": 3,
        },
    ]
    result = job.run(parse_resource(eval_job(tmp_path / "out", [{"uri": RANDOM}], benches)))  # type: ignore[arg-type]
    assert {r["benchmark"] for r in result["results"]} == {"ade", "cs", "knn"}


def test_unbuildable_checkpoint_and_bad_dataset_fail_before_any_work(tmp_path: Path) -> None:
    bench = [{"name": "knn", "dataset": {"format": "shapes", "uri": SHAPES}}]
    bad = tmp_path / "bad"
    (bad / "export").mkdir(parents=True)
    (bad / "export" / "metadata.json").write_text(json.dumps({"backbone": "resnet9000", "imageSize": 32}))
    with pytest.raises(
        InvalidInput, match=r"checkpoint bad: .*bad/export/metadata.json: cannot build backbone 'resnet9000'"
    ):
        job.run(parse_resource(eval_job(tmp_path / "o1", [{"uri": bad.as_uri(), "label": "bad"}], bench)))  # type: ignore[arg-type]
    (bad / "export" / "metadata.json").write_text(json.dumps({"backbone": "resnet18", "imageSize": 32}))
    (bad / "export" / "backbone.pt").write_bytes(b"truncated")
    with pytest.raises(InvalidInput, match=r"bad/export/backbone.pt"):
        job.run(parse_resource(eval_job(tmp_path / "o2", [{"uri": bad.as_uri(), "label": "bad"}], bench)))  # type: ignore[arg-type]
    voc = fx.make_voc(tmp_path / "voc", per_split=2)
    missing = [{"name": "semseg", "dataset": {"format": "voc", "uri": voc.as_uri(), "valSplit": "test"}}]
    with pytest.raises(InvalidInput, match=r"ImageSets/Segmentation/test.txt: split 'test' not found"):
        job.run(parse_resource(eval_job(tmp_path / "o3", [{"uri": RANDOM}], missing)))  # type: ignore[arg-type]
    assert not (tmp_path / "o3").exists()


def test_detection_without_pycocotools_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # what find_spec sees when it is not installed
    bench = [{"name": "detection", "dataset": {"format": "shapes", "uri": SHAPES}}]
    with pytest.raises(
        InvalidInput, match=r"pycocotools, which is not installed: install freeatm\[detection\]"
    ):
        job.run(parse_resource(eval_job(tmp_path / "out", [{"uri": RANDOM}], bench)))  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def runtime_command() -> list[str]:
    exe = Path(sys.executable).with_name("freeatm-runtime")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "freeatm.runtime.cli"]


def run_cli(tmp_path: Path, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "evaljob.yaml"
    spec.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "FREEATM_RESULT_FILE": str(tmp_path / "result.json"), "OMP_NUM_THREADS": "1"}
    env.pop("FREEATM_PROGRESS_FILE", None)
    return subprocess.run(
        [*runtime_command(), "evaluate", "--spec", str(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_voc_and_coco_layouts_end_to_end_through_freeatm_runtime(tmp_path: Path) -> None:
    """One `freeatm-runtime evaluate` process (the interpreter starts once): a VOC-layout fixture for semseg and
    detection, a COCO-layout fixture for detection and retrieval."""
    voc = fx.make_voc(tmp_path / "voc", per_split=6).as_uri()
    coco = fx.make_coco(tmp_path / "coco", per_split=6).as_uri()
    common = {"epochs": 2, "batchSize": 6, "k": 3}
    benches = [
        {"name": "semseg", "id": "voc-semseg", "dataset": {"format": "voc", "uri": voc}, **common},
        {"name": "detection", "id": "voc-detection", "dataset": {"format": "voc", "uri": voc}, **common},
        {"name": "detection", "id": "coco-detection", "dataset": {"format": "coco", "uri": coco}, **common},
        {"name": "retrieval", "id": "coco-retrieval", "dataset": {"format": "coco", "uri": coco}, **common},
    ]
    out = tmp_path / "out"
    proc = run_cli(tmp_path, eval_job(out, [{"uri": RANDOM, "label": "random"}], benches))
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "result.json").read_text()) == outputs
    assert outputs["uri"] == out.as_uri() and outputs["reportUri"] == (out / "report.md").as_uri()
    assert {(r["benchmark"], r["metric"]) for r in outputs["results"]} == {
        ("voc-semseg", "miou"), ("voc-semseg", "pixel_acc"), ("voc-detection", "map"), ("voc-detection", "map50"),
        ("coco-detection", "map"), ("coco-detection", "map50"),
        ("coco-retrieval", "recall@1"), ("coco-retrieval", "recall@3"), ("coco-retrieval", "recall@5"),
    }  # fmt: skip
    report = (out / "report.md").read_text()
    assert "| benchmark | metric | random |" in report and "| voc-detection | map50 |" in report
    saved = json.loads((out / "results.json").read_text())
    assert {b["id"]: (b["trainImages"], b["valImages"]) for b in saved["benchmarks"]}["voc-semseg"] == (6, 6)
    for bench in benches:
        assert (out / "runs" / "random" / f"{bench['id']}.json").is_file()


def test_cli_bad_input_exits_65_naming_the_file(tmp_path: Path) -> None:
    root = fx.make_coco(tmp_path / "coco", per_split=2)
    (root / "annotations" / "instances_val.json").write_text("")
    benches = [{"name": "detection", "dataset": {"format": "coco", "uri": root.as_uri()}}]
    proc = run_cli(tmp_path, eval_job(tmp_path / "out", [{"uri": RANDOM}], benches))
    assert proc.returncode == EXIT_INVALID, proc.stderr[-2000:]
    assert "instances_val.json: empty annotation file" in proc.stderr
    assert json.loads((tmp_path / "result.json").read_text())["exitCode"] == EXIT_INVALID


def test_streaming_equals_cached_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Datasets too large for the feature cache are streamed batch by batch, with the same result."""
    ds = {"format": "shapes", "uri": "toy://shapesbench/val?images=12"}
    benches = [
        {"name": "semseg", "dataset": ds, "epochs": 2, "batchSize": 4},
        {"name": "detection", "dataset": ds, "epochs": 1, "batchSize": 4},
    ]
    cached = job.run(parse_resource(eval_job(tmp_path / "a", [{"uri": RANDOM}], benches)))  # type: ignore[arg-type]
    clear_feature_cache()
    monkeypatch.setenv("FREEATM_EVAL_CACHE_BYTES", "0")
    streamed = job.run(parse_resource(eval_job(tmp_path / "b", [{"uri": RANDOM}], benches)))  # type: ignore[arg-type]
    for a, b in zip(cached["results"], streamed["results"], strict=True):
        assert (a["benchmark"], a["metric"]) == (b["benchmark"], b["metric"])
        assert a["value"] == pytest.approx(b["value"], abs=1e-3)


def test_markdown_table_side_by_side() -> None:
    from freeatm.runtime.evaluate.report import markdown_table

    rows = [
        {"checkpoint": "baseline", "benchmark": "knn", "metric": "top1", "value": 0.5},
        {"checkpoint": "free-atm", "benchmark": "knn", "metric": "top1", "value": 0.625},
        {"checkpoint": "baseline", "benchmark": "semseg", "metric": "miou", "value": 0.25},
    ]
    assert markdown_table(rows, ["baseline", "free-atm"]).splitlines() == [
        "| benchmark | metric | baseline | free-atm | Δ (free-atm − baseline) |",
        "|---|---|---:|---:|---:|",
        "| knn | top1 | 0.5000 | **0.6250** | +0.1250 |",
        "| semseg | miou | 0.2500 | – | – |",
    ]
