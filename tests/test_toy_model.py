"""The toy text-to-image model: tokenizer, pixel-space pipeline, save/load, and the trained weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from freeatm.runtime.shapes import CAPTION_WORDS
from freeatm.runtime.toy import (
    PixelTextToImagePipeline,
    build_random_pipeline,
    build_tokenizer,
    toy_model_dir,
)
from freeatm.runtime.toy.quality import drawn_object_share, eval_captions, generate

CAPTION = "a red circle and a blue square and a green triangle"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def random_pipe() -> PixelTextToImagePipeline:
    pipe = build_random_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe: PixelTextToImagePipeline, seed: int, **kwargs: Any) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        [CAPTION, "a white square"], num_inference_steps=3, generator=generator, output_type="np", **kwargs
    ).images


def test_tokenizer_gives_one_token_per_word_and_round_trips(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    ids = tokenizer(CAPTION).input_ids
    assert len(ids) == len(CAPTION.split()) + 2
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == CAPTION
    assert tokenizer("A RED purple circle").input_ids[3] == tokenizer.unk_token_id
    assert len(tokenizer) == len(CAPTION_WORDS) + 4
    padded = tokenizer([CAPTION, ""], padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert [len(row) for row in padded] == [16, 16]

    tokenizer.save_pretrained(tmp_path)
    for loaded in (
        PreTrainedTokenizerFast.from_pretrained(tmp_path),
        AutoTokenizer.from_pretrained(tmp_path),
    ):
        assert loaded.model_max_length == tokenizer.model_max_length
        assert loaded(CAPTION).input_ids == ids
        assert loaded.get_vocab() == tokenizer.get_vocab()


def test_random_pipeline_has_the_documented_architecture(random_pipe: PixelTextToImagePipeline) -> None:
    unet = random_pipe.unet
    assert unet.config.sample_size == 32 and unet.config.in_channels == 3
    assert random_pipe.scheduler.config.prediction_type == "v_prediction"
    cross = sorted(name for name in unet.attn_processors if ".attn2." in name)
    assert [name.split(".")[0] for name in cross] == ["down_blocks"] * 2 + ["mid_block"] + ["up_blocks"] * 4
    assert random_pipe.text_encoder.config.hidden_size == unet.config.cross_attention_dim == 64
    assert sum(p.numel() for p in [*unet.parameters(), *random_pipe.text_encoder.parameters()]) < 2_000_000


def test_random_pipeline_saves_and_reloads_with_identical_images(
    random_pipe: PixelTextToImagePipeline, tmp_path: Path
) -> None:
    random_pipe.save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").is_file()
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = PixelTextToImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    before = _images(random_pipe, seed=7)
    assert before.shape == (2, 32, 32, 3)
    assert np.array_equal(before, _images(loaded, seed=7))
    assert not np.array_equal(before, _images(loaded, seed=8))


def test_guidance_calls_the_unet_once_per_step_conditional_half_second(
    random_pipe: PixelTextToImagePipeline,
) -> None:
    calls: list[torch.Tensor] = []
    steps: list[int] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append(kwargs["encoder_hidden_states"])

    def on_step(pipe: PixelTextToImagePipeline, step: int, timestep: torch.Tensor, tensors: dict) -> dict:
        steps.append(step)
        return {"latents": tensors["latents"]}

    handle = random_pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _images(random_pipe, seed=0, guidance_scale=3.0, callback_on_step_end=on_step)
    finally:
        handle.remove()
    assert len(calls) == 3 and steps == [0, 1, 2]
    conditional = random_pipe.encode_prompt([CAPTION, "a white square"], torch.device("cpu"))
    unconditional = random_pipe.encode_prompt(["", ""], torch.device("cpu"))
    assert torch.allclose(calls[0], torch.cat([unconditional, conditional]))


def test_callback_can_replace_the_latents(random_pipe: PixelTextToImagePipeline) -> None:
    def blank(pipe: PixelTextToImagePipeline, step: int, timestep: torch.Tensor, tensors: dict) -> dict:
        return {"latents": torch.zeros_like(tensors["latents"])}

    images = _images(random_pipe, seed=0, callback_on_step_end=blank)
    assert np.allclose(images, 0.5, atol=1 / 255)


def test_committed_weights_draw_the_prompted_objects() -> None:
    assert (toy_model_dir() / "model_index.json").is_file()
    pipe = PixelTextToImagePipeline.from_pretrained(toy_model_dir())
    pipe.set_progress_bar_config(disable=True)
    captions = eval_captions(32)
    images = generate(pipe, captions, seed=0, num_inference_steps=10)
    assert drawn_object_share(images, captions) >= 0.8


def test_a_clutter_model_starts_from_a_plain_one_keeping_its_words(tmp_path: Path) -> None:
    from freeatm.runtime.toy.pipeline import toy_tokenizer
    from freeatm.runtime.toy.train import start_from

    plain = build_random_pipeline(seed=4)
    plain.save_pretrained(tmp_path)
    clutter = start_from(tmp_path, "clutter")
    assert clutter.tokenizer.get_vocab() == toy_tokenizer("clutter").get_vocab()

    def embeddings(pipe: PixelTextToImagePipeline) -> tuple[torch.Tensor, torch.Tensor]:
        state = pipe.text_encoder.state_dict()
        return next(v for k, v in state.items() if k.endswith("token_embedding.weight")), next(
            v for k, v in state.items() if k.endswith("position_embedding.weight")
        )

    (words, positions), (new_words, new_positions) = embeddings(plain), embeddings(clutter)
    assert torch.equal(new_words[: len(words)], words) and torch.equal(
        new_positions[: len(positions)], positions
    )
    assert torch.allclose(new_words[-1], words.mean(0))
    assert new_positions.shape[0] == clutter.tokenizer.model_max_length == 24
    for name, value in plain.unet.state_dict().items():
        assert torch.equal(clutter.unet.state_dict()[name], value), name


def test_the_trained_toy_models_are_the_apis_built_in_ones() -> None:
    from freeatm.api.toy import TOY_MODELS
    from freeatm.runtime.toy.pipeline import TRAINED

    assert set(TOY_MODELS) == {*TRAINED, "shapes-random"}
    assert toy_model_dir("shapes-clutter").name == "weights-clutter"
    with pytest.raises(ValueError, match="no trained toy model"):
        toy_model_dir("shapes-random")
