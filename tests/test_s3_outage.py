"""S3 outages (issue 14): the S3 server of the tests is killed (SIGKILL) or frozen (SIGSTOP) in the middle of a
generation, and killed in the middle of a training. The runtime exits 75 (transient) after its retries, bounded
in number and time, publishes nothing half-done, and its rerun after the server is back (same data, same port)
completes with the result of a clean run."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from botocore.exceptions import ClientError

import freeatm.runtime.generate as generate
from freeatm.api import parse_resource
from freeatm.api.vocabulary import EXIT_TRANSIENT
from freeatm.runtime import pretrain
from freeatm.runtime.dataset_format import read_shard
from freeatm.runtime.errors import TransientError
from freeatm.runtime.pretrain import checkpoint as ckpt
from freeatm.runtime.shapesbench.study import write_shapes_dataset
from freeatm.runtime.storage import open_store
from tests.local_cli import DATASET
from tests.s3_server import S3Server, S3Unavailable, SeaweedFS
from tests.synthetic_fixture import pretrain_doc

torch.set_num_threads(1)

EXITS_WITHIN = 60  # seconds from the outage to the runtime's exit: its retries are bounded in time
RUN_LIMIT = 240  # seconds, at most, for any one run of the runtime (the machine may be loaded)


@pytest.fixture
def weed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own, started, its endpoint and keys in the environment (skipped without the
    binary; one that is installed but does not start fails the test)."""
    try:
        server = SeaweedFS(tmp_path)
    except S3Unavailable as e:
        pytest.skip(f"no SeaweedFS: {e}")
    server.start()
    for key, value in server.server.env.items():
        monkeypatch.setenv(key, value)
    try:
        yield server
    finally:
        server.stop()


def start_runtime(
    command: str, doc: dict[str, Any], tmp_path: Path, run: str, **env: str
) -> subprocess.Popen[str]:
    """`freeatm-runtime command` on `doc`, as a pod runs it, with `env` added to the environment; its progress
    and result files are named by `run`."""
    spec = tmp_path / f"{run}.json"
    spec.write_text(json.dumps(doc))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "FREEATM_RESULT_FILE": str(tmp_path / f"{run}.result.json"),
        "FREEATM_PROGRESS_FILE": str(tmp_path / f"{run}.progress.jsonl"),
        "FREEATM_PROGRESS_INTERVAL": "0",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "freeatm.runtime.cli", command, "--spec", str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def done(tmp_path: Path, run: str) -> float:
    """The units done by the latest progress line of `run` (0 before the first)."""
    path = tmp_path / f"{run}.progress.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    for line in reversed(lines):
        try:
            return json.loads(line)["done"]
        except json.JSONDecodeError:  # being written
            continue
    return 0


def outage_when(proc: subprocess.Popen[str], reached: Any, weed: SeaweedFS, outage: str = "killed") -> float:
    """Kill (or freeze) the server once `reached()` while `proc` runs; the time of the outage."""
    deadline = time.monotonic() + RUN_LIMIT
    while not reached():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run did not get far enough in time"
        time.sleep(0.05)
    if outage == "killed":
        weed.stop()
    else:
        weed.freeze()
    return time.monotonic()


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"the runtime still ran {timeout:.0f} s later: {output[-3000:]}")
    return proc.returncode, output


def result(tmp_path: Path, run: str) -> dict[str, Any]:
    return json.loads((tmp_path / f"{run}.result.json").read_text())


def contents(uri: str) -> dict[str, bytes]:
    store = open_store(uri)
    return {key: store.read_bytes(key) for key in store.list()}


def missing(server: S3Server, bucket: str, key: str) -> bool:
    try:
        server.client().head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        return e.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound")
    return False


def assert_transient_exit(proc: subprocess.Popen[str], outage: float, tmp_path: Path, run: str) -> None:
    code, output = finish(proc, EXITS_WITHIN)
    waited = time.monotonic() - outage
    assert code == EXIT_TRANSIENT, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    error = result(tmp_path, run)["error"]
    assert "s3://" in error and "failed" in error and "\n" not in error, error
    assert output.rstrip().splitlines()[-1] == f"error: {error}"
    print(f"{run}: exit {code} {waited:.1f} s after the outage: {error}")


