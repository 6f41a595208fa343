"""Semantic segmentation: a light head (BatchNorm + 1x1 convolution, logits upsampled bilinearly) on the
backbone's dense features, frozen or fine-tuned together with the head (backbone at lr / 10).

Images and label maps are resized to the benchmark's square image size and scored there: mIoU over the classes
that occur (torchmetrics' JaccardIndex, macro) and pixel accuracy, the ignore label (255) excluded; the floor
to beat is all_background_miou. With a frozen backbone each split's features are computed once when they fit
the cache (common.fits_cache; the object probe's pass leaves them there); otherwise, and when fine-tuning,
every batch is read and encoded as it comes.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import IGNORE, Checkpoint, Settings, dense_features, fits_cache, load_batch, load_masks
from .datasets import Split
from .scores import Confusion


class Head(nn.Module):
    """BatchNorm + 1x1 convolution, logits upsampled to the input size."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, feats: Tensor, size: int) -> Tensor:
        logits = self.classifier(self.norm(feats))
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def _dense(backbone: nn.Module, x: Tensor, trainable: bool) -> Tensor:
    if trainable:
        return backbone.forward_features(x)  # type: ignore[operator]
    with torch.no_grad():
        return backbone.forward_features(x)  # type: ignore[operator]


def train_head(ckpt: Checkpoint, train: Split, settings: Settings) -> tuple[nn.Module, Head]:
    """The (possibly fine-tuned copy of the) backbone and a head trained on `train`."""
    torch.manual_seed(settings.seed)
    dev, size = ckpt.device, settings.image_size
    backbone: nn.Module = ckpt.backbone
    if settings.finetune:  # train a copy: the checkpoint's own backbone serves the other benchmarks untouched
        backbone = copy.deepcopy(ckpt.backbone).requires_grad_(True).train()
    head = Head(ckpt.backbone.feature_dim, len(train.classes)).to(dev)
    groups: list[dict] = [{"params": list(head.parameters())}]
    if settings.finetune:
        groups.append({"params": list(backbone.parameters()), "lr": settings.lr / 10})
    opt = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=1e-4)
    steps = max(1, settings.epochs * math.ceil(len(train) / settings.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    cached = not settings.finetune and fits_cache(len(train), _bytes_per_image(ckpt, size))
    if cached:
        feats, masks = dense_features(ckpt, train, settings), load_masks(train.samples, size, train.where)
    head.train()
    for _ in range(settings.epochs):
        for idx in torch.randperm(len(train)).split(settings.batch_size):
            if cached:
                f, m = feats[idx].to(dev), masks[idx]
            else:
                x, m = load_batch([train.samples[i] for i in idx.tolist()], size, ckpt, train.where)
                f = _dense(backbone, x, settings.finetune)
            loss = F.cross_entropy(head(f, size), m.to(dev), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return backbone.eval().requires_grad_(False), head.eval()


@torch.no_grad()
def score(backbone: nn.Module, head: Head, ckpt: Checkpoint, split: Split, settings: Settings) -> Confusion:
    """The confusion matrix of the head's predictions over `split`, batch by batch (on the cached features of a
    frozen backbone when they fit the cache)."""
    confusion = Confusion(len(split.classes), IGNORE)
    size = settings.image_size
    cached = not settings.finetune and fits_cache(len(split), _bytes_per_image(ckpt, size))
    feats = dense_features(ckpt, split, settings) if cached else None
    for start in range(0, len(split), settings.batch_size):
        chunk = split.samples[start : start + settings.batch_size]
        if feats is not None:
            f, m = feats[start : start + len(chunk)].to(ckpt.device), load_masks(chunk, size, split.where)
        else:
            x, m = load_batch(chunk, size, ckpt, split.where)
            f = backbone.forward_features(x)  # type: ignore[operator]
        confusion.update(head(f, size).argmax(1).cpu(), m)
    return confusion


def all_background_miou(split: Split, image_size: int) -> float:
    """The mIoU of predicting background (class 0) everywhere at `image_size`: the floor a head must beat."""
    confusion = Confusion(len(split.classes), IGNORE)
    for sample in split.samples:
        mask = load_masks([sample], image_size, split.where)
        confusion.update(torch.zeros_like(mask), mask)
    return confusion.miou()


def _bytes_per_image(ckpt: Checkpoint, size: int) -> int:
    """Cached dense features and label map of one image."""
    stride = int(getattr(ckpt.backbone, "patch_size_or_stride", 8))
    return ckpt.backbone.feature_dim * max(1, size // stride) ** 2 * 4 + size * size * 8


def run_semseg(ckpt: Checkpoint, train: Split, val: Split, settings: Settings) -> dict[str, float]:
    backbone, head = train_head(ckpt, train, settings)
    confusion = score(backbone, head, ckpt, val, settings)
    return {"miou": confusion.miou(), "pixel_acc": confusion.pixel_accuracy()}
