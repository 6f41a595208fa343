"""Evaluation with a checkpoint's own text tower (runtime/evaluate/text_tower.py): grounding IoU and zero-shot on
cases whose answer is known, retrieval's two text sides, the "n/a: no text tower" rows beside an image-only
checkpoint, and the InvalidInput when no checkpoint has a text tower."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
import evaluate_fixtures as fx  # noqa: E402
from test_evaluate_job import eval_job, pretrained_export  # noqa: E402

from freeatm.api import parse_resource  # noqa: E402
from freeatm.runtime import shapes  # noqa: E402
from freeatm.runtime.backbones import create_backbone  # noqa: E402
from freeatm.runtime.dual_encoder import (  # noqa: E402
    DualEncoder,
    build_text_tokenizer,
    phrase_mask,
    save_vlp_export,
)
from freeatm.runtime.errors import InvalidInput  # noqa: E402
from freeatm.runtime.evaluate import job  # noqa: E402
from freeatm.runtime.evaluate.common import (  # noqa: E402
    Checkpoint,
    Settings,
    clear_feature_cache,
    load_checkpoint,
    load_instances,
)
from freeatm.runtime.evaluate.datasets import Split, open_split  # noqa: E402
from freeatm.runtime.evaluate.text_tower import (  # noqa: E402
    NO_TEXT_TOWER,
    grounding_iou,
    run_grounding,
    run_zero_shot,
)
from freeatm.runtime.toy.tokenizer import build_tokenizer  # noqa: E402

SHAPES = "toy://shapesbench/val?images=12"
SETTINGS = Settings(epochs=1, lr=0.0, batch_size=5, image_size=32, k=5, finetune=False)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    clear_feature_cache()
    monkeypatch.setenv("FREEATM_PROGRESS_INTERVAL", "0")


def vlp_export(path: Path) -> str:
    """A VLP export (backbone + text tower) of a randomly initialised dual encoder."""
    torch.manual_seed(7)
    model = DualEncoder(create_backbone("resnet_test_os8", 32), build_text_tokenizer())
    meta = {"framework": "vlp", "backbone": "resnet_test_os8", "imageSize": 32, "useMasks": False}
    save_vlp_export(model, "toy://shapesbench", meta, path.as_uri())
    return path.as_uri()


# --- grounding IoU on hand-built maps ----------------------------------------------------------------------------


def test_grounding_iou_of_a_map_equal_to_the_mask_is_one_and_of_others_low() -> None:
    def upsampled(cells: Tensor) -> Tensor:  # the same mask at 32 x 32
        return cells.repeat_interleave(8, 0).repeat_interleave(8, 1).bool()

    block = torch.zeros(4, 4)
    block[1:3, 0:2] = 1.0  # the object covers 2x2 of the 4x4 cells
    truth = upsampled(block)
    assert grounding_iou(truth.float(), truth) == 1.0  # the map at the mask's resolution
    assert grounding_iou(3 * truth.float() - 1, truth) == 1.0  # min-max normalised: scale-free
    stripe = torch.zeros(4, 4)
    stripe[:, 1:3] = 1.0
    assert grounding_iou(stripe, upsampled(stripe)) == 1.0  # bilinear upsampling keeps a straight edge
    assert 0.9 < grounding_iou(block, truth) < 1.0  # and rounds a corner
    assert grounding_iou(1 - truth.float(), truth) == 0.0  # grounds everywhere but the object
    assert grounding_iou(torch.full((4, 4), 0.3), truth) == 0.0  # a flat map grounds nowhere
    half = torch.zeros(32, 32)
    half[8:24, 0:8] = 1.0
    assert grounding_iou(half, truth) == 0.5


# --- zero-shot and grounding with towers whose answer is known ---------------------------------------------------


class Oracle(DualEncoder):
    """A dual encoder whose text states one-hot encode each token's id and position, and whose dense image map is
    built by the test from the true masks (`dense`, one map per encode_image call, in batch order)."""

    dense: list[Tensor]

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        dim = self.text_projection.out_features
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids) + self.text_model.config.vocab_size
        states = (F.one_hot(input_ids, dim) + F.one_hot(positions, dim)).float() * attention_mask[..., None]
        return F.normalize(states.sum(1), dim=-1), states

    def encode_image(self, images: Tensor) -> tuple[Tensor, Tensor]:
        dense = self.dense.pop(0)
        return F.normalize(dense.mean(dim=(2, 3)), dim=-1), dense


def oracle_checkpoint(tmp_path: Path) -> tuple[Checkpoint, Oracle]:
    ckpt = load_checkpoint("vlp", vlp_export(tmp_path / "vlp"))
    assert ckpt.dual_encoder is not None and ckpt.tokenizer is not None
    oracle = Oracle(ckpt.backbone, ckpt.tokenizer)
    ckpt.dual_encoder = oracle
    return ckpt, oracle


def painted(split: Split, vectors: Any) -> list[Tensor]:
    """Per batch: a full-resolution dense map holding vectors(sample, k) on the pixels of each sample's object k."""
    maps = []
    for start in range(0, len(split), SETTINGS.batch_size):
        chunk = split.samples[start : start + SETTINGS.batch_size]
        instances = load_instances(chunk, SETTINGS.image_size, split.where)
        dense = torch.zeros(len(chunk), 128, SETTINGS.image_size, SETTINGS.image_size)
        for i, sample in enumerate(chunk):
            for k in range(len(sample.object_records)):
                dense[i] += vectors(sample, k)[:, None, None] * (instances[i] == k + 1)
        maps.append(dense)
    return maps


