"""Model loading: every URI scheme through the same from_pretrained path, and the errors of bad models."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
import torch

from freeatm.runtime.errors import InvalidInput
from freeatm.runtime.generate.models import load_pipeline, model_digest, resolve_model_dir
from freeatm.runtime.storage import open_store
from freeatm.runtime.toy import PixelTextToImagePipeline, build_random_pipeline, toy_model_dir


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("model") / "toy"
    build_random_pipeline(seed=1).save_pretrained(path)
    return path


def _same_weights(a, b) -> bool:  # type: ignore[no-untyped-def]
    sa, sb = a.unet.state_dict(), b.unet.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_file_uri(saved: Path) -> None:
    model = load_pipeline(f"file://{saved}", device="cpu")
    assert isinstance(model.pipe, PixelTextToImagePipeline)
    assert model.identity() == {
        "uri": f"file://{saved}",
        "class": "PixelTextToImagePipeline",
        "digest": model.digest,
    }
    assert model.digest == model_digest(saved) and model.digest.startswith("sha256:")
    assert _same_weights(model.pipe, PixelTextToImagePipeline.from_pretrained(saved))


def test_pvc_uri(saved: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FREEATM_PVC_ROOT", str(saved.parent.parent))
    assert resolve_model_dir(f"pvc://{saved.parent.name}/toy") == saved


def test_toy_random(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FREEATM_CACHE_DIR", str(tmp_path))
    model = load_pipeline("toy://shapes-random", device="cpu")
    assert (tmp_path / "toy" / "shapes-random" / "model_index.json").exists()
    assert _same_weights(model.pipe, build_random_pipeline(seed=0))
    assert load_pipeline("toy://shapes-random", device="cpu").digest == model.digest  # built once, reused


def test_toy_shapes_weights() -> None:
    if (toy_model_dir() / "model_index.json").exists():
        assert load_pipeline("toy://shapes", device="cpu").class_name == "PixelTextToImagePipeline"
    else:
        with pytest.raises(InvalidInput, match="trained weights are not installed"):
            resolve_model_dir("toy://shapes")
    with pytest.raises(InvalidInput, match="unknown toy model"):
        resolve_model_dir("toy://cats")


def _hub_cache(cache: Path, repo: str, source: Path) -> None:
    """The Hugging Face hub cache layout of `repo` at one commit, made from a local pipeline directory."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(source, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


def test_hf_offline_from_cache(saved: Path, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FREEATM_HF_CACHE", str(tmp_path))
    _hub_cache(tmp_path, "freeatm/toy", saved)
    model = load_pipeline("hf://freeatm/toy", device="cpu")
    assert isinstance(model.pipe, PixelTextToImagePipeline)
    assert model.digest == model_digest(saved)


def test_hf_offline_missing_fails_fast(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FREEATM_HF_CACHE", str(tmp_path))
    began = time.monotonic()
    with pytest.raises(InvalidInput, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        load_pipeline("hf://stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert time.monotonic() - began < 10


def test_s3_model(saved: Path, s3_env, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FREEATM_CACHE_DIR", str(tmp_path / "cache"))
    bucket = f"m-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(bucket)
    store = open_store(f"s3://{bucket}/models/toy")
    for path in saved.rglob("*"):
        if path.is_file():
            store.upload(path, path.relative_to(saved).as_posix())
    model = load_pipeline(f"s3://{bucket}/models/toy", device="cpu")
    assert model.directory.is_relative_to(tmp_path / "cache")
    assert model.digest == model_digest(saved)
    assert _same_weights(model.pipe, PixelTextToImagePipeline.from_pretrained(saved))


def test_bad_models(saved: Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="does not exist"):
        load_pipeline(f"file://{tmp_path}/missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput, match="has no model_index.json"):
        load_pipeline(f"file://{empty}")
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(InvalidInput, match="component 'unet' is missing"):
        load_pipeline(f"file://{broken}")
    weights = tmp_path / "weights"
    shutil.copytree(saved, weights)
    for f in (weights / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(InvalidInput, match="cannot load the pipeline"):
        load_pipeline(f"file://{weights}")
    odd = tmp_path / "odd"
    shutil.copytree(saved, odd)
    index = json.loads((odd / "model_index.json").read_text())
    (odd / "model_index.json").write_text(json.dumps({**index, "_class_name": "NoSuchPipeline"}))
    with pytest.raises(InvalidInput, match="NoSuchPipeline"):
        load_pipeline(f"file://{odd}")
    with pytest.raises(InvalidInput, match="unknown scheme"):
        resolve_model_dir("ftp://host/model")
