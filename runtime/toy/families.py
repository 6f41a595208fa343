"""Tiny random-weights pipelines of every family that capture supports, built offline from configs.

Tests and the generation benchmark use them: SD 1.x (:func:`tiny_sd`), SDXL (:func:`tiny_sdxl`), SD3
(:func:`tiny_sd3`) and FLUX (:func:`tiny_flux`). Their CLIP tokenizers are the toy model's word-level
tokenizer (:func:`freeatm.runtime.toy.tokenizer.build_tokenizer`); the T5 side is a SentencePiece-style
Unigram model (:func:`t5_tokenizer`) that splits some caption words into several pieces ("triangle" → "▁tri",
"angle"), so that multi-piece words are exercised. ``scale`` widens the denoiser and the text encoders (the
benchmark's larger variants; a transformer's width is 64 × scale, in heads of 32 channels).
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from freeatm.runtime.shapes import CAPTION_WORDS

from .tokenizer import build_tokenizer

T5_SPLIT = {"triangle": ("▁tri", "angle"), "square": ("▁squ", "are"), "circle": ("▁cir", "cle")}
"""Caption words the T5-side tokenizer splits into several pieces (no whole-word piece exists for them)."""
T5_MAX_LENGTH = 32
"""Text tokens of the T5 sequence in the tiny pipelines (``max_sequence_length`` of their calls)."""


def t5_tokenizer() -> PreTrainedTokenizerFast:
    """A T5-like tokenizer (Unigram over "▁"-prefixed pieces, ``</s>`` appended) over the caption words."""
    pieces = {"▁": -2.0}
    for word in CAPTION_WORDS:
        for piece in T5_SPLIT.get(word, ("▁" + word,)):
            pieces[piece] = -1.0
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces.items()]
    core = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=T5_MAX_LENGTH,
        padding_side="right",
    )


def _clip(tokenizer: Any, width: int, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=width,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5(tokenizer: Any, width: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return T5EncoderModel(config)


def _vae(latent_channels: int, width: int, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(width, width), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels, norm_num_groups=min(width, 32), sample_size=32, **extra,
    )  # fmt: skip


def _sd_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)  # fmt: skip


def tiny_sd(seed: int = 0, scale: int = 1) -> Any:
    """A ``StableDiffusionPipeline``: two CrossAttn UNet levels, a VAE that halves the image."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32 * scale, 64 * scale),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=32 * scale, attention_head_dim=4,
    )  # fmt: skip
    return _eval(StableDiffusionPipeline(
        vae=_vae(4, 32), text_encoder=_clip(tokenizer, 32 * scale), tokenizer=tokenizer, unet=unet,
        scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ))  # fmt: skip


def tiny_sdxl(seed: int = 0, scale: int = 1) -> Any:
    """A ``StableDiffusionXLPipeline``: two text encoders (the second with projection), SDXL's block layout
    (no attention at the first level, two transformer layers per block at the deeper one), added time ids."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    width = 32 * scale
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(width, 2 * width, 2 * width),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), cross_attention_dim=2 * width, attention_head_dim=(2, 4, 8),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=width + 6 * 8, norm_num_groups=min(width, 32),
    )  # fmt: skip
    return _eval(StableDiffusionXLPipeline(
        vae=_vae(4, 32), text_encoder=_clip(tokenizer, width), text_encoder_2=_clip(tokenizer, width, True),
        tokenizer=tokenizer, tokenizer_2=build_tokenizer(), unet=unet, scheduler=_sd_scheduler(),
    ))  # fmt: skip


def tiny_sd3(seed: int = 0, scale: int = 1, layers: int = 3) -> Any:
    """A ``StableDiffusion3Pipeline``: MMDiT blocks (patch 2), two CLIP encoders and a T5 encoder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    width = 16 * scale
    clip = build_tokenizer()
    t5 = t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=layers, attention_head_dim=32,
        num_attention_heads=2 * scale, joint_attention_dim=2 * width, caption_projection_dim=64 * scale,
        pooled_projection_dim=2 * width, pos_embed_max_size=64,
    )  # fmt: skip
    return _eval(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(4, 32, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_clip(clip, width, True), tokenizer=clip,
        text_encoder_2=_clip(clip, width, True), tokenizer_2=build_tokenizer(),
        text_encoder_3=_t5(t5, 2 * width), tokenizer_3=t5,
    ))  # fmt: skip


def tiny_flux(seed: int = 0, scale: int = 1, layers: int = 2, single_layers: int = 2) -> Any:
    """A ``FluxPipeline``: joint (double-stream) and single-stream blocks, rotary positions, CLIP + T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    clip = build_tokenizer()
    t5 = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=layers, num_single_layers=single_layers,
        attention_head_dim=32, num_attention_heads=2 * scale, joint_attention_dim=32 * scale,
        pooled_projection_dim=32 * scale, axes_dims_rope=[8, 8, 16], guidance_embeds=True,
    )  # fmt: skip
    return _eval(FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(4, 32, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                 use_post_quant_conv=False),
        text_encoder=_clip(clip, 32 * scale), tokenizer=clip,
        text_encoder_2=_t5(t5, 32 * scale), tokenizer_2=t5,
    ))  # fmt: skip


def _eval(pipe: Any) -> Any:
    """Every module in inference mode, as ``from_pretrained`` leaves them (T5's dropout is on by default)."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


BUILDERS = {"sd": tiny_sd, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "flux": tiny_flux}
"""The tiny pipeline of each family, by family name."""
