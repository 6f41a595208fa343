"""The built-in locations: toy:// models and ShapesBench splits, random:// backbones. The runtime serves them
(runtime/generate/models.py, runtime/evaluate/datasets.py); a test keeps both lists equal."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from .common import check_int_query

TOY_MODELS = ("shapes", "shapes-clutter", "shapes-random")
SHAPESBENCH_SPLITS = ("train", "val", "test")
SHAPESBENCH_VARIANTS = ("plain", "clutter", "crowd")
SHAPESBENCH_PARAMS = ("variant", "images", "size")


def check_toy_model(uri: str) -> None:
    """toy://<model> names a built-in model."""
    parts = urlsplit(uri)
    if parts.scheme == "toy" and (parts.netloc not in TOY_MODELS or parts.path):
        raise ValueError(
            f"model URI {uri!r} is not a built-in model; toy:// has: "
            + ", ".join(f"toy://{m}" for m in TOY_MODELS)
        )


def check_toy_dataset(uri: str) -> None:
    """toy://shapesbench/<split>[?variant=…&images=N&size=S] names a split and variant that exist."""
    parts = urlsplit(uri)
    if parts.scheme != "toy":
        return
    splits = ", ".join(f"toy://shapesbench/{s}" for s in SHAPESBENCH_SPLITS)
    if parts.netloc != "shapesbench" or parts.path.strip("/") not in SHAPESBENCH_SPLITS:
        raise ValueError(f"benchmark dataset URI {uri!r} is not a ShapesBench split; toy:// has: {splits}")
    for variant in parse_qs(parts.query, keep_blank_values=True).get("variant", []):
        if variant not in SHAPESBENCH_VARIANTS:
            raise ValueError(
                f"benchmark dataset URI {uri!r}: variant {variant!r} is not one of "
                + ", ".join(SHAPESBENCH_VARIANTS)
            )
    check_int_query(uri, "images", 1)
    check_int_query(uri, "size", 16)
