"""Contrastive pretraining: SimCLR, plus the Free-ATM object-level term (DetCon-style), behind a switch.

Image level (SimCLR, Chen et al. 2020): both views go through the backbone, the pooled features through a
2-layer MLP projector with BatchNorm, and the NT-Xent loss contrasts each view with its partner against every
other view of the global batch (embeddings are gathered across ranks with gradients).

Object level (the `objectContrast` fix, after DetCon, Hénaff et al. 2021): the dense feature map of each view is
pooled inside each object's mask — the label map went through the same crop and flip as the image, then is
area-downsampled to the feature grid — and projected by the same projector. An object seen in both views is a
positive pair; every other object of the process's batch (same image or others) is a negative — object counts
differ between ranks, so unlike the image term this one is not gathered. The term has its own temperature
(`objectTemperature`, DetCon's 0.1) and is added to the image loss with weight `objectLossWeight`. With the
switch off the model computes exactly SimCLR.

Silhouette (the `silhouette` fix): an InfoNCE term is satisfied by whatever tells a view's partner from the
negatives — colour, texture, the image's other objects — so it need not keep an object's shape in its pooled
feature (benchmarks/RESULTS.md measured that it does not at the ShapesBench study's size). This term asks for the
shape directly: from each object's mask-pooled feature a linear head predicts the object's mask inside the
object's own bounding box, resampled to SILHOUETTE×SILHOUETTE (torchvision's roi_align, so each target cell is
the share of the box's cell the object covers), under binary cross-entropy. Every object seen in a view counts,
whether or not the other view sees it. `imageLoss: false` leaves the SimCLR term out, so the mask-guided terms
train alone (with the object term: DetCon's form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import masks_to_boxes, roi_align

from ..backbones import Backbone
from .distributed import gather_with_grad

# label values 1..MAX_OBJECTS are pooled (an image rarely names more objects); others are ignored
MAX_OBJECTS = 16
MIN_OBJECT_AREA = 0.25  # an object must cover this many feature cells in a view to be pooled
SILHOUETTE = 8  # side of the silhouette the head predicts


def projector(dim: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out),
    )


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, gather: bool = True) -> Tensor:
    """NT-Xent over the global batch: z1[i] and z2[i] are a positive pair, everything else negatives."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    z = torch.cat([z1, z2])
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def cell_weights(labels: Tensor, grid: tuple[int, int], objects: int = MAX_OBJECTS) -> Tensor:
    """Share of each feature cell covered by each object: label maps [B,H,W] → [B, objects, h*w].

    Pixel (y, x) belongs to cell (y·h // H, x·w // W); one scatter-add counts every (object, cell) pair, so the
    cost is one pass over the pixels whatever the number of objects."""
    b, height, width = labels.shape
    h, w = grid
    device = labels.device
    rows = torch.arange(height, device=device) * h // height
    cols = torch.arange(width, device=device) * w // width
    cell = (rows[:, None] * w + cols[None, :]).flatten()  # [H*W]
    labels = labels.flatten(1).long()
    labels = torch.where(labels > objects, 0, labels)
    counts = torch.zeros(b, (objects + 1) * h * w, device=device)
    counts.scatter_add_(1, labels * (h * w) + cell, torch.ones_like(labels, dtype=counts.dtype))
    per_cell = torch.bincount(cell, minlength=h * w).to(counts.dtype)
    return (counts.view(b, objects + 1, h * w) / per_cell)[:, 1:]  # background dropped


def mask_pool(features: Tensor, labels: Tensor, objects: int = MAX_OBJECTS) -> tuple[Tensor, Tensor]:
    """Features [B,C,h,w] averaged inside each object of the label maps [B,H,W] → ([B,K,C], cell areas [B,K]):
    one batched matmul of the cell weights with the feature map."""
    weights = cell_weights(labels, (features.shape[2], features.shape[3]), objects).to(features.dtype)
    area = weights.sum(dim=2)  # in feature cells
    pooled = torch.bmm(weights, features.flatten(2).transpose(1, 2))  # [B,K,C]
    return pooled / area.clamp(min=1e-6)[..., None], area


