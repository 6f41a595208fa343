"""``aggregation: daam`` reproduces DAAM's global heat map on an SD-shaped random pipeline.

The reference below is written from DAAM's source as published (castorini/daam: ``daam/hook.py``'s
``UNetCrossAttentionLocator``, ``daam/trace.py``'s ``UNetCrossAttentionHooker`` and
``compute_global_heat_map``, ``daam/heatmap.py``'s ``RawHeatMapCollection``): it records every hooked layer's
probabilities the way DAAM computes them (heads folded into the batch, ``get_attention_scores``), keeps the
conditional half, sums per (factor, layer, head) over every step, upsamples each sum bicubically to the latent
size, clamps at 0 and averages over all of them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from freeatm.runtime.generate.capture import AttentionStore, Capture
from freeatm.runtime.toy.families import tiny_sd

PROMPT = "a red triangle and a blue circle"
COLUMNS = [2, 3, 7]  # red, triangle, circle in the toy tokenizer's encoding (BOS first)
LATENT = 16  # 32 px through the tiny SD's VAE (factor 2)


@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    p = tiny_sd(seed=1)
    p.set_progress_bar_config(disable=True)
    return p


def daam_layers(unet) -> list[str]:  # type: ignore[no-untyped-def]
    """DAAM's locator order: up blocks, then down blocks (no mid block), attn2 of every transformer block."""
    names = []
    for kind, blocks in (("up_blocks", unet.up_blocks), ("down_blocks", unet.down_blocks)):
        for b, block in enumerate(blocks):
            if "CrossAttn" not in type(block).__name__:
                continue
            for a, spatial in enumerate(block.attentions):
                for t in range(len(spatial.transformer_blocks)):
                    names.append(f"{kind}.{b}.attentions.{a}.transformer_blocks.{t}.attn2.processor")
    return names


class DaamHooker:
    """Reference: DAAM's per-layer hook, adding into a (factor, layer, head) → T × h × w collection."""

    def __init__(self, layer: int, sums: dict) -> None:  # type: ignore[type-arg]
        self.layer, self.sums = layer, sums

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)  # (2 × heads) × hw × T
        factor = int(math.sqrt(LATENT * LATENT // probs.shape[1]))
        if factor != 8:
            side = int(math.sqrt(probs.shape[1]))
            maps = probs.permute(2, 0, 1).reshape(probs.shape[2], probs.shape[0], side, side)
            maps = maps[:, maps.shape[1] // 2 :]  # the conditional half of the batch × heads
            for head in range(maps.shape[1]):
                key_ = (factor, self.layer, head)
                self.sums[key_] = self.sums.get(key_, 0.0) + maps[:, head]
        return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def daam_global_heat_map(sums: dict) -> torch.Tensor:  # type: ignore[type-arg]
    merged = [
        F.interpolate(m.unsqueeze(1), size=(LATENT, LATENT), mode="bicubic").clamp_(min=0)
        for m in sums.values()
    ]
    return torch.stack(merged, 0).mean(0)[:, 0]  # T × L × L


def _generate(pipe, steps: int = 3):  # type: ignore[no-untyped-def]
    latents = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(4))
    return pipe(
        [PROMPT], height=32, width=32, num_inference_steps=steps, guidance_scale=5.0, latents=latents,
        output_type="np",
    ).images  # fmt: skip


def test_daam_aggregation_matches_daams_published_computation(pipe) -> None:  # type: ignore[no-untyped-def]
    unet = pipe.unet
    names = daam_layers(unet)
    assert names and not any(n.startswith("mid_block") for n in names)
    sums: dict = {}  # type: ignore[type-arg]
    original = dict(unet.attn_processors)
    unet.set_attn_processor(
        {n: DaamHooker(names.index(n), sums) if n in names else p for n, p in original.items()}
    )
    try:
        reference_images = _generate(pipe)
    finally:
        unet.set_attn_processor(dict(original))
    reference = daam_global_heat_map(sums)[COLUMNS]

    store = AttentionStore([8], (0.0, 1.0), aggregation="daam", latent_size=LATENT)
    with Capture(unet, store, LATENT, lambda: len(pipe.scheduler.timesteps)) as capture:
        # DAAM's layers: not the mid block, whatever resolutions
        assert sorted(capture.layers) == sorted(names)
        store.begin(1, True, torch.tensor([COLUMNS]))
        images = _generate(pipe)
        maps = store.maps()
        store.end()
    np.testing.assert_allclose(images, reference_images, atol=1e-5, rtol=0)
    assert maps.shape == (1, 3, LATENT, LATENT)
    assert len(sums) == sum(unet.get_submodule(n.removesuffix(".processor")).heads for n in names)
    torch.testing.assert_close(maps[0], reference, atol=1e-6, rtol=1e-5)

    mean = AttentionStore([8, 16], (0.0, 1.0))
    with Capture(unet, mean, LATENT, lambda: len(pipe.scheduler.timesteps)):
        mean.begin(1, True, torch.tensor([COLUMNS]))
        _generate(pipe)
        averaged = mean.maps()
        mean.end()
    assert averaged.shape == (1, 3, LATENT, LATENT)
    assert not torch.allclose(averaged[0] * 3, reference, atol=1e-3)  # the default is not DAAM's map


def test_daam_weights_every_head_equally() -> None:
    """Two layers, one with 1 head and one with 3: the layer with 3 heads weighs 3/4 of the result."""
    store = AttentionStore([2], (0.0, 1.0), aggregation="daam", latent_size=2)
    store.begin(1, False, torch.tensor([[0]]))
    store.add_cross("a", 2, torch.full((1, 1, 4, 1), 0.2))
    store.add_cross("b", 2, torch.full((1, 3, 4, 1), 0.6))
    store.add_cross("b", 2, torch.full((1, 3, 4, 1), 0.6))  # a second step adds (DAAM sums over time)
    torch.testing.assert_close(store.maps(), torch.full((1, 1, 2, 2), (0.2 + 3 * 1.2) / 4))
