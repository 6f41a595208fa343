"""SyntheticDataset generation end to end: file:// vs S3, resumption after a kill, workers, errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import numpy as np
import pytest
import torch

import freeatm.runtime.generate as generate
from freeatm.api import parse_resource
from freeatm.runtime.dataset_format import read_shard
from freeatm.runtime.errors import InvalidInput
from freeatm.runtime.storage import open_store
from freeatm.runtime.toy import build_random_pipeline


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("model") / "toy"
    build_random_pipeline(seed=0).save_pretrained(path)
    return f"file://{path}"


def resource(model_uri: str, output: str, **spec: Any):  # type: ignore[no-untyped-def]
    generation = {
        "images": 64,
        "resolution": 32,
        "steps": 2,
        "guidanceScale": 1.0,
        "batchSize": 16,
        "shardSize": 16,
    }
    generation.update(spec.pop("generation", {}))
    doc = {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": "shapes"},
        "spec": {
            "model": {"uri": model_uri},
            "prompts": {"preset": "shapes"},
            "generation": generation,
            "attention": {"resolutions": [16], "modifiers": True, "keepSoftMaps": True},
            "output": {"uri": output},
            **spec,
        },
    }
    return parse_resource(doc)


def contents(uri: str) -> dict[str, bytes]:
    store = open_store(uri)
    return {key: store.read_bytes(key) for key in store.list()}


def test_file_and_s3_datasets_are_identical(model_uri, tmp_path, s3_env) -> None:  # type: ignore[no-untyped-def]
    bucket = f"d-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(bucket)
    local = generate.run(resource(model_uri, f"file://{tmp_path}/ds"))
    remote = generate.run(resource(model_uri, f"s3://{bucket}/datasets/ds"))

    assert local["manifestDigest"] == remote["manifestDigest"]
    files, objects = contents(f"file://{tmp_path}/ds"), contents(f"s3://{bucket}/datasets/ds")
    assert sorted(files) == sorted(objects)
    assert sorted(files) == ["manifest.json"] + [
        f"shards/shard-{i:05d}.{ext}" for i in range(4) for ext in ("json", "tar")
    ]
    assert files == objects  # identical bytes: images, masks, soft maps, records, manifest

    manifest = json.loads(files["manifest.json"])
    assert "sha256:" + hashlib.sha256(files["manifest.json"]).hexdigest() == local["manifestDigest"]
    assert manifest["format"] == "freeatm.synthetic/v1" and manifest["images"] == 64
    assert manifest["classes"] == ["circle", "square", "triangle"] and manifest["hasSoftMaps"] is True
    assert manifest["model"]["class"] == "PixelTextToImagePipeline"
    samples = []
    for entry in manifest["shards"]:  # read_shard checks each shard's sha256, bytes and samples
        samples.extend(read_shard(open_store(f"file://{tmp_path}/ds"), entry))
    assert [s.record["index"] for s in samples] == list(range(64))
    for s in samples:
        n = len(s.record["objects"])
        assert s.image.shape == (32, 32, 3) and s.mask.shape == (32, 32) and s.soft.shape == (n, 16, 16)
        assert s.soft.dtype == np.float16 and set(np.unique(s.mask)) <= set(range(n + 1))
        assert s.record["objects"][0]["tokenIndices"] == [2, 3]  # "a <colour> <shape>": colour + noun
        assert abs(s.record["maskCoverage"] - float((s.mask > 0).mean())) < 1e-5


@pytest.mark.slow
def test_killed_generation_regenerates_only_unfinished_shards(model_uri, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "ds"
    res = resource(
        model_uri, f"file://{out}", generation={"images": 48, "shardSize": 8, "batchSize": 8, "steps": 3}
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(res.model_dump(mode="json", by_alias=True, exclude_none=True)))
    env = {**os.environ, "FREEATM_RESULT_FILE": str(tmp_path / "result.json"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "freeatm.runtime.cli", "generate", "--spec", str(spec_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "shards" / "shard-00001.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "generation did not publish two shards in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finished = {int(p.name[6:11]) for p in (out / "shards").glob("shard-*.json")}
    assert 2 <= len(finished) < 6, "the kill came too late to test resumption"
    assert not (out / "manifest.json").exists()
    store = open_store(f"file://{out}")
    for s in finished:  # a published shard is always complete
        assert len(read_shard(store, json.loads(store.read_bytes(f"shards/shard-{s:05d}.json")))) == 8
    before = {s: (out / "shards" / f"shard-{s:05d}.tar").stat().st_ino for s in finished}

    regenerated: list[int] = []
    original = generate._generate_shard

    def counting(store, ctx, sampler, source, shard, *args):  # type: ignore[no-untyped-def]
        regenerated.append(shard)
        return original(store, ctx, sampler, source, shard, *args)

    monkeypatch.setattr(generate, "_generate_shard", counting)
    result = generate.run(res)
    assert sorted(regenerated) == sorted(set(range(6)) - finished)
    assert all((out / "shards" / f"shard-{s:05d}.tar").stat().st_ino == ino for s, ino in before.items())
    assert "manifestDigest" in result
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert [e["samples"] for e in manifest["shards"]] == [8] * 6

    regenerated.clear()  # a complete dataset: nothing to do
    assert generate.run(res) == result and regenerated == []


def test_workers_split_shards_and_merge_the_manifest(model_uri, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    res = resource(
        model_uri,
        f"file://{tmp_path}/ds",
        workers=2,
        generation={"images": 40, "shardSize": 8, "batchSize": 8},
    )
    store = open_store(f"file://{tmp_path}/ds")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    first = generate.run(res)  # worker 1 finishes first: shards 2–4, no manifest yet
    assert first == {"uri": f"file://{tmp_path}/ds"}
    assert store.list("shards/") == [f"shards/shard-{i:05d}.{e}" for i in (2, 3, 4) for e in ("json", "tar")]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    second = generate.run(res)  # the last worker merges every entry
    assert "manifestDigest" in second
    manifest = store.read_bytes("manifest.json")
    assert [e["name"] for e in json.loads(manifest)["shards"]] == [
        f"shards/shard-{i:05d}.tar" for i in range(5)
    ]

    # a lost shard regenerates to identical bytes, and re-merging is idempotent
    old = store.read_bytes("shards/shard-00003.tar")
    store.delete("shards/shard-00003.tar")
    store.delete("shards/shard-00003.json")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert generate.run(res) == second
    assert store.read_bytes("shards/shard-00003.tar") == old and store.read_bytes("manifest.json") == manifest

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    with pytest.raises(InvalidInput, match="outside the 2 worker"):
        generate.run(res)


def test_output_of_another_spec_is_refused(model_uri, tmp_path) -> None:  # type: ignore[no-untyped-def]
    generate.run(resource(model_uri, f"file://{tmp_path}/ds", generation={"images": 8, "shardSize": 8}))
    other = resource(model_uri, f"file://{tmp_path}/ds", generation={"images": 8, "shardSize": 8, "seed": 5})
    with pytest.raises(InvalidInput, match="different spec or model"):
        generate.run(other)


def test_unwritable_output(model_uri, tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(InvalidInput, match="output"):
        generate.run(resource(model_uri, f"file://{blocker}/ds", generation={"images": 8, "shardSize": 8}))


def test_cli_exit_code_for_bad_model(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from freeatm.runtime.cli import main

    res = resource("toy://shapes-random", f"file://{tmp_path}/ds", generation={"images": 8, "shardSize": 8})
    doc = res.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["spec"]["model"]["uri"] = "toy://no-such-model"  # the API refuses it; the runtime must too
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(doc))
    monkeypatch.setenv("FREEATM_RESULT_FILE", str(tmp_path / "result.json"))
    assert main(["generate", "--spec", str(spec)]) == 65
    assert "spec.model.uri" in capsys.readouterr().err
    assert json.loads((tmp_path / "result.json").read_text())["exitCode"] == 65
    assert not any((tmp_path / "ds").rglob("*.tar"))


def test_progress_and_metrics(model_uri, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from freeatm.runtime import metrics

    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("FREEATM_PROGRESS_FILE", str(progress))
    monkeypatch.setenv("FREEATM_PROGRESS_INTERVAL", "0")
    images_before = metrics.IMAGES_GENERATED._value.get()
    coverage_before = metrics.MASK_COVERAGE._sum.get()
    generate.run(
        resource(
            model_uri, f"file://{tmp_path}/ds", generation={"images": 12, "shardSize": 8, "batchSize": 4}
        )
    )
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert lines[0]["done"] == 0 and lines[-1]["done"] == lines[-1]["total"] == 12
    assert [line["images"] for line in lines] == [0, 4, 8, 12]
    assert all(line["unit"] == "images" for line in lines)
    assert metrics.IMAGES_GENERATED._value.get() - images_before == 12
    assert metrics.MASK_COVERAGE._sum.get() > coverage_before
