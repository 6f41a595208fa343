"""runtime/backbones.py: the backbone factory and the export that evaluation reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from freeatm.api import parse_resource
from freeatm.api.pretrain_job import BACKBONE_GEOMETRY, feature_grid, is_vit
from freeatm.runtime.backbones import (
    _FEATURE_DIMS,
    _TIMM_NAMES,
    BACKBONES,
    create_backbone,
    load_export,
    save_export,
)
from freeatm.runtime.errors import InvalidInput

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("name", "size", "dim", "stride"),
    [
        ("resnet18", 32, 512, 32),
        ("resnet18", 128, 512, 32),
        ("resnet18_os8", 32, 512, 8),
        ("resnet50_os8", 32, 2048, 8),
        ("resnet_test", 32, 96, 32),
        ("resnet_test", 128, 96, 32),
        ("resnet_test_os8", 32, 96, 8),
        ("vit_tiny", 32, 192, 16),
        ("vit_tiny_patch4", 32, 192, 4),
        ("vit_test_patch4", 32, 64, 4),
        ("vit_small_patch8", 64, 384, 8),
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
    grid = feature_grid(name, size)  # what the validator computes is what the backbone gives
    assert grid == max(1, size // stride)
    assert dense.shape == (2, dim, grid, grid)
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


def test_the_runtime_builds_every_architecture_the_api_names() -> None:
    architectures = {arch for arch, _ in BACKBONE_GEOMETRY.values()}
    assert architectures == set(_FEATURE_DIMS)
    assert {a for a in architectures if is_vit(a) or a.endswith("_test")} <= set(_TIMM_NAMES)


@pytest.mark.parametrize("name", ["resnet18_os8", "resnet_test_os8", "vit_tiny_patch8"])
def test_export_roundtrip(tmp_path, name: str) -> None:
    backbone = create_backbone(name, 32)
    uri = f"file://{tmp_path}/job"
    meta = {"framework": "contrastive", "useMasks": True, "fixes": {"maskAwareCrop": True}, "epochs": 1}
    weights = save_export(backbone, meta, uri)
    assert weights == f"{uri}/export/backbone.pt"
    written = json.loads((tmp_path / "job/export/metadata.json").read_text())
    assert written["backbone"] == name and written["imageSize"] == 32
    assert written["patchSizeOrStride"] == backbone.patch_size_or_stride
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
    backbone, meta = load_export("random://vit_tiny_patch4?imageSize=32")
    assert backbone.patch_size_or_stride == 4 and meta["patchSizeOrStride"] == 4
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
    (tmp_path / "job/export/metadata.json").write_text(json.dumps({**meta, "patchSizeOrStride": 8}))
    with pytest.raises(
        InvalidInput, match="resnet18 was trained with patch size or stride 8, but resnet18 now"
    ):
        load_export(uri)  # an export from before the names carried the stride
    (tmp_path / "job/export/metadata.json").write_text(json.dumps(meta))
    (tmp_path / "job/export/backbone.pt").write_bytes(b"truncated")
    with pytest.raises(InvalidInput, match="backbone.pt is corrupt: its sha256 is not the one"):
        load_export(uri)


def test_an_export_with_flipped_bytes_is_refused(tmp_path) -> None:
    """Bytes flipped inside a tensor leave a file torch loads without complaint: the sha256 in metadata.json
    is what tells."""
    uri = f"file://{tmp_path}/job"
    save_export(create_backbone("resnet_test_os8", 32), {}, uri)
    weights = tmp_path / "job/export/backbone.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a tensor
    weights.write_bytes(bytes(data))
    torch.load(weights, weights_only=True)  # still a readable file
    with pytest.raises(InvalidInput, match="backbone.pt is corrupt"):
        load_export(uri)


# --- the grid check of MaskPretrainJob (freeatm validate, the operator's InvalidSpec) -------------------------


def _job(backbone: str, image_size: int, use_masks: bool = True, framework: str = "contrastive") -> dict:
    return {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "MaskPretrainJob",
        "metadata": {"name": "grid"},
        "spec": {
            "dataset": {"uri": "file:///data"},
            "method": {"framework": framework, "useMasks": use_masks},
            "backbone": backbone,
            "training": {"imageSize": image_size},
            "output": {"uri": "file:///out"},
        },
    }


def test_mask_guidance_needs_a_4x4_grid() -> None:
    with pytest.raises(ValidationError) as e:
        parse_resource(_job("vit_tiny", 32))
    assert (
        "vit_tiny with patch 16 at imageSize 32 gives a 2×2 feature grid; mask guidance needs ≥ 4×4: "
        "set backbone to vit_tiny_patch8 (4×4) or vit_tiny_patch4 (8×8), or training.imageSize ≥ 64"
    ) in str(e.value)
    with pytest.raises(ValidationError, match="resnet18 with output stride 32 at imageSize 32 gives a 1×1"):
        parse_resource(_job("resnet18", 32))
    with pytest.raises(ValidationError, match="vit_tiny with patch 16 at imageSize 32 gives a 2×2"):
        parse_resource(_job("vit_tiny", 32, framework="mim"))
    with pytest.raises(ValidationError) as e:
        parse_resource(_job("resnet_test", 32))
    fix = "gives a 1×1 feature grid; mask guidance needs ≥ 4×4: set backbone to resnet_test_os8 (4×4)"
    assert fix in str(e.value)
    for backbone, size in [
        ("vit_tiny_patch8", 32),
        ("vit_tiny", 64),
        ("resnet18_os8", 32),
        ("resnet_test_os8", 32),
        ("resnet18", 128),
    ]:
        assert parse_resource(_job(backbone, size)).spec.warnings() == []


def test_a_baseline_on_a_small_grid_is_only_warned() -> None:
    spec = parse_resource(_job("vit_tiny", 32, use_masks=False)).spec
    [(path, message)] = spec.warnings()
    assert path == "spec.backbone" and "gives a 2×2 feature grid" in message


def test_freeatm_validate_refuses_vit_tiny_16_at_32_px(tmp_path: Path) -> None:
    guided, baseline = tmp_path / "guided.yaml", tmp_path / "baseline.yaml"
    guided.write_text(yaml.safe_dump(_job("vit_tiny", 32)))
    baseline.write_text(yaml.safe_dump(_job("vit_tiny", 32, use_masks=False)))
    run = [sys.executable, "-m", "freeatm.cli.main", "validate", "-f"]
    out = subprocess.run([*run, str(guided)], capture_output=True, text=True)
    assert out.returncode == 1 and "gives a 2×2 feature grid; mask guidance needs ≥ 4×4" in out.stderr
    out = subprocess.run([*run, str(baseline)], capture_output=True, text=True)
    assert out.returncode == 0 and "warning:" in out.stderr and "spec.backbone" in out.stderr


def test_the_docs_list_the_grid_of_every_backbone() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text()
    table = doc.split("## Which grid at which size")[1]
    grids = {}  # backbone name (or vit_*_patchN) → the 32/64/224 px cells of its row
    for row in (line.split("|") for line in table.splitlines() if line.startswith("| `")):
        for name in row[1].replace("`", "").split(","):
            grids[name.strip()] = [c.strip().removesuffix(" ✗") for c in row[3:6]]
    for name in BACKBONES:
        _, _, patch = name.partition("_patch")
        cells = grids[name] if name in grids else grids[f"vit_*_patch{patch}"]
        assert cells == [f"{feature_grid(name, s)}×{feature_grid(name, s)}" for s in (32, 64, 224)], name
