"""The model families capture supports, detected from the pipeline class, and what differs between them.

========  ==========================================  =============  ========================================
family    pipeline classes                            denoiser       text sequence the attention sees
========  ==========================================  =============  ========================================
``sd``    StableDiffusionPipeline (SD 1.x/2.x), the   UNet           the CLIP encoding (77 tokens)
          project's PixelTextToImagePipeline (toy)
``sdxl``  StableDiffusionXLPipeline                   UNet           the CLIP encoding: both encoders read the
                                                                     same tokens (their features are
                                                                     concatenated per position)
``sd3``   StableDiffusion3Pipeline                    MMDiT          the CLIP encoding (77) then the T5
                                                                     encoding (``max_sequence_length``)
``flux``  FluxPipeline                                MMDiT          the T5 encoding (``max_sequence_length``)
========  ==========================================  =============  ========================================

UNet families are captured by feature-map size (``attention.resolutions``), transformer families by block
index (``attention.blocks``); see :mod:`.capture` and :mod:`.capture_mmdit`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from freeatm.runtime.errors import InvalidInput

from .prompts import TextSegment

FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "PixelTextToImagePipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}
"""Pipeline class name → family."""
TRANSFORMER_FAMILIES = ("sd3", "flux")
FLOW_SCHEDULERS = ("flow-euler",)
"""Schedulers of the flow-matching families (SD3, FLUX); the UNet families use the others."""


def family_of(class_name: str) -> str:
    """The family of the pipeline class `class_name`; InvalidInput naming the supported classes otherwise."""
    try:
        return FAMILIES[class_name]
    except KeyError:
        raise InvalidInput(
            f"pipeline class {class_name!r} is not supported by attention capture; supported: "
            + ", ".join(sorted(FAMILIES))
        ) from None


@dataclass(frozen=True)
class FamilyPipeline:
    """A loaded pipeline with what generation needs to know about its family."""

    pipe: Any
    family: str

    @classmethod
    def of(cls, pipe: Any) -> FamilyPipeline:
        return cls(pipe, family_of(type(pipe).__name__))

    @property
    def transformer(self) -> bool:
        return self.family in TRANSFORMER_FAMILIES

    @property
    def denoiser(self) -> Any:
        """The UNet or the transformer: the module called once per denoising step."""
        return self.pipe.transformer if self.transformer else self.pipe.unet

    def t5_length(self) -> int:
        """Tokens of the T5 encoding: the pipeline's ``max_sequence_length`` default, capped by the
        tokenizer."""
        default = inspect.signature(type(self.pipe).__call__).parameters["max_sequence_length"].default
        tokenizer = self.pipe.tokenizer_3 if self.family == "sd3" else self.pipe.tokenizer_2
        limit = getattr(tokenizer, "model_max_length", default) or default
        return min(int(default), int(limit))

    def text(self) -> tuple[TextSegment, ...]:
        """The encodings of a prompt in the text sequence the attention sees (see the module docstring)."""
        pipe = self.pipe
        if self.family == "flux":
            return (TextSegment(pipe.tokenizer_2, 0, self.t5_length()),)
        tokenizer = pipe.tokenizer if pipe.tokenizer is not None else getattr(pipe, "tokenizer_2", None)
        clip = TextSegment(tokenizer)
        if self.family == "sd3" and pipe.text_encoder_3 is not None:
            return clip, TextSegment(pipe.tokenizer_3, clip.max_length(), self.t5_length())
        return (clip,)

    def call_kwargs(self) -> dict[str, Any]:
        """Extra arguments of every pipeline call (the T5 length the positions were computed for)."""
        return {"max_sequence_length": self.t5_length()} if self.transformer else {}

    def latent_geometry(self, resolution: int) -> tuple[int, int]:
        """(channels, size) of the initial noise for a resolution² image (FLUX: before packing)."""
        factor = int(getattr(self.pipe, "vae_scale_factor", 1) or 1)
        step = 2 * factor if self.family == "flux" else factor * self.patch_size()
        if resolution % step:
            raise InvalidInput(
                f"resolution {resolution} is not a multiple of {step}, the pixel size of one token of this "
                f"{self.family} model"
            )
        channels = int(self.denoiser.config.in_channels)
        return (channels // 4 if self.family == "flux" else channels), resolution // factor

    def patch_size(self) -> int:
        """Latent pixels per token side: 2 for SD3 (its patch size) and FLUX (2×2 packing), 1 for a UNet."""
        if self.family == "flux":
            return 2
        return int(self.denoiser.config.patch_size) if self.family == "sd3" else 1

    def check_scheduler(self, name: str) -> None:
        flow = name in FLOW_SCHEDULERS
        if self.transformer and not flow:
            raise InvalidInput(
                f"generation.scheduler {name!r} does not sample a flow-matching {self.family} model; use "
                + " or ".join(FLOW_SCHEDULERS)
            )
        if flow and not self.transformer:
            raise InvalidInput(f"generation.scheduler {name!r} is for the flow-matching families (SD3, FLUX)")
