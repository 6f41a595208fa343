"""The shards of a generated dataset: which samples each holds, which shards each worker writes, and the tar
members of a generated sample (the format itself: runtime/dataset_format.py)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from freeatm.runtime.dataset_format import IMAGE, MASK, RECORD, SOFT_MAPS, png_bytes, sample_key

from .sampler import Sample


def shard_indices(shard: int, shard_size: int, images: int) -> range:
    """Sample indices of `shard`."""
    return range(shard * shard_size, min((shard + 1) * shard_size, images))


def worker_shards(shards: int, workers: int, index: int) -> range:
    """The contiguous shard range of worker `index` of `workers` (sizes differ by at most one)."""
    if not 0 <= index < workers:
        raise ValueError(f"worker index {index} outside 0…{workers - 1}")
    return range(index * shards // workers, (index + 1) * shards // workers)


def sample_record(sample: Sample, modifiers: bool) -> dict[str, Any]:
    """The KEY.json record of a sample."""
    objects = []
    for k, obj in enumerate(sample.objects):
        record: dict[str, Any] = {
            "word": obj.word,
            "label": k + 1,
            "class": obj.cls,
            "modifiers": list(obj.modifiers),
            "tokenIndices": list(obj.tokens(modifiers)),
        }
        if sample.coverage:
            record["coverage"] = round(sample.coverage[k], 6)
        objects.append(record)
    out: dict[str, Any] = {
        "index": sample.index,
        "seed": sample.seed,
        "prompt": sample.prompt,
        "objects": objects,
    }
    if sample.coverage:
        out["maskCoverage"] = round(sample.mask_coverage, 6)
    return out


def sample_members(sample: Sample, modifiers: bool, soft_maps: bool) -> tuple[str, dict[str, bytes]]:
    """One sample as write_shard takes it: its key and its members, in a fixed order."""
    members = {IMAGE: png_bytes(sample.image)}
    if sample.labels is not None:
        members[MASK] = png_bytes(sample.labels)
    if soft_maps and sample.soft is not None:
        buffer = io.BytesIO()
        np.save(buffer, sample.soft.astype(np.float16), allow_pickle=False)
        members[SOFT_MAPS] = buffer.getvalue()
    record = json.dumps(sample_record(sample, modifiers), sort_keys=True, separators=(",", ":"))
    members[RECORD] = record.encode()
    return sample_key(sample.index), members
