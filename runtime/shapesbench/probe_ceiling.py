"""The study's measurement check: how far the object probe moves for a backbone that has learnt the shapes.

Random init is the probe's floor. Its ceiling at the study's size is measured here: the same backbone, trained
for the same number of steps with the same optimiser, but supervised — each object's feature (the dense map
pooled inside its true mask, exactly what the probe reads) classified into its shape by a linear head. If this
barely moves the probe, no pretraining arm can, and the study has no power whatever its seeds; if it moves it far
and the self-supervised arms do not, the objectives, not the measurement, are what fails to learn shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones import create_backbone, save_export
from ..pretrain.contrastive import mask_pool
from ..pretrain.data import MEAN, STD
from ..shapes import Scene, shapes_of


def train_probe_ceiling(scenes: Sequence[Scene], p: dict[str, Any], output_uri: str) -> None:
    """Train `p["backbone"]` on the shapes of the objects of `scenes` (their true masks) for as many steps and
    with the optimiser and learning rate the study's pretraining uses (AdamW, lr per 256 images, constant), and
    export it under `output_uri` like a MaskPretrainJob. It trains on the GPU when the protocol does."""
    torch.manual_seed(0)
    device = torch.device("cuda" if p["gpus"] else "cpu")
    classes = shapes_of(p["variant"])
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    images = (images - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    labels = torch.from_numpy(np.stack([s.label_map() for s in scenes])).to(device)
    images = images.to(device)
    most = max(len(s.objects) for s in scenes)
    targets = torch.full((len(scenes), most), -1)
    for i, scene in enumerate(scenes):
        targets[i, : len(scene.objects)] = torch.tensor([classes.index(o.shape) for o in scene.objects])
    targets = targets.to(device)

    backbone = create_backbone(p["backbone"], p["imageSize"]).to(device)
    head = torch.nn.Linear(backbone.feature_dim, len(classes)).to(device)
    batch = p["batchSize"]
    optimiser = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=p["lr"] * batch / 256)
    generator = torch.Generator().manual_seed(0)
    for _ in range(p["epochs"] * len(scenes) // batch):
        rows = torch.randint(0, len(scenes), (batch,), generator=generator).to(device)
        pooled, area = mask_pool(backbone.forward_features(images[rows]), labels[rows], most)
        seen = (targets[rows] >= 0) & (area > 0)
        loss = F.cross_entropy(head(pooled[seen]), targets[rows][seen])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    save_export(backbone.cpu().eval(), {"framework": "supervised", "useMasks": True, "fixes": {}}, output_uri)