def dataset_doc(uri: str) -> dict[str, Any]:
    """The local-mode tests' dataset with 40 images (5 shards: an outage lands mid-run) written to `uri`."""
    doc = copy.deepcopy(DATASET)
    doc["spec"]["generation"]["images"] = 40
    doc["spec"]["output"]["uri"] = uri
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["killed", "frozen"])
def test_an_outage_mid_generation(tmp_path: Path, weed: SeaweedFS, outage: str) -> None:
    """A killed server refuses connections; a frozen one accepts them and never answers: each attempt then
    waits FREEATM_S3_TIMEOUT (2 s here) before the runtime gives up."""
    bucket = f"gen-{uuid.uuid4().hex[:8]}"
    weed.server.create_bucket(bucket)
    out, clean = f"s3://{bucket}/datasets/shapes", f"s3://{bucket}/datasets/clean"

    proc = start_runtime("generate", dataset_doc(out), tmp_path, "first", FREEATM_S3_TIMEOUT="2")
    began = outage_when(proc, lambda: done(tmp_path, "first") >= 16, weed, outage)  # shard 0 is published
    assert_transient_exit(proc, began, tmp_path, "first")

    if outage == "killed":
        weed.start()
        weed.server.client().head_bucket(Bucket=bucket)  # the bucket survived the restart
    else:
        weed.freeze(False)
    assert missing(weed.server, bucket, "datasets/shapes/manifest.json")
    store = open_store(out)
    entries = [json.loads(store.read_bytes(k)) for k in store.list("shards/") if k.endswith(".json")]
    assert 1 <= len(entries) < 5, "the outage came too late to leave a dataset half-written"
    for entry in entries:  # what was published before the outage is complete and verifies
        assert len(read_shard(store, entry)) == 8

    code, output = finish(start_runtime("generate", dataset_doc(out), tmp_path, "rerun"), RUN_LIMIT)
    assert code == 0, output[-3000:]
    clean_outputs = generate.run(parse_resource(dataset_doc(clean)))
    assert result(tmp_path, "rerun")["manifestDigest"] == clean_outputs["manifestDigest"]
    assert contents(out) == contents(clean)


STEPS = 24  # 32 images, batches of 8, 6 epochs


def training_doc(dataset: str, out: str, checkpoint_every: int) -> dict[str, Any]:
    """A small run with the default loaderWorkers (2): shards are read in the loader's processes."""
    return pretrain_doc(
        dataset,
        out,
        use_masks=False,
        backbone="vit_test",
        epochs=STEPS // 4,
        checkpointEvery=checkpoint_every,
        loaderWorkers=2,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "checkpoint_every", [2, STEPS], ids=["while checkpointing", "while the loader reads shards"]
)
def test_an_outage_mid_training(tmp_path: Path, weed: SeaweedFS, checkpoint_every: int) -> None:
    bucket = f"train-{uuid.uuid4().hex[:8]}"
    weed.server.create_bucket(bucket)
    dataset, out, clean = (f"s3://{bucket}/{key}" for key in ("data/shapes", "runs/a", "runs/clean"))
    write_shapes_dataset(dataset, 32, shard_size=8)
    doc = training_doc(dataset, out, checkpoint_every)

    proc = start_runtime("pretrain", doc, tmp_path, "first")
    outage = outage_when(proc, lambda: done(tmp_path, "first") >= 5, weed)  # in the second epoch
    assert_transient_exit(proc, outage, tmp_path, "first")

    weed.start()
    store = open_store(out)
    assert missing(weed.server, bucket, "runs/a/export/metadata.json")
    assert missing(weed.server, bucket, "runs/a/export/backbone.pt")
    saved = ckpt.steps(out)
    assert all(step < STEPS for step in saved), "the outage came too late to stop the training"
    for step in saved:  # every checkpoint visible is complete and verifies
        data = store.read_bytes(ckpt.key_for(step))
        assert store.read_bytes(ckpt.digest_key(step)).decode() == hashlib.sha256(data).hexdigest()

    code, output = finish(start_runtime("pretrain", doc, tmp_path, "rerun"), RUN_LIMIT)
    assert code == 0, output[-3000:]
    assert f"from step {saved[0] if saved else 0}," in output
    pretrain.run(parse_resource(training_doc(dataset, clean, checkpoint_every)))
    exported, reference = contents(f"{out}/export"), contents(f"{clean}/export")
    assert exported.keys() == reference.keys() == {"backbone.pt", "metadata.json"}
    assert exported["backbone.pt"] == reference["backbone.pt"]
    assert json.loads(exported["metadata.json"]) == json.loads(reference["metadata.json"])


def test_an_outage_while_resuming_is_transient_not_a_corrupt_checkpoint(
    weed: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the checkpoint that cannot be fetched skipped as unreadable, the older ones would be too, and the
    job would start over from step 0, pruning the checkpoints it could not read."""
    bucket = f"resume-{uuid.uuid4().hex[:8]}"
    weed.server.create_bucket(bucket)
    out = f"s3://{bucket}/runs/a"
    for step in (1, 2):
        ckpt.save(out, step, {"model": {"w": torch.zeros(4)}, "specDigest": "sha256:d"})
    store = ckpt.cached_store(out)
    read = store.read_bytes

    def outage_then_read(key: str) -> bytes:
        if key == ckpt.key_for(2):
            weed.stop()
        return read(key)

    monkeypatch.setattr(store, "read_bytes", outage_then_read)
    with pytest.raises(TransientError, match="step-000000002.pt failed after retries"):
        ckpt.load_latest(out, "sha256:d")
