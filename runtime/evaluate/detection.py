"""Object detection: a torchvision Faster R-CNN on the pretrained backbone's dense features, scored with
pycocotools (box mAP@[.5:.95] and mAP@.5).

The detector is built with `num_classes` and no weights: a trainable 1x1 neck on the dense map, a
single-level RPN whose anchors scale with the image size, RoIAlign on that level and a small two-layer box head.
The backbone is frozen (its features are computed once per image) unless the benchmark sets `finetune` (then
it trains at lr / 10). Images are resized to a square of the benchmark's image size and predictions are
mapped back to original pixel coordinates before scoring. Crowd boxes (COCO iscrowd, VOC difficult) are left
out of training and ignored by the score.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Checkpoint, Settings, fits_cache
from .datasets import Split
from .scores import coco_map

NECK_CHANNELS = 256


class _DenseBody(nn.Module):
    """Adapts a freeatm Backbone to torchvision's detection API: its dense map through a trainable 1x1 neck."""

    def __init__(self, backbone: nn.Module, channels: int, trainable: bool) -> None:
        super().__init__()
        self.body, self.trainable = backbone, trainable
        self.neck = nn.Sequential(nn.Conv2d(channels, NECK_CHANNELS, kernel_size=1), nn.ReLU(inplace=True))
        self.out_channels = NECK_CHANNELS

    def dense(self, x: Tensor) -> Tensor:
        if self.trainable:
            return self.body.forward_features(x)
        self.body.eval()
        with torch.no_grad():
            return self.body.forward_features(x)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.head(self.dense(x))

    def head(self, dense: Tensor) -> OrderedDict[str, Tensor]:
        """The RPN's input ("0", through the neck) and the box head's ("dense", the backbone's own map: RoIAlign
        needs no backward pass through a frozen map, and its CPU backward is slow)."""
        return OrderedDict([("0", self.neck(dense)), ("dense", dense)])


