"""Masks from synthetic attention maps: object maps, normalisation, the three thresholds, arg-max, background."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freeatm.runtime.generate.masks import (
    coverage,
    label_map,
    masks_from_maps,
    normalise,
    object_maps,
    otsu_threshold,
    passing,
)


def blob(
    cy: float, cx: float, sigma: float = 2.0, size: int = 16, peak: float = 1.0, floor: float = 0.0
) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    return floor + peak * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def test_object_maps_average_their_tokens() -> None:
    tokens = torch.stack([torch.full((4, 4), v) for v in (1.0, 3.0, 10.0)])
    maps = object_maps(tokens, [[0, 1], [2], [0, 1, 2]])
    assert maps.shape == (3, 4, 4)
    assert torch.allclose(maps[0], torch.full((4, 4), 2.0))
    assert torch.allclose(maps[1], torch.full((4, 4), 10.0))
    assert torch.allclose(maps[2], torch.full((4, 4), 14 / 3))


def test_normalise_min_max_per_object_and_constant_maps() -> None:
    maps = torch.stack([blob(4, 4, floor=0.2, peak=0.1), torch.full((16, 16), 0.7)])
    norm = normalise(maps)
    assert norm[0].min() == 0 and norm[0].max() == 1
    assert torch.all(norm[1] == 0)  # no signal


def test_relative_threshold_is_relative_to_the_maps_range() -> None:
    raw = blob(8, 8, sigma=3, floor=0.5, peak=0.5)[None]  # raw in [0.5, 1.0]
    norm = normalise(raw)
    passed = passing(raw, norm, "relative", 0.5)
    assert torch.equal(passed, raw - 0.5 >= 0.5 * 0.5)
    assert 0 < passed.sum() < 256


def test_fixed_threshold_is_an_absolute_attention_share() -> None:
    """fixed compares the raw map (attention probabilities) with the value: a high floor passes everywhere."""
    raw = blob(8, 8, sigma=3, floor=0.6, peak=0.4)[None]  # raw in [0.6, 1.0]
    norm = normalise(raw)
    assert passing(raw, norm, "fixed", 0.5).all()
    assert not passing(raw, norm, "relative", 0.5).all()
    weak = blob(8, 8, sigma=3, peak=0.3)[None]  # never reaches 0.5 of the attention
    assert not passing(weak, normalise(weak), "fixed", 0.5).any()
    assert passing(weak, normalise(weak), "relative", 0.5).any()


def test_otsu_separates_two_levels() -> None:
    values = torch.cat([torch.full((300,), 0.1), torch.full((100,), 0.8)])
    cut = otsu_threshold(values)
    assert 0.1 < cut <= 0.8
    raw = torch.zeros(1, 16, 16)
    raw[0, 4:8, 4:8] = 0.9
    raw[0] += 0.05 * torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    passed = passing(raw, normalise(raw), "otsu", 0.5)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:8, 4:8] = True
    assert torch.equal(passed[0], expected)


def test_argmax_resolves_overlap_and_background() -> None:
    a, b = blob(5, 5, sigma=3), blob(10, 10, sigma=3)
    raw = torch.stack([a, b])
    labels, soft = masks_from_maps(raw, 16, "relative", 0.3)
    assert labels.dtype == np.uint8 and labels.shape == (16, 16)
    assert labels[5, 5] == 1 and labels[10, 10] == 2 and labels[0, 15] == 0 and labels[15, 0] == 0
    # where both pass, the higher normalised value wins
    norm = normalise(raw)
    both = (norm[0] >= 0.3) & (norm[1] >= 0.3)
    assert both.any()
    winner = torch.where(norm[0] >= norm[1], 1, 2)
    assert np.array_equal(labels[both.numpy()], winner[both].numpy().astype(np.uint8))
    assert soft.shape == (2, 16, 16) and float(soft.max()) == 1.0


def test_masks_upsample_to_mask_resolution() -> None:
    raw = torch.stack([blob(2, 2, sigma=1, size=8), blob(6, 6, sigma=1, size=8)])
    labels, soft = masks_from_maps(raw, 32, "relative", 0.5)
    assert labels.shape == (32, 32) and soft.shape == (2, 8, 8)
    assert labels[9, 9] == 1 and labels[25, 25] == 2 and labels[0, 31] == 0
    cov = coverage(labels, 2)
    assert 0 < cov[0] < 0.3 and abs(cov[0] - cov[1]) < 0.02


def test_object_without_signal_gets_no_pixels() -> None:
    raw = torch.stack([blob(8, 8), torch.full((16, 16), 0.3)])
    for method in ("fixed", "relative", "otsu"):
        labels, _ = masks_from_maps(raw, 16, method, 0.5)
        assert (labels == 2).sum() == 0 and (labels == 1).sum() > 0


def test_label_map_edge_cases() -> None:
    assert label_map(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (4, 4)
    with pytest.raises(ValueError, match="unknown threshold method"):
        passing(torch.ones(1, 2, 2), torch.ones(1, 2, 2), "mean", 0.5)
