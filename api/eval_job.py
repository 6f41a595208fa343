"""EvalJob: evaluate pretrained checkpoints on downstream benchmarks."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .common import INT64, Model, Output, SecretRef, WorkloadSpec, check_int_query, check_uri
from .pretrain_job import BACKBONES
from .references import RefTo
from .toy import SHAPESBENCH_PARAMS, check_toy_dataset

CHECKPOINT_SCHEMES = ("s3", "pvc", "file")
DATASET_SCHEMES = ("s3", "pvc", "file", "toy")
PROTOCOLS = (
    "linear-probe", "knn", "semseg", "detection", "retrieval", "object-probe", "presence", "zero-shot", "grounding",
)  # fmt: skip
FORMATS = ("imagefolder", "voc", "coco", "ade20k", "cityscapes", "shapes", "synthetic")

# Which protocols each dataset format can serve.
SUPPORTED: dict[str, tuple[str, ...]] = {
    "imagefolder": ("linear-probe", "knn"),
    "voc": ("semseg", "detection"),
    "coco": ("detection", "retrieval"),
    "ade20k": ("semseg",),
    "cityscapes": ("semseg",),
    "shapes": PROTOCOLS,
    "synthetic": ("object-probe", "presence", "semseg", "zero-shot", "grounding"),
}


class CheckpointSource(Model):
    """A checkpoint: exactly one of ref (a MaskPretrainJob) or uri."""

    ref: Annotated[str | None, RefTo("MaskPretrainJob", keeps_name_in="label")] = None
    """Name of a MaskPretrainJob in the same namespace; its exported checkpoint is used once it has Succeeded."""
    uri: str | None = None
    """Output of a MaskPretrainJob (s3://…, pvc://…, file:///…), or random://BACKBONE for a randomly initialised baseline."""
    label: str | None = Field(default=None, max_length=63)
    """Column name in the result table; default: the ref or the URI."""
    secret_ref: SecretRef | None = None
    """Secret with the credentials to read the checkpoint; default: none."""

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        uri = check_uri(uri, (*CHECKPOINT_SCHEMES, "random"), "checkpoint", {"random": ("imageSize",)})
        backbone = urlsplit(uri).netloc
        if uri.startswith("random://") and backbone not in BACKBONES:
            raise ValueError(
                f"checkpoint URI {uri!r}: {backbone!r} is not a backbone; use one of {', '.join(BACKBONES)}"
            )
        check_int_query(uri, "imageSize", 16)
        return uri

    @model_validator(mode="after")
    def _ref_xor_uri(self) -> CheckpointSource:
        if (self.ref is None) == (self.uri is None):
            raise ValueError(
                "set exactly one of ref (a MaskPretrainJob name) or uri" + (" (got both)" if self.ref else "")
            )
        return self

    def name(self) -> str:
        """The label shown in result tables."""
        return self.label or self.ref or str(self.uri)


class BenchmarkDataset(Model):
    """A downstream dataset on disk."""

    format: Literal[FORMATS]  # type: ignore[valid-type]
    """On-disk layout: imagefolder, voc, coco, ade20k, cityscapes, shapes (toy://shapesbench/<split>), or synthetic (a SyntheticDataset's output per split: <uri>/<split>/manifest.json)."""
    uri: str
    """Dataset root: s3://…, pvc://…, file:///…, or toy://shapesbench/<split>[?variant=plain|clutter&images=N&size=S] (generated deterministically)."""
    secret_ref: SecretRef | None = None
    """Secret with the credentials to read the dataset; default: none."""
    train_split: str = "train"
    """Split the probe or head is trained on."""
    val_split: str = "val"
    """Split the scores are measured on."""

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        uri = check_uri(uri, DATASET_SCHEMES, "benchmark dataset", {"toy": SHAPESBENCH_PARAMS})
        check_toy_dataset(uri)
        return uri


class Benchmark(Model):
    """One evaluation: a protocol on a dataset."""

    name: Literal[PROTOCOLS]  # type: ignore[valid-type]
    """Protocol: linear-probe, knn, semseg (mIoU), detection (COCO mAP), retrieval (recall@K), object-probe (linear probe on features pooled inside each true object mask: top1, balanced_top1), presence (multi-label mAP of the classes in an image, from its pooled feature), zero-shot (objects classified by the text embeddings of the class names: top1) or grounding (IoU of each object's true mask with its caption phrase's similarity map: mean_iou, iou50). retrieval uses a checkpoint's own text tower when it has one (method.framework vlp), else learns one; zero-shot and grounding need a text tower ("n/a: no text tower" otherwise; at least one checkpoint must have one)."""
    dataset: BenchmarkDataset
    """The dataset the protocol trains on and scores."""
    id: str | None = Field(default=None, pattern=r"^[a-z0-9][-a-z0-9]*$", max_length=63)
    """Unique id of this benchmark in the job; default: the protocol name (set it when a protocol repeats)."""
    epochs: int | None = Field(default=None, ge=1, le=10_000)
    """Training epochs of the probe or head; default: per protocol."""
    lr: float | None = Field(default=None, gt=0.0, le=100.0)
    """Learning rate of the probe or head; default: per protocol."""
    batch_size: int = Field(default=64, ge=1, le=4096)
    """Images per batch, for feature extraction and for training the probe or head."""
    image_size: int | None = Field(default=None, ge=16, le=2048, multiple_of=8)
    """Input size in pixels; default: the checkpoint's training size."""
    k: int = Field(default=20, ge=1, le=1000)
    """knn: neighbours; retrieval: recall@K."""
    finetune: bool = False
    """semseg/detection: fine-tune the backbone instead of freezing it."""
    max_images: int | None = Field(default=None, ge=1, le=INT64)
    """Use at most this many images per split (quick runs); default: all."""

    @model_validator(mode="after")
    def _supported(self) -> Benchmark:
        if self.name not in SUPPORTED[self.dataset.format]:
            raise ValueError(
                f"protocol {self.name} cannot run on format {self.dataset.format}; it supports: "
                + ", ".join(SUPPORTED[self.dataset.format])
            )
        return self

    def key(self) -> str:
        """Unique id within the job."""
        return self.id or self.name


class EvalJobSpec(WorkloadSpec):
    """Evaluate checkpoints side by side."""

    checkpoints: list[CheckpointSource] = Field(min_length=1)
    """Checkpoints to compare (e.g. baseline and mask-guided)."""
    benchmarks: list[Benchmark] = Field(min_length=1)
    """Benchmarks to run on every checkpoint."""
    output: Output
    """Where results.json and the report are written."""

    @model_validator(mode="after")
    def _unique(self) -> EvalJobSpec:
        keys = [b.key() for b in self.benchmarks]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"benchmarks repeat {', '.join(dupes)}: give each repeat its own id")
        names = [c.name() for c in self.checkpoints]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"checkpoints repeat {', '.join(dupes)}: give each its own label")
        return self
