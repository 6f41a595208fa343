"""Object-centric evaluation: the per-object probe and presence can fail (controls), pool inside the true masks,
and run as EvalJob benchmarks on ShapesBench (both variants) and on the synthetic dataset format."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
import evaluate_fixtures as fx  # noqa: E402

from freeatm.api import parse_resource  # noqa: E402
from freeatm.runtime import shapes  # noqa: E402
from freeatm.runtime.errors import InvalidInput  # noqa: E402
from freeatm.runtime.evaluate import job  # noqa: E402
from freeatm.runtime.evaluate.common import (  # noqa: E402
    Checkpoint,
    Settings,
    clear_feature_cache,
    dense_features,
    load_checkpoint,
    object_features,
    pooled_features,
)
from freeatm.runtime.evaluate.datasets import open_split  # noqa: E402
from freeatm.runtime.evaluate.objects import presence_map, probe_objects  # noqa: E402
from freeatm.runtime.evaluate.segmentation import all_background_miou  # noqa: E402

RANDOM = "random://vit_tiny?imageSize=32"
CLUTTER = "toy://shapesbench/val?variant=clutter&images=24"
SETTINGS = Settings(epochs=30, lr=1e-2, batch_size=64, image_size=32, k=5, finetune=False)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    clear_feature_cache()
    monkeypatch.setenv("FREEATM_PROGRESS_INTERVAL", "0")


# --- controls: the metrics can fail ------------------------------------------------------------------------------


def _classes(n: int, classes: int, seed: int) -> Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def test_object_probe_positive_and_negative_controls() -> None:
    classes, dim = 6, 32
    train_y, val_y = _classes(600, classes, 0), _classes(600, classes, 1)
    gen = torch.Generator().manual_seed(2)
    code = torch.randn(classes, dim, generator=gen)  # features that encode the class perfectly (plus noise)
    informative = [code[y] + 0.1 * torch.randn(len(y), dim, generator=gen) for y in (train_y, val_y)]
    perfect = probe_objects(informative[0], train_y, informative[1], val_y, classes, SETTINGS)
    assert perfect["top1"] > 0.98 and perfect["balanced_top1"] > 0.98
    noise = [torch.randn(len(y), dim, generator=gen) for y in (train_y, val_y)]
    chance = probe_objects(noise[0], train_y, noise[1], val_y, classes, SETTINGS)
    assert abs(chance["balanced_top1"] - 1 / classes) < 0.07 and chance["top1"] < 0.3


def test_presence_positive_and_negative_controls() -> None:
    gen = torch.Generator().manual_seed(3)
    train_t, val_t = ((torch.rand(400, 6, generator=gen) < 0.4).float() for _ in range(2))
    informative = [t + 0.1 * torch.randn(t.shape, generator=gen) for t in (train_t, val_t)]
    assert presence_map(informative[0], train_t, informative[1], val_t, SETTINGS)["map"] > 0.98
    noise = [torch.randn(400, 16, generator=gen) for _ in range(2)]
    chance = presence_map(noise[0], train_t, noise[1], val_t, SETTINGS)["map"]
    assert abs(chance - float(val_t.mean())) < 0.1  # chance mAP is the positives' share


# --- pooling inside the true masks -------------------------------------------------------------------------------


class CellCoordinates(nn.Module):
    """A stand-in backbone with a 4-pixel grid whose dense map holds each cell's (row, column) centre in pixels."""

    feature_dim = 2
    patch_size_or_stride = 4

    def forward_features(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // 4, x.shape[-1] // 4
        rows, cols = torch.meshgrid(torch.arange(h) * 4 + 2.0, torch.arange(w) * 4 + 2.0, indexing="ij")
        return torch.stack([rows, cols])[None].expand(x.shape[0], -1, -1, -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).mean(dim=(2, 3))


def test_object_features_pool_inside_each_true_mask() -> None:
    ckpt = Checkpoint("coords", "test://coords", CellCoordinates(), {}, "coords")  # type: ignore[arg-type]
    split = open_split("shapes", CLUTTER, "val", "objects")
    feats, labels = object_features(ckpt, split, SETTINGS)
    scenes = [shapes.render_clutter_scene(1001, i) for i in range(24)]
    objects = [o for s in scenes for o in s.objects]
    assert feats.shape == (len(objects), 2) and labels.tolist() == [
        shapes.CLUTTER_SHAPES.index(o.shape) for o in objects
    ]
    for (row, col), obj in zip(feats.tolist(), objects, strict=True):
        x0, y0, x1, y1 = obj.box  # the cell-weighted centre lies within a cell of the object
        assert y0 - 2 <= row <= y1 + 2 and x0 - 2 <= col <= x1 + 2
    # The same pass leaves the global and dense features in the cache: presence and semseg need no pass.
    ckpt.backbone.forward_features = None  # type: ignore[assignment,method-assign]
    assert pooled_features(ckpt, split, SETTINGS).shape == (24, 2)
    assert dense_features(ckpt, split, SETTINGS).shape == (24, 2, 8, 8)


def test_all_background_floor() -> None:
    split = open_split("shapes", CLUTTER, "val", "segmentation")
    labels = np.stack([s.load_mask() for s in split.samples])  # type: ignore[misc]
    present = len(np.unique(labels))
    assert all_background_miou(split, 32) == pytest.approx(float((labels == 0).mean()) / present)


def test_object_features_of_a_random_backbone_give_a_probe_result() -> None:
    ckpt = load_checkpoint("random-init", RANDOM)
    train = open_split("shapes", CLUTTER, "train", "objects")
    val = open_split("shapes", CLUTTER, "val", "objects")
    train_x, train_y = object_features(ckpt, train, SETTINGS)
    assert train_x.shape == (sum(len(s.object_labels) for s in train.samples), 192)
    assert torch.isfinite(train_x).all() and train_y.max() < 6
    scores = job.run_object_probe(ckpt, train, val, SETTINGS)
    assert set(scores) == {"top1", "balanced_top1"} and all(0.0 <= v <= 1.0 for v in scores.values())


# --- datasets ----------------------------------------------------------------------------------------------------


def test_shapesbench_variants_as_evaluation_data() -> None:
    plain = open_split("shapes", "toy://shapesbench/val?images=4", "val", "objects")
    clutter = open_split("shapes", CLUTTER, "val", "objects")
    assert plain.classes == list(shapes.SHAPES) and clutter.classes == list(shapes.CLUTTER_SHAPES)
    assert plain.where != clutter.where  # the feature cache tells them apart
    scene = shapes.render_clutter_scene(1001, 0)
    sample = clutter.samples[0]
    assert np.array_equal(sample.load_instances(), scene.label_map())  # type: ignore[misc]
    assert sample.object_labels == [shapes.CLUTTER_SHAPES.index(o.shape) for o in scene.objects]
    seg = open_split("shapes", CLUTTER, "val", "segmentation")
    assert seg.classes == ["background", *shapes.CLUTTER_SHAPES] and seg.samples[0].load_mask().max() <= 6  # type: ignore[misc]
    with pytest.raises(InvalidInput, match=r"variant 'busy' not found; it has: plain, clutter"):
        open_split("shapes", "toy://shapesbench/val?variant=busy", "val", "objects")
    with pytest.raises(InvalidInput, match=r"unknown parameter colour"):
        open_split("shapes", "toy://shapesbench/val?colour=red", "val", "objects")


def test_synthetic_format(tmp_path: Path) -> None:
    root = fx.make_synthetic(tmp_path / "sds", per_split=6)
    split = open_split("synthetic", root.as_uri(), "val", "objects")
    assert split.classes == list(shapes.CLUTTER_SHAPES) and len(split) == 6
    scene = shapes.render_clutter_scene(22, 3)
    sample = split.samples[3]
    assert np.array_equal(sample.load_image(), scene.image)
    assert np.array_equal(sample.load_instances(), scene.label_map())  # type: ignore[misc]
    assert sample.object_labels == [shapes.CLUTTER_SHAPES.index(o.shape) for o in scene.objects]
    seg = open_split("synthetic", root.as_uri(), "val", "segmentation")
    assert seg.classes[0] == "background"
    expected = np.zeros((32, 32), dtype=np.int64)
    for obj in scene.objects:
        expected[obj.mask] = shapes.CLUTTER_SHAPES.index(obj.shape) + 1
    assert np.array_equal(seg.samples[3].load_mask(), expected)  # type: ignore[misc]
    with pytest.raises(InvalidInput, match=r"split 'test' not found .*<root>/<split>/manifest.json"):
        open_split("synthetic", root.as_uri(), "test", "objects")
    with pytest.raises(InvalidInput, match=r"format synthetic has no classification annotations"):
        open_split("synthetic", root.as_uri(), "val", "classification")


def test_synthetic_format_errors_name_the_problem(tmp_path: Path) -> None:
    root = fx.make_synthetic(tmp_path / "sds", per_split=4)
    manifest = root / "val" / "manifest.json"
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**doc, "classes": ["circle"]}))
    with pytest.raises(InvalidInput, match=r"class list mismatch: \[.*\] not in the manifest's classes"):
        open_split("synthetic", root.as_uri(), "val", "objects")
    manifest.write_text(json.dumps({**doc, "hasMasks": False}))
    with pytest.raises(InvalidInput, match=r"has no masks"):
        open_split("synthetic", root.as_uri(), "val", "objects")
    manifest.write_text(json.dumps(doc))
    shard = root / "val" / "shards" / "shard-00000.tar"
    shard.write_bytes(shard.read_bytes()[:700])
    with pytest.raises(InvalidInput, match=r"shard-00000.tar"):
        open_split("synthetic", root.as_uri(), "val", "objects").samples[0].load_image()
    manifest.write_text("{not json")
    with pytest.raises(InvalidInput, match=r"manifest.json: corrupt annotation \(not JSON"):
        open_split("synthetic", root.as_uri(), "val", "objects")


