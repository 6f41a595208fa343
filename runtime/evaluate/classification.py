"""Classification on frozen features: a k-nearest-neighbour vote and a linear probe.

kNN follows DINO's protocol: L2-normalised global features, cosine similarity, the k nearest training images
vote with weight exp(similarity / 0.07). The linear probe follows MAE's: features standardised with the
training split's statistics (a BatchNorm without affine parameters), one linear layer trained with AdamW and a
cosine schedule on the cached features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Checkpoint, Settings, labels_of, pooled_features
from .datasets import Split
from .scores import topk_accuracy

KNN_TEMPERATURE = 0.07


def knn_scores(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    num_classes: int,
    k: int,
    device: torch.device | None = None,
) -> Tensor:
    """[N_val, classes] vote weights of the k nearest training features (cosine similarity)."""
    device = device or train_x.device
    train_x, val_x = F.normalize(train_x.to(device), dim=1), F.normalize(val_x.to(device), dim=1)
    train_y = train_y.to(device)
    k = min(k, train_x.shape[0])
    votes = torch.zeros(val_x.shape[0], num_classes, device=device)
    for start in range(0, val_x.shape[0], 1024):
        sim = val_x[start : start + 1024] @ train_x.T
        top, idx = sim.topk(k, dim=1)
        weights = (top / KNN_TEMPERATURE).exp()
        votes[start : start + 1024].scatter_add_(1, train_y[idx], weights)
    return votes.cpu()


def train_linear(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    settings: Settings,
    device: torch.device | None = None,
    multilabel: bool = False,
) -> nn.Module:
    """A standardising linear classifier fitted to features `x` [N, C] and labels `y` (on `device`): class
    indices [N] (softmax cross-entropy), or with `multilabel` multi-hot targets [N, classes] (per-class
    sigmoid)."""
    torch.manual_seed(settings.seed)
    device = device or x.device
    x, y = x.to(device), y.to(device)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    linear = nn.Linear(x.shape[1], num_classes).to(device)
    opt = torch.optim.AdamW(linear.parameters(), lr=settings.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(x.shape[0] / settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * steps_per_epoch)
    xn = (x - mean) / std
    for _ in range(settings.epochs):
        for idx in torch.randperm(x.shape[0], device=device).split(settings.batch_size):
            logits = linear(xn[idx])
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, y[idx])
            else:
                loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    class Probe(nn.Module):
        def forward(self, feats: Tensor) -> Tensor:
            return linear((feats.to(device) - mean) / std).cpu()

    return Probe().eval()


def run_knn(ckpt: Checkpoint, train: Split, val: Split, settings: Settings) -> dict[str, float]:
    train_x, val_x = pooled_features(ckpt, train, settings), pooled_features(ckpt, val, settings)
    votes = knn_scores(train_x, labels_of(train), val_x, len(train.classes), settings.k, ckpt.device)
    return {"top1": topk_accuracy(votes, labels_of(val), 1)}


def run_linear_probe(ckpt: Checkpoint, train: Split, val: Split, settings: Settings) -> dict[str, float]:
    train_x, val_x = pooled_features(ckpt, train, settings), pooled_features(ckpt, val, settings)
    probe = train_linear(train_x, labels_of(train), len(train.classes), settings, ckpt.device)
    with torch.no_grad():
        logits = probe(val_x)
    scores = {"top1": topk_accuracy(logits, labels_of(val), 1)}
    if len(train.classes) > 5:
        scores["top5"] = topk_accuracy(logits, labels_of(val), 5)
    return scores
