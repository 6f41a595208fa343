"""The synthetic dataset format, ``freeatm.synthetic/v1`` (docs/dataset-format.md): its names, the manifest's
schema, the one writer and the one reader of its tar shards.

A dataset is ``manifest.json`` plus ``shards/shard-NNNNN.tar`` (with a ``shards/shard-NNNNN.json`` entry per
shard). A shard holds samples keyed by their zero-padded index; each sample has the members IMAGE, MASK
(optional), SOFT_MAPS (optional) and RECORD.

Writing. `write_shard` writes tar members with fixed metadata (USTAR headers, mtime 0, uid/gid 0, mode 0644,
no owner names) in the order the caller gives, and hashes the bytes as they are written, so a shard's bytes —
and its sha256 — depend only on its samples. It uses tarfile, not ``webdataset.TarWriter``: TarWriter writes a
sample's members sorted by extension (``json`` before ``png``), which would change the bytes and digests of
every dataset already written.

Reading. Every consumer (training, evaluation, generation deciding whether a shard is done) reads shards
through `verified_samples`, on webdataset's tar iterators. The bytes are hashed as tarfile reads them, the tail
after the end-of-archive marker included, so the sha256 and size are checked without a second pass; the sample
count is checked too, because tarfile ends a stream quietly at a bad header. A shard's samples are released
only once it checks, so nothing of a corrupt shard is ever trained on.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from .errors import InvalidInput, RuntimeFailure, TransientError
from .storage import MissingKey, Store

FORMAT = "freeatm.synthetic/v1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
IMAGE, MASK, SOFT_MAPS, RECORD = "png", "mask.png", "soft.npy", "json"  # a sample's members, by extension
SHARD_FIELDS = ("name", "samples", "sha256", "bytes")  # what the manifest lists per shard
REPAIR = "rerun the dataset's generation: it regenerates the shards that do not match the manifest"


def shard_name(shard: int) -> str:
    return f"{SHARD_DIR}/shard-{shard:05d}.tar"


def entry_name(shard: int) -> str:
    return f"{SHARD_DIR}/shard-{shard:05d}.json"


def sample_key(index: int) -> str:
    return f"{index:08d}"


def png_bytes(array: np.ndarray) -> bytes:
    """A PNG of `array` without timestamps (its bytes depend on the pixels only)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def build_manifest(
    *,
    spec_digest: str,
    images: int,
    resolution: int,
    mask_resolution: int,
    shard_size: int,
    has_masks: bool,
    has_soft_maps: bool,
    classes: list[str],
    shards: Iterable[Mapping[str, Any]],
    generator: dict[str, Any],
    model: dict[str, Any],
) -> dict[str, Any]:
    """manifest.json's document; `shards` are the shard entries, of which it lists SHARD_FIELDS."""
    return {
        "format": FORMAT,
        "specDigest": spec_digest,
        "images": images,
        "resolution": resolution,
        "maskResolution": mask_resolution,
        "shardSize": shard_size,
        "hasMasks": has_masks,
        "hasSoftMaps": has_soft_maps,
        "classes": classes,
        "shards": [{k: entry[k] for k in SHARD_FIELDS} for entry in shards],
        "generator": generator,
        "model": model,
    }


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """`manifest` (read from `where`) when it is a manifest document of this format; InvalidInput otherwise."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise InvalidInput(f"{where}: not a synthetic dataset: format {got!r} is not {FORMAT!r}")
    return manifest


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """The manifest document in `raw` (read from `where`); InvalidInput unless it is JSON of this format."""
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{where} is not valid JSON: {e}") from e
    return check_manifest(manifest, where)


class _Digesting:
    """A stream that hashes and counts the bytes read or written through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:  # tarfile asks where the archive starts
        return self.size


