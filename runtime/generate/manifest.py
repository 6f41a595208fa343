"""manifest.json and the per-shard entries it is merged from (docs/dataset-format.md).

Every worker publishes, right after each shard's tar, a small entry ``shards/shard-NNNNN.json`` (name, samples,
sha256, bytes, specDigest, modelDigest). Entries are per shard, so concurrent workers never write the same key.
Whoever finds every entry present (normally the last worker to finish) reads the other workers' shards back,
checks each against its entry, and only then merges the entries into ``manifest.json``; the merge is a pure
function of the entries and the spec, so two workers merging at once write identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from freeatm.api.digest import spec_digest
from freeatm.api.synthetic_dataset import SyntheticDatasetSpec
from freeatm.runtime import dataset_format
from freeatm.runtime.dataset_format import MANIFEST, REPAIR, SHARD_DIR, entry_name, shard_name, shard_samples
from freeatm.runtime.errors import InvalidInput
from freeatm.runtime.storage import MissingKey, Store

from .shards import shard_indices

log = logging.getLogger("freeatm.generate")


def generation_digest(spec: SyntheticDatasetSpec) -> str:
    """The manifest's specDigest: the digest of what decides the images and masks, i.e. the model (URI,
    revision), prompts, generation and attention, not where the dataset is written nor by how many workers."""
    model = {"uri": spec.model.uri, "revision": spec.model.revision}
    relevant = {
        "model": model,
        "prompts": spec.prompts.to_wire(),
        "generation": spec.generation.to_wire(),
        "attention": spec.attention.to_wire(),
    }
    return spec_digest(relevant)


def generator_version() -> str:
    try:
        return metadata.version("freeatm")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class DatasetContext:
    """What identifies the dataset being written: its spec and its model."""

    spec: SyntheticDatasetSpec
    spec_digest: str
    model: dict[str, str]  # uri, class, digest
    classes: list[str]

    def entry(self, shard: int, samples: int, sha256: str, size: int) -> dict[str, Any]:
        return {
            "name": shard_name(shard),
            "samples": samples,
            "sha256": sha256,
            "bytes": size,
            "specDigest": self.spec_digest,
            "modelDigest": self.model["digest"],
        }

    def matches(self, entry: dict[str, Any]) -> bool:
        return (
            entry.get("specDigest") == self.spec_digest and entry.get("modelDigest") == self.model["digest"]
        )


def read_entry(store: Store, shard: int) -> dict[str, Any] | None:
    try:
        return json.loads(store.read_bytes(entry_name(shard)))
    except MissingKey:
        return None
    except json.JSONDecodeError:
        return None  # a torn entry (should not happen: writes are atomic) counts as missing


def done_entry(store: Store, ctx: DatasetContext, shard: int) -> dict[str, Any] | None:
    """The shard's entry when the shard is complete for this dataset; InvalidInput when it belongs to another."""
    entry = read_entry(store, shard)
    if entry is None:
        return None
    if not ctx.matches(entry):
        raise InvalidInput(
            f"{store.url(entry_name(shard))} was generated from a different spec or model "
            f"({entry.get('specDigest')}, model {entry.get('modelDigest')}); write to a new output URI or delete "
            "the old dataset"
        )
    return entry if store.exists(entry["name"]) else None


def intact(store: Store, entry: dict[str, Any]) -> bool:
    """Whether the shard's tar, read back, matches its entry; a mismatch is logged as a warning."""
    try:
        shard_samples(store, entry)
    except InvalidInput as e:
        log.warning("regenerating %s: %s", store.url(entry["name"]), str(e).removesuffix(f"; {REPAIR}"))
        return False
    return True


def intact_entry(store: Store, ctx: DatasetContext, shard: int) -> dict[str, Any] | None:
    """done_entry, once the shard's tar is read back and matches it: a corrupt shard counts as not done, so a
    rerun regenerates it instead of keeping it under its stale digest."""
    entry = done_entry(store, ctx, shard)
    return entry if entry is not None and intact(store, entry) else None


def check_existing_manifest(store: Store, ctx: DatasetContext) -> dict[str, Any] | None:
    """The existing manifest when it describes this dataset; InvalidInput when it describes another."""
    try:
        manifest = json.loads(store.read_bytes(MANIFEST))
    except MissingKey:
        return None
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{store.url(MANIFEST)} exists but is not JSON") from e
    if (
        manifest.get("specDigest") != ctx.spec_digest
        or manifest.get("model", {}).get("digest") != ctx.model["digest"]
    ):
        raise InvalidInput(
            f"{store.url(MANIFEST)} describes a dataset generated from a different spec or model; write to a new "
            "output URI or delete the old dataset"
        )
    return manifest


def build_manifest(ctx: DatasetContext, entries: list[dict[str, Any]]) -> dict[str, Any]:
    spec = ctx.spec
    g, a = spec.generation, spec.attention
    return dataset_format.build_manifest(
        spec_digest=ctx.spec_digest,
        images=g.images,
        resolution=g.resolution,
        mask_resolution=a.mask_resolution or g.resolution,
        shard_size=g.shard_size,
        has_masks=True,
        has_soft_maps=a.keep_soft_maps,
        classes=ctx.classes,
        shards=entries,
        generator={
            "name": "freeatm",
            "version": generator_version(),
            "scheduler": g.scheduler,
            "steps": g.steps,
            "guidanceScale": g.guidance_scale,
            "dtype": g.dtype,
            "seed": g.seed,
            "attention": a.to_wire(),
        },
        model=ctx.model,
    )


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


@dataclass
class Completion:
    """What try_finalize found: the manifest's digest once it is published; otherwise the shards whose entries
    are recorded but whose tars do not match them (none while some shard is still being generated)."""

    digest: str | None = None
    corrupt: list[int] = field(default_factory=list)


def try_finalize(store: Store, ctx: DatasetContext, verified: Collection[int] = ()) -> Completion:
    """Merge the shard entries into manifest.json when every shard is done and its tar, read back, matches its
    entry (the shards in `verified` were checked by the caller already: not read again).

    Idempotent: the manifest's bytes depend only on the entries and the spec, and it is rewritten only when
    different from what is there. Nothing is published while a shard is corrupt.
    """
    n = ctx.spec.shards()
    present = {k for k in store.list(SHARD_DIR + "/") if k.endswith(".json")}
    if len(present) < n:
        return Completion()
    entries, corrupt = [], []
    for shard in range(n):
        entry = done_entry(store, ctx, shard)
        if entry is None:
            return Completion()
        expected = len(shard_indices(shard, ctx.spec.generation.shard_size, ctx.spec.generation.images))
        if entry["samples"] != expected:
            return Completion()
        entries.append(entry)
    for shard, entry in enumerate(entries):
        if shard not in verified and not intact(store, entry):
            corrupt.append(shard)
    if corrupt:
        return Completion(corrupt=corrupt)
    data = manifest_bytes(build_manifest(ctx, entries))
    try:
        current = store.read_bytes(MANIFEST)
    except MissingKey:
        current = None
    if current != data:
        store.write_bytes(MANIFEST, data)
    return Completion(digest="sha256:" + hashlib.sha256(data).hexdigest())
