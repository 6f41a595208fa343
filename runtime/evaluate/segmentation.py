"""Semantic segmentation: a light head (BatchNorm + 1x1 convolution, logits upsampled bilinearly) on the
backbone's dense features, frozen (features cached once) or fine-tuned together with the head.

Images and label maps are resized to the benchmark's square image size and scored there: mIoU over the classes
that occur (torchmetrics' JaccardIndex, macro) and pixel accuracy, the ignore label (255) excluded.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import IGNORE, Checkpoint, Settings, dense_features, image_batches, load_masks
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


def _schedule(
    opt: torch.optim.Optimizer, epochs: int, n: int, batch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * math.ceil(n / batch)))


def train_frozen(ckpt: Checkpoint, train: Split, settings: Settings) -> Head:
    feats = dense_features(ckpt, train, settings)
    masks = load_masks(train.samples, settings.image_size, train.where)
    torch.manual_seed(settings.seed)
    dev = ckpt.device
    head = Head(feats.shape[1], len(train.classes)).to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = _schedule(opt, settings.epochs, len(feats), settings.batch_size)
    head.train()
    for _ in range(settings.epochs):
        for idx in torch.randperm(len(feats)).split(settings.batch_size):
            logits = head(feats[idx].to(dev), settings.image_size)
            loss = F.cross_entropy(logits, masks[idx].to(dev), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


def train_finetuned(ckpt: Checkpoint, train: Split, settings: Settings) -> tuple[nn.Module, Head]:
    """Train a copy of the backbone (lr / 10) with the head; the checkpoint's own backbone stays untouched."""
    torch.manual_seed(settings.seed)
    backbone = copy.deepcopy(ckpt.backbone).requires_grad_(True).train()
    head = Head(backbone.feature_dim, len(train.classes)).to(ckpt.device)
    opt = torch.optim.AdamW(
        [{"params": head.parameters()}, {"params": backbone.parameters(), "lr": settings.lr / 10}],
        lr=settings.lr,
        weight_decay=1e-4,
    )
    sched = _schedule(opt, settings.epochs, len(train), settings.batch_size)
    masks = load_masks(train.samples, settings.image_size, train.where)
    for _ in range(settings.epochs):
        order = torch.randperm(len(train)).tolist()
        samples = [train.samples[i] for i in order]
        offset = 0
        for chunk, x in image_batches(samples, settings.image_size, ckpt, settings.batch_size):
            target = masks[order[offset : offset + len(chunk)]].to(ckpt.device)
            offset += len(chunk)
            loss = F.cross_entropy(
                head(backbone.forward_features(x), settings.image_size), target, ignore_index=IGNORE
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return backbone.eval().requires_grad_(False), head.eval()


@torch.no_grad()
def predict(backbone: nn.Module, head: Head, ckpt: Checkpoint, split: Split, settings: Settings) -> Tensor:
    """[N, size, size] predicted class indices."""
    preds = [
        head(backbone.forward_features(x), settings.image_size).argmax(1).cpu()  # type: ignore[operator]
        for _, x in image_batches(split.samples, settings.image_size, ckpt, settings.batch_size)
    ]
    return torch.cat(preds)


def run_semseg(ckpt: Checkpoint, train: Split, val: Split, settings: Settings) -> dict[str, float]:
    if settings.finetune:
        backbone, head = train_finetuned(ckpt, train, settings)
    else:
        backbone, head = ckpt.backbone, train_frozen(ckpt, train, settings)
    confusion = Confusion(len(train.classes), IGNORE)
    confusion.update(
        predict(backbone, head, ckpt, val, settings), load_masks(val.samples, settings.image_size, val.where)
    )
    return {"miou": confusion.miou(), "pixel_acc": confusion.pixel_accuracy()}
