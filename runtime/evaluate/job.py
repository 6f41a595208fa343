"""Run an EvalJob: every benchmark on every checkpoint, resumable, then the report.

Read top to bottom: load every checkpoint (bad ones fail before any work), open the datasets of the benchmarks
that still have work and check that every text tower can encode their text (bad data fails before any
training), run each (checkpoint, benchmark) pair whose result file is missing or stale, write its result file
at once (a restarted pod skips it), then write the report.

Output layout::

    <output>/runs/<checkpoint>/<benchmark>.json   one run: digest, scores, settings, seconds
    <output>/results.json                         every checkpoint, benchmark and score
    <output>/report.md, <output>/plots/scores.png
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import torch

from freeatm.api import EvalJob
from freeatm.api.digest import spec_digest
from freeatm.api.eval_job import Benchmark

from ..errors import InvalidInput
from ..metrics import EVAL_BENCHMARKS_DONE, EVAL_SCORE, EVAL_SECONDS
from ..progress import reporter
from ..storage import MissingKey, Store, open_store
from .classification import run_knn, run_linear_probe
from .common import Checkpoint, Settings, load_checkpoint, pick_device
from .datasets import SHAPES_SEEDS, Split, Task, check_same_classes, open_split
from .detection import run_detection
from .objects import run_object_probe, run_presence
from .report import write_report
from .retrieval import run_retrieval
from .scores import require_coco_tools
from .segmentation import run_semseg
from .text_tower import NO_TEXT_TOWER, check_encodable, run_grounding, run_zero_shot

log = logging.getLogger("freeatm.evaluate")

EVAL_VERSION = 2  # bump when a protocol or a run file changes so that old result files are recomputed

Protocol = Callable[[Checkpoint, Split, Split, Settings], dict[str, float]]
PROTOCOLS: dict[str, tuple[Task, Protocol]] = {
    "linear-probe": ("classification", run_linear_probe),
    "knn": ("classification", run_knn),
    "semseg": ("segmentation", run_semseg),
    "detection": ("detection", run_detection),
    "retrieval": ("retrieval", run_retrieval),
    "object-probe": ("objects", run_object_probe),
    "presence": ("objects", run_presence),
    "zero-shot": ("objects", run_zero_shot),
    "grounding": ("objects", run_grounding),
}
# The protocols that only a checkpoint with a text tower can run (text_tower.py).
NEEDS_TEXT_TOWER = ("zero-shot", "grounding")
# (epochs, lr) when the benchmark leaves them unset: fast on CPU at toy sizes, sensible beyond.
DEFAULTS: dict[str, tuple[int, float]] = {
    "linear-probe": (100, 1e-2),
    "knn": (1, 0.0),
    "semseg": (30, 1e-2),
    "detection": (12, 2e-2),
    "retrieval": (40, 3e-3),
    "object-probe": (100, 1e-2),
    "presence": (100, 1e-2),
    "zero-shot": (1, 0.0),
    "grounding": (1, 0.0),
}

# The parameters each protocol uses (what the report shows).
SHOWN_SETTINGS: dict[str, tuple[str, ...]] = {
    "linear-probe": ("epochs", "lr", "batchSize", "imageSize"),
    "knn": ("batchSize", "imageSize", "k"),
    "semseg": ("epochs", "lr", "batchSize", "imageSize", "finetune"),
    "detection": ("epochs", "lr", "batchSize", "imageSize", "finetune"),
    "retrieval": ("epochs", "lr", "batchSize", "imageSize", "k"),
    "object-probe": ("epochs", "lr", "batchSize", "imageSize"),
    "presence": ("epochs", "lr", "batchSize", "imageSize"),
    "zero-shot": ("batchSize", "imageSize"),
    "grounding": ("batchSize", "imageSize"),
}


def settings_for(bench: Benchmark, ckpt: Checkpoint) -> Settings:
    epochs, lr = DEFAULTS[bench.name]
    size = bench.image_size or int(ckpt.metadata.get("imageSize") or ckpt.backbone.image_size)
    return Settings(
        epochs=bench.epochs or epochs,
        lr=bench.lr or lr,
        batch_size=bench.batch_size,
        image_size=size,
        k=bench.k,
        finetune=bench.finetune,
    )


def splits_of(bench: Benchmark) -> tuple[str, str]:
    """(train split, scored split). toy://shapesbench/<split> names the scored split in its path."""
    ds = bench.dataset
    if ds.format == "shapes":
        path = urlsplit(ds.uri).path.strip("/")
        if path and path in SHAPES_SEEDS and ds.val_split == "val":
            return ds.train_split, path
    return ds.train_split, ds.val_split