def silhouettes(labels: Tensor, seen: Tensor, size: int = SILHOUETTE) -> Tensor:
    """The targets of the silhouette term: for each object k of image b with seen[b, k] (label k+1 of the label
    maps [B,H,W]), the object's mask inside its bounding box resampled to size×size → [N, size*size] in [0, 1]."""
    image, k = seen.nonzero(as_tuple=True)
    masks = (labels[image].long() == (k + 1)[:, None, None]).float()  # [N,H,W]
    boxes = masks_to_boxes(masks)
    boxes[:, 2:] += 1  # pixel indices → pixel edges
    rois = torch.cat(
        [torch.arange(len(masks), device=masks.device, dtype=boxes.dtype)[:, None], boxes], dim=1
    )
    target = roi_align(masks[:, None], rois, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return target.flatten(1).clamp(0, 1)


class ContrastiveModel(nn.Module):
    """Backbone + projector; `forward(batch)` returns (loss, parts)."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        temperature: float = 0.2,
        image_loss: bool = True,
        object_contrast: bool = False,
        object_temperature: float = 0.1,
        object_loss_weight: float = 1.0,
        silhouette: bool = False,
        silhouette_loss_weight: float = 1.0,
        proj_dim: int = 128,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.feature_dim
        # only modules that a term trains: distributed training expects a gradient for every parameter
        self.projector = projector(dim, max(dim, 512), proj_dim) if image_loss or object_contrast else None
        self.silhouette_head = nn.Linear(dim, SILHOUETTE * SILHOUETTE) if silhouette else None
        self.temperature = temperature
        self.image_loss = image_loss
        self.object_contrast = object_contrast
        self.object_temperature = object_temperature
        self.object_loss_weight = object_loss_weight
        self.silhouette_loss_weight = silhouette_loss_weight
        self.gather = gather

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        dense = self.backbone.forward_features(torch.cat([batch["view1"], batch["view2"]]))
        parts: dict[str, float] = {}
        terms: list[Tensor] = []  # the API refuses a job with no term
        if self.image_loss:
            z1, z2 = self.projector(dense.mean(dim=(2, 3))).chunk(2)
            image_loss = nt_xent(z1, z2, self.temperature, self.gather)
            parts["imageLoss"] = float(image_loss.detach())
            terms.append(image_loss)
        if self.object_contrast or self.silhouette_head is not None:
            labels = torch.cat([batch["mask1"], batch["mask2"]])
            objects, area = mask_pool(dense, labels)
        if self.object_contrast:
            object_loss = self._object_term(objects, area)
            parts["objectLoss"] = float(object_loss.detach())
            terms.append(self.object_loss_weight * object_loss)
        if self.silhouette_head is not None:
            silhouette_loss = self._silhouette_term(objects, area, labels)
            parts["silhouetteLoss"] = float(silhouette_loss.detach())
            terms.append(self.silhouette_loss_weight * silhouette_loss)
        return sum(terms[1:], terms[0]), parts

    def _object_term(self, objects: Tensor, area: Tensor) -> Tensor:
        (o1, o2), (a1, a2) = objects.chunk(2), area.chunk(2)
        valid = (a1 >= MIN_OBJECT_AREA) & (a2 >= MIN_OBJECT_AREA)  # [B,K]: the object is seen in both views
        if int(valid.sum()) >= 2:
            p1, p2 = self.projector(torch.cat([o1[valid], o2[valid]])).chunk(2)
            return nt_xent(p1, p2, self.object_temperature, gather=False)
        # nothing to contrast in this batch; keep the graph so every rank reduces the same gradients
        return objects.sum() * 0.0 + sum(p.sum() for p in self.projector.parameters()) * 0.0

    def _silhouette_term(self, objects: Tensor, area: Tensor, labels: Tensor) -> Tensor:
        seen = area >= MIN_OBJECT_AREA  # [2B,K]: both views' objects
        logits = self.silhouette_head(objects[seen])
        if not len(logits):  # as in the object term: a zero that keeps the graph
            return logits.sum() * 0.0 + objects.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits, silhouettes(labels, seen))