def write_shard(stream: IO[bytes], samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> tuple[str, int]:
    """Write the shard of `samples` ((key, {extension: member bytes}), members in the order given) to `stream`;
    its (sha256 hex digest, size in bytes)."""
    out = _Digesting(stream)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[call-overload]
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return out.sha256.hexdigest(), out.size


def verified_samples(
    stream: IO[bytes], entry: Mapping[str, Any], shard_uri: str, dataset_uri: str
) -> list[dict[str, Any]]:
    """The undecoded samples ({"__key__", "__url__", "png", "mask.png", "json", …}) of the shard `stream`,
    in order, once its bytes match `entry` (the manifest's sha256, bytes and samples); InvalidInput naming the
    shard and the dataset otherwise."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    where = f"shard {shard_uri} of dataset {dataset_uri}"
    expected = entry.get("sha256")
    if not isinstance(expected, str):
        raise InvalidInput(f"{where}: the manifest gives no sha256 for it")
    reader = _Digesting(stream)
    try:
        samples = list(group_by_keys(tar_file_expander([{"stream": reader, "url": shard_uri}])))
        while reader.read(1 << 20):
            pass  # the end-of-archive blocks and whatever tarfile left unread: all part of the digest
    except OSError as e:
        raise TransientError(f"reading {where} failed: {e}") from e
    except RuntimeFailure:
        raise  # the storage's own TransientError: a read that failed, not a corrupt tar
    except Exception as e:  # a corrupt tar; the digest below would say so too, less precisely
        reason = str(e.args[0]).split(" @ ")[0] if e.args else ""  # webdataset appends its stream and URL
        raise InvalidInput(
            f"{where} is corrupt: not a readable tar ({type(e).__name__}: {reason}); {REPAIR}"
        ) from e
    got = reader.sha256.hexdigest()
    if got != expected or reader.size != entry.get("bytes", reader.size):
        raise InvalidInput(
            f"{where} is corrupt: sha256 {got} ({reader.size} bytes) where the manifest lists {expected} "
            f"({entry.get('bytes')} bytes); {REPAIR}"
        )
    if len(samples) != entry.get("samples", len(samples)):
        raise InvalidInput(
            f"{where} holds {len(samples)} samples where the manifest lists {entry['samples']}; {REPAIR}"
        )
    return samples


def shard_samples(store: Store, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """verified_samples of the shard `entry` (a manifest or shard entry) names in `store`, streamed from it."""
    name = entry["name"]
    try:
        stream = store.open_read(name)
    except MissingKey as e:
        raise InvalidInput(f"shard {store.url(name)} of dataset {store.uri} does not exist; {REPAIR}") from e
    with stream:
        return verified_samples(stream, entry, store.url(name), store.uri)


@dataclass
class ReadSample:
    """A sample read back from a shard (tests and tools; training decodes only what it needs, pretrain/data.py)."""

    key: str
    image: np.ndarray
    mask: np.ndarray | None
    soft: np.ndarray | None
    record: dict[str, Any]


def read_shard(store: Store, entry: Mapping[str, Any]) -> list[ReadSample]:
    """The decoded samples of the shard `entry` describes, in order, read through `shard_samples`: InvalidInput
    naming the shard when it does not match `entry`, or naming the sample when one of its members does not
    decode."""
    from PIL import Image

    samples = []
    for parts in shard_samples(store, entry):
        key = parts["__key__"]
        try:
            image = np.asarray(Image.open(io.BytesIO(parts[IMAGE])).convert("RGB"))
            mask = np.asarray(Image.open(io.BytesIO(parts[MASK]))) if MASK in parts else None
            soft = np.load(io.BytesIO(parts[SOFT_MAPS]), allow_pickle=False) if SOFT_MAPS in parts else None
            record = json.loads(parts[RECORD])
        except (KeyError, OSError, ValueError) as e:
            raise InvalidInput(
                f"sample {key} in {store.url(entry['name'])} does not decode: {type(e).__name__}: {e}"
            ) from e
        samples.append(ReadSample(key, image, mask, soft, record))
    return samples
