"""A dataset shard corrupted after generation, in local mode (issue 14): `freeatm run` fails the pretraining
stage with exit 65 naming the shard, in its output and in the stage's status, trains on nothing, and
`freeatm run --force` regenerates the shard (byte-identical) and trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.local_cli import DATASET, PRETRAIN, freeatm_run

WAIT = 300  # seconds, at most, for one `freeatm run` (the machine may be loaded)
EXIT_FAILED = 1  # `freeatm run`: a stage failed


def run(pipeline: Path, workdir: Path, *options: str) -> tuple[int, str]:
    cli = freeatm_run(pipeline, workdir, *options)
    try:
        output, _ = cli.communicate(timeout=WAIT)
    finally:
        cli.kill()
    return cli.returncode, output


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def status(workdir: Path, stage: str) -> dict:
    return json.loads((workdir / "status" / f"{stage}.json").read_text())["status"]


@pytest.mark.slow
def test_a_corrupt_shard_fails_training_and_force_repairs_it(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    dataset_only, pipeline = tmp_path / "dataset.yaml", tmp_path / "pipeline.yaml"
    dataset_only.write_text(yaml.safe_dump(DATASET))
    pipeline.write_text(yaml.safe_dump_all([DATASET, PRETRAIN]))
    code, output = run(dataset_only, workdir)
    assert code == 0, output
    [dataset] = (workdir / "outputs" / "SyntheticDataset-shapes").iterdir()
    clean = files(dataset)
    shard = dataset / "shards" / "shard-00001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    code, output = run(pipeline, workdir)
    assert code == EXIT_FAILED, output
    one_line = " ".join(output.split())  # the console wraps long lines
    assert "SyntheticDataset/shapes: unchanged since its last success, skipped" in one_line
    assert f"MaskPretrainJob/baseline failed (exit 65): shard {shard.as_uri()} of dataset" in one_line
    assert (
        "is corrupt: not a readable tar (ReadError: unexpected end of data); rerun the dataset's" in one_line
    )
    assert "Traceback" not in output and " object at 0x" not in output
    assert "the error is about the output of SyntheticDataset/shapes" in one_line
    assert "`freeatm run --force` reruns it" in one_line
    failed = status(workdir, "MaskPretrainJob-baseline")
    assert failed["phase"] == "Failed"
    [condition] = [c for c in failed["conditions"] if c["type"] == "Failed"]
    assert (
        condition["reason"] == "InvalidInput" and f"shard {shard.as_uri()} of dataset" in condition["message"]
    )
    trained = [p for p in (workdir / "outputs" / "MaskPretrainJob-baseline").rglob("*") if p.is_file()]
    assert trained == [], "something was trained on the corrupt shard"

    code, output = run(pipeline, workdir, "--force")
    assert code == 0, output
    assert files(dataset) == clean
    assert status(workdir, "MaskPretrainJob-baseline")["phase"] == "Succeeded"
    [log] = sorted((workdir / "logs" / "SyntheticDataset-shapes").glob("*.log"))[-1:]
    assert f"regenerating {shard.as_uri()}: shard {shard.as_uri()} of dataset" in log.read_text()
