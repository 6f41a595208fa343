"""``freeatm-runtime generate``: a SyntheticDataset's images, their free attention masks, shards and manifest.

One worker (pod ``JOB_COMPLETION_INDEX`` of ``spec.workers``) generates a contiguous range of shards:

1. check that the output is writable, read the prompts, load the model (:mod:`.models`);
2. for each of its shards whose entry is not yet recorded: generate the shard's samples batch by batch with
   attention capture (:mod:`.sampler`, :mod:`.capture`, :mod:`.masks`), write the tar to a local temporary
   file, publish it atomically through the storage module, then publish its entry (:mod:`.shards`);
3. when every shard's entry is there, read the other workers' shards back (regenerating one found corrupt)
   and merge the entries into ``manifest.json`` (:mod:`.manifest`).

A rerun (a retried pod) skips the shards whose entries are recorded and whose tars match them (a corrupt one is
regenerated); a killed worker leaves at most a temporary file behind, never a partial shard under its final
name. Each sample's seed derives from the dataset seed and its index, so a shard regenerates identically.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from freeatm.api import SyntheticDataset
from freeatm.runtime import metrics
from freeatm.runtime.dataset_format import entry_name, shard_name, write_shard
from freeatm.runtime.errors import InvalidInput
from freeatm.runtime.progress import ProgressReporter, reporter
from freeatm.runtime.storage import Store, open_store

from .families import FamilyPipeline
from .manifest import DatasetContext, check_existing_manifest, generation_digest, intact_entry, try_finalize
from .models import load_pipeline
from .prompts import PromptSource, check_source, prompt_source
from .sampler import Sampler, sample_seed
from .shards import sample_members, shard_indices, worker_shards

log = logging.getLogger("freeatm.generate")

__all__ = ["run", "generate_dataset"]


def worker_index(workers: int) -> int:
    """This pod's index among the workers: JOB_COMPLETION_INDEX of the Indexed Job (0 outside one)."""
    raw = os.environ.get("JOB_COMPLETION_INDEX", "0")
    try:
        index = int(raw)
    except ValueError as e:
        raise InvalidInput(f"JOB_COMPLETION_INDEX={raw!r} is not an integer") from e
    if not 0 <= index < workers:
        raise InvalidInput(f"JOB_COMPLETION_INDEX={index} is outside the {workers} worker(s) of the spec")
    return index


def _check_writable(store: Store, index: int) -> None:
    """Fail before loading the model when the output cannot be written: the storage module raises InvalidInput
    for what retrying cannot fix (permissions, a read-only or wrong path, a missing bucket, denied access)."""
    key = f"shards/.write-check-{index}"
    store.write_bytes(key, b"ok")
    store.delete(key)


def run(resource: SyntheticDataset) -> dict[str, Any]:
    """Generate this worker's shards; ``{"uri", "manifestDigest"}`` once the whole dataset is complete."""
    return generate_dataset(resource)


def generate_dataset(resource: SyntheticDataset, worker: int | None = None) -> dict[str, Any]:
    spec = resource.spec
    g, a = spec.generation, spec.attention
    workers = spec.workers
    index = worker_index(workers) if worker is None else worker
    store = open_store(spec.output.uri)
    _check_writable(store, index)

    source = prompt_source(spec.prompts, g.seed, g.resolution)
    model = load_pipeline(spec.model.uri, spec.model.revision, g.dtype)
    check_source(source, FamilyPipeline.of(model.pipe).text())
    ctx = DatasetContext(spec, generation_digest(spec), model.identity(), source.classes)
    check_existing_manifest(store, ctx)

    mine = worker_shards(spec.shards(), workers, index)
    todo = [s for s in mine if intact_entry(store, ctx, s) is None]
    total = sum(len(shard_indices(s, g.shard_size, g.images)) for s in mine)
    done = total - sum(len(shard_indices(s, g.shard_size, g.images)) for s in todo)
    log.info(
        "worker %d/%d: shards %d–%d, %d to generate (%d already done), on %s in %s",
        index, workers, mine.start, mine.stop - 1, len(todo), len(mine) - len(todo), model.pipe.device, g.dtype,
    )  # fmt: skip
    progress = reporter(total, "images")
    progress.update(done, images=done, force=True)

    with Sampler(model.pipe, g, a, spec.prompts.negative_prompt) as sampler:
        for shard in todo:
            done += _generate_shard(store, ctx, sampler, source, shard, progress, done, total)
        # This worker's shards are verified or fresh; try_finalize reads the others back before publishing.
        # It repairs one found corrupt here: its owner is done, and a shard regenerates identically anywhere.
        completion = try_finalize(store, ctx, verified=mine)
        if completion.corrupt:
            for shard in completion.corrupt:
                progress.total = total = total + len(shard_indices(shard, g.shard_size, g.images))
                done += _generate_shard(store, ctx, sampler, source, shard, progress, done, total)
            completion = try_finalize(store, ctx, verified=range(spec.shards()))

    outputs: dict[str, Any] = {"uri": spec.output.uri}
    if completion.digest is not None:
        outputs["manifestDigest"] = completion.digest
        log.info("dataset complete: %s (%s)", spec.output.uri, completion.digest)
    else:
        log.info("worker %d done; the manifest is written by the worker that completes the dataset", index)
    return outputs


def _generate_shard(
    store: Store,
    ctx: DatasetContext,
    sampler: Sampler,
    source: PromptSource,
    shard: int,
    progress: ProgressReporter,
    done: int,
    total: int,
) -> int:
    """Generate one shard into a local temporary tar (streamed batch by batch), publish it, then its entry."""
    spec = ctx.spec
    g, a = spec.generation, spec.attention
    indices = list(shard_indices(shard, g.shard_size, g.images))

    def samples() -> Iterator[tuple[str, dict[str, bytes]]]:
        for start in range(0, len(indices), g.batch_size):
            batch = indices[start : start + g.batch_size]
            began = time.perf_counter()
            items = [source.item(i) for i in batch]
            samples = sampler.generate(items, batch, [sample_seed(g.seed, i) for i in batch])
            seconds = (time.perf_counter() - began) / len(batch)
            for sample in samples:
                yield sample_members(sample, a.modifiers, a.keep_soft_maps)
                metrics.SECONDS_PER_IMAGE.observe(seconds)
                metrics.MASK_COVERAGE.observe(sample.mask_coverage)
            metrics.IMAGES_GENERATED.inc(len(batch))
            progress.update(done + start + len(batch), images=done + start + len(batch))

    with tempfile.TemporaryDirectory(prefix="freeatm-shard-") as tmp:
        path = Path(tmp) / "shard.tar"
        with path.open("wb") as f:
            sha256, size = write_shard(f, samples())
        entry = ctx.entry(shard, len(indices), sha256, size)
        store.upload(path, shard_name(shard))  # atomic: visible only once complete
    store.write_bytes(entry_name(shard), json.dumps(entry, sort_keys=True).encode())
    log.info("published %s (%d samples)", store.url(shard_name(shard)), len(indices))
    return len(indices)
