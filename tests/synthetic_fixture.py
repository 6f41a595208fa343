"""A small valid synthetic dataset (docs/dataset-format.md) from ShapesBench scenes with their true masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from freeatm.runtime.study import write_shapes_dataset


def shapes_dataset(
    root: Path, images: int = 32, *, shard_size: int = 8, size: int = 32, **kwargs: Any
) -> str:
    """Write a dataset under `root` and return its file:// URI (kwargs: seed, masks, manifest)."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"file://{root}"
    write_shapes_dataset(uri, images, shard_size=shard_size, size=size, **kwargs)
    return uri