def test_zero_shot_and_grounding_are_perfect_when_the_image_map_equals_the_true_masks(tmp_path: Path) -> None:
    ckpt, oracle = oracle_checkpoint(tmp_path)
    tokenizer = ckpt.tokenizer
    split = open_split("shapes", SHAPES, "val", "objects")

    def class_word(sample: Any, k: int) -> Tensor:  # the one-hot of the object's class word
        word = split.classes[sample.object_labels[k]]
        return F.one_hot(torch.tensor(tokenizer.convert_tokens_to_ids(word)), 128).float()

    oracle.dense = painted(split, class_word)
    assert run_zero_shot(ckpt, split, split, SETTINGS) == {"top1": 1.0}

    def phrase(sample: Any, k: int) -> Tensor:  # the object's phrase embedding under the oracle's text side
        ids = tokenizer(sample.captions[0], padding="max_length", return_tensors="pt")
        states = oracle.encode_text(ids["input_ids"], ids["attention_mask"])[1]
        row = phrase_mask(tokenizer, sample.captions[0], sample.object_records)[k]
        return F.normalize(states[0][row].sum(0), dim=0)

    oracle.dense = painted(split, phrase)
    assert run_grounding(ckpt, split, split, SETTINGS) == {"mean_iou": 1.0, "iou50": 1.0}


def test_a_random_dual_encoder_grounds_poorly(tmp_path: Path) -> None:
    ckpt = load_checkpoint("vlp", vlp_export(tmp_path / "vlp"))
    split = open_split("shapes", SHAPES, "val", "objects")
    scores = run_grounding(ckpt, split, split, SETTINGS)
    assert 0.0 <= scores["mean_iou"] < 0.5 and scores["iou50"] < 0.5


# --- EvalJob: side by side with an image-only checkpoint --------------------------------------------------------


