"""A small valid synthetic dataset (docs/dataset-format.md) from ShapesBench scenes with their true masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from freeatm.runtime.shapesbench.study import write_shapes_dataset


def shapes_dataset(
    root: Path, images: int = 32, *, shard_size: int = 8, size: int = 32, **kwargs: Any
) -> str:
    """Write a dataset under `root` and return its file:// URI (kwargs: seed, masks, manifest)."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"file://{root}"
    write_shapes_dataset(uri, images, shard_size=shard_size, size=size, **kwargs)
    return uri


def pretrain_doc(
    dataset_uri: str,
    output_uri: str,
    *,
    framework: str = "contrastive",
    use_masks: bool = True,
    backbone: str | None = None,
    method: dict | None = None,
    **training: Any,
) -> dict[str, Any]:
    """A small MaskPretrainJob manifest (camelCase training overrides: epochs, batchSize, imageSize, …)."""
    return {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "MaskPretrainJob",
        "metadata": {"name": "test-pretrain"},
        "spec": {
            "dataset": {"uri": dataset_uri},
            "method": {"framework": framework, "useMasks": use_masks, **(method or {})},
            "backbone": backbone
            or "vit_tiny_patch8",  # 4×4 at 32 px: the smallest grid mask guidance accepts
            "training": {
                "epochs": 1,
                "batchSize": 8,
                "imageSize": 32,
                "checkpointEvery": 2,
                "loaderWorkers": 0,
                "lr": 1e-3,
                **training,
            },
            "output": {"uri": output_uri},
        },
    }


def pretrain_job(dataset_uri: str, output_uri: str, **kwargs: Any):  # -> MaskPretrainJob
    from freeatm.api import parse_resource

    return parse_resource(pretrain_doc(dataset_uri, output_uri, **kwargs))
