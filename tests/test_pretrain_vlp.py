"""Framework vlp (runtime/pretrain/vlp.py): the two terms and their switches, the captions in the data stream,
bad input at start, and resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_fixture import pretrain_job, shapes_dataset  # noqa: E402

from freeatm.runtime.backbones import create_backbone  # noqa: E402
from freeatm.runtime.dual_encoder import build_text_tokenizer, load_vlp_export, phrase_mask, tokenize  # noqa: E402
from freeatm.runtime.errors import InvalidInput  # noqa: E402
from freeatm.runtime.pretrain import checkpoint as ckpt  # noqa: E402
from freeatm.runtime.pretrain import run  # noqa: E402
from freeatm.runtime.pretrain.loop import Trainer  # noqa: E402
from freeatm.runtime.pretrain.vlp import VLPModel, clip_loss, phrase_keys  # noqa: E402
from freeatm.runtime.shapes import render  # noqa: E402
from freeatm.runtime.shapesbench.study import write_scenes  # noqa: E402

torch.set_num_threads(1)
VLP = {"framework": "vlp", "backbone": "resnet_test_os8"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return shapes_dataset(tmp_path_factory.mktemp("ds") / "shapes", 16, shard_size=8)


def _batch(b: int = 4) -> dict[str, torch.Tensor]:
    tokenizer = build_text_tokenizer()
    scenes = [render(0, i) for i in range(b)]
    ids, attention = tokenize(tokenizer, [s.caption for s in scenes])
    objects = [[{"word": o.word, "modifiers": list(o.modifiers)} for o in s.objects] for s in scenes]
    return {
        "image": torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in scenes]),
        "mask": torch.stack([torch.from_numpy(s.label_map()) for s in scenes]),
        "input_ids": ids,
        "attention_mask": attention,
        "phrase_mask": torch.stack(
            [phrase_mask(tokenizer, s.caption, o) for s, o in zip(scenes, objects, strict=True)]
        ),
    }


def _model(**kwargs: object) -> VLPModel:
    torch.manual_seed(0)
    backbone = create_backbone("resnet_test_os8", 32)
    return VLPModel(backbone, build_text_tokenizer(), width=32, heads=2, gather=False, **kwargs)  # type: ignore[arg-type]


def test_region_phrase_term_trains_both_towers() -> None:
    model = _model(image_text_loss=False, region_phrase=True)
    loss, parts = model(_batch())
    assert set(parts) == {"regionPhraseLoss"} and float(loss.detach()) > 0
    loss.backward()
    for name in ("backbone.body.conv1.weight", "text_model.embeddings.token_embedding.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_region_phrase_switch_off_is_exactly_the_global_term() -> None:
    batch = _batch()
    on = _model(region_phrase=True, phrase_loss_weight=0.5)
    loss_on, parts_on = on(batch)
    assert set(parts_on) == {"imageTextLoss", "regionPhraseLoss"}
    assert float(loss_on.detach()) == pytest.approx(
        parts_on["imageTextLoss"] + 0.5 * parts_on["regionPhraseLoss"]
    )
    off = _model(region_phrase=False)
    no_masks = {k: v for k, v in batch.items() if k not in ("mask", "phrase_mask")}  # useMasks: false
    loss_off, parts_off = off(no_masks)
    assert set(parts_off) == {"imageTextLoss"}
    images, _ = off.encode_image(batch["image"])
    texts, _ = off.encode_text(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(loss_off, clip_loss(images, texts, off.temperature, gather=False))
    assert parts_off["imageTextLoss"] == parts_on["imageTextLoss"]  # same weights, same global term


def test_identical_phrases_are_not_negatives() -> None:
    tokenizer = build_text_tokenizer()
    prompts = ["a red circle", "a blue square and a red circle"]
    ids, _ = tokenize(tokenizer, prompts)
    masks = torch.stack(
        [
            phrase_mask(tokenizer, prompts[0], [{"word": "circle", "modifiers": ["red"]}]),
            phrase_mask(
                tokenizer,
                prompts[1],
                [{"word": "square", "modifiers": ["blue"]}, {"word": "circle", "modifiers": ["red"]}],
            ),
        ]
    )
    keys = phrase_keys(ids, masks)
    assert torch.equal(keys[0, 0], keys[1, 1]) and not torch.equal(keys[0, 0], keys[1, 0])


def test_vlp_batches_carry_captions_and_both_arms_draw_the_same_images(dataset: str, tmp_path: Path) -> None:
    guided = Trainer(pretrain_job(dataset, f"file://{tmp_path}/a", **VLP))
    baseline = Trainer(pretrain_job(dataset, f"file://{tmp_path}/b", use_masks=False, **VLP))
    g, b = next(iter(guided.batches(0))), next(iter(baseline.batches(0)))
    assert {"image", "mask", "input_ids", "attention_mask", "phrase_mask"} <= set(g)
    assert "mask" not in b and "phrase_mask" not in b
    assert torch.equal(g["image"], b["image"]) and torch.equal(g["input_ids"], b["input_ids"])
    assert g["phrase_mask"].any(dim=2).sum() >= 8  # every sample names at least one object


def _scenes(n: int = 16) -> list:
    return [render(0, i) for i in range(n)]


def test_bad_input_at_start(tmp_path: Path) -> None:
    out = f"file://{tmp_path}/out"
    no_masks = shapes_dataset(tmp_path / "nomask", 16, masks=False)
    with pytest.raises(InvalidInput, match="has no masks"):
        run(pretrain_job(no_masks, out, **VLP))
    scenes = _scenes()
    maps = [s.label_map() for s in scenes]
    wordless = f"file://{tmp_path}/wordless"
    write_scenes(wordless, [dataclasses.replace(s, objects=[]) for s in scenes], maps, seed=0, shard_size=8)
    with pytest.raises(InvalidInput, match=r"no object words \(objects\[\]\.word\)"):
        run(pretrain_job(wordless, out, **VLP))
    assert run(pretrain_job(wordless, out, use_masks=False, **VLP))["uri"] == out  # the baseline needs none
    zebra = f"file://{tmp_path}/zebra"
    write_scenes(
        zebra,
        [dataclasses.replace(scenes[0], caption="a red zebra"), *scenes[1:]],
        None,
        seed=0,
        shard_size=8,
    )
    out2 = tmp_path / "out2"
    with pytest.raises(InvalidInput, match="sample .* cannot encode 'zebra' of prompt 'a red zebra'"):
        run(pretrain_job(zebra, f"file://{out2}", use_masks=False, **VLP))
    assert not out2.exists()  # refused before anything was written


def test_a_prompt_in_a_later_shard_is_checked_in_its_batch(tmp_path: Path) -> None:
    scenes = _scenes()
    zebra = f"file://{tmp_path}/zebra"
    write_scenes(
        zebra,
        [*scenes[:-1], dataclasses.replace(scenes[-1], caption="a red zebra")],
        None,
        seed=0,
        shard_size=8,
    )
    with pytest.raises(InvalidInput, match="cannot encode 'zebra'"):
        run(pretrain_job(zebra, f"file://{tmp_path}/out", use_masks=False, **VLP))


def test_resumed_vlp_run_continues_at_the_saved_step(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    # 2 steps/epoch, 4 in all
    job = pretrain_job(dataset, f"file://{out}", epochs=2, checkpointEvery=2, **VLP)
    run(job)
    whole = json.loads((out / "export" / "metadata.json").read_text())
    assert ckpt.steps(f"file://{out}") == [4, 2]
    shutil.rmtree(out / "export")  # as if the run had died after its checkpoint at step 2
    (out / ckpt.key_for(4)).unlink()
    monkeypatch.setenv("FREEATM_TRACE_SAMPLES", str(tmp_path / "trace"))
    with caplog.at_level(logging.INFO, logger="freeatm.pretrain"):
        run(job)
    assert "from step 2" in caplog.text
    steps = [json.loads(line)["step"] for line in Path(f"{tmp_path}/trace.rank0").read_text().splitlines()]
    assert steps == [3, 4]
    model, meta = load_vlp_export(f"file://{out}")
    assert meta["steps"] == 4 and meta["fixes"] == {"regionPhraseAlignment": True}
    assert meta["weightsSha256"] == whole["weightsSha256"] and meta["files"] == whole["files"]  # same weights
