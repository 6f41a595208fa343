"""`freeatm-runtime pretrain`: self-supervised pretraining of a MaskPretrainJob, guided by the dataset's masks.

data.py         stream the dataset's shards, paired image+mask augmentation, mask-aware crops
contrastive.py  SimCLR + the DetCon-style object term
mim.py          MAE on a timm ViT + guided masking and object-weighted loss
vlp.py          CLIP-style image–caption InfoNCE + the region–phrase term (runtime/dual_encoder.py's model)
distributed.py  torchrun env:// set-up, gloo/NCCL
checkpoint.py   atomic checkpoints, resume from the newest valid one
loop.py         the training loop and the final export (runtime/backbones.py writes it)
"""

from __future__ import annotations

from typing import Any

from freeatm.api import MaskPretrainJob

from ..errors import InvalidInput


def run(resource: MaskPretrainJob) -> dict[str, Any]:
    """Train the job's backbone and return its outputs: {"uri": output, "checkpointUri": ".../export/backbone.pt"}."""
    if not isinstance(resource, MaskPretrainJob):
        raise InvalidInput(f"pretrain runs a MaskPretrainJob, got {type(resource).__name__}")
    from .loop import train

    return train(resource)
