"""A text-to-image diffusion pipeline that denoises in pixel space (no VAE), and the toy model's configs.

:class:`PixelTextToImagePipeline` follows diffusers' Stable Diffusion pipeline step for step, minus the
VAE: prompts are encoded by a CLIP text encoder, a stock ``UNet2DConditionModel`` predicts with
classifier-free guidance (one UNet call per step on the batch ``[unconditional, conditional]``), and
``callback_on_step_end`` is honoured. It saves with ``save_pretrained`` and loads with
``PixelTextToImagePipeline.from_pretrained(directory)`` like any diffusers pipeline.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from freeatm.runtime.toy.tokenizer import BOS, EOS, PAD, build_tokenizer, shapesbench_tokenizer

IMAGE_SIZE = 32
TRAINED: dict[str, str] = {"shapes": "plain", "shapes-clutter": "clutter"}
"""The trained toy models (``toy://<name>``) and the ShapesBench variant each was trained to draw."""
StepCallback = Callable[["PixelTextToImagePipeline", int, torch.Tensor, dict[str, Any]], dict[str, Any]]


class PixelTextToImagePipeline(DiffusionPipeline):
    """Text-to-image generation with a UNet that works directly on RGB pixels in [-1, 1]."""

    model_cpu_offload_seq = "text_encoder->unet"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerFast,
        scheduler: SchedulerMixin,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=True)

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the current (or last) call."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the UNet batch is ``[unconditional, conditional]`` (guidance scale above 1)."""
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        """Number of denoising steps of the current (or last) call."""
        return self._num_timesteps

    def encode_prompt(self, prompt: list[str], device: torch.device) -> torch.Tensor:
        """Text-encoder hidden states (batch x model_max_length x hidden) for ``prompt``."""
        tokens = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(device))[0]

    def prepare_extra_step_kwargs(
        self, generator: torch.Generator | list[torch.Generator] | None, eta: float
    ) -> dict:
        """Keyword arguments for ``scheduler.step`` that this scheduler accepts."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        extra: dict[str, Any] = {}
        if "eta" in accepted:
            extra["eta"] = eta
        if "generator" in accepted:
            extra["generator"] = generator
        return extra

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images for ``prompt``; ``output_type`` is ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.

        ``latents`` here are pixels: the initial noise (batch x 3 x height x width). Guidance above 1
        runs the UNet once per step on ``[unconditional, conditional]``; ``callback_on_step_end(pipe,
        step, timestep, tensors)`` runs after every step and may return replacement ``latents``.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        height = height or self.unet.config.sample_size
        width = width or self.unet.config.sample_size
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        unknown = set(tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {sorted(unknown)} not in {self._callback_tensor_inputs}"
            )
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device

        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        prompt_embeds = self.encode_prompt(prompts, device)
        negative_prompt_embeds = None
        if self.do_classifier_free_guidance:
            negatives = (
                [negative_prompt or ""] * len(prompts)
                if not isinstance(negative_prompt, list)
                else [n for n in negative_prompt for _ in range(num_images_per_prompt)]
            )
            negative_prompt_embeds = self.encode_prompt(negatives, device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        shape = (len(prompts), self.unet.config.in_channels, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        latents = latents.to(device) * self.scheduler.init_noise_sigma
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    continue
                if self.do_classifier_free_guidance:
                    model_input = torch.cat([latents, latents])
                    embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
                else:
                    model_input, embeds = latents, prompt_embeds
                model_input = self.scheduler.scale_model_input(model_input, t)
                prediction = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=embeds,
                    cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False,
                )[0]
                if self.do_classifier_free_guidance:
                    uncond, cond = prediction.chunk(2)
                    prediction = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(prediction, t, latents, **extra_step_kwargs, return_dict=False)[
                    0
                ]

                if callback_on_step_end is not None:
                    local = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                    }
                    outputs = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()

        if output_type == "latent":
            images: Any = latents
        else:
            images = self.image_processor.postprocess(latents.clamp(-1, 1), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def unet_config() -> dict[str, Any]:
    """The toy UNet: 32 px RGB, channels (32, 64, 64), cross-attention at 16x16, 8x8 and the middle."""
    return {
        "sample_size": IMAGE_SIZE,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": 64,
        "attention_head_dim": 4,  # diffusers reads this as the number of heads
        "norm_num_groups": 32,
    }


def text_encoder_config(tokenizer: PreTrainedTokenizerFast) -> CLIPTextConfig:
    """A 2-layer CLIP text encoder (hidden size 64) over ``tokenizer``'s vocabulary."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
    )


def scheduler_config() -> dict[str, Any]:
    """Noise schedule shared by training and sampling: 1,000 cosine steps, v-prediction."""
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "clip_sample": True,
        "timestep_spacing": "trailing",
    }


def toy_tokenizer(variant: str = "plain") -> PreTrainedTokenizerFast:
    """The tokenizer of the toy model drawing ShapesBench `variant`: the plain words (16 tokens a prompt), or
    every ShapesBench word (24 tokens, room for four clutter objects) with the plain words' ids unchanged."""
    return shapesbench_tokenizer() if variant == "clutter" else build_tokenizer()


def build_random_pipeline(seed: int = 0, variant: str = "plain") -> PixelTextToImagePipeline:
    """The toy pipeline for ShapesBench `variant` with freshly initialised (random) weights, built from the
    configs above."""
    tokenizer = toy_tokenizer(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config())
        text_encoder = CLIPTextModel(text_encoder_config(tokenizer))
    scheduler = DDIMScheduler(**scheduler_config())
    return PixelTextToImagePipeline(
        unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
    )


def toy_model_dir(name: str = "shapes") -> Path:
    """Directory of the committed trained weights of ``toy://<name>`` (a ``save_pretrained`` layout):
    ``weights`` for ``shapes``, ``weights-clutter`` for ``shapes-clutter``."""
    if name not in TRAINED:
        raise ValueError(f"no trained toy model {name!r}; the trained ones are {', '.join(TRAINED)}")
    return Path(__file__).resolve().parent / f"weights{name.removeprefix('shapes')}"


def load_toy_pipeline(name: str = "shapes") -> PixelTextToImagePipeline:
    """The trained ``toy://<name>`` pipeline, loaded from :func:`toy_model_dir` on the CPU."""
    return PixelTextToImagePipeline.from_pretrained(toy_model_dir(name))
