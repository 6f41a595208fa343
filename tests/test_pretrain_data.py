"""runtime/pretrain/data.py: manifest checks, who reads what, streaming, paired augmentation, mask-aware crops."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_fixture import shapes_dataset  # noqa: E402

from freeatm.runtime.errors import InvalidInput  # noqa: E402
from freeatm.runtime.pretrain.data import (  # noqa: E402
    Augment,
    ShardStream,
    StreamConfig,
    assign,
    integral_image,
    iter_raw,
    object_box,
    open_dataset,
    view,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return shapes_dataset(tmp_path_factory.mktemp("ds") / "shapes", 40, shard_size=8)


# --- manifest checks (issue item 8) -----------------------------------------------------------------------------


def test_open_dataset(dataset: str) -> None:
    info = open_dataset(dataset, need_masks=True, batch_size=8)
    assert info.images == 40 and len(info.shards) == 5 and info.has_masks
    assert info.digest.startswith("sha256:")


def test_no_manifest(tmp_path: Path) -> None:
    uri = shapes_dataset(tmp_path / "d", 8, manifest=False)
    with pytest.raises(InvalidInput, match="has no manifest.json"):
        open_dataset(uri, need_masks=False, batch_size=4)
    with pytest.raises(InvalidInput, match="has no manifest.json"):
        open_dataset(f"file://{tmp_path}/nothing-here", need_masks=False, batch_size=4)


def test_empty_dataset(tmp_path: Path) -> None:
    uri = shapes_dataset(tmp_path / "d", 8)
    manifest = json.loads((tmp_path / "d/manifest.json").read_text())
    (tmp_path / "d/manifest.json").write_text(json.dumps({**manifest, "images": 0, "shards": []}))
    with pytest.raises(InvalidInput, match="is empty"):
        open_dataset(uri, need_masks=False, batch_size=4)


def test_masks_required(tmp_path: Path) -> None:
    uri = shapes_dataset(tmp_path / "d", 8, masks=False)
    with pytest.raises(InvalidInput, match="useMasks is true but dataset .* has no masks"):
        open_dataset(uri, need_masks=True, batch_size=4)
    assert not open_dataset(uri, need_masks=False, batch_size=4).has_masks


def test_batch_larger_than_dataset(dataset: str) -> None:
    with pytest.raises(InvalidInput, match="batchSize 64 is larger than the dataset \\(40 images"):
        open_dataset(dataset, need_masks=False, batch_size=64)


def test_wrong_format(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something/v9"}))
    with pytest.raises(InvalidInput, match="format 'something/v9'"):
        open_dataset(f"file://{tmp_path}", need_masks=False, batch_size=4)


# --- partitioning -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shards", "world", "workers"), [(8, 2, 1), (8, 2, 2), (5, 2, 3), (3, 4, 1), (1, 2, 2), (2, 2, 2)]
)
def test_assign_is_disjoint_and_complete(shards: int, world: int, workers: int) -> None:
    per_shard = 6
    seen: list[int] = []
    for rank in range(world):
        for worker in range(workers):
            ids, modulus, remainder = assign(shards, rank, world, worker, workers)
            seen += [
                i for s in ids for i in range(s * per_shard, (s + 1) * per_shard) if i % modulus == remainder
            ]
    assert sorted(seen) == list(range(shards * per_shard))


def test_iter_raw_reads_in_order(dataset: str) -> None:
    samples = list(iter_raw(dataset, ["shards/shard-00001.tar"], modulus=2, remainder=1))
    assert [s["index"] for s in samples] == [9, 11, 13, 15]
    assert {"png", "mask.png", "json"} <= set(samples[0])


# --- augmentation -----------------------------------------------------------------------------------------------


def test_view_applies_the_same_geometry_to_image_and_mask() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((32, 32), np.uint8)
    labels[4:14, 6:20], labels[20:30, 18:28] = 1, 2
    image = torch.from_numpy(np.stack([labels * 100] * 3)).contiguous()  # the image *is* the label map
    aug = Augment(size=32, scale=(0.2, 1.0), colour=False)
    agree = []
    for _ in range(50):
        img, lab = view(rng, image, labels, aug, None)
        raw = img[0] * 0.229 + 0.485  # undo normalisation of channel 0 → 0..1 ≈ labels*100/255
        agree.append(((raw * 255 / 100).round().clamp(0, 2) == lab).float().mean().item())
    assert np.mean(agree) > 0.95


def test_object_box_keeps_the_share() -> None:
    rng = np.random.default_rng(1)
    obj = np.zeros((32, 32), bool)
    obj[2:10, 22:30] = True  # a corner object: plain random crops often miss it
    shares = []
    for _ in range(200):
        top, left, h, w = object_box(rng, integral_image(obj), (0.08, 1.0), 0.5)
        shares.append(obj[top : top + h, left : left + w].sum() / obj.sum())
    assert np.mean(np.array(shares) >= 0.5) > 0.97


def _stream(dataset: str, *, rank: int = 0, world: int = 1, mask_aware: bool, views: int = 2) -> ShardStream:
    info = open_dataset(dataset, need_masks=True, batch_size=8)
    return ShardStream(
        StreamConfig(
            info=info, rank=rank, world=world, local_batch=8 // world, steps_per_epoch=5, seed=3, views=views,
            augment=Augment(size=32, scale=(0.08, 1.0), colour=True, mask_aware=mask_aware, min_object_share=0.3),
            want_masks=True,
        )
    )  # fmt: skip


def test_mask_aware_views_share_an_object(dataset: str) -> None:
    def both_views_see_an_object(stream: ShardStream) -> float:
        stream.set_epoch(0)
        hits = []
        for batch in stream:
            common = [
                bool(
                    set(batch["mask1"][i].unique().tolist()) & set(batch["mask2"][i].unique().tolist()) - {0}
                )
                for i in range(len(batch["index"]))
            ]
            hits += common
        return float(np.mean(hits))

    guided = both_views_see_an_object(_stream(dataset, mask_aware=True))
    plain = both_views_see_an_object(_stream(dataset, mask_aware=False))
    assert guided > 0.95
    assert guided > plain


def test_stream_batches_and_resume_skip(dataset: str) -> None:
    stream = _stream(dataset, mask_aware=True)
    stream.set_epoch(1)
    full = list(stream)
    assert len(full) == 5
    batch = full[0]
    assert batch["view1"].shape == (8, 3, 32, 32) and batch["mask1"].shape == (8, 32, 32)
    assert batch["view1"].dtype == torch.float32 and batch["mask1"].dtype == torch.uint8
    stream.set_epoch(1, skip=3)
    rest = list(stream)
    assert len(rest) == 2
    for a, b in zip(full[3:], rest, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["view2"], b["view2"])
    stream.set_epoch(2)
    assert not torch.equal(list(stream)[0]["index"], full[0]["index"])  # a new order each epoch


def test_ranks_read_disjoint_samples(dataset: str) -> None:
    seen = []
    for rank in range(2):
        stream = _stream(dataset, rank=rank, world=2, mask_aware=False, views=1)
        stream.set_epoch(0)
        seen.append({i for batch in stream for i in batch["index"].tolist()})
        assert "image" in next(iter(stream))
    assert not seen[0] & seen[1]
