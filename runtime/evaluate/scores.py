"""The scores: classification accuracy (plain and class-balanced), multi-label mAP, segmentation mIoU and pixel
accuracy, COCO mAP, retrieval recall@K.

COCO mAP is computed by pycocotools' COCOeval itself; mIoU follows torchmetrics' JaccardIndex (macro average
over the classes that occur in the predictions or the targets, ignore index excluded) and multi-label mAP its
MultilabelAveragePrecision; the tests check all three.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, k: int = 1) -> float:
    """Share of rows whose true class is among the k highest scores."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == target[:, None]).any(dim=1).float().mean())


class Confusion:
    """A running confusion matrix over label maps (rows: truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != self.ignore_index
        pred, target = pred[keep].long(), target[keep].long()
        n = self.num_classes
        self.matrix += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)

    def iou(self) -> torch.Tensor:
        """Per-class IoU; NaN for classes absent from both predictions and targets."""
        tp = self.matrix.diag().double()
        union = self.matrix.sum(0).double() + self.matrix.sum(1).double() - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        return float(self.iou().nanmean())

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.matrix.diag().sum().double() / total) if total else 0.0


def balanced_accuracy(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """The mean over the classes present in `target` of the share of their rows predicted right (chance:
    1 / classes, whatever the class balance)."""
    pred = logits.argmax(dim=1)
    recalls = [
        float((pred[target == c] == c).float().mean()) for c in range(num_classes) if (target == c).any()
    ]
    return sum(recalls) / len(recalls) if recalls else 0.0


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-label mAP: the mean over the classes (columns) with a positive row of their average precision,
    sum over distinct score thresholds of (recall step) x precision, as torchmetrics' MultilabelAveragePrecision."""
    aps = []
    for column, positive in zip(scores.T.double(), targets.T.bool(), strict=True):
        if not positive.any():
            continue
        order = column.argsort(descending=True)
        ranked, hits = column[order], positive[order].double()
        tp, fp = hits.cumsum(0), (1 - hits).cumsum(0)
        last = torch.cat([ranked[1:] != ranked[:-1], torch.tensor([True])])  # the last row of each tie
        precision, recall = (tp / (tp + fp))[last], (tp / tp[-1])[last]
        steps = recall - torch.cat([torch.zeros(1, dtype=recall.dtype), recall[:-1]])
        aps.append(float((steps * precision).sum()))
    return sum(aps) / len(aps) if aps else 0.0


def require_coco_tools() -> None:
    """InvalidInput unless pycocotools, the detection protocol's scorer (the `detection` extra), is installed."""
    if importlib.util.find_spec("pycocotools") is None:
        raise InvalidInput(
            "the detection protocol scores with pycocotools, which is not installed: install freeatm[detection]"
        )


def coco_map(gt: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, float]:
    """COCO box mAP@[.5:.95] and mAP@.5 of `detections` (COCO result dicts) against the COCO-format `gt`."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval reports -1 where no ground truth exists; that is no score, not a negative one.
    return {"map": max(float(ev.stats[0]), 0.0), "map50": max(float(ev.stats[1]), 0.0)}


def recall_at_k(similarity: torch.Tensor, relevant: torch.Tensor, k: int) -> float:
    """Share of queries (rows of `similarity`) with a relevant item (`relevant` bool, same shape) in their top k."""
    k = min(k, similarity.shape[1])
    top = similarity.topk(k, dim=1).indices
    return float(relevant.gather(1, top).any(dim=1).float().mean())


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
