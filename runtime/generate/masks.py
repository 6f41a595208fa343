"""From per-token attention maps to per-object soft maps and one label mask per image.

For one image with objects o = 1…O (in prompt order):

1. **Object map.** The raw map of object o is the mean of the token maps of its word's tokens — and, with
   ``attention.modifiers``, of its modifier words' tokens too ("red" with "circle").
2. **Resize.** Raw maps are upsampled bilinearly to the mask resolution.
3. **Normalise.** Each object's map is min–max normalised to [0, 1] on its own (a constant map has no signal
   and becomes all zeros).
4. **Threshold** (``attention.threshold``):
   ``relative`` — relative to the map's own range: raw − min ≥ value × (max − min), i.e. normalised ≥ value
   ("min–max, then 0.5", docs/architecture.md#measured-facts);
   ``fixed`` — an absolute level on the raw map: raw ≥ value, where raw is the share of a position's attention
   that goes to the object's tokens (softmax probabilities, so in [0, 1]; independent of the other positions);
   ``otsu`` — normalised ≥ Otsu's threshold of that map (value unused).
5. **Arg-max.** A pixel that passes for several objects goes to the object with the highest normalised value;
   a pixel that passes for none is background. Label 0 = background, k = the k-th object.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("fixed", "relative", "otsu")


def object_maps(token_maps: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """O × r × r raw object maps: each the mean of the token maps (J × r × r) listed in its group."""
    if not groups:
        return token_maps.new_zeros((0, *token_maps.shape[1:]))
    return torch.stack([token_maps[list(g)].mean(dim=0) for g in groups])


def resize(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of O × r × r maps to O × size × size."""
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    return F.interpolate(maps[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per-object min–max normalisation to [0, 1]; a constant map becomes zeros."""
    flat = maps.reshape(maps.shape[0], -1).float()
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(
        span > 0, (flat - lo) / span.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(flat)
    )
    return out.reshape(maps.shape)


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising the between-class variance of a histogram."""
    hist = torch.histc(values.float().flatten(), bins=bins, min=0.0, max=1.0).double()
    total = hist.sum()
    if total == 0:
        return 1.0
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    weight0 = torch.cumsum(hist, 0)
    weight1 = total - weight0
    mass0 = torch.cumsum(hist * centres, 0)
    mean0 = mass0 / weight0.clamp_min(1e-12)
    mean1 = (mass0[-1] - mass0) / weight1.clamp_min(1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    between[(weight0 == 0) | (weight1 == 0)] = -1
    k = int(torch.argmax(between))
    return float((k + 1) / bins)  # values above bin k's upper edge are foreground


def passing(raw: torch.Tensor, norm: torch.Tensor, method: str, value: float) -> torch.Tensor:
    """O × H × W booleans: where each object's map passes its threshold (see the module docstring)."""
    if method == "relative":
        passed = norm >= value
    elif method == "fixed":
        passed = raw >= value
    elif method == "otsu":
        cuts = torch.tensor([otsu_threshold(m) for m in norm], dtype=norm.dtype).reshape(-1, 1, 1)
        passed = norm >= cuts
    else:
        raise ValueError(f"unknown threshold method {method!r}; expected one of {METHODS}")
    flat = norm.reshape(norm.shape[0], -1)
    has_signal = (flat.max(dim=1).values > flat.min(dim=1).values).reshape(-1, 1, 1)
    return passed & has_signal


def label_map(norm: torch.Tensor, passed: torch.Tensor) -> np.ndarray:
    """H × W uint8 labels: the passing object with the highest normalised value (1-based), 0 where none."""
    if norm.shape[0] == 0:
        return np.zeros(norm.shape[1:], dtype=np.uint8)
    if norm.shape[0] > 255:
        raise ValueError(f"{norm.shape[0]} objects do not fit an 8-bit label map")
    scores = torch.where(passed, norm, torch.full_like(norm, -1.0))
    best = scores.argmax(dim=0)
    labels = torch.where(passed.any(dim=0), best + 1, torch.zeros_like(best))
    return labels.numpy().astype(np.uint8)


def masks_from_maps(
    raw: torch.Tensor, size: int, method: str, value: float
) -> tuple[np.ndarray, torch.Tensor]:
    """(size × size uint8 label map, O × r × r normalised soft maps) from O × r × r raw object maps."""
    raw = raw.float().cpu()
    big = resize(raw, size)
    norm_big = normalise(big)
    labels = label_map(norm_big, passing(big, norm_big, method, value))
    return labels, normalise(raw)


def coverage(labels: np.ndarray, objects: int) -> list[float]:
    """Share of the image each object's label covers."""
    pixels = labels.size
    return [float((labels == k).sum()) / pixels for k in range(1, objects + 1)]
