"""Generate a batch of images with their attention masks: the loop shared by datasets, ShapesBench and benchmarks.

The pipeline's family (:mod:`.families`) decides the denoiser captured (UNet or transformer), the text
sequence object words are located in, the initial noise's shape and the pipeline call's arguments.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from freeatm.api.synthetic_dataset import Attention, Generation
from freeatm.runtime.errors import InvalidInput

from .capture import AttentionStore, Capture, InstalledCapture
from .capture_mmdit import TransformerCapture
from .families import FamilyPipeline
from .masks import coverage, masks_from_maps, object_maps
from .prompts import LocatedObject, PromptItem, locate

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "dpm-solver": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}


def sample_seed(dataset_seed: int, index: int) -> int:
    """The seed of sample `index`: 63 bits of sha256("dataset_seed:index") — independent of batching and workers."""
    digest = hashlib.sha256(f"{dataset_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class Sample:
    """One generated image with its masks."""

    index: int
    seed: int
    prompt: str
    objects: list[LocatedObject]
    image: np.ndarray  # H × W × 3 uint8
    labels: np.ndarray | None  # R × R uint8 (None without capture)
    soft: np.ndarray | None  # O × r × r float16 normalised maps
    coverage: list[float]

    @property
    def mask_coverage(self) -> float:
        return float(sum(self.coverage))


def set_scheduler(pipe: Any, name: str) -> None:
    """Replace the pipeline's scheduler by `name`'s class built from the same config (noise schedule kept)."""
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    try:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    except ImportError as e:  # lms needs scipy
        raise InvalidInput(f"scheduler {name!r} is not available in this image: {e}") from e


class Sampler:
    """Runs the pipeline batch by batch with attention capture (``capture=False``: plain generation)."""

    def __init__(
        self,
        pipe: Any,
        generation: Generation,
        attention: Attention,
        negative_prompt: str | None = None,
        capture: bool = True,
    ) -> None:
        self.pipe, self.generation, self.attention = pipe, generation, attention
        self.negative_prompt = negative_prompt
        self.family = family = FamilyPipeline.of(pipe)
        family.check_scheduler(generation.scheduler)
        set_scheduler(pipe, generation.scheduler)
        pipe.set_progress_bar_config(disable=True)
        self.channels, self.latent_size = family.latent_geometry(generation.resolution)
        self.text = family.text()
        self.mask_resolution = attention.mask_resolution or generation.resolution
        self.store: AttentionStore | None = None
        self.capture: InstalledCapture | None = None
        if capture:
            self.store, self.capture = self._install(attention)

    def _install(self, attention: Attention) -> tuple[AttentionStore, InstalledCapture]:
        family, pipe = self.family, self.pipe
        if attention.aggregation == "daam" and family.transformer:
            raise InvalidInput(
                "attention.aggregation daam is defined for UNet models (SD 1.x/2.x); this is a "
                f"{family.family} model: use mean"
            )
        refine = attention.self_attention_refinement
        if refine and family.transformer:
            raise InvalidInput(f"attention.selfAttentionRefinement is for UNet models, not {family.family}")
        store = AttentionStore(
            attention.resolutions, attention.timesteps, refine, attention.aggregation, self.latent_size
        )
        steps = lambda: len(pipe.scheduler.timesteps)  # noqa: E731
        if family.transformer:
            grid = self.latent_size // family.patch_size()
            try:
                return store, TransformerCapture(family.denoiser, store, grid, attention.blocks, steps)
            except ValueError as e:
                raise InvalidInput(f"attention.blocks: {e}") from e
        try:
            return store, Capture(family.denoiser, store, self.latent_size, steps)
        except ValueError as e:
            raise InvalidInput(f"attention.resolutions: {e}") from e

    def close(self) -> None:
        if self.capture is not None:
            self.capture.remove()
            self.capture = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def initial_noise(self, seeds: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        """Per-sample noise drawn on the CPU (the same on every device) and per-sample generators; FLUX's is
        packed into its token layout as its pipeline packs the noise it draws."""
        shape = (1, self.channels, self.latent_size, self.latent_size)
        noise = torch.cat(
            [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
        )
        generators = [torch.Generator("cpu").manual_seed(s + 1) for s in seeds]
        if self.family.family == "flux":
            size = self.latent_size
            noise = self.pipe._pack_latents(noise, len(seeds), self.channels, size, size)
        return noise, generators

    @torch.no_grad()
    def generate(self, items: list[PromptItem], indices: list[int], seeds: list[int]) -> list[Sample]:
        """Images and masks for `items` (sample `indices`, noise `seeds`), in one pipeline call."""
        pipe, g, family = self.pipe, self.generation, self.family
        located = [locate(item, self.text) for item in items]
        groups, columns = self._columns(located)
        latents, generators = self.initial_noise(seeds)
        dtype = family.denoiser.dtype
        # FLUX's guidance scale is an input of its distilled model, not classifier-free guidance
        cfg = g.guidance_scale > 1.0 and family.family != "flux"
        if self.store is not None:
            self.store.begin(len(items), cfg, columns.to(pipe.device))
        try:
            kwargs: dict[str, Any] = family.call_kwargs()
            if cfg and self.negative_prompt:
                kwargs["negative_prompt"] = [self.negative_prompt] * len(items)
            out = pipe(
                [item.prompt for item in items],
                height=g.resolution,
                width=g.resolution,
                num_inference_steps=g.steps,
                guidance_scale=g.guidance_scale,
                latents=latents.to(pipe.device, dtype),
                generator=generators,
                output_type="np",
                **kwargs,
            )
            maps = self.store.maps() if self.store is not None else None
        finally:
            if self.store is not None:
                self.store.end()
        images = np.clip(np.round(np.asarray(out.images, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
        samples = []
        for b, item in enumerate(items):
            labels = soft = None
            cover: list[float] = []
            if maps is not None:
                raw = object_maps(maps[b].float().cpu(), groups[b])
                t = self.attention.threshold
                labels, soft_t = masks_from_maps(raw, self.mask_resolution, t.method, t.value)
                soft = soft_t.numpy().astype(np.float16)
                cover = coverage(labels, len(located[b]))
            samples.append(
                Sample(indices[b], seeds[b], item.prompt, located[b], images[b], labels, soft, cover)
            )
        return samples

    def _columns(self, located: list[list[LocatedObject]]) -> tuple[list[list[list[int]]], torch.Tensor]:
        """Per sample: each object's column list into a B × J token-position tensor (padded with position 0)."""
        modifiers = self.attention.modifiers
        per_sample: list[list[int]] = []
        groups: list[list[list[int]]] = []
        for objects in located:
            positions = sorted({t for o in objects for t in o.tokens(modifiers)})
            where = {p: j for j, p in enumerate(positions)}
            per_sample.append(positions)
            groups.append([[where[t] for t in o.tokens(modifiers)] for o in objects])
        width = max(1, max(len(p) for p in per_sample))
        columns = torch.zeros((len(located), width), dtype=torch.long)
        for b, positions in enumerate(per_sample):
            columns[b, : len(positions)] = torch.tensor(positions, dtype=torch.long)
        return groups, columns
