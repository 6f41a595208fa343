"""MaskPretrainJob: self-supervised pretraining on a synthetic dataset, optionally guided by its masks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .common import INT64, SEED, Model, Output, SecretRef, WorkloadSpec, check_uri
from .references import RefTo

DATASET_SCHEMES = ("s3", "pvc", "file")

# The backbone names, the contract shared by MaskPretrainJob, its export and EvalJob: an architecture and the
# geometry of its feature grid: the patch size of a ViT, the output stride of a ResNet. The plain name is the
# architecture's standard geometry (ViT patch 16, ResNet stride 32); a suffix names another one.
BACKBONE_GEOMETRY: dict[str, tuple[str, int]] = {
    "resnet18": ("resnet18", 32),
    "resnet18_os8": ("resnet18", 8),
    "resnet50": ("resnet50", 32),
    "resnet50_os8": ("resnet50", 8),
    "resnet_test": ("resnet_test", 32),
    "resnet_test_os8": ("resnet_test", 8),
    **{
        f"{arch}{'' if patch == 16 else f'_patch{patch}'}": (arch, patch)
        for arch in ("vit_test", "vit_tiny", "vit_small", "vit_base")
        for patch in (16, 8, 4)
    },
}
BACKBONES = tuple(BACKBONE_GEOMETRY)
# mask guidance needs at least this many feature cells per side (docs/architecture.md#the-method)
MIN_GRID = 4

# Which Free-ATM fix belongs to which framework (docs/architecture.md#the-method).
FIXES: dict[str, tuple[str, ...]] = {
    "contrastive": ("mask_aware_crop", "object_contrast", "silhouette"),
    "mim": ("guided_masking", "object_weighted_loss"),
    "vlp": ("region_phrase_alignment",),
}
# Fixes that are on by default when useMasks is true (the others are opt-in).
DEFAULT_ON = {"mask_aware_crop", "object_contrast", "guided_masking", "region_phrase_alignment"}
TEXT_TOKENIZER_SCHEMES = ("toy", "file", "pvc")
PHRASE_TEMPERATURE, PHRASE_LOSS_WEIGHT = 0.07, 1.0  # regionPhraseAlignment's defaults
# silhouette's default: beside SimCLR's image term the silhouette term's gradient on the backbone is 14-51 times
# smaller, and at weight 1 it learns nothing; 64 is the weight the study chose and confirmed on fresh seeds
# (benchmarks/RESULTS.md, "The silhouette term's weight beside the InfoNCE terms"). Trained alone, its weight does
# not matter (AdamW).
SILHOUETTE_LOSS_WEIGHT = 64.0
SHAPESBENCH_TOKENIZER = "toy://shapesbench"  # the text tower's built-in tokenizer (runtime/dual_encoder.py)


def is_vit(backbone: str) -> bool:
    return BACKBONE_GEOMETRY[backbone][0].startswith("vit")


def feature_grid(backbone: str, image_size: int) -> int:
    """Side of the square feature grid of `backbone` at `image_size` pixels (ResNet convolutions round up)."""
    stride = BACKBONE_GEOMETRY[backbone][1]
    return image_size // stride if is_vit(backbone) else -(-image_size // stride)


def describe_geometry(backbone: str) -> str:
    """The architecture and its patch size or output stride, in words."""
    arch, stride = BACKBONE_GEOMETRY[backbone]
    return f"{arch} with {'patch' if is_vit(backbone) else 'output stride'} {stride}"


def _resolves(backbone: str, image_size: int) -> bool:
    """The grid is at least MIN_GRID cells a side (and a ViT's patches tile the image)."""
    patch = BACKBONE_GEOMETRY[backbone][1] if is_vit(backbone) else 1
    return feature_grid(backbone, image_size) >= MIN_GRID and image_size % patch == 0


def small_grid(backbone: str, image_size: int) -> str | None:
    """What is wrong when the feature grid at `image_size` is below MIN_GRID×MIN_GRID, and what to change."""
    grid = feature_grid(backbone, image_size)
    if grid >= MIN_GRID:
        return None
    arch = BACKBONE_GEOMETRY[backbone][0]
    others = [
        f"{name} ({feature_grid(name, image_size)}×{feature_grid(name, image_size)})"
        for name, (a, _) in BACKBONE_GEOMETRY.items()
        if a == arch and _resolves(name, image_size)
    ]
    # imageSize: multiples of 8
    size = next(s for s in range(image_size + 8, 100_000, 8) if _resolves(backbone, s))
    fix = f"set backbone to {' or '.join(others)}, or " if others else "set "
    return (
        f"{describe_geometry(backbone)} at imageSize {image_size} gives a {grid}×{grid} feature grid; "
        f"mask guidance needs ≥ {MIN_GRID}×{MIN_GRID}: {fix}training.imageSize ≥ {size}"
    )


class DatasetSource(Model):
    """The training data: exactly one of ref (a SyntheticDataset) or uri."""

    ref: Annotated[str | None, RefTo("SyntheticDataset")] = None
    """Name of a SyntheticDataset in the same namespace; its status.outputs.uri is read when it has Succeeded."""
    uri: str | None = None
    """A dataset written by a SyntheticDataset: s3://…, pvc://… or file:///… (holding manifest.json)."""
    secret_ref: SecretRef | None = None
    """Secret with the credentials to read the dataset; default: none."""

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

    framework: Literal["contrastive", "mim", "vlp"] = "contrastive"
    """contrastive (SimCLR), mim (MAE, ViT backbones) or vlp (CLIP-style image–caption pretraining of the backbone
    with a text tower, spec.textTower)."""
    use_masks: bool = True
    """Use the dataset's attention masks. false runs exactly the baseline: every fix off."""
    mask_aware_crop: bool | None = None
    """contrastive: sample both crops so that they keep a share of the same object (default on with useMasks)."""
    object_contrast: bool | None = None
    """contrastive: add the DetCon-style object-level term over mask-pooled features (default on with useMasks)."""
    silhouette: bool | None = None
    """contrastive: add a silhouette term: from each object's mask-pooled feature, a linear head predicts the
    object's mask inside its bounding box (8×8, binary cross-entropy), so the pooled feature must hold the shape
    (default off)."""
    guided_masking: bool | None = None
    """mim: sample masked patches weighted by the object masks, same ratio (default on with useMasks)."""
    object_weighted_loss: bool | None = None
    """mim: weight the reconstruction loss toward object patches (default off)."""
    region_phrase_alignment: bool | None = None
    """vlp: align the features pooled inside each object's mask with the text embedding of the object's phrase
    (its word and modifiers), against the other phrases of the batch (default on with useMasks)."""
    image_text_loss: bool | None = None
    """vlp: train with the global image–caption InfoNCE loss (at `temperature`); false trains the region–phrase
    term alone (default true)."""
    image_loss: bool | None = None
    """contrastive: train with the image-level SimCLR term (at `temperature`); false trains the mask-guided terms
    alone: objectContrast (DetCon's form) and/or silhouette (default true)."""
    temperature: float = Field(default=0.2, gt=0.0, le=10.0)
    """contrastive: softmax temperature of the image-level (SimCLR) loss; vlp: of the global image–caption
    loss."""
    object_temperature: float = Field(default=0.1, gt=0.0, le=10.0)
    """objectContrast: softmax temperature of the object-level term (DetCon's 0.1)."""
    object_loss_weight: float = Field(default=1.0, ge=0.0, le=100.0)
    """objectContrast: weight of the object-level term added to the image-level loss (DetCon trains on the
    object term alone, weight 1)."""
    silhouette_loss_weight: float | None = Field(default=None, ge=0.0, le=100.0)
    """silhouette: weight of the silhouette term added to the other terms (default 64: its gradient is far smaller
    than the InfoNCE terms', and at weight 1 it learns nothing beside them)."""
    min_object_share: float = Field(default=0.3, gt=0.0, le=1.0)
    """maskAwareCrop: share of the chosen object's pixels each crop must keep. Crop size and aspect are the
    baseline's; only the position is chosen (among those that keep the share), and a crop for which no position
    does keeps the baseline's position and is counted (freeatm_runtime_train_object_crop_misses)."""
    mask_ratio: float = Field(default=0.75, gt=0.0, lt=1.0)
    """mim: share of patches masked."""
    hint_share: float = Field(default=0.1, ge=0.0, lt=1.0)
    """guidedMasking: share of each image's object patches kept visible as hints (AttMask-Hints); 0 masks
    object patches first (AttMask-High)."""
    phrase_temperature: float | None = Field(default=None, gt=0.0, le=10.0)
    """regionPhraseAlignment: softmax temperature of the region–phrase term (default 0.07)."""
    phrase_loss_weight: float | None = Field(default=None, ge=0.0, le=100.0)
    """regionPhraseAlignment: weight of the region–phrase term added to the image–caption loss (default 1)."""

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
        for field, framework in (
            ("image_loss", "contrastive"),
            ("silhouette_loss_weight", "contrastive"),
            ("image_text_loss", "vlp"),
            ("phrase_temperature", "vlp"),
            ("phrase_loss_weight", "vlp"),
        ):
            if getattr(self, field) is not None and self.framework != framework:
                name = Method.model_fields[field].alias
                raise ValueError(f"{name} belongs to framework {framework}, not {self.framework}")
        if self.framework == "contrastive" and not self.image_level():
            fixes = self.fixes()
            if not (fixes["objectContrast"] or fixes["silhouette"]):
                raise ValueError(
                    "framework contrastive with imageLoss: false needs objectContrast or silhouette (and "
                    "useMasks): otherwise nothing is trained"
                )
        if self.framework == "vlp" and not self.image_text() and not self.fixes()["regionPhraseAlignment"]:
            raise ValueError(
                "framework vlp with imageTextLoss: false needs regionPhraseAlignment (and useMasks): "
                "otherwise nothing is trained"
            )
        return self

    def image_level(self) -> bool:
        """contrastive: whether the image-level SimCLR term is on (imageLoss, default true)."""
        return self.image_loss is not False

    def silhouette_weight(self) -> float:
        """silhouette's loss weight, the default filled in."""
        return SILHOUETTE_LOSS_WEIGHT if self.silhouette_loss_weight is None else self.silhouette_loss_weight

    def image_text(self) -> bool:
        """vlp: whether the global image–caption term is on (imageTextLoss, default true)."""
        return self.image_text_loss is not False

    def phrase_term(self) -> tuple[float, float]:
        """regionPhraseAlignment's (temperature, loss weight), defaults filled in."""
        temperature = PHRASE_TEMPERATURE if self.phrase_temperature is None else self.phrase_temperature
        weight = PHRASE_LOSS_WEIGHT if self.phrase_loss_weight is None else self.phrase_loss_weight
        return temperature, weight

    def fixes(self) -> dict[str, bool]:
        """The effective switches of this framework's fixes (camelCase names)."""
        return {
            Method.model_fields[f].alias: bool(
                self.use_masks and (getattr(self, f) if getattr(self, f) is not None else f in DEFAULT_ON)
            )
            for f in FIXES[self.framework]
        }


class TextTower(Model):
    """framework vlp: the text transformer (CLIP's, built from config; nothing is downloaded)."""

    tokenizer: str = SHAPESBENCH_TOKENIZER
    """toy://shapesbench (one token per ShapesBench caption word) or a file://… or pvc://… directory holding a
    tokenizer.json and its tokenizer_config.json."""
    width: int = Field(default=128, ge=8, le=4096)
    """Hidden size of the transformer (its MLP is 4× wider)."""
    layers: int = Field(default=2, ge=1, le=48)
    """Number of transformer blocks stacked in the text encoder."""
    heads: int = Field(default=4, ge=1, le=64)
    """Attention heads; must divide width."""

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, uri: str) -> str:
        uri = check_uri(uri, TEXT_TOKENIZER_SCHEMES, "textTower.tokenizer")
        if uri.startswith("toy://") and uri != SHAPESBENCH_TOKENIZER:
            raise ValueError(
                f"textTower.tokenizer {uri!r}: the only toy:// tokenizer is {SHAPESBENCH_TOKENIZER}"
            )
        return uri

    @model_validator(mode="after")
    def _heads(self) -> TextTower:
        if self.width % self.heads:
            raise ValueError(f"textTower.heads {self.heads} must divide textTower.width {self.width}")
        return self


