"""Object-centric evaluation on frozen features: a per-object linear probe and multi-label presence.

object-probe: one sample per object, the frozen dense map averaged inside the object's true mask
(common.object_features), labelled with the object's class. A linear probe (classification.train_linear) is
fitted to the training split's objects and scored on the scored split's: top1, and balanced_top1 (the mean of the
per-class recalls: chance is 1 / classes whatever the class balance).

presence: which classes occur in an image, read from its pooled global feature by a linear layer with one
sigmoid per class (binary cross-entropy), scored by mAP over the classes that occur in the scored split.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidInput
from .classification import train_linear
from .common import Checkpoint, Settings, object_features, pooled_features, presence_of
from .datasets import Split
from .scores import balanced_accuracy, mean_average_precision, topk_accuracy


def probe_objects(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    settings: Settings,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Fit a linear probe to object features `train_x` [M, C] with classes `train_y` [M] and score it on
    `val_x`, `val_y`: top1 and balanced_top1."""
    probe = train_linear(train_x, train_y, num_classes, settings, device)
    with torch.no_grad():
        logits = probe(val_x)
    return {
        "top1": topk_accuracy(logits, val_y, 1),
        "balanced_top1": balanced_accuracy(logits, val_y, num_classes),
    }


def presence_map(
    train_x: Tensor,
    train_t: Tensor,
    val_x: Tensor,
    val_t: Tensor,
    settings: Settings,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Fit one linear sigmoid per class to image features `train_x` [N, C] and multi-hot targets `train_t`
    [N, classes]; the mAP of its scores on `val_x` against `val_t`."""
    head = train_linear(train_x, train_t, train_t.shape[1], settings, device, multilabel=True)
    with torch.no_grad():
        scores = head(val_x)
    return {"map": mean_average_precision(scores, val_t)}


def run_object_probe(ckpt: Checkpoint, train: Split, val: Split, settings: Settings) -> dict[str, float]:
    train_x, train_y = object_features(ckpt, train, settings)
    val_x, val_y = object_features(ckpt, val, settings)
    for split, count in ((train, len(train_y)), (val, len(val_y))):
        if count < 2:
            raise InvalidInput(
                f"{split.where}: split {split.name!r} shows {count} object(s); the probe needs 2"
            )
    return probe_objects(train_x, train_y, val_x, val_y, len(train.classes), settings, ckpt.device)


def run_presence(ckpt: Checkpoint, train: Split, val: Split, settings: Settings) -> dict[str, float]:
    if len(train) < 2:
        raise InvalidInput(
            f"{train.where}: split {train.name!r} holds {len(train)} image(s); presence needs 2"
        )
    train_x, val_x = pooled_features(ckpt, train, settings), pooled_features(ckpt, val, settings)
    return presence_map(train_x, presence_of(train), val_x, presence_of(val), settings, ckpt.device)
