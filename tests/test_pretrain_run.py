"""`freeatm-runtime pretrain` end to end: outputs and export, bad input, kill + resume, two-process DDP."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_fixture import pretrain_doc, pretrain_job, shapes_dataset  # noqa: E402

from freeatm.api.vocabulary import EXIT_INVALID  # noqa: E402
from freeatm.runtime.backbones import load_export  # noqa: E402
from freeatm.runtime.errors import InvalidInput  # noqa: E402
from freeatm.runtime.pretrain import checkpoint as ckpt  # noqa: E402
from freeatm.runtime.pretrain import run  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return shapes_dataset(tmp_path_factory.mktemp("ds") / "shapes", 40, shard_size=8)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FREEATM_PROGRESS_INTERVAL": "0", **extra}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "FREEATM_RESOURCE"):
        env.pop(key, None)
    return env


def _spec_file(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _progress(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _trace(prefix: Path, rank: int = 0) -> list[dict]:
    path = Path(f"{prefix}.rank{rank}")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    ("framework", "use_masks"), [("contrastive", True), ("mim", True), ("contrastive", False)]
)
def test_run_exports_a_backbone(
    dataset: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    framework: str,
    use_masks: bool,
) -> None:
    monkeypatch.setenv("FREEATM_PROGRESS_FILE", str(tmp_path / "progress.jsonl"))
    monkeypatch.setenv("FREEATM_PROGRESS_INTERVAL", "0")
    caplog.set_level(logging.INFO, logger="freeatm.pretrain")
    out = f"file://{tmp_path}/out"
    workers = 2 if framework == "mim" else 0  # the loader-worker path too
    job = pretrain_job(
        dataset, out, framework=framework, use_masks=use_masks, epochs=2, batchSize=8, loaderWorkers=workers
    )
    outputs = run(job)
    logged = caplog.text
    assert "peak lr 3.13e-05 (lr 0.001 × batch / 256)" in logged
    assert ("mask-aware crops (" in logged) is (framework == "contrastive" and use_masks)
    assert ("maskedObjectShare" in logged) is (framework == "mim")
    assert outputs == {"uri": out, "checkpointUri": f"{out}/export/backbone.pt"}
    backbone, meta = load_export(out)
    assert backbone.name == "vit_tiny_patch8" and meta["imageSize"] == 32
    assert meta["framework"] == framework and meta["useMasks"] is use_masks
    assert meta["fixes"] == job.spec.method.fixes()
    assert any(meta["fixes"].values()) is use_masks
    assert meta["steps"] == 10 and meta["epochs"] == 2 and meta["seed"] == 0
    assert meta["datasetUri"] == dataset and meta["datasetDigest"].startswith("sha256:")
    assert meta["specDigest"].startswith("sha256:")
    progress = _progress(tmp_path / "progress.jsonl")
    assert progress[-1]["done"] == progress[-1]["total"] == 10 and progress[-1]["unit"] == "steps"
    assert {"epoch", "step", "loss"} <= set(progress[0]) and progress[0]["step"] == 1
    assert ckpt.steps(out) == [10, 8]  # every 2 steps and at the end, the 2 newest kept
    # a finished job restarted does nothing but report its outputs
    assert run(job) == outputs


def test_baseline_runs_on_a_dataset_without_masks(tmp_path: Path) -> None:
    uri = shapes_dataset(tmp_path / "nomask", 16, masks=False)
    out = f"file://{tmp_path}/out"
    assert run(pretrain_job(uri, out, use_masks=False, batchSize=8))["uri"] == out
    with pytest.raises(InvalidInput, match="has no masks"):
        run(pretrain_job(uri, f"file://{tmp_path}/out2", use_masks=True, batchSize=8))


def test_bad_input(dataset: str, tmp_path: Path) -> None:
    out = f"file://{tmp_path}/out"
    with pytest.raises(InvalidInput, match="has no manifest.json"):
        run(pretrain_job(f"file://{tmp_path}/missing", out))
    with pytest.raises(InvalidInput, match="batchSize 64 is larger than the dataset"):
        run(pretrain_job(dataset, out, batchSize=64))
    job = pretrain_job(dataset, out)
    job.spec.backbone = "alexnet"
    with pytest.raises(
        InvalidInput, match="unknown backbone 'alexnet'; choose one of: resnet18, resnet18_os8"
    ):
        run(job)


def test_checkpoints_of_another_spec_are_refused(dataset: str, tmp_path: Path) -> None:
    out = f"file://{tmp_path}/out"
    run(pretrain_job(dataset, out, batchSize=8))
    with pytest.raises(InvalidInput, match="written by a different spec"):
        run(pretrain_job(dataset, out, batchSize=8, lr=0.01))


def test_cli_exit_code_for_bad_input(tmp_path: Path) -> None:
    spec = _spec_file(tmp_path, pretrain_doc(f"file://{tmp_path}/missing", f"file://{tmp_path}/out"))
    proc = subprocess.run(
        [sys.executable, "-m", "freeatm.runtime.cli", "pretrain", "--spec", str(spec)],
        env=_env(tmp_path, FREEATM_RESULT_FILE=str(tmp_path / "result.json")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_INVALID, proc.stderr
    assert "has no manifest.json" in json.loads((tmp_path / "result.json").read_text())["error"]


@pytest.mark.slow
def test_killed_run_resumes_from_the_saved_step(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = f"file://{tmp_path}/out"
    doc = pretrain_doc(dataset, out, epochs=2, batchSize=8, checkpointEvery=2)  # 5 steps/epoch, 10 in all
    spec = _spec_file(tmp_path, doc)
    trace = tmp_path / "trace"
    proc = subprocess.Popen(
        [sys.executable, "-m", "freeatm.runtime.cli", "pretrain", "--spec", str(spec)],
        env=_env(tmp_path, FREEATM_TRACE_SAMPLES=str(trace)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not ckpt.steps(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    saved = ckpt.steps(out)
    assert saved and saved[0] < 10, "the run was not killed mid-run"
    step = saved[0]
    first_run = {t["step"]: t["index"] for t in _trace(trace)}
    assert max(first_run) < 10
    # a newer checkpoint that was cut short is skipped with a warning
    latest = tmp_path / "out" / ckpt.key_for(step)
    (tmp_path / "out" / ckpt.key_for(step + 1)).write_bytes(latest.read_bytes()[:1000])

    monkeypatch.setenv("FREEATM_TRACE_SAMPLES", str(tmp_path / "trace2"))
    with caplog.at_level(logging.INFO):
        outputs = run(pretrain_job(dataset, out, epochs=2, batchSize=8, checkpointEvery=2))
    assert outputs["checkpointUri"].endswith("export/backbone.pt")
    assert any(
        "skipping unreadable checkpoint" in r.message and f"step-{step + 1:09d}" in r.message
        for r in caplog.records
    )
    assert any(f"from step {step}" in r.message for r in caplog.records)
    second_run = {t["step"]: t["index"] for t in _trace(tmp_path / "trace2")}
    assert min(second_run) == step + 1 and max(second_run) == 10
    for s in set(first_run) & set(second_run):  # steps redone after the kill see the same samples
        assert first_run[s] == second_run[s]
    assert load_export(out)[1]["steps"] == 10


@pytest.mark.slow
@pytest.mark.parametrize(
    ("framework", "method"),
    [
        ("contrastive", {}),
        ("vlp", {}),
        # no projector: every parameter a term trains gets a gradient on every rank
        ("contrastive", {"imageLoss": False, "objectContrast": False, "silhouette": True}),
    ],
)
def test_two_process_ddp_reads_disjoint_samples(
    dataset: str, tmp_path: Path, framework: str, method: dict
) -> None:
    out = f"file://{tmp_path}/out"
    doc = pretrain_doc(dataset, out, framework=framework, epochs=1, batchSize=8, checkpointEvery=100)
    doc["spec"]["method"] |= method
    doc["spec"]["distributed"] = {"nodes": 2}  # two CPU processes
    spec = _spec_file(tmp_path, doc)
    trace = tmp_path / "trace"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "freeatm.runtime.cli", "pretrain", "--spec", str(spec)],
        env=_env(tmp_path, FREEATM_TRACE_SAMPLES=str(trace), FREEATM_PROGRESS_FILE=str(tmp_path / "p.jsonl")),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [_trace(trace, r) for r in (0, 1)]
    assert [len(r) for r in ranks] == [5, 5]  # 40 images / batch 8 = 5 steps, 4 samples per rank and step
    seen = [{i for t in r for i in t["index"]} for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert all(len(t["index"]) == 4 for r in ranks for t in r)
    _, meta = load_export(out)
    assert meta["steps"] == 5 and meta["method"] | method == meta["method"]
    progress = _progress(tmp_path / "p.jsonl")
    assert progress and progress[-1]["done"] == 5  # rank 0 only reports
