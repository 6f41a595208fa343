"""The EvalJob's scores against the libraries that define them: COCO mAP (pycocotools on the raw annotation
file), mIoU / pixel accuracy, multi-label mAP and balanced accuracy (torchmetrics)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import evaluate_fixtures as fx  # noqa: E402

from freeatm.runtime.evaluate.datasets import open_split  # noqa: E402
from freeatm.runtime.evaluate.detection import score_detections  # noqa: E402
from freeatm.runtime.evaluate.scores import (  # noqa: E402
    Confusion,
    balanced_accuracy,
    mean_average_precision,
    recall_at_k,
    topk_accuracy,
)


def fixed_predictions(split, seed: int = 0) -> list[dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    """Jittered true boxes (some with the wrong class) plus false positives, with scores: a fixed, imperfect set."""
    g = torch.Generator().manual_seed(seed)
    preds = []
    for sample in split.samples:
        boxes, labels, scores = [], [], []
        for box, label in zip(sample.boxes, sample.box_labels, strict=True):
            jitter = (torch.rand(4, generator=g) - 0.5) * 6
            boxes.append(torch.tensor(box) + jitter)
            wrong = torch.rand(1, generator=g).item() < 0.2
            labels.append((label + 1) % len(split.classes) + 1 if wrong else label + 1)
            scores.append(torch.rand(1, generator=g).item())
        for _ in range(2):
            x, y = (torch.rand(2, generator=g) * 30).tolist()
            boxes.append(torch.tensor([x, y, x + 12, y + 12]))
            labels.append(int(torch.randint(1, len(split.classes) + 1, (1,), generator=g)))
            scores.append(torch.rand(1, generator=g).item() * 0.5)
        boxes_t = torch.stack(boxes)
        boxes_t[:, 2:] = torch.maximum(boxes_t[:, 2:], boxes_t[:, :2] + 1)
        preds.append({"boxes": boxes_t, "labels": torch.tensor(labels), "scores": torch.tensor(scores)})
    return preds


def test_map_equals_pycocotools_on_the_raw_coco_file(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root = fx.make_coco(tmp_path / "coco", per_split=10)
    split = open_split("coco", root.as_uri(), "val", "detection")
    preds = fixed_predictions(split)
    ours = score_detections(split, preds)

    # The same predictions in the file's own image and category ids, scored by pycocotools on the file itself.
    cat_ids = [c["id"] for c in fx.COCO_CATEGORIES]
    results = []
    for sample, pred in zip(split.samples, preds, strict=True):
        for (x0, y0, x1, y1), label, score in zip(
            pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": int(sample.id),
                    "category_id": cat_ids[label - 1],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": score,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / "instances_val.json"))
        ev = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0.05 < ours["map"] < 0.95  # an imperfect set: the comparison is not trivially 0 or 1
    assert ours["map"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert ours["map50"] == pytest.approx(ev.stats[1], abs=1e-6)


def test_map_of_perfect_predictions_is_one_and_crowd_boxes_are_ignored(tmp_path: Path) -> None:
    root = fx.make_coco(tmp_path / "coco", per_split=6)
    split = open_split("coco", root.as_uri(), "val", "detection")
    perfect = [
        {
            "boxes": torch.tensor([b for b, c in zip(s.boxes, s.crowd, strict=True) if not c]).reshape(-1, 4),
            "labels": torch.tensor([lab + 1 for lab, c in zip(s.box_labels, s.crowd, strict=True) if not c]),
            "scores": torch.ones(sum(not c for c in s.crowd)),
        }
        for s in split.samples
    ]
    assert score_detections(split, perfect) == {"map": pytest.approx(1.0), "map50": pytest.approx(1.0)}
    json.dumps(score_detections(split, []))  # no detections: zeros, still serialisable


def test_miou_and_pixel_accuracy_equal_torchmetrics() -> None:
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    g = torch.Generator().manual_seed(1)
    classes = 6
    target = torch.randint(0, classes - 1, (5, 24, 24), generator=g)  # class 5 never occurs in the targets
    target[:, :3] = 255
    pred = torch.where(
        torch.rand(target.shape, generator=g) < 0.6,
        target,
        torch.randint(0, classes, target.shape, generator=g),
    )
    pred[pred == 255] = 0
    pred[0, 5, 5] = 5  # … but once in the predictions
    confusion = Confusion(classes, ignore_index=255)
    for p, t in zip(pred, target, strict=True):
        confusion.update(p, t)
    jaccard = MulticlassJaccardIndex(num_classes=classes, ignore_index=255, average="macro")
    accuracy = MulticlassAccuracy(num_classes=classes, ignore_index=255, average="micro")
    assert confusion.miou() == pytest.approx(float(jaccard(pred, target)), abs=1e-6)
    assert confusion.pixel_accuracy() == pytest.approx(float(accuracy(pred, target)), abs=1e-6)


def test_topk_and_recall() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 2, 0])
    assert topk_accuracy(logits, target, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, target, 2) == pytest.approx(2 / 3)
    relevant = torch.eye(3, dtype=torch.bool)
    assert recall_at_k(logits, relevant, 1) == pytest.approx(1 / 3)
    assert recall_at_k(logits, relevant, 3) == 1.0


def test_multilabel_map_and_balanced_accuracy_equal_torchmetrics() -> None:
    from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

    g = torch.Generator().manual_seed(2)
    targets = (torch.rand(50, 5, generator=g) < 0.3).long()
    targets[:, 4] = 0  # a class that never occurs is left out of the mean
    scores = targets * 0.5 + torch.rand(50, 5, generator=g)
    scores[:10, 0] = 0.25  # ties
    ap = MultilabelAveragePrecision(num_labels=4, average="macro")
    assert mean_average_precision(scores, targets) == pytest.approx(
        float(ap(scores[:, :4], targets[:, :4])), abs=1e-6
    )
    assert mean_average_precision(targets.float(), targets) == pytest.approx(1.0)

    logits = torch.randn(60, 4, generator=g)
    # no class 3
    labels = torch.cat([torch.zeros(40, dtype=torch.long), torch.randint(1, 3, (20,), generator=g)])
    per_class = MulticlassAccuracy(num_classes=4, average=None)(logits, labels)[:3]
    assert balanced_accuracy(logits, labels, 4) == pytest.approx(float(per_class.mean()), abs=1e-6)