def slug(text: str) -> str:
    """A file-name-safe, collision-free form of a label."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:48] or "x"
    return clean if clean == text else f"{clean}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def text_side(bench: Benchmark, ckpt: Checkpoint) -> str | None:
    """What the report says about the text side of a run: which tower scored retrieval, or that a text-tower
    protocol has nothing to score on an image-only checkpoint; None when the protocol reads no text."""
    if bench.name == "retrieval":
        return "own text tower" if ckpt.dual_encoder is not None else "LiT: text tower learnt here"
    if bench.name in NEEDS_TEXT_TOWER and ckpt.dual_encoder is None:
        return NO_TEXT_TOWER
    return None


def check_text_towers(benchmarks: list[Benchmark], checkpoints: list[Checkpoint]) -> None:
    """A text-tower benchmark needs at least one checkpoint with a text tower."""
    if any(c.dual_encoder is not None for c in checkpoints):
        return
    asked = [b.key() for b in benchmarks if b.name in NEEDS_TEXT_TOWER]
    if asked:
        raise InvalidInput(
            f"benchmark {', '.join(asked)} needs a checkpoint with a text tower (a MaskPretrainJob with "
            f"method.framework vlp); none of {', '.join(c.label for c in checkpoints)} has one"
        )


def run_digest(ckpt: Checkpoint, bench: Benchmark) -> str:
    return spec_digest(
        {"version": EVAL_VERSION, "checkpoint": ckpt.fingerprint, "benchmark": bench.to_wire()}
    )


def run_key(ckpt: Checkpoint, bench: Benchmark) -> str:
    return f"runs/{slug(ckpt.label)}/{bench.key()}.json"


def finished_run(store: Store, key: str, digest: str) -> dict[str, Any] | None:
    """The stored run under `key` when it was computed for `digest`."""
    try:
        doc = json.loads(store.read_bytes(key))
    except (MissingKey, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return (
        doc
        if isinstance(doc, dict) and doc.get("digest") == digest and isinstance(doc.get("scores"), dict)
        else None
    )


def open_benchmark(bench: Benchmark) -> tuple[Split, Split]:
    task = PROTOCOLS[bench.name][0]
    train_name, val_name = splits_of(bench)
    ds = bench.dataset
    train = open_split(ds.format, ds.uri, train_name, task, bench.max_images)
    val = open_split(ds.format, ds.uri, val_name, task, bench.max_images)
    if task != "retrieval":
        check_same_classes(train, val)
    return train, val


def run(resource: EvalJob) -> dict[str, Any]:
    spec = resource.spec
    if any(bench.name == "detection" for bench in spec.benchmarks):
        require_coco_tools()
    store = open_store(spec.output.uri)
    checkpoints = []
    for source in spec.checkpoints:
        if source.uri is None:
            raise InvalidInput(f"checkpoint {source.name()}: ref {source.ref!r} was not resolved to a URI")
        checkpoints.append(load_checkpoint(source.name(), source.uri))
    check_text_towers(spec.benchmarks, checkpoints)

    pending = {
        bench.key(): {
            c.label for c in checkpoints if not finished_run(store, run_key(c, bench), run_digest(c, bench))
        }
        for bench in spec.benchmarks
    }
    data = {bench.key(): open_benchmark(bench) for bench in spec.benchmarks if pending[bench.key()]}
    for bench in spec.benchmarks:
        if bench.name in ("retrieval", *NEEDS_TEXT_TOWER):
            for ckpt in checkpoints:
                if ckpt.dual_encoder is not None and ckpt.label in pending[bench.key()]:
                    check_encodable(ckpt, bench.name, data[bench.key()][1])

    total = len(checkpoints) * len(spec.benchmarks)
    progress = reporter(total, "benchmarks")
    done = total - sum(len(p) for p in pending.values())
    progress.update(
        done,
        force=True,
        benchmarksDone=done,
        message=f"{done} of {total} already done" if done else "starting",
    )
    runs: list[dict[str, Any]] = []
    for bench in spec.benchmarks:
        for ckpt in checkpoints:
            key, digest = run_key(ckpt, bench), run_digest(ckpt, bench)
            if ckpt.label not in pending[bench.key()]:
                result = finished_run(store, key, digest)
                assert result is not None
                log.info("%s on %s: done before, skipped", bench.key(), ckpt.label)
            else:
                progress.update(
                    done, force=True, benchmarksDone=done, message=f"{bench.key()} on {ckpt.label}"
                )
                result = _run_one(ckpt, bench, *data[bench.key()], digest)
                store.write_bytes(key, json.dumps(result, indent=2).encode())
                done += 1
                EVAL_BENCHMARKS_DONE.inc()
                progress.update(done, benchmarksDone=done, message=f"{bench.key()} on {ckpt.label} done")
            for metric, value in result["scores"].items():
                EVAL_SCORE.labels(checkpoint=ckpt.label, benchmark=bench.key(), metric=metric).set(value)
            runs.append(result)

    rows = [
        {"checkpoint": r["checkpoint"], "benchmark": r["benchmark"], "metric": m, "value": round(float(v), 6)}
        for r in runs
        for m, v in r["scores"].items()
    ]
    ckpt_docs = [
        {"label": c.label, "uri": c.uri, "description": c.describe(), "metadata": c.metadata}
        for c in checkpoints
    ]
    bench_docs = []
    for bench in spec.benchmarks:
        first = next(r for r in runs if r["benchmark"] == bench.key())
        bench_docs.append(
            {
                "id": bench.key(),
                "protocol": bench.name,
                "format": bench.dataset.format,
                "uri": bench.dataset.uri,
                "settings": first["settings"],
                "trainImages": first["trainImages"],
                "valImages": first["valImages"],
            }
        )
    report_uri = write_report(store, resource.metadata.name, ckpt_docs, bench_docs, rows, runs)
    progress.update(total, force=True, benchmarksDone=total, message="report written")
    return {"uri": spec.output.uri, "reportUri": report_uri, "results": rows}


def _run_one(ckpt: Checkpoint, bench: Benchmark, train: Split, val: Split, digest: str) -> dict[str, Any]:
    settings = settings_for(bench, ckpt)
    log.info(
        "%s on %s: %d train / %d val images on %s, %s",
        bench.key(), ckpt.label, len(train), len(val), pick_device(), settings,
    )  # fmt: skip
    torch.manual_seed(settings.seed)
    start = time.monotonic()
    note = text_side(bench, ckpt)
    try:
        scores = {} if note == NO_TEXT_TOWER else PROTOCOLS[bench.name][1](ckpt, train, val, settings)
    except torch.OutOfMemoryError as e:  # a retry on the same machine cannot help
        raise InvalidInput(
            f"benchmark {bench.key()} on checkpoint {ckpt.label} ran out of memory at batchSize "
            f"{settings.batch_size}, imageSize {settings.image_size}: lower them or set maxImages"
        ) from e
    seconds = time.monotonic() - start
    EVAL_SECONDS.labels(protocol=bench.name).observe(seconds)
    all_settings = {
        "epochs": settings.epochs,
        "lr": settings.lr,
        "batchSize": settings.batch_size,
        "imageSize": settings.image_size,
        "k": settings.k,
        "finetune": settings.finetune,
    }
    log.info("%s on %s: %s (%.1f s)", bench.key(), ckpt.label, scores or note, seconds)
    result: dict[str, Any] = {
        "checkpoint": ckpt.label,
        "checkpointUri": ckpt.uri,
        "benchmark": bench.key(),
        "protocol": bench.name,
        "digest": digest,
        "scores": {k: float(v) for k, v in scores.items()},
        "settings": {k: v for k, v in all_settings.items() if k in SHOWN_SETTINGS[bench.name]},
        "trainImages": len(train),
        "valImages": len(val),
        "seconds": round(seconds, 2),
    }
    if note is not None:
        result["note"] = note
    return result