class Training(Model):
    """Optimisation settings."""

    epochs: int = Field(default=100, ge=1, le=100_000)
    """Passes over the dataset."""
    batch_size: int = Field(default=256, ge=2, le=65_536)
    """Global batch size in images, split evenly over all processes."""
    lr: float = Field(default=1e-3, gt=0.0, le=100.0)
    """Base learning rate, for a batch of 256 images: the peak rate is lr × batchSize / 256 (the linear scaling
    rule of SimCLR and MAE), reached after warm-up."""
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    """Optimisation algorithm: adamw (betas 0.9, 0.95), sgd (momentum 0.9) or lars."""
    weight_decay: float = Field(default=0.05, ge=0.0, le=1.0)
    """Weight-decay coefficient of the weights (biases, norm parameters, tokens and position embeddings are not
    decayed)."""
    warmup_epochs: float = Field(default=0.0, ge=0.0, le=100_000)
    """Epochs of linear warm-up from 0 to the peak learning rate (fractions allowed)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule after warm-up: cosine decays to 0 at the last step; constant keeps the peak rate."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """Autocast precision (fp16/bf16 on GPU)."""
    image_size: int = Field(default=224, ge=16, le=1024, multiple_of=8)
    """Height and width of the training crops in pixels."""
    checkpoint_every: int = Field(default=500, ge=1, le=INT64)
    """Save a resumable checkpoint every N optimiser steps (and at the end)."""
    seed: int = Field(default=0, ge=0, le=SEED)
    """Seed of the weights' initialisation, the crops and the masking: equal seeds on equal data repeat the run."""
    loader_workers: int = Field(default=2, ge=0, le=64)
    """Data-loading processes per training process (0 loads in the training process itself)."""

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
    """The synthetic dataset to train on: a SyntheticDataset's name or its output URI."""
    method: Method = Field(default_factory=Method)
    """Self-supervised method and Free-ATM switches."""
    backbone: Literal[BACKBONES] = "resnet18"  # type: ignore[valid-type]
    """Backbone (built from config; no weights are downloaded): the architecture and the geometry of its feature
    grid. vit_*: patch 16, vit_*_patch8 / vit_*_patch4: patch 8 / 4; resnet*: output stride 32 (ImageNet stem),
    resnet*_os8: stride 8 (3×3 stride-1 stem, no max-pool). The grid is imageSize / (patch or stride) per side;
    mask guidance needs at least 4×4."""
    text_tower: TextTower | None = None
    """framework vlp: the text transformer trained beside the backbone (default: tokenizer toy://shapesbench,
    width 128, 2 layers, 4 heads)."""
    training: Training = Field(default_factory=Training)
    """Optimiser, schedule, batch and crop size, and checkpointing of the training run."""
    distributed: Distributed = Field(default_factory=Distributed)
    """Data-parallel layout: pods and GPUs per pod; default: one CPU process."""
    output: Output
    """Where checkpoints and the final export are written."""

    @model_validator(mode="after")
    def _consistent(self) -> MaskPretrainJobSpec:
        if self.text_tower is not None and self.method.framework != "vlp":
            raise ValueError(f"textTower is only used by framework vlp, not {self.method.framework}")
        if self.method.framework == "mim" and not is_vit(self.backbone):
            raise ValueError(f"framework mim (MAE) needs a ViT backbone (vit_*), not {self.backbone}")
        patch = BACKBONE_GEOMETRY[self.backbone][1]
        if is_vit(self.backbone) and self.training.image_size % patch:
            raise ValueError(
                f"{self.backbone} uses {patch}-pixel patches: training.imageSize {self.training.image_size} "
                f"must be a multiple of {patch}"
            )
        if self.mask_guided():
            problem = small_grid(self.backbone, self.training.image_size)
            if problem:
                raise ValueError(problem)
        processes = self.distributed.nodes * max(self.distributed.gpus_per_node, 1)
        if self.training.batch_size % processes:
            raise ValueError(
                f"training.batchSize {self.training.batch_size} does not split over {processes} processes "
                "(nodes × gpusPerNode): use a multiple"
            )
        if self.training.precision != "fp32" and self.distributed.gpus_per_node == 0:
            raise ValueError(f"precision {self.training.precision} needs GPUs (distributed.gpusPerNode ≥ 1)")
        return self

    def mask_guided(self) -> bool:
        """True when any Free-ATM fix is on (useMasks and the fixes' switches)."""
        return any(self.method.fixes().values())

    def warnings(self) -> list[tuple[str, str]]:
        """(field path, message) of what is valid but probably not meant."""
        problem = None if self.mask_guided() else small_grid(self.backbone, self.training.image_size)
        if problem:
            return [
                ("spec.backbone", f"{problem} (this baseline trains, but no mask-guided job can match it)")
            ]
        return []
