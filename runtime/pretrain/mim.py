"""Masked image modelling: MAE (He et al. 2022) on a timm ViT, with the Free-ATM fixes behind switches.

The encoder (the backbone's ViT) sees only the visible patches; a light Transformer decoder reconstructs the
pixels of the masked ones (per-patch normalised targets), and the loss is the mean squared error over masked
patches.

`guidedMasking`: masked patches are drawn without replacement with probability proportional to
`coverage + BACKGROUND_WEIGHT`, where coverage is the share of the patch covered by objects in the (augmented)
label map — the same number of patches as uniform masking (`maskRatio`), so objects are masked first and the
rest of the budget falls on background. Implemented with the Gumbel-top-k trick; with no objects it is
uniform. Hints (AttMask-Hints): each object patch stays visible with probability `hintShare`, so the encoder
sees a little of every object (0: AttMask-High). The share of object area masked is reported
(`maskedObjectShare`) and logged each epoch. `objectWeightedLoss`: each masked patch's error is weighted by `1 + coverage` (normalised over the
masked patches), so reconstructing objects counts more. With both off this is exactly MAE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone

BACKGROUND_WEIGHT = 0.1
HINT_OFFSET = 1e4  # below any Gumbel key: hints sort first, in random order among themselves


def patchify(images: Tensor, p: int) -> Tensor:
    """[B,3,H,W] → [B, N, p*p*3] (row-major patches)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def patch_coverage(labels: Tensor, p: int) -> Tensor:
    """Share of each patch covered by any object: label maps [B,H,W] → [B,N]."""
    return F.avg_pool2d((labels > 0).float()[:, None], p).flatten(1)


def sample_mask(
    b: int,
    n: int,
    coverage: Tensor | None,
    guided: bool,
    generator: torch.Generator | None,
    hint_share: float = 0.0,
) -> Tensor:
    """A patch order per image [B,N]: the first patches stay visible, the rest are masked.

    Uniform: a random permutation. Guided (needs `coverage` [B,N]): Gumbel-top-k sampling without replacement
    with weights coverage + BACKGROUND_WEIGHT, the patches drawn first being the masked ones; each object patch
    (coverage > 0) is, with probability `hint_share`, a hint that goes to the front (stays visible while the
    visible budget lasts). Both modes draw the same random numbers."""
    u = torch.rand((b, n), generator=generator).clamp_(1e-9, 1 - 1e-9)
    v = torch.rand((b, n), generator=generator)
    if not guided or coverage is None:
        return torch.argsort(u, dim=1)
    coverage = coverage.cpu()
    keys = torch.log(coverage + BACKGROUND_WEIGHT) - torch.log(-torch.log(u))  # + Gumbel noise
    hints = (coverage > 0) & (v < hint_share)
    keys = torch.where(hints, keys - HINT_OFFSET, keys)
    return torch.argsort(keys, dim=1)  # ascending: the lowest keys stay visible, the highest are masked


class MAEModel(nn.Module):
    """MAE around a timm ViT backbone; `forward(batch)` returns (loss, parts)."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        mask_ratio: float = 0.75,
        guided_masking: bool = False,
        hint_share: float = 0.0,
        object_weighted_loss: bool = False,
        decoder_dim: int | None = None,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        if not backbone.is_vit:
            raise ValueError(f"MAE needs a ViT backbone, not {backbone.name}")
        from timm.models.vision_transformer import Block

        self.backbone = backbone
        vit = backbone.body
        if vit.num_prefix_tokens != 1 or getattr(vit, "has_class_token", True) is False:
            raise ValueError("MAE expects a ViT with exactly one class token")
        self.p = backbone.patch_size_or_stride
        dim = backbone.feature_dim
        ddim = decoder_dim or min(512, max(128, dim // 2))
        self.mask_ratio, self.guided, self.weighted, self.norm_pix = (
            mask_ratio,
            guided_masking,
            object_weighted_loss,
            norm_pix_loss,
        )
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_blocks = nn.ModuleList(
            Block(ddim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(ddim)
        self.decoder_pred = nn.Linear(ddim, self.p * self.p * 3)
        self.hint_share = hint_share
        nn.init.normal_(self.mask_token, std=0.02)
        self.generator: torch.Generator | None = None

    def _pos(self, grid: tuple[int, int]) -> Tensor:
        """Position embeddings for the class token and a patch grid ([1, 1+N, C])."""
        from timm.layers import resample_abs_pos_embed

        vit = self.backbone.body
        return resample_abs_pos_embed(vit.pos_embed, new_size=grid, num_prefix_tokens=1)

    def _decoder_pos(self, n: int, grid: tuple[int, int], device: torch.device) -> Tensor:
        """Fixed 2-D sine-cosine position embeddings for the decoder ([1, N, D])."""
        d = self.decoder_embed.out_features
        gh, gw = grid
        ys, xs = torch.meshgrid(
            torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij"
        )
        quarter = d // 4
        omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
        parts = []
        for coord in (ys.flatten().float(), xs.flatten().float()):
            angle = coord[:, None] * omega[None]
            parts += [angle.sin(), angle.cos()]
        pos = torch.cat(parts, dim=1)
        return F.pad(pos, (0, d - pos.shape[1]))[None]

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        images = batch["image"]
        vit = self.backbone.body
        b, _, h, w = images.shape
        grid = (h // self.p, w // self.p)
        n = grid[0] * grid[1]
        keep = max(1, int(round(n * (1 - self.mask_ratio))))
        coverage = patch_coverage(batch["mask"], self.p) if "mask" in batch else None
        order = sample_mask(b, n, coverage, self.guided, self.generator, self.hint_share).to(images.device)
        visible, masked_idx = order[:, :keep], order[:, keep:]

        # encoder on visible patches
        x = vit.patch_embed(images).reshape(b, n, -1)
        pos = self._pos(grid)
        x = x + pos[:, 1:]
        x = torch.gather(x, 1, visible[..., None].expand(-1, -1, x.shape[-1]))
        cls = (vit.cls_token + pos[:, :1]).expand(b, -1, -1)
        x = vit.norm_pre(torch.cat([cls, x], dim=1))
        x = vit.norm(vit.blocks(x))

        # decoder on all positions
        y = self.decoder_embed(x)
        tokens = self.mask_token.expand(b, n - keep, -1).to(y.dtype)
        full = torch.cat([y[:, 1:], tokens], dim=1)
        restore = torch.argsort(order, dim=1)
        full = torch.gather(full, 1, restore[..., None].expand(-1, -1, full.shape[-1]))
        full = full + self._decoder_pos(n, grid, images.device).to(full.dtype)
        y = torch.cat([y[:, :1], full], dim=1)
        for block in self.decoder_blocks:
            y = block(y)
        pred = self.decoder_pred(self.decoder_norm(y))[:, 1:]  # [B,N,p*p*3]

        target = patchify(images, self.p)
        if self.norm_pix:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        err = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # [B,N]
        is_masked = torch.zeros(b, n, device=images.device)
        is_masked.scatter_(1, masked_idx, 1.0)
        weight = is_masked
        if self.weighted and coverage is not None:
            weight = is_masked * (1.0 + coverage.to(images.device))
        loss = (err * weight).sum() / weight.sum()
        parts = {"reconstructionLoss": float(loss.detach())}
        if coverage is not None:
            cov = coverage.to(images.device)
            parts["maskedObjectShare"] = float((cov * is_masked).sum() / cov.sum().clamp(min=1e-6))
        return loss, parts
