"""SyntheticDataset: generate images with a diffusion model and keep their cross-attention masks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from .common import SEED, Model, Output, SecretRef, WorkloadSpec, check_uri, list_as_tuple
from .toy import check_toy_model

MODEL_SCHEMES = ("hf", "s3", "pvc", "file", "toy")
BlockIndex = Annotated[int, Field(ge=0, le=1023)]
PROMPT_FILE_SCHEMES = ("s3", "pvc", "file")


class ModelSource(Model):
    """The text-to-image diffusion model (a diffusers pipeline)."""

    uri: str
    """hf://org/name, s3://bucket/path, pvc://claim/path, file:///path, or a built-in tiny model: toy://shapes (plain
    ShapesBench scenes), toy://shapes-clutter (clutter scenes) or toy://shapes-random (random weights)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for hf:// models; default: the repository's default branch."""
    secret_ref: SecretRef | None = None
    """Secret with the credentials to read the model (S3 keys, HF_TOKEN); default: none (a public model)."""

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        uri = check_uri(uri, MODEL_SCHEMES, "model")
        check_toy_model(uri)
        return uri


class Prompts(Model):
    """Where prompts come from: exactly one of preset, classes (with templates) or file."""

    preset: Literal["shapes", "shapes-clutter"] | None = None
    """A built-in prompt set: shapes (ShapesBench captions, for toy://shapes) or shapes-clutter (captions of the
    ShapesBench clutter variant: 2-4 objects of six shapes in one colour, for toy://shapes-clutter)."""
    classes: list[str] | None = Field(default=None, min_length=1)
    """Object class names; each prompt is a template filled with one class, which is its object word."""
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {}"], min_length=1)
    """Templates with one {} for the class name (with classes); default: ["a photo of a {}"]."""
    per_class: int | None = Field(default=None, ge=1, le=100_000_000)
    """With classes: consecutive images per class (image i draws classes[(i // perClass) mod len(classes)]);
    default: generation.images spread evenly over the classes. generation.images stays the total."""
    file: str | None = None
    """JSON-lines file of {"prompt": ..., "objects": [...]} records, each object word occurring in its prompt."""
    negative_prompt: str | None = None
    """Negative prompt for classifier-free guidance; default: none (the empty prompt)."""

    @field_validator("file")
    @classmethod
    def _file_scheme(cls, uri: str | None) -> str | None:
        return None if uri is None else check_uri(uri, PROMPT_FILE_SCHEMES, "prompts file")

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, templates: list[str]) -> list[str]:
        for t in templates:
            if t.count("{}") != 1:
                raise ValueError(f"template {t!r} must contain exactly one {{}} for the class name")
        return templates

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Prompts:
        given = [k for k in ("preset", "classes", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of preset, classes or file" + (f" (got {', '.join(given)})" if given else "")
            )
        if self.per_class is not None and self.classes is None:
            raise ValueError("perClass needs classes")
        return self


class Generation(Model):
    """Sampling settings."""

    images: int = Field(default=1000, ge=1, le=100_000_000)
    """Number of images to generate, over all workers."""
    resolution: int = Field(default=512, ge=8, le=4096, multiple_of=8)
    """Image height and width in pixels (a multiple of 8)."""
    steps: int = Field(default=30, ge=1, le=1000)
    """Denoising steps per image (the scheduler's sampling iterations)."""
    guidance_scale: float = Field(default=7.5, ge=0.0, le=50.0)
    """Classifier-free guidance scale; 1.0 or less disables guidance."""
    scheduler: Literal[
        "ddim", "ddpm", "pndm", "euler", "euler-ancestral", "dpm-solver", "lms", "flow-euler"
    ] = "ddim"
    """Sampling scheduler, built from the model's scheduler config. flow-euler (flow matching) is the one for SD3
    and FLUX models, which reject the others; SD 1.x/2.x and SDXL models take any but flow-euler."""
    seed: int = Field(default=0, ge=0, le=SEED)
    """Dataset seed; each image's seed derives from it and the image index, so any shard regenerates identically."""
    batch_size: int = Field(default=4, ge=1, le=1024)
    """Images per forward pass of the diffusion model, in each worker."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Floating-point type of the model's weights and activations (float16/bfloat16 on GPU)."""
    shard_size: int = Field(default=256, ge=1, le=100_000)
    """Images per output shard (the unit of resumption and of worker parallelism)."""


class Threshold(Model):
    """How a normalised attention map becomes a mask."""

    method: Literal["fixed", "relative", "otsu"] = "relative"
    """relative: the object's min–max normalised map ≥ value; fixed: its raw attention probability ≥ value;
    otsu: Otsu's threshold on the normalised map (value unused)."""
    value: float = Field(default=0.5, gt=0.0, lt=1.0)
    """The cut-off the method compares with, in (0, 1); unused by otsu."""


class Attention(Model):
    """Which cross-attention maps are captured and how they become masks."""

    resolutions: list[int] = Field(default_factory=lambda: [16, 32], min_length=1)
    """UNet models (SD 1.x/2.x, SDXL): feature-map sizes, in latent pixels per side, whose cross-attention layers
    are captured (16 and 32 for a 512 px Stable Diffusion). Default [16, 32]. Unused by SD3/FLUX models (see
    blocks) and by aggregation daam."""
    blocks: Annotated[tuple[BlockIndex, BlockIndex], BeforeValidator(list_as_tuple)] | None = None
    """SD3/FLUX models: the transformer blocks whose joint attention is captured, as an inclusive index range
    [first, last]; FLUX numbers its joint (double-stream) blocks first, then its single-stream blocks. Default:
    every joint block (all of SD3's blocks, FLUX's double-stream blocks). A range beyond the loaded model's
    blocks fails the run (exit 65). Unused by UNet models."""
    aggregation: Literal["mean", "daam"] = "mean"
    """How captured maps are combined. mean: head-averaged maps summed per resolution, upsampled
    bilinearly to the largest captured resolution and averaged over every captured (layer, step). daam: DAAM's
    heat map for UNet models (bicubic upsampling of each layer and head's map to the latent size, clamped at 0,
    every head weighted equally, DAAM's down/up-block layers, summed over the captured steps); not for SD3/FLUX
    and not with selfAttentionRefinement."""
    timesteps: Annotated[tuple[float, float], BeforeValidator(list_as_tuple)] = (0.0, 1.0)
    """Window of the sampling run captured, as shares: 0 = first (noisiest) step, 1 = last."""
    modifiers: bool = False
    """Average each object word with its modifier words (the colour in "red circle")."""
    self_attention_refinement: bool = False
    """Refine the cross-attention maps with the self-attention of the same layers (Dataset Diffusion)."""
    threshold: Threshold = Field(default_factory=Threshold)
    """Thresholding of the normalised maps."""
    mask_resolution: int | None = Field(default=None, ge=8, multiple_of=8)
    """Height and width of the stored label masks in pixels; default: generation.resolution."""
    keep_soft_maps: bool = False
    """Also store the low-resolution soft maps (float16) of every object."""

    @field_validator("resolutions")
    @classmethod
    def _powers(cls, values: list[int]) -> list[int]:
        for v in values:
            if v < 1 or v & (v - 1):
                raise ValueError(
                    f"resolution {v} is not a power of two (feature-map sizes are 8, 16, 32, 64 …)"
                )
        return sorted(set(values))

    @field_validator("blocks")
    @classmethod
    def _block_range(cls, blocks: tuple[int, int] | None) -> tuple[int, int] | None:
        if blocks is not None and blocks[0] > blocks[1]:
            raise ValueError(f"blocks [{blocks[0]}, {blocks[1]}] must satisfy first ≤ last")
        return blocks

    @model_validator(mode="after")
    def _daam_alone(self) -> Attention:
        if self.aggregation == "daam" and self.self_attention_refinement:
            raise ValueError("aggregation daam reproduces DAAM's maps, which have no selfAttentionRefinement")
        return self

    @field_validator("timesteps")
    @classmethod
    def _window(cls, window: tuple[float, float]) -> tuple[float, float]:
        start, end = window
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"timesteps [{start}, {end}] must satisfy 0 ≤ start < end ≤ 1")
        return window