def build_detector(ckpt: Checkpoint, num_classes: int, settings: Settings) -> nn.Module:
    """Faster R-CNN with `num_classes` object classes (+ background) on a copy of the checkpoint's backbone."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    size = settings.image_size
    backbone = copy.deepcopy(ckpt.backbone).requires_grad_(settings.finetune)
    stride = int(getattr(backbone, "patch_size_or_stride", 16))
    channels = backbone.feature_dim
    pool = max(2, min(7, size // stride))
    anchors = AnchorGenerator(
        sizes=(tuple(max(4, round(size * f)) for f in (0.125, 0.25, 0.5, 0.8)),),
        aspect_ratios=((0.5, 1.0, 2.0),),
    )
    representation = 128
    return FasterRCNN(
        _DenseBody(backbone, channels, settings.finetune),
        num_classes=None,
        min_size=size,
        max_size=size,
        image_mean=list(ckpt.mean),
        image_std=list(ckpt.std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=150,
        rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["dense"], output_size=pool, sampling_ratio=1),
        box_head=TwoMLPHead(channels * pool * pool, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes + 1),
        box_batch_size_per_image=32,
        box_score_thresh=0.001,
        box_detections_per_img=100,
    )


def _square(sample: Any, size: int) -> tuple[Tensor, float, float]:
    """The image as float [3, size, size] in 0..1, with the x and y scale factors applied to it."""
    image = torch.from_numpy(sample.load_image().copy()).permute(2, 0, 1).float().div_(255.0)
    h, w = image.shape[1:]
    if (h, w) != (size, size):
        image = F.interpolate(
            image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0]
    return image, size / w, size / h


def _target(sample: Any, sx: float, sy: float) -> dict[str, Tensor]:
    keep = [
        i
        for i, ((x0, y0, x1, y1), crowd) in enumerate(zip(sample.boxes, sample.crowd, strict=True))
        if not crowd and x1 > x0 and y1 > y0
    ]
    boxes = torch.tensor([sample.boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4)
    boxes *= torch.tensor([sx, sy, sx, sy])
    labels = torch.tensor([sample.box_labels[i] + 1 for i in keep], dtype=torch.int64)
    return {"boxes": boxes, "labels": labels}


class _Prepared:
    """A split read as square images of one size, so that a frozen backbone's features of an image do not depend
    on its batch: they are computed once when they fit the cache (common.fits_cache), else batch by batch."""

    def __init__(self, split: Split, size: int, with_targets: bool) -> None:
        self.split, self.size, self.with_targets = split, size, with_targets
        self.dense: Tensor | None = None

    def __len__(self) -> int:
        return len(self.split)

    def batch(
        self, idx: list[int]
    ) -> tuple[list[Tensor], list[dict[str, Tensor]], list[tuple[float, float]]]:
        """Images (0..1, square), targets (boxes scaled alike) and the scale factors of the samples `idx`."""
        images, targets, scales = [], [], []
        for i in idx:
            sample = self.split.samples[i]
            image, sx, sy = _square(sample, self.size)
            images.append(image)
            scales.append((sx, sy))
            if self.with_targets:
                targets.append(_target(sample, sx, sy))
        return images, targets, scales

    def cache_dense(self, model: nn.Module, batch_size: int) -> None:
        device = next(model.parameters()).device
        body = model.backbone.body
        stride = int(getattr(body, "patch_size_or_stride", 8))
        per_image = body.feature_dim * max(1, -(-self.size // 32) * 32 // stride) ** 2 * 4
        if not fits_cache(len(self), per_image):
            return
        chunks = []
        for start in range(0, len(self), batch_size):
            images = self.batch(list(range(start, min(start + batch_size, len(self)))))[0]
            transformed, _ = model.transform([x.to(device) for x in images])
            chunks.append(model.backbone.dense(transformed.tensors))
        self.dense = torch.cat(chunks)


def _forward(model: nn.Module, data: _Prepared, idx: list[int]) -> tuple[Any, list[tuple[float, float]]]:
    """GeneralizedRCNN.forward, with the frozen backbone's features taken from the cache when there is one;
    returns (losses or detections, scale factors of the images)."""
    device = next(model.parameters()).device
    images_in, targets_in, scales = data.batch(idx)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets_in] if model.training else None
    images, targets = model.transform([x.to(device) for x in images_in], targets)
    if data.dense is not None:
        features = model.backbone.head(data.dense[idx])
    else:
        features = model.backbone(images.tensors)
    proposals, rpn_losses = model.rpn(images, OrderedDict([("0", features["0"])]), targets)
    detections, roi_losses = model.roi_heads(features, proposals, images.image_sizes, targets)
    return ({**rpn_losses, **roi_losses} if model.training else detections), scales


def train_detector(ckpt: Checkpoint, train: Split, settings: Settings) -> nn.Module:
    torch.manual_seed(settings.seed)
    model = build_detector(ckpt, len(train.classes), settings).to(ckpt.device)
    data = _Prepared(train, settings.image_size, with_targets=True)
    if not settings.finetune:
        data.cache_dense(model, settings.batch_size)
    head_params = [
        p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.body.")
    ]
    groups: list[dict[str, Any]] = [{"params": head_params}]
    if settings.finetune:
        groups.append({"params": list(model.backbone.body.parameters()), "lr": settings.lr / 10})
    opt = torch.optim.SGD(groups, lr=settings.lr, momentum=0.9, weight_decay=1e-4)
    steps = max(1, settings.epochs * math.ceil(len(train) / settings.batch_size))
    warmup = min(50, steps // 5 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    for _ in range(settings.epochs):
        for idx in torch.randperm(len(train)).split(settings.batch_size):
            losses = _forward(model, data, idx.tolist())[0]
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                continue  # a diverging step on a tiny dataset; skip rather than poison the weights
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 10.0)
            opt.step()
            sched.step()
    return model.eval()


def coco_ground_truth(split: Split) -> dict[str, Any]:
    """The split's boxes as a COCO ground-truth dict (image ids 1.., category ids 1..)."""
    images, annotations = [], []
    for image_id, sample in enumerate(split.samples, start=1):
        h, w = sample.size if sample.size else sample.load_image().shape[:2]
        images.append({"id": image_id, "width": int(w), "height": int(h)})
        for (x0, y0, x1, y1), label, crowd in zip(sample.boxes, sample.box_labels, sample.crowd, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": int(crowd),
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(split.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def to_coco_results(predictions: list[dict[str, Tensor]]) -> list[dict[str, Any]]:
    """torchvision predictions (boxes x0y0x1y1, labels 1.., scores), one per image in split order -> COCO results."""
    results = []
    for image_id, pred in enumerate(predictions, start=1):
        for box, label, score in zip(
            pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist(), strict=True
        ):
            x0, y0, x1, y1 = box
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    return results


def score_detections(split: Split, predictions: list[dict[str, Tensor]]) -> dict[str, float]:
    """mAP@[.5:.95] and mAP@.5 of per-image predictions (in split order) through pycocotools."""
    return coco_map(coco_ground_truth(split), to_coco_results(predictions))


@torch.no_grad()
def predict(model: nn.Module, split: Split, settings: Settings) -> list[dict[str, Tensor]]:
    """Per-image predictions in the original image's pixel coordinates, in split order."""
    model.eval()
    data = _Prepared(split, settings.image_size, with_targets=False)  # each image is seen once: no cache
    out: list[dict[str, Tensor]] = []
    for idx in torch.arange(len(split)).split(settings.batch_size):
        preds, scales = _forward(model, data, idx.tolist())
        for pred, (sx, sy) in zip(preds, scales, strict=True):
            pred = {k: v.cpu() for k, v in pred.items()}
            pred["boxes"] = pred["boxes"] / torch.tensor([sx, sy, sx, sy])
            out.append(pred)
    return out


def run_detection(ckpt: Checkpoint, train: Split, val: Split, settings: Settings) -> dict[str, float]:
    model = train_detector(ckpt, train, settings)
    return score_detections(val, predict(model, val, settings))
