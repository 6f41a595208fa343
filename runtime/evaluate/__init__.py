"""`freeatm-runtime evaluate`: score pretrained checkpoints on downstream benchmarks (the EvalJob's pods).

Every benchmark of the spec runs on every checkpoint (a MaskPretrainJob output holding export/backbone.pt and
export/metadata.json, and a text tower when trained with method.framework vlp, or random://BACKBONE?imageSize=N
as the random-init baseline); the scores land in one
side-by-side table. Files, in reading order:

- ``job.py``            the run: checkpoints, datasets, resume, progress, metrics, report
- ``datasets.py``       readers: imagefolder, PASCAL VOC, COCO, ADE20K, Cityscapes, ShapesBench (toy://), synthetic
- ``classification.py`` kNN and linear probe on frozen global features       -> top1 (top5 above 5 classes)
- ``objects.py``        per-object probe on features pooled inside each true object mask -> top1, balanced_top1;
                        multi-label presence on frozen global features        -> map
- ``segmentation.py``   BN + 1x1 head on frozen or fine-tuned dense features  -> miou, pixel_acc
- ``detection.py``      torchvision Faster R-CNN on the backbone               -> map (@[.5:.95]), map50
- ``retrieval.py``      the checkpoint's own text tower, else LiT-style (frozen images, text tower learnt on the
                        fly)                                                  -> recall@1, recall@5, recall@k
- ``text_tower.py``     with a VLP checkpoint's own text tower: zero-shot object classification by class names
                        -> top1; phrase grounding -> mean_iou, iou50 ("n/a: no text tower" without one)
- ``scores.py``         the metrics (pycocotools; mIoU as torchmetrics' JaccardIndex)
- ``report.py``         results.json, report.md (side-by-side table), plots/scores.png

Protocol parameters come from the benchmark (epochs, lr, batchSize, imageSize, k, finetune, maxImages);
unset ones default per protocol (job.DEFAULTS; imageSize: the checkpoint's training size). The output::

    <output>/runs/<checkpoint>/<benchmark>.json   one finished run, with the digest it was computed for
    <output>/results.json  <output>/report.md  <output>/plots/scores.png

A rerun skips every run whose file carries the same digest (checkpoint weights + metadata + benchmark spec).
"""

from __future__ import annotations

from typing import Any


def run(resource: Any) -> dict[str, Any]:
    """Run the EvalJob `resource` and return its status.outputs (wire form: uri, reportUri, results)."""
    from .job import run as run_job

    return run_job(resource)


__all__ = ["run"]
