"""A Stable-Diffusion-shaped pipeline (latent space, VAE, CFG) through the same loading and capture path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from freeatm.api.synthetic_dataset import Attention, Generation
from freeatm.runtime.generate.capture import CaptureProcessor
from freeatm.runtime.generate.models import load_pipeline
from freeatm.runtime.generate.prompts import ShapesPrompts
from freeatm.runtime.generate.sampler import Sampler, sample_seed


def tiny_stable_diffusion(path: Path) -> None:
    """A diffusers StableDiffusionPipeline with tiny random components (word-level tokenizer of the toy)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from freeatm.runtime.toy.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(  # Stable Diffusion 1.5's scheduler config
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)


@pytest.fixture(scope="module")
def sd_uri(tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("sd") / "tiny-sd"
    tiny_stable_diffusion(path)
    return f"file://{path}"


def test_stable_diffusion_pipeline_with_capture(sd_uri: str) -> None:
    model = load_pipeline(sd_uri, device="cpu")
    assert model.class_name == "StableDiffusionPipeline"
    generation = Generation(
        images=3, resolution=32, steps=3, guidance_scale=4.0, batch_size=3, scheduler="euler"
    )
    attention = Attention(resolutions=[8, 16], modifiers=True, timesteps=(0.3, 1.0), mask_resolution=16)
    source = ShapesPrompts(0)
    items = [source.item(i) for i in range(3)]
    seeds = [sample_seed(0, i) for i in range(3)]

    with Sampler(model.pipe, generation, attention, negative_prompt="white", capture=False) as plain:
        reference = plain.generate(items, [0, 1, 2], seeds)
    with Sampler(model.pipe, generation, attention, negative_prompt="white") as sampler:
        assert sampler.latent_size == 16  # the VAE halves 32 px
        captured = {n for n, p in model.pipe.unet.attn_processors.items() if isinstance(p, CaptureProcessor)}
        assert captured and all(n.endswith("attn2.processor") for n in captured)
        samples = sampler.generate(items, [0, 1, 2], seeds)
        assert sampler.store is not None and sampler.store.steps_done == [1, 2]
    assert not any(isinstance(p, CaptureProcessor) for p in model.pipe.unet.attn_processors.values())

    for ref, sample in zip(reference, samples, strict=True):
        assert np.array_equal(ref.image, sample.image)  # identical images (uint8) with and without capture
        assert sample.image.shape == (32, 32, 3) and sample.labels.shape == (16, 16)
        assert sample.soft.shape == (len(sample.objects), 16, 16)
        assert set(np.unique(sample.labels)) <= set(range(len(sample.objects) + 1))