class SyntheticDatasetSpec(WorkloadSpec):
    """Generate an annotated synthetic dataset."""

    model: ModelSource
    """The text-to-image diffusion pipeline that generates the images."""
    prompts: Prompts
    """Where prompts and their object words come from."""
    generation: Generation = Field(default_factory=Generation)
    """How many images are sampled, at which size, with which scheduler and seed."""
    attention: Attention = Field(default_factory=Attention)
    """Cross-attention capture and mask settings."""
    workers: int = Field(default=1, ge=1, le=1024)
    """Worker pods; each generates a contiguous range of shards (at most one worker per shard)."""
    output: Output
    """Where shards and manifest.json are written."""

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticDatasetSpec:
        res = self.generation.resolution
        if self.attention.mask_resolution is not None and self.attention.mask_resolution > res:
            raise ValueError(
                f"attention.maskResolution {self.attention.mask_resolution} exceeds generation.resolution {res}"
            )
        too_big = [r for r in self.attention.resolutions if r > res]
        if too_big:
            raise ValueError(f"attention.resolutions {too_big} exceed generation.resolution {res}")
        shards = self.shards()
        if self.workers > shards:
            raise ValueError(
                f"workers {self.workers} exceeds the {shards} shard(s) of {self.generation.images} images at "
                f"shardSize {self.generation.shard_size}: lower workers or generation.shardSize"
            )
        return self

    def shards(self) -> int:
        """Number of output shards."""
        return -(-self.generation.images // self.generation.shard_size)
