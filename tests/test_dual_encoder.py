"""The VLP dual encoder (runtime/dual_encoder.py): tokenizer, phrase masks, shapes, export round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from freeatm.runtime.backbones import METADATA_FILE, create_backbone, load_export
from freeatm.runtime.dual_encoder import (
    TEXT_TOWER_FILE,
    DualEncoder,
    build_text_tokenizer,
    has_text_tower,
    load_vlp_export,
    phrase_mask,
    save_vlp_export,
    tokenize,
)
from freeatm.runtime.errors import InvalidInput
from freeatm.runtime.pretrain.contrastive import MAX_OBJECTS
from freeatm.runtime.shapes import CAPTION_WORDS, CLUTTER_CAPTION_WORDS
from freeatm.runtime.toy.tokenizer import build_tokenizer


def _model() -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(create_backbone("resnet_test_os8", 32), build_text_tokenizer(), width=32, heads=2)


def test_shapesbench_tokenizer_encodes_both_vocabularies_and_keeps_the_toy_ids() -> None:
    tokenizer = build_text_tokenizer("toy://shapesbench")
    vocab = tokenizer.get_vocab()
    assert set(CAPTION_WORDS) | set(CLUTTER_CAPTION_WORDS) <= set(vocab)
    toy = build_tokenizer().get_vocab()
    assert {w: vocab[w] for w in toy} == toy  # the plain words keep the toy model's ids
    ids, mask = tokenize(tokenizer, ["a purple ring and a red circle and a cyan cross and a blue diamond"])
    assert ids.shape == mask.shape == (1, tokenizer.model_max_length)
    assert int(mask.sum()) == 17  # 15 words, BOS, EOS


def test_tokenizer_names_what_it_accepts() -> None:
    with pytest.raises(InvalidInput, match="toy://shapesbench or a file://"):
        build_text_tokenizer("hf://openai/clip")


def test_tokenizer_from_a_directory(tmp_path: Path) -> None:
    build_text_tokenizer().save_pretrained(tmp_path)
    loaded = build_text_tokenizer(f"file://{tmp_path}")
    assert loaded.get_vocab() == build_text_tokenizer().get_vocab()
    with pytest.raises(InvalidInput, match="tokenizer.json does not exist"):
        build_text_tokenizer(f"file://{tmp_path}/missing")


def test_unknown_word_and_long_prompt_are_invalid_input() -> None:
    tokenizer = build_text_tokenizer()
    with pytest.raises(InvalidInput, match="'zebra' of prompt 'a red zebra'"):
        tokenize(tokenizer, ["a red circle", "a red zebra"])
    with pytest.raises(InvalidInput, match="tokens long"):
        tokenize(tokenizer, [" and ".join(["a red circle"] * 8)])


def test_phrase_mask_marks_each_object_with_its_modifiers() -> None:
    tokenizer = build_text_tokenizer()
    prompt = "a red circle and a blue square and a green circle"
    objects = [
        {"word": "circle", "label": 1, "modifiers": ["red"], "tokenIndices": [99]},
        {"word": "square", "label": 2, "modifiers": ["blue"]},
        {"word": "circle", "label": 3, "modifiers": ["green"]},
    ]
    mask = phrase_mask(tokenizer, prompt, objects)
    assert mask.shape == (MAX_OBJECTS, tokenizer.model_max_length)
    # BOS at 0: a=1 red=2 circle=3 and=4 a=5 blue=6 square=7 and=8 a=9 green=10 circle=11
    assert mask[0].nonzero().flatten().tolist() == [2, 3]
    assert mask[1].nonzero().flatten().tolist() == [6, 7]
    assert mask[2].nonzero().flatten().tolist() == [10, 11]
    assert not mask[3:].any()
    with pytest.raises(InvalidInput, match="tokens long"):
        phrase_mask(tokenizer, " and ".join(["a red circle"] * 8), [{"word": "circle"}])
    with pytest.raises(InvalidInput, match="no occurrence 2 of object word 'square'"):
        phrase_mask(tokenizer, "a blue square", [{"word": "square"}, {"word": "square"}])


def test_shapes_and_normalisation() -> None:
    model = _model()
    tokenizer = build_text_tokenizer()
    images = torch.randn(2, 3, 32, 32)
    g, dense = model.encode_image(images)
    assert g.shape == (2, 128) and torch.allclose(g.norm(dim=1), torch.ones(2))
    assert dense.shape == (2, 128, 4, 4)
    ids, attention = tokenize(tokenizer, ["a red circle", "a blue square and a green triangle"])
    t, states = model.encode_text(ids, attention)
    assert t.shape == (2, 128) and torch.allclose(t.norm(dim=1), torch.ones(2))
    assert states.shape == (2, tokenizer.model_max_length, 128)
    masks = torch.stack(
        [
            phrase_mask(tokenizer, "a red circle", [{"word": "circle", "modifiers": ["red"]}]),
            phrase_mask(tokenizer, "a blue square", [{"word": "square", "modifiers": ["blue"]}]),
        ]
    )
    phrases = model.phrase_embeddings(states, masks)
    assert phrases.shape == (2, MAX_OBJECTS, 128)
    assert torch.allclose(phrases[:, 0].norm(dim=1), torch.ones(2))
    assert not phrases[:, 1:].any()
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, :16, :16] = 1
    labels[0, 30:, 30:] = 2  # a quarter of one cell: below MIN_OBJECT_AREA
    regions, valid = model.region_embeddings(dense, labels)
    assert regions.shape == (2, MAX_OBJECTS, 128)
    assert valid[:, 0].all() and not valid[:, 1:].any()
    assert torch.allclose(
        regions[0, 0], torch.nn.functional.normalize(dense[0, :, :2, :2].mean((1, 2)), dim=0)
    )


def test_export_round_trip_and_corruption(tmp_path: Path) -> None:
    model = _model().eval()
    out = f"file://{tmp_path}"
    save_vlp_export(model, "toy://shapesbench", {"framework": "vlp"}, out)
    loaded, meta = load_vlp_export(out)
    assert has_text_tower(meta) and meta["textTower"]["width"] == 32
    ids, attention = tokenize(build_text_tokenizer(), ["a red circle"])
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(model.encode_image(images), loaded.encode_image(images), strict=True):
            assert torch.equal(a, b)
        for a, b in zip(model.encode_text(ids, attention), loaded.encode_text(ids, attention), strict=True):
            assert torch.equal(a, b)
    backbone, _ = load_export(out)  # every image evaluation loads it as a backbone
    assert backbone.name == "resnet_test_os8"
    path = tmp_path / "export" / TEXT_TOWER_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="text_tower.pt is corrupt"):
        load_vlp_export(out)


def test_image_only_export_has_no_text_tower(tmp_path: Path) -> None:
    from freeatm.runtime.backbones import save_export

    save_export(create_backbone("resnet_test", 32), {"framework": "simclr"}, f"file://{tmp_path}")
    assert (tmp_path / METADATA_FILE).exists()
    with pytest.raises(InvalidInput, match="has no text tower: it was not trained with method.framework vlp"):
        load_vlp_export(f"file://{tmp_path}")
