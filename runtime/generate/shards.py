"""WebDataset shards of generated samples (docs/dataset-format.md): writing, reading, the worker split.

Tar members are written with fixed metadata (mtime 0, uid/gid 0, mode 0644, no owner names) and PNGs
without timestamps, so a shard's bytes — and its sha256 — depend only on its samples.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from freeatm.runtime.errors import InvalidInput
from freeatm.runtime.shard_reader import verified_samples
from freeatm.runtime.storage import Store

from .sampler import Sample

SHARD_DIR = "shards"


def shard_name(shard: int) -> str:
    return f"{SHARD_DIR}/shard-{shard:05d}.tar"


def entry_name(shard: int) -> str:
    return f"{SHARD_DIR}/shard-{shard:05d}.json"


def shard_indices(shard: int, shard_size: int, images: int) -> range:
    """Sample indices of `shard`."""
    return range(shard * shard_size, min((shard + 1) * shard_size, images))


def worker_shards(shards: int, workers: int, index: int) -> range:
    """The contiguous shard range of worker `index` of `workers` (sizes differ by at most one)."""
    if not 0 <= index < workers:
        raise ValueError(f"worker index {index} outside 0…{workers - 1}")
    return range(index * shards // workers, (index + 1) * shards // workers)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


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


def sample_members(sample: Sample, modifiers: bool, soft_maps: bool) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in a fixed order."""
    key = f"{sample.index:08d}"
    members = [(f"{key}.png", png_bytes(sample.image))]
    if sample.labels is not None:
        members.append((f"{key}.mask.png", png_bytes(sample.labels)))
    if soft_maps and sample.soft is not None:
        buffer = io.BytesIO()
        np.save(buffer, sample.soft.astype(np.float16), allow_pickle=False)
        members.append((f"{key}.soft.npy", buffer.getvalue()))
    record = json.dumps(sample_record(sample, modifiers), sort_keys=True, separators=(",", ":"))
    members.append((f"{key}.json", record.encode()))
    return members


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """A deterministic tar file of `members` at `path`."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ReadSample:
    """A sample read back from a shard (tests and tools; training decodes only what it needs, pretrain/data.py)."""

    key: str
    image: np.ndarray
    mask: np.ndarray | None
    soft: np.ndarray | None
    record: dict[str, Any]


def read_shard(store: Store, entry: dict[str, Any]) -> list[ReadSample]:
    """The decoded samples of the shard `entry` (a manifest or shard entry) describes, in order, read through
    the verifying reader (runtime/shard_reader.py): InvalidInput naming the shard when it does not match
    `entry`, or naming the sample when one of its members does not decode."""
    name = entry["name"]
    raw = verified_samples(io.BytesIO(store.read_bytes(name)), entry, store.url(name), store.uri)
    samples = []
    for parts in raw:
        key = parts["__key__"]
        try:
            image = np.asarray(Image.open(io.BytesIO(parts["png"])).convert("RGB"))
            mask = np.asarray(Image.open(io.BytesIO(parts["mask.png"]))) if "mask.png" in parts else None
            soft = np.load(io.BytesIO(parts["soft.npy"]), allow_pickle=False) if "soft.npy" in parts else None
            record = json.loads(parts["json"])
        except (KeyError, OSError, ValueError) as e:
            raise InvalidInput(
                f"sample {key} in {store.url(name)} does not decode: {type(e).__name__}: {e}"
            ) from e
        samples.append(ReadSample(key, image, mask, soft, record))
    return samples
