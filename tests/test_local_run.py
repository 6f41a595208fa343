"""Local mode end to end: `freeatm run` on a small pipeline, its report and pictures, Ctrl-C and resume.

The diffusion model is the toy architecture with random weights, saved to disk and loaded through file://
(the trained toy://shapes model is scored elsewhere); every stage runs the real runtime in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.local_cli import freeatm_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from freeatm.runtime.toy import build_random_pipeline

    path = tmp_path_factory.mktemp("model")
    build_random_pipeline(seed=0).save_pretrained(path)
    return path


def small_pipeline(
    model_dir: Path, tmp_path: Path, epochs: int = 1, example: str = "quickstart.yaml"
) -> Path:
    """An example pipeline, shrunk: same resources and dependencies, fewer images, steps and epochs."""
    docs = list(yaml.safe_load_all((ROOT / "examples" / example).read_text()))
    for doc in docs:
        spec = doc["spec"]
        if doc["kind"] == "SyntheticDataset":
            spec["model"]["uri"] = model_dir.as_uri()
            spec["generation"].update(images=32, steps=4, batchSize=16, shardSize=8)
        elif doc["kind"] == "MaskPretrainJob":
            spec["training"].update(epochs=epochs, batchSize=16, checkpointEvery=1)
        else:
            for bench in spec["benchmarks"]:
                bench.update(maxImages=32, epochs=2)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def output_dir(workdir: Path, stage: str) -> Path:
    """Where the stage's status says its output is."""
    uri = json.loads((workdir / "status" / f"{stage}.json").read_text())["status"]["outputs"]["uri"]
    return Path(uri.removeprefix("file://"))


def test_pipeline_runs_and_reports_both_checkpoints(model_dir: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    proc = freeatm_run(small_pipeline(model_dir, tmp_path), workdir)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    for picture in ("masks.png", "loss.png", "eval.png"):
        assert (workdir / picture).stat().st_size > 10_000, picture
    report = (workdir / "report.md").read_text()
    assert "![Free attention masks](masks.png)" in report and "![Evaluation](eval.png)" in report
    status = json.loads((workdir / "status" / "EvalJob-shapes-eval.json").read_text())["status"]
    assert status["phase"] == "Succeeded"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    results = status["outputs"]["results"]
    assert {r["checkpoint"] for r in results} == {"baseline", "free-atm", "random-init"}
    assert {r["benchmark"] for r in results} == {"object-probe", "linear-probe", "semseg"}
    assert "one seed" in report.lower() and "freeatm shapesbench study" in report  # what one run cannot show
    assert "baseline" in out and "free-atm" in out  # the printed results table
    dataset = json.loads((workdir / "status" / "SyntheticDataset-shapes.json").read_text())["status"]
    assert dataset["outputs"]["manifestDigest"].startswith("sha256:")
    manifest = json.loads((output_dir(workdir, "SyntheticDataset-shapes") / "manifest.json").read_text())
    assert manifest["images"] == 32 and len(manifest["shards"]) == 4  # both workers' shards

    rerun = freeatm_run(small_pipeline(model_dir, tmp_path), workdir)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert out.count("unchanged since its last success, skipped") == 4


def test_ctrl_c_during_pretraining_then_rerun_skips_generation(model_dir: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    pipeline = small_pipeline(model_dir, tmp_path, epochs=30)
    proc = freeatm_run(pipeline, workdir, start_new_session=True)
    checkpoints = "outputs/MaskPretrainJob-shapes-baseline/*/checkpoints/*.pt"
    deadline = time.monotonic() + 600
    while not list(workdir.glob(checkpoints)) and proc.poll() is None:
        assert time.monotonic() < deadline, "pretraining never wrote a checkpoint"
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    stopped = json.loads((workdir / "status" / "MaskPretrainJob-shapes-baseline.json").read_text())["status"]
    assert stopped["phase"] == "Failed"
    assert {c["type"]: c["reason"] for c in stopped["conditions"]}["Ready"] == "Interrupted"
    manifest = output_dir(workdir, "SyntheticDataset-shapes") / "manifest.json"
    generated = manifest.stat().st_mtime_ns

    saved = sorted(workdir.glob(checkpoints))[-1]
    rerun = freeatm_run(pipeline, workdir)
    out, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, out
    assert "SyntheticDataset/shapes: unchanged since its last success, skipped" in out
    assert manifest.stat().st_mtime_ns == generated
    log = (workdir / "logs" / "MaskPretrainJob-shapes-baseline" / "2.log").read_text()
    assert f"resuming from {saved.as_uri()}" in log, log  # training went on from its checkpoint


def test_vlp_example_trains_both_arms_and_scores_their_text_towers(model_dir: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    proc = freeatm_run(small_pipeline(model_dir, tmp_path, example="vlp.yaml"), workdir)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    status = json.loads((workdir / "status" / "EvalJob-vlp-eval.json").read_text())["status"]
    results = status["outputs"]["results"]
    assert {(r["checkpoint"], r["benchmark"]) for r in results} == {
        (c, b) for c in ("baseline", "region-phrase") for b in ("retrieval", "zero-shot", "grounding")
    }
    for arm, fixes in (("vlp-baseline", False), ("vlp-region-phrase", True)):
        meta = json.loads(
            (output_dir(workdir, f"MaskPretrainJob-{arm}") / "export" / "metadata.json").read_text()
        )
        assert meta["framework"] == "vlp" and meta["fixes"] == {"regionPhraseAlignment": fixes}
        assert meta["textTower"]["width"] == 64
