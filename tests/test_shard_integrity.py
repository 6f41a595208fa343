"""Integrity end to end (issue 14 item 1): corrupt shards and PNGs fail training with exit 65 naming them, and
a rerun of generation repairs a corrupt shard into a dataset byte-identical to a clean one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_fixture import pretrain_doc, pretrain_job, shapes_dataset  # noqa: E402
from test_generate_dataset import contents, resource  # noqa: E402

import freeatm.runtime.generate as generate  # noqa: E402
from freeatm.api.vocabulary import EXIT_INVALID  # noqa: E402
from freeatm.runtime.dataset_format import read_shard  # noqa: E402
from freeatm.runtime.errors import InvalidInput  # noqa: E402
from freeatm.runtime.pretrain import run  # noqa: E402
from freeatm.runtime.storage import open_store  # noqa: E402
from freeatm.runtime.toy import build_random_pipeline  # noqa: E402

torch.set_num_threads(1)

SHARD = "shards/shard-00002.tar"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_header(path: Path) -> None:
    """Flip bytes of the fifth member's header: tarfile then ends the shard there, without an error."""
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[4].offset
    data = bytearray(path.read_bytes())
    for i in range(offset + 100, offset + 108):  # the mode field
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_png(path: Path, member: str) -> None:
    """Flip bytes inside one PNG member and record the new digest, so only decoding can notice."""
    with tarfile.open(path) as tar:
        start = tar.getmember(member).offset_data
    data = bytearray(path.read_bytes())
    for i in range(start + 20, start + 28):  # inside the IHDR chunk
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    manifest_path = path.parent.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["shards"]:
        if entry["name"] == SHARD:
            entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("corrupt", [truncate, flip_header])
def test_a_corrupt_shard_fails_training_naming_it(tmp_path: Path, corrupt) -> None:  # type: ignore[no-untyped-def]
    dataset = shapes_dataset(tmp_path / "ds", 32, shard_size=8)
    corrupt(tmp_path / "ds" / SHARD)
    with pytest.raises(InvalidInput, match=f"shard {dataset}/{SHARD} of dataset {dataset}") as info:
        run(pretrain_job(dataset, f"file://{tmp_path}/out", batchSize=8))
    assert info.value.exit_code == EXIT_INVALID


def test_a_truncated_shard_is_exit_65_from_the_cli(tmp_path: Path) -> None:
    dataset = shapes_dataset(tmp_path / "ds", 32, shard_size=8)
    truncate(tmp_path / "ds" / SHARD)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(pretrain_doc(dataset, f"file://{tmp_path}/out", batchSize=8)))
    env = {"OMP_NUM_THREADS": "1", "FREEATM_RESULT_FILE": str(tmp_path / "result.json")}
    proc = subprocess.run(
        [sys.executable, "-m", "freeatm.runtime.cli", "pretrain", "--spec", str(spec)],
        env={k: v for k, v in os.environ.items() if k != "FREEATM_RESOURCE"} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == EXIT_INVALID, proc.stderr[-2000:]
    error = json.loads((tmp_path / "result.json").read_text())["error"]
    assert f"{dataset}/{SHARD}" in error and "corrupt" in error


@pytest.mark.parametrize("corrupt", [truncate, flip_header])
def test_read_shard_verifies_the_shard(tmp_path: Path, corrupt) -> None:  # type: ignore[no-untyped-def]
    dataset = shapes_dataset(tmp_path / "ds", 32, shard_size=8)
    store = open_store(dataset)
    entry = next(e for e in json.loads(store.read_bytes("manifest.json"))["shards"] if e["name"] == SHARD)
    assert [s.key for s in read_shard(store, entry)] == [f"{i:08d}" for i in range(16, 24)]
    corrupt(tmp_path / "ds" / SHARD)
    with pytest.raises(InvalidInput, match=f"shard {dataset}/{SHARD} of dataset {dataset} is corrupt"):
        read_shard(store, entry)


@pytest.mark.parametrize("member", ["00000017.png", "00000017.mask.png"])
def test_an_undecodable_png_names_the_sample(tmp_path: Path, member: str) -> None:
    dataset = shapes_dataset(tmp_path / "ds", 32, shard_size=8)
    flip_png(tmp_path / "ds" / SHARD, member)
    with pytest.raises(
        InvalidInput, match=f"sample 00000017 in {dataset}/{SHARD}: corrupt image or mask PNG"
    ):
        run(pretrain_job(dataset, f"file://{tmp_path}/out", batchSize=8))


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "toy"
    build_random_pipeline(seed=0).save_pretrained(path)
    return f"file://{path}"


@pytest.mark.parametrize("corrupt", [truncate, flip_header])
def test_a_rerun_of_generation_repairs_a_corrupt_shard(tmp_path: Path, model_uri: str, corrupt) -> None:  # type: ignore[no-untyped-def]
    small = {"generation": {"images": 24, "shardSize": 8, "batchSize": 8, "steps": 1}}
    clean, repaired = f"file://{tmp_path}/clean", f"file://{tmp_path}/repaired"
    generate.run(resource(model_uri, clean, **small))
    generate.run(resource(model_uri, repaired, **small))
    corrupt(tmp_path / "repaired" / SHARD)
    generate.run(resource(model_uri, repaired, **small))
    assert contents(repaired) == contents(clean)


def test_evaluation_reads_synthetic_shards_verified(tmp_path: Path) -> None:
    import evaluate_fixtures as fx

    from freeatm.runtime.evaluate.datasets import open_split

    root = fx.make_synthetic(tmp_path / "sds", per_split=8, shard_size=4)
    assert len(open_split("synthetic", root.as_uri(), "val", "objects").samples) == 8
    shard = root / "val" / "shards" / "shard-00001.tar"
    flip_header(shard)
    with pytest.raises(InvalidInput, match=f"shard {shard} of dataset {root / 'val'} is corrupt"):
        open_split("synthetic", root.as_uri(), "val", "objects")


def test_a_checkpoint_with_flipped_bytes_is_not_resumed_from(tmp_path: Path) -> None:
    from freeatm.runtime.pretrain import checkpoint as ckpt

    out = f"file://{tmp_path}/out"
    for step in (1, 2):
        ckpt.save(out, step, {"model": {"w": torch.full((256,), float(step))}, "specDigest": "sha256:d"})
    path = tmp_path / "out" / ckpt.key_for(2)
    data = path.read_bytes()
    two = torch.tensor(2.0).numpy().tobytes()
    at = data.index(two * 4)
    path.write_bytes(data[:at] + torch.tensor(3.0).numpy().tobytes() + data[at + 4 :])
    assert torch.load(path, weights_only=False)["model"]["w"][0] == 3.0  # torch itself does not notice
    state = ckpt.load_latest(out, "sha256:d")
    assert state is not None and state["step"] == 1


@pytest.mark.parametrize("corrupt", [truncate, flip_header])
def test_the_manifest_is_published_only_over_verified_shards(
    tmp_path: Path, model_uri: str, corrupt, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The worker that completes the dataset reads the other workers' shards back before it publishes the
    manifest, and regenerates one found corrupt."""
    small = {"generation": {"images": 32, "shardSize": 8, "batchSize": 8, "steps": 1}}
    clean, out = f"file://{tmp_path}/clean", f"file://{tmp_path}/ds"
    generate.run(resource(model_uri, clean, **small))
    res = resource(model_uri, out, workers=2, **small)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert generate.run(res) == {"uri": out}  # shards 2 and 3: not the whole dataset yet
    corrupt(tmp_path / "ds" / SHARD)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    assert "manifestDigest" in generate.run(res)
    assert contents(out) == contents(clean)
