"""How well a ShapesBench text-to-image model draws what its captions ask for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from freeatm.runtime.shapes import find_drawn_objects, parse_caption, render
from freeatm.runtime.toy.pipeline import PixelTextToImagePipeline

EVAL_STREAM = 999_999
"""Scene stream (``render_scene`` seed) whose captions serve as evaluation prompts."""


def eval_captions(count: int, variant: str = "plain") -> list[str]:
    """The first ``count`` evaluation captions of `variant` (ShapesBench stream :data:`EVAL_STREAM`)."""
    return [render(EVAL_STREAM, i, variant=variant).caption for i in range(count)]


def generate(
    pipe: PixelTextToImagePipeline,
    captions: Sequence[str],
    seed: int = 0,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.0,
    batch_size: int = 32,
) -> np.ndarray:
    """uint8 images (N x H x W x 3) for ``captions``; image ``i`` draws its noise from seed ``seed + i``."""
    images = []
    for start in range(0, len(captions), batch_size):
        batch = list(captions[start : start + batch_size])
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(batch))]
        out = pipe(
            batch,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="np",
        ).images
        images.append(np.round(out * 255).astype(np.uint8))
    return np.concatenate(images)


def drawn_object_share(images: np.ndarray, captions: Sequence[str], variant: str = "plain") -> float:
    """Share of the objects named by ``captions`` (of `variant`) that the matching ``images`` actually show."""
    drawn = [
        found.drawn
        for image, caption in zip(images, captions, strict=True)
        for found in find_drawn_objects(image, parse_caption(caption, variant), variant=variant)
    ]
    return sum(drawn) / len(drawn)


def save_grid(images: np.ndarray, path: Path, columns: int = 8, scale: int = 4) -> None:
    """Write ``images`` (N x H x W x 3 uint8) as one PNG grid, enlarged ``scale`` times."""
    count, height, width, _ = images.shape
    rows = -(-count // columns)
    grid = np.full((rows * (height + 1), columns * (width + 1), 3), 128, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        grid[r * (height + 1) : r * (height + 1) + height, c * (width + 1) : c * (width + 1) + width] = image
    picture = Image.fromarray(grid)
    picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).save(path)