# --- EvalJob -----------------------------------------------------------------------------------------------------


def eval_job(output: Path, benchmarks: list[dict[str, Any]]) -> Any:
    return parse_resource(
        {
            "apiVersion": "freeatm.io/v1alpha1",
            "kind": "EvalJob",
            "metadata": {"name": "objects"},
            "spec": {
                "checkpoints": [{"uri": RANDOM, "label": "random-init"}],
                "benchmarks": benchmarks,
                "output": {"uri": output.as_uri()},
            },
        }
    )


def test_object_benchmarks_end_to_end(tmp_path: Path) -> None:
    sds = fx.make_synthetic(tmp_path / "sds", per_split=8).as_uri()
    benches = [
        {"name": "object-probe", "dataset": {"format": "shapes", "uri": CLUTTER}, "epochs": 10},
        {"name": "presence", "dataset": {"format": "shapes", "uri": CLUTTER}, "epochs": 10},
        {"name": "semseg", "dataset": {"format": "shapes", "uri": CLUTTER}, "epochs": 2},
        {
            "name": "object-probe",
            "id": "object-probe-plain",
            "dataset": {"format": "shapes", "uri": "toy://shapesbench/val?images=16"},
            "epochs": 10,
        },
        {"name": "object-probe", "id": "object-probe-sds", "dataset": {"format": "synthetic", "uri": sds}},
        {"name": "presence", "id": "presence-sds", "dataset": {"format": "synthetic", "uri": sds}},
    ]
    result = job.run(eval_job(tmp_path / "eval", benches))
    rows = {(r["benchmark"], r["metric"]): r["value"] for r in result["results"]}
    assert set(rows) == {
        *(
            (b, m)
            for b in ("object-probe", "object-probe-plain", "object-probe-sds")
            for m in ("top1", "balanced_top1")
        ),
        ("presence", "map"),
        ("presence-sds", "map"),
        ("semseg", "miou"),
        ("semseg", "pixel_acc"),
    }
    assert all(0.0 <= v <= 1.0 for v in rows.values())
    assert "| object-probe | top1 |" in (tmp_path / "eval" / "report.md").read_text()


def test_object_benchmarks_refuse_datasets_without_objects() -> None:
    with pytest.raises(ValueError, match=r"protocol object-probe cannot run on format voc"):
        eval_job(
            Path("/tmp/x"), [{"name": "object-probe", "dataset": {"format": "voc", "uri": "file:///voc"}}]
        )
    with pytest.raises(ValueError, match=r"protocol linear-probe cannot run on format synthetic"):
        eval_job(
            Path("/tmp/x"), [{"name": "linear-probe", "dataset": {"format": "synthetic", "uri": "file:///d"}}]
        )
