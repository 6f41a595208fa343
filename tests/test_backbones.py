"""runtime/backbones.py: the backbone factory and the export that evaluation reads."""

from __future__ import annotations

import json

import pytest
import torch

from freeatm.runtime.backbones import BACKBONES, create_backbone, load_export, save_export
from freeatm.runtime.errors import InvalidInput

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("name", "size", "dim", "stride"),
    [
        ("resnet18", 32, 512, 8),
        ("resnet18", 128, 512, 32),
        ("resnet50", 32, 2048, 8),
        ("vit_tiny", 32, 192, 16),
        ("vit_small", 64, 384, 16),
        ("vit_base", 32, 768, 16),
    ],
)
def test_shapes(name: str, size: int, dim: int, stride: int) -> None:
    backbone = create_backbone(name, size)
    assert (backbone.name, backbone.feature_dim, backbone.patch_size_or_stride) == (name, dim, stride)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        dense = backbone.forward_features(x)
        pooled = backbone(x)
    assert dense.shape == (2, dim, size // stride, size // stride)
    assert pooled.shape == (2, dim)
    assert torch.allclose(pooled, dense.mean(dim=(2, 3)), atol=1e-5)


def test_vit_accepts_other_sizes() -> None:
    backbone = create_backbone("vit_tiny", 32)
    with torch.no_grad():
        assert backbone.forward_features(torch.randn(1, 3, 64, 48)).shape == (1, 192, 4, 3)


def test_unknown_backbone_lists_choices() -> None:
    with pytest.raises(InvalidInput) as e:
        create_backbone("resnet1000")
    for name in BACKBONES:
        assert name in str(e.value)


def test_export_roundtrip(tmp_path) -> None:
    backbone = create_backbone("resnet18", 32)
    uri = f"file://{tmp_path}/job"
    meta = {"framework": "contrastive", "useMasks": True, "fixes": {"maskAwareCrop": True}, "epochs": 1}
    weights = save_export(backbone, meta, uri)
    assert weights == f"{uri}/export/backbone.pt"
    written = json.loads((tmp_path / "job/export/metadata.json").read_text())
    assert written["backbone"] == "resnet18" and written["imageSize"] == 32 and written["featureDim"] == 512
    x = torch.randn(2, 3, 32, 32)
    backbone.eval()
    for where in (uri, uri + "/export", weights):
        loaded, meta2 = load_export(where)
        assert meta2["fixes"] == {"maskAwareCrop": True}
        with torch.no_grad():
            assert torch.allclose(loaded(x), backbone(x), atol=1e-5)


def test_random_baseline() -> None:
    backbone, meta = load_export("random://vit_tiny?imageSize=32")
    assert backbone.name == "vit_tiny" and backbone.image_size == 32 and meta["framework"] == "random"
    with pytest.raises(InvalidInput, match="unknown backbone"):
        load_export("random://alexnet")


def test_bad_exports_name_the_file(tmp_path) -> None:
    uri = f"file://{tmp_path}/job"
    with pytest.raises(InvalidInput, match="metadata.json does not exist"):
        load_export(uri)
    save_export(create_backbone("resnet18", 32), {}, uri)
    meta = json.loads((tmp_path / "job/export/metadata.json").read_text())
    (tmp_path / "job/export/metadata.json").write_text(json.dumps({**meta, "backbone": "resnet50"}))
    with pytest.raises(InvalidInput, match="backbone.pt does not fit backbone resnet50"):
        load_export(uri)
    (tmp_path / "job/export/metadata.json").write_text(json.dumps({**meta, "backbone": "lenet"}))
    with pytest.raises(InvalidInput, match="metadata.json: cannot build backbone 'lenet'"):
        load_export(uri)
    (tmp_path / "job/export/metadata.json").write_text(json.dumps(meta))
    (tmp_path / "job/export/backbone.pt").write_bytes(b"truncated")
    with pytest.raises(InvalidInput, match="backbone.pt"):
        load_export(uri)
