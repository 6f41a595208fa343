"""``toy://shapes``: the project's own tiny pixel-space text-to-image model, trained on ShapesBench."""

from freeatm.runtime.toy.pipeline import (
    PixelTextToImagePipeline,
    build_random_pipeline,
    load_toy_pipeline,
    toy_model_dir,
)
from freeatm.runtime.toy.tokenizer import build_tokenizer

__all__ = [
    "PixelTextToImagePipeline",
    "build_random_pipeline",
    "build_tokenizer",
    "load_toy_pipeline",
    "toy_model_dir",
]
