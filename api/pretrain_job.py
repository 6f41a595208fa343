"""MaskPretrainJob: self-supervised pretraining on a synthetic dataset, optionally guided by its masks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import Model, Output, SecretRef, WorkloadSpec, check_uri

DATASET_SCHEMES = ("s3", "pvc", "file")
BACKBONES = ("resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base")

# Which Free-ATM fix belongs to which framework (DESIGN §2).
FIXES: dict[str, tuple[str, ...]] = {
    "contrastive": ("mask_aware_crop", "object_contrast"),
    "mim": ("guided_masking", "object_weighted_loss"),
}
# Fixes that are on by default when useMasks is true (the others are opt-in).
DEFAULT_ON = {"mask_aware_crop", "object_contrast", "guided_masking"}


class DatasetSource(Model):
    """The training data: exactly one of ref (a SyntheticDataset) or uri."""

    ref: str | None = None
    """Name of a SyntheticDataset in the same namespace; its status.outputs.uri is read when it has Succeeded."""
    uri: str | None = None
    """A dataset written by a SyntheticDataset: s3://…, pvc://… or file:///… (holding manifest.json)."""
    secret_ref: SecretRef | None = None
    """Secret with the credentials to read the dataset."""

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str | None) -> str | None:
        return None if uri is None else check_uri(uri, DATASET_SCHEMES, "dataset")

    @model_validator(mode="after")
    def _ref_xor_uri(self) -> DatasetSource:
        if (self.ref is None) == (self.uri is None):
            raise ValueError(
                "set exactly one of ref (a SyntheticDataset name) or uri"
                + (" (got both)" if self.ref else "")
            )
        return self


class Method(Model):
    """The self-supervised method and which Free-ATM fixes are on."""

    framework: Literal["contrastive", "mim"] = "contrastive"
    """contrastive (SimCLR) or mim (MAE, ViT backbones)."""
    use_masks: bool = True
    """Use the dataset's attention masks. false runs exactly the baseline: every fix off."""
    mask_aware_crop: bool | None = None
    """contrastive: sample both crops so that they keep a share of the same object (default on with useMasks)."""
    object_contrast: bool | None = None
    """contrastive: add the DetCon-style object-level term over mask-pooled features (default on with useMasks)."""
    guided_masking: bool | None = None
    """mim: sample masked patches weighted by the object masks, same ratio (default on with useMasks)."""
    object_weighted_loss: bool | None = None
    """mim: weight the reconstruction loss toward object patches (default off)."""
    temperature: float = Field(default=0.2, gt=0.0, le=10.0)
    """Contrastive softmax temperature."""
    object_loss_weight: float = Field(default=1.0, ge=0.0, le=100.0)
    """Weight of the object-level term relative to the image-level loss."""
    min_object_share: float = Field(default=0.3, gt=0.0, le=1.0)
    """mask-aware crop: share of the chosen object's pixels each crop must keep."""
    mask_ratio: float = Field(default=0.75, gt=0.0, lt=1.0)
    """mim: share of patches masked."""

    @model_validator(mode="after")
    def _switches(self) -> Method:
        for framework, fixes in FIXES.items():
            for fix in fixes:
                value = getattr(self, fix)
                if value is None:
                    continue
                name = Method.model_fields[fix].alias
                if framework != self.framework:
                    raise ValueError(f"{name} belongs to framework {framework}, not {self.framework}")
                if value and not self.use_masks:
                    raise ValueError(
                        f"{name}: true needs useMasks: true (useMasks: false is the plain baseline)"
                    )
        return self

    def fixes(self) -> dict[str, bool]:
        """The effective switches of this framework's fixes (camelCase names)."""
        return {
            Method.model_fields[f].alias: bool(
                self.use_masks and (getattr(self, f) if getattr(self, f) is not None else f in DEFAULT_ON)
            )
            for f in FIXES[self.framework]
        }


class Training(Model):
    """Optimisation settings."""

    epochs: int = Field(default=100, ge=1, le=100_000)
    """Passes over the dataset."""
    batch_size: int = Field(default=256, ge=2, le=65_536)
    """Global batch size (split over all processes)."""
    lr: float = Field(default=1e-3, gt=0.0, le=100.0)
    """Peak learning rate."""
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    """Optimiser."""
    weight_decay: float = Field(default=0.05, ge=0.0, le=1.0)
    """Weight decay."""
    warmup_epochs: float = Field(default=0.0, ge=0.0)
    """Linear warm-up length in epochs."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule after warm-up."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """Autocast precision (fp16/bf16 on GPU)."""
    image_size: int = Field(default=224, ge=16, le=1024, multiple_of=8)
    """Training crop size in pixels."""
    checkpoint_every: int = Field(default=500, ge=1)
    """Save a resumable checkpoint every N optimiser steps (and at the end)."""
    seed: int = Field(default=0, ge=0)
    """Random seed."""
    loader_workers: int = Field(default=2, ge=0, le=64)
    """Data-loading processes per training process."""

    @model_validator(mode="after")
    def _warmup(self) -> Training:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmupEpochs {self.warmup_epochs} must be below epochs {self.epochs}")
        return self


class Distributed(Model):
    """Data-parallel layout: nodes × processes, launched with torchrun."""

    nodes: int = Field(default=1, ge=1, le=1024)
    """Pods (nodes); more than one runs an Indexed Job with a headless Service for rendezvous."""
    gpus_per_node: int = Field(default=0, ge=0, le=16)
    """GPUs per pod, one process each (NCCL); 0 runs one CPU process per pod (gloo)."""


class MaskPretrainJobSpec(WorkloadSpec):
    """Pretrain a backbone on a synthetic dataset."""

    dataset: DatasetSource
    """The training data."""
    method: Method = Field(default_factory=Method)
    """Self-supervised method and Free-ATM switches."""
    backbone: Literal[BACKBONES] = "resnet18"  # type: ignore[valid-type]
    """Backbone architecture (built from config; no weights are downloaded)."""
    training: Training = Field(default_factory=Training)
    """Optimisation settings."""
    distributed: Distributed = Field(default_factory=Distributed)
    """Data-parallel layout."""
    output: Output
    """Where checkpoints and the final export are written."""

    @model_validator(mode="after")
    def _consistent(self) -> MaskPretrainJobSpec:
        if self.method.framework == "mim" and not self.backbone.startswith("vit"):
            raise ValueError(
                f"framework mim (MAE) needs a ViT backbone (vit_tiny, vit_small, vit_base), not {self.backbone}"
            )
        if self.backbone.startswith("vit") and self.training.image_size % 16:
            raise ValueError(
                f"ViT backbones use 16-pixel patches: training.imageSize {self.training.image_size} must be a multiple of 16"
            )
        processes = self.distributed.nodes * max(self.distributed.gpus_per_node, 1)
        if self.training.batch_size % processes:
            raise ValueError(
                f"training.batchSize {self.training.batch_size} does not split over {processes} processes "
                "(nodes × gpusPerNode): use a multiple"
            )
        if self.training.precision != "fp32" and self.distributed.gpus_per_node == 0:
            raise ValueError(f"precision {self.training.precision} needs GPUs (distributed.gpusPerNode ≥ 1)")
        return self

    def explicit_dependencies(self) -> list[tuple[str, str]]:
        deps = super().explicit_dependencies()
        if self.dataset.ref:
            deps.insert(0, ("SyntheticDataset", self.dataset.ref))
        return deps