def test_vlp_and_image_only_checkpoints_side_by_side(tmp_path: Path) -> None:
    ds = {"format": "shapes", "uri": SHAPES}
    ckpts = [
        {"uri": vlp_export(tmp_path / "vlp"), "label": "vlp"},
        {"uri": pretrained_export(tmp_path / "mpj"), "label": "contrastive"},
    ]
    benches = [
        {"name": "retrieval", "dataset": ds, "epochs": 2, "k": 10},
        {"name": "zero-shot", "dataset": ds},
        {"name": "grounding", "dataset": ds, "batchSize": 4},
    ]
    out = tmp_path / "eval"
    result = job.run(parse_resource(eval_job(out, ckpts, benches)))  # type: ignore[arg-type]
    rows = {(r["checkpoint"], r["benchmark"], r["metric"]) for r in result["results"]}
    assert rows == {
        *((c, "retrieval", f"recall@{k}") for c in ("vlp", "contrastive") for k in (1, 5, 10)),
        ("vlp", "zero-shot", "top1"), ("vlp", "grounding", "mean_iou"), ("vlp", "grounding", "iou50"),
    }  # fmt: skip
    assert all(0.0 <= r["value"] <= 1.0 for r in result["results"])
    report = (out / "report.md").read_text()
    assert "| zero-shot | top1 | 0." in report and f"| {NO_TEXT_TOWER} | – |" in report
    assert "(own text tower)" in report and "(LiT: text tower learnt here)" in report
    grounding = next(line for line in report.splitlines() if line.startswith("| grounding | mean_iou |"))
    assert grounding.endswith(f"| {NO_TEXT_TOWER} | – |")
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert {(r["checkpoint"], r["benchmark"]) for r in runs if r.get("note") == NO_TEXT_TOWER} == {
        ("contrastive", "zero-shot"),
        ("contrastive", "grounding"),
    }


def test_text_tower_benchmarks_without_any_text_tower_are_invalid_before_any_work(tmp_path: Path) -> None:
    ds = {"format": "shapes", "uri": SHAPES}
    doc = eval_job(
        tmp_path / "eval",
        [{"uri": "random://resnet_test_os8?imageSize=32"}],
        [{"name": "knn", "dataset": ds}, {"name": "grounding", "id": "ground", "dataset": ds}],
    )
    with pytest.raises(InvalidInput, match="benchmark ground needs a checkpoint with a text tower"):
        job.run(parse_resource(doc))  # type: ignore[arg-type]
    assert not (tmp_path / "eval").exists()


def test_zero_shot_and_grounding_on_the_synthetic_format(tmp_path: Path) -> None:
    root = fx.make_synthetic(tmp_path / "sds", per_split=4)
    split = open_split("synthetic", root.as_uri(), "val", "objects")
    scene = shapes.render(22, 0, 32, "clutter")
    assert split.samples[0].captions == [scene.caption]
    assert [(o["word"], o["modifiers"], o["label"]) for o in split.samples[0].object_records] == [
        (o.shape, [o.colour], k) for k, o in enumerate(scene.objects, start=1)
    ]
    ckpt = load_checkpoint("vlp", vlp_export(tmp_path / "vlp"))
    assert 0.0 <= run_zero_shot(ckpt, split, split, SETTINGS)["top1"] <= 1.0
    assert 0.0 <= run_grounding(ckpt, split, split, SETTINGS)["mean_iou"] <= 1.0


def test_a_text_tower_that_cannot_encode_the_captions_fails_before_any_work(tmp_path: Path) -> None:
    plain_words = tmp_path / "tokenizer"
    build_tokenizer(shapes.CAPTION_WORDS, 24).save_pretrained(plain_words)  # no clutter hue or shape
    torch.manual_seed(0)
    model = DualEncoder(create_backbone("resnet_test_os8", 32), build_text_tokenizer(plain_words.as_uri()))
    meta = {"framework": "vlp", "backbone": "resnet_test_os8", "imageSize": 32}
    save_vlp_export(model, plain_words.as_uri(), meta, (tmp_path / "vlp").as_uri())
    ds = {"format": "shapes", "uri": "toy://shapesbench/val?variant=clutter&images=4"}
    doc = eval_job(
        tmp_path / "eval",
        [{"uri": (tmp_path / "vlp").as_uri(), "label": "plain-words"}],
        [{"name": "knn", "dataset": ds}, {"name": "grounding", "dataset": ds}],
    )
    with pytest.raises(InvalidInput, match=r"checkpoint plain-words on .*clutter.*cannot encode"):
        job.run(parse_resource(doc))  # type: ignore[arg-type]
    assert not (tmp_path / "eval").exists()
