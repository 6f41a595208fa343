"""`freeatm shapesbench study`: does mask guidance help, and is it the masks that help? A paired experiment.

Per seed, one ShapesBench dataset (the clutter variant; crowd in the GPU form, GPU_PROTOCOL), rendered with exact
masks, is pretrained on by every arm with the same seed, hence the same initialisation, the same sample order
and — where the masks do not decide — the same augmentation draws (the pretraining runtime guarantees that). The
arms differ only in the masks they are given:

- ``baseline``: SimCLR, ``useMasks: false``;
- ``true-masks``: mask-aware crops + the object term on the true masks (the positive control);
- ``shuffled-masks``: every image gets the masks of another image of the dataset (a negative control);
- ``area-matched``: each object's mask replaced by a random box of the same area (a negative control: crops and
  pooling regions of the right size that know nothing about where the object is);
- ``iou-0.9``, ``iou-0.7``, ``iou-0.5``: the true masks degraded (shifted, dilated or eroded, then peeled) to that
  IoU with the truth; the IoU reached is measured and reported (the dose-response);
- ``attention-masks``: the images a toy text-to-image model that draws the clutter scenes generated for the
  seed's captions, with the masks of its cross-attention (a SyntheticDataset through the generation runtime),
  paired with ``baseline-generated``, SimCLR on the same generated images — reported as unavailable when no such
  model is installed, never run on other data;
- ``silhouette-true``: the silhouette term alone (``imageLoss: false``, no object term) with mask-aware crops, on the
  true masks; ``silhouette-shuffled`` and ``silhouette-area-matched`` on the control arms' masks (its negative
  controls); ``silhouette-simclr``: SimCLR with the silhouette term beside it at weight 1;
  ``silhouette-attention``: the term alone on the generated images' attention masks, paired with
  ``baseline-generated``;
- ``silhouette-simclr-w64`` and ``silhouette-method-w64``: the silhouette term at weight 64 beside SimCLR, and
  beside ``true-masks``' objective, each with a shuffled-mask control (``…-shuffled``);
- ``mae-uniform`` and ``mae-guided``: MAE with uniform masking vs attention-guided masking with hints;
- ``vlp-baseline`` (image–caption InfoNCE only), ``vlp-true-masks`` (plus the region–phrase term on the true
  masks: the positive control), ``vlp-shuffled-masks`` (on another image's masks: a negative control) and
  ``vlp-attention-masks`` (the region–phrase term on the generated images' attention masks, paired with
  ``vlp-baseline-generated``).

An arm's framework decides what it is scored on (:class:`Scoring`), on ShapesBench clutter validation images.
The contrastive and MAE checkpoints, one random-init backbone (the probe's floor) and one trained supervised on
the shapes (its ceiling at this size, probe_ceiling.py) get the object-centric benchmarks: ``object-probe`` (the
primary metric, top-1), ``presence`` and ``semseg``. The VLP checkpoints and a random-init dual encoder get
those that read a text tower: ``grounding`` (the primary metric, mean IoU: what the region–phrase term trains),
``zero-shot`` and ``retrieval``. Per arm the study reports the paired difference to the arm it is compared with
(the baseline of its framework; ``mae-uniform`` for ``mae-guided``; random init for the baselines) as mean and
95% confidence interval over seeds (t distribution) with how many seeds went each way, checks its validity
gates (about the contrastive baseline, so only when an object-centric arm runs) and prints a JSON object last.
The protocol (:data:`PROTOCOL`, ``docs/study.md``) was fixed before any attention-mask arm was run, its VLP
part before any VLP arm was, the silhouette arms before any of them ran through the product, and the weighted silhouette arms before
they ran on the seeds they report.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset_format import (
    IMAGE,
    MASK,
    RECORD,
    build_manifest,
    entry_name,
    png_bytes,
    sample_key,
    shard_name,
    write_shard,
)
from ..shapes import COLOURS, VARIANTS, Scene, max_objects, render_stream, shapes_of
from ..storage import open_store


def write_shapes_dataset(
    uri: str,
    images: int = 256,
    *,
    seed: int = 0,
    size: int = 32,
    shard_size: int = 64,
    masks: bool = True,
    manifest: bool = True,
    variant: str = "plain",
) -> dict[str, Any]:
    """Write `images` rendered ShapesBench scenes of `variant` under `uri` in the synthetic dataset format
    (docs/dataset-format.md) with their true masks as the label maps; return the manifest.

    `masks=False` writes a dataset without masks (hasMasks false); `manifest=False` leaves the manifest out
    (an unfinished dataset)."""
    scenes = render_stream(seed, images, size, variant)
    return write_scenes(uri, scenes, None, seed=seed, shard_size=shard_size, masks=masks, manifest=manifest)


def write_scenes(
    uri: str,
    scenes: Sequence[Scene],
    label_maps: Sequence[np.ndarray] | None,
    *,
    seed: int,
    shard_size: int = 64,
    masks: bool = True,
    manifest: bool = True,
    mask_source: str = "true",
) -> dict[str, Any]:
    """Write `scenes` (indices 0..n-1 of one stream) in the synthetic dataset format with `label_maps` as their
    masks (None: the true ones); `mask_source` names where the masks come from in the manifest."""
    store = open_store(uri)
    variant = scenes[0].variant
    size = scenes[0].image.shape[0]
    shards = []
    for first in range(0, len(scenes), shard_size):
        count = min(shard_size, len(scenes) - first)
        samples = []
        for index in range(first, first + count):
            scene = scenes[index]
            labels = scene.label_map() if label_maps is None else label_maps[index]
            members = {IMAGE: png_bytes(scene.image)}
            objects = []
            position = 1
            for label, obj in enumerate(scene.objects, start=1):
                position += 1  # "a"
                objects.append(
                    {
                        "word": obj.shape,
                        "label": label,
                        "class": obj.shape,
                        "modifiers": [obj.colour],
                        "tokenIndices": [position, position + 1],
                        "coverage": round(float((labels == label).mean()), 4),
                    }
                )
                position += 3  # colour, shape, "and"
            if masks:
                members[MASK] = png_bytes(labels.astype(np.uint8))
            record = {
                "index": index,
                "seed": seed,
                "prompt": scene.caption,
                "objects": objects,
                "maskCoverage": round(float(labels.astype(bool).mean()), 4),
            }
            members[RECORD] = json.dumps(record).encode()
            samples.append((sample_key(index), members))
        buf = io.BytesIO()
        sha256, nbytes = write_shard(buf, samples)
        shard = first // shard_size
        entry = {"name": shard_name(shard), "samples": count, "sha256": sha256, "bytes": nbytes}
        store.write_bytes(entry["name"], buf.getvalue())
        store.write_bytes(entry_name(shard), json.dumps(entry).encode())
        shards.append(entry)
    recipe = f"shapesbench:{seed}:{len(scenes)}:{size}" + (
        "" if variant == "plain" and mask_source == "true" else f":{variant}:{mask_source}"
    )
    doc = build_manifest(
        spec_digest="sha256:" + hashlib.sha256(recipe.encode()).hexdigest(),
        images=len(scenes),
        resolution=size,
        mask_resolution=size,
        shard_size=shard_size,
        has_masks=masks,
        has_soft_maps=False,
        classes=list(shapes_of(variant)),
        shards=shards,
        generator={"name": "shapesbench", "version": "1", "colours": list(COLOURS)},
        model={"uri": "shapesbench://render", "class": "render_scene", "digest": None},
    )
    if variant != "plain" or mask_source != "true":
        doc["generator"] |= {"variant": variant, "masks": mask_source}
    if manifest:
        store.write_bytes("manifest.json", json.dumps(doc, indent=2).encode())
    return doc


# --- the masks of the control arms ------------------------------------------------------------------------------


def object_ious(truth: np.ndarray, labels: np.ndarray) -> list[float]:
    """IoU of each object k of the label map `truth` with label k of `labels`."""
    out = []
    for k in range(1, int(truth.max()) + 1):
        a, b = truth == k, labels == k
        if a.any():
            out.append(float((a & b).sum() / (a | b).sum()))
    return out


def shuffled_maps(maps: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Every image gets the label map of another image (a random cyclic derangement)."""
    order = rng.permutation(len(maps))
    out: list[np.ndarray] = list(maps)
    for i, target in enumerate(order):
        out[target] = maps[order[(i + 1) % len(order)]]
    return out


def area_matched_map(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each object's mask replaced by a box of the same area (as near as whole pixels allow, aspect ≤ 4/3) at a
    uniformly random position clear of the other boxes."""
    h, w = truth.shape
    out = np.zeros_like(truth)
    for k in range(1, int(truth.max()) + 1):
        area = int((truth == k).sum())
        if not area:
            continue
        side = math.sqrt(area * math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3))))
        bw = min(w, max(1, round(side)))
        bh = min(h, max(1, round(area / bw)))
        for _ in range(50):  # a position clear of the boxes placed so far, when one is found
            top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            if not out[top : top + bh, left : left + bw].any():
                break
        out[top : top + bh, left : left + bw] = k
    return out


_MAX_SHIFT = 3  # pixels: the shifts a degraded mask may take (at 32 px, objects are 5-10 px)


def _morph(mask: np.ndarray, step: int) -> np.ndarray:
    """4-neighbour dilation (step > 0) or erosion (step < 0) by |step| pixels."""
    for _ in range(abs(step)):
        p = np.pad(mask, 1, constant_values=step < 0)
        around = [p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]
        mask = mask | np.logical_or.reduce(around) if step > 0 else mask & np.logical_and.reduce(around)
    return mask


def degrade_mask(mask: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """A mask with IoU ≈ `target` with the boolean `mask`: a random shift (≤ 3 px) of the mask, dilated, eroded or
    as it is, among those whose IoU is at least `target` (preferring those within 0.15 of it), then peeled — pixels
    of its boundary inside the object removed at random — down to the target."""
    size, m = _MAX_SHIFT, mask
    candidates = []
    for step in (-1, 0, 1):
        shape = _morph(m, step)
        if not shape.any():
            continue
        padded = np.pad(shape, size)
        windows = np.lib.stride_tricks.sliding_window_view(padded, m.shape)  # [2s+1, 2s+1, H, W]
        inter = (windows & m).sum((-2, -1))
        union = windows.sum((-2, -1)) + m.sum() - inter
        iou = inter / union
        for dy, dx in zip(*np.nonzero(iou >= target), strict=True):
            candidates.append((float(iou[dy, dx]), windows[dy, dx]))
    near = [c for c in candidates if c[0] <= target + 0.15]
    pool = near or [min(candidates, key=lambda c: c[0])]
    out = pool[int(rng.integers(len(pool)))][1].copy()
    union = int((out | m).sum())  # removing a pixel that is inside the object leaves the union as it is
    excess = int((out & m).sum()) - round(target * union)
    while excess > 0:
        inside = out & m
        # on the mask's boundary; else (the object lies inside) the overlap's
        edge = inside & ~_morph(out, -1)
        ys, xs = np.nonzero(edge if edge.any() else inside & ~_morph(inside, -1))
        take = rng.permutation(len(ys))[:excess]
        out[ys[take], xs[take]] = False
        excess -= len(take)
    return out


def degraded_map(truth: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """The label map with every object's mask degraded to IoU ≈ `target` (:func:`degrade_mask`)."""
    out = np.zeros_like(truth)
    for k in range(1, int(truth.max()) + 1):
        if (truth == k).any():
            out[degrade_mask(truth == k, target, rng)] = k
    return out


# --- the arms and the protocol ----------------------------------------------------------------------------------

REFERENCE = "random-init"
CEILING = "supervised"  # the probe's ceiling at the study's size (probe_ceiling.py), not an arm


@dataclass(frozen=True)
class Scoring:
    """What a framework's arms are scored on: the EvalJob benchmarks, the primary metric (the paired difference
    the arm is judged by) and the secondary metrics (reported whichever way they fall)."""

    name: str
    benchmarks: tuple[str, ...]
    primary: str
    secondary: tuple[str, ...]


OBJECTS = Scoring(
    "objects",
    ("object-probe", "presence", "semseg"),
    "object-probe/top1",
    ("object-probe/balanced_top1", "presence/map", "semseg/miou"),
)
# VLP: the primary metric is what the region–phrase alignment trains. The object-centric benchmarks are left out:
# they train a probe or a head per checkpoint and would double a VLP arm's cost (docs/study.md).
TEXT = Scoring(
    "text",
    ("grounding", "zero-shot", "retrieval"),
    "grounding/mean_iou",
    ("grounding/iou50", "zero-shot/top1", "retrieval/recall@1", "retrieval/recall@5", "retrieval/recall@20"),
)
SCORING: dict[str, Scoring] = {"contrastive": OBJECTS, "mim": OBJECTS, "vlp": TEXT}


@dataclass(frozen=True)
class Arm:
    """One arm: how it pretrains, with which masks, and which arm its paired difference is taken against."""

    name: str
    framework: str  # contrastive | mim | vlp
    masks: str | None  # None: useMasks false; true | shuffled | area-matched | iou-X | attention
    versus: str  # an arm, or REFERENCE
    about: str
    # pretrains on the attention model's generated images instead of the rendered ones
    generated: bool = False
    # spec.method fields beyond framework and useMasks (the method's defaults otherwise)
    method: dict[str, Any] = field(default_factory=dict)

    @property
    def scoring(self) -> Scoring:
        return SCORING[self.framework]


# the silhouette term trained alone, with mask-aware crops (docs/study.md, "The silhouette arms")
SILHOUETTE_ALONE = {"imageLoss": False, "objectContrast": False, "silhouette": True}
# the silhouette term beside the InfoNCE terms, at the weight a seed-0 pilot chose (docs/study.md, "The weighted
# silhouette arms")
SIMCLR_SILHOUETTE_64 = {"objectContrast": False, "silhouette": True, "silhouetteLossWeight": 64.0}
METHOD_SILHOUETTE_64 = {"silhouette": True, "silhouetteLossWeight": 64.0}
ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("baseline", "contrastive", None, REFERENCE, "SimCLR, no masks"),
        Arm("true-masks", "contrastive", "true", "baseline", "true masks: positive control"),
        Arm("shuffled-masks", "contrastive", "shuffled", "baseline", "another image's masks: negative control"),
        Arm("area-matched", "contrastive", "area-matched", "baseline", "random boxes of the objects' areas: negative control"),
        Arm("iou-0.9", "contrastive", "iou-0.9", "baseline", "true masks degraded to IoU 0.9"),
        Arm("iou-0.7", "contrastive", "iou-0.7", "baseline", "true masks degraded to IoU 0.7"),
        Arm("iou-0.5", "contrastive", "iou-0.5", "baseline", "true masks degraded to IoU 0.5"),
        Arm("baseline-generated", "contrastive", None, REFERENCE, "SimCLR on the toy model's images, no masks", True),
        Arm("attention-masks", "contrastive", "attention", "baseline-generated", "the toy model's images and cross-attention masks", True),
        Arm("silhouette-true", "contrastive", "true", "baseline", "the silhouette term alone, true masks", method=SILHOUETTE_ALONE),
        Arm("silhouette-shuffled", "contrastive", "shuffled", "baseline", "the silhouette term alone, another image's masks: negative control", method=SILHOUETTE_ALONE),
        Arm("silhouette-area-matched", "contrastive", "area-matched", "baseline", "the silhouette term alone, random boxes of the objects' areas: negative control", method=SILHOUETTE_ALONE),
        Arm("silhouette-simclr", "contrastive", "true", "baseline", "SimCLR + the silhouette term (weight 1), true masks", method={"objectContrast": False, "silhouette": True, "silhouetteLossWeight": 1.0}),
        Arm("silhouette-attention", "contrastive", "attention", "baseline-generated", "the silhouette term alone on the toy model's images and cross-attention masks", True, SILHOUETTE_ALONE),
        Arm("silhouette-simclr-w64", "contrastive", "true", "baseline", "SimCLR + the silhouette term at weight 64, true masks", method=SIMCLR_SILHOUETTE_64),
        Arm("silhouette-simclr-w64-shuffled", "contrastive", "shuffled", "baseline", "SimCLR + the silhouette term at weight 64, another image's masks: negative control", method=SIMCLR_SILHOUETTE_64),
        Arm("silhouette-method-w64", "contrastive", "true", "baseline", "true-masks' objective + the silhouette term at weight 64, true masks", method=METHOD_SILHOUETTE_64),
        Arm("silhouette-method-w64-shuffled", "contrastive", "shuffled", "baseline", "true-masks' objective + the silhouette term at weight 64, another image's masks: negative control", method=METHOD_SILHOUETTE_64),
        Arm("mae-uniform", "mim", None, REFERENCE, "MAE, uniform masking"),
        Arm("mae-guided", "mim", "true", "mae-uniform", "MAE, guided masking with hints, true masks"),
        Arm("vlp-baseline", "vlp", None, REFERENCE, "image–caption InfoNCE only, no masks"),
        Arm("vlp-true-masks", "vlp", "true", "vlp-baseline", "region–phrase alignment, true masks: positive control"),
        Arm("vlp-shuffled-masks", "vlp", "shuffled", "vlp-baseline", "region–phrase alignment, another image's masks: negative control"),
        Arm("vlp-baseline-generated", "vlp", None, REFERENCE, "image–caption InfoNCE on the toy model's images, no masks", True),
        Arm("vlp-attention-masks", "vlp", "attention", "vlp-baseline-generated", "region–phrase alignment on the toy model's images and cross-attention masks", True),
    )
}  # fmt: skip
ARM_SETS: dict[str, tuple[str, ...]] = {
    "core": ("baseline", "true-masks", "shuffled-masks", "area-matched", "attention-masks"),
    "dose": ("baseline", "iou-0.9", "iou-0.7", "iou-0.5"),
    "silhouette": (
        "silhouette-true",
        "silhouette-shuffled",
        "silhouette-area-matched",
        "silhouette-simclr",
        "silhouette-attention",
    ),
    "silhouette-weighted": (
        "silhouette-simclr-w64",
        "silhouette-simclr-w64-shuffled",
        "silhouette-method-w64",
        "silhouette-method-w64-shuffled",
    ),
    "mae": ("mae-uniform", "mae-guided"),
    "vlp": ("vlp-baseline", "vlp-true-masks", "vlp-shuffled-masks", "vlp-attention-masks"),
}
ARM_SETS["all"] = tuple(ARMS)

MIN_PROBE_GAIN = 0.10  # gate: the baseline beats random init by this much on the primary metric
MIN_CEILING_GAIN = 0.20  # gate: the supervised ceiling (probe_ceiling.py) beats random init this much

# The protocol, fixed before the attention-mask arm was looked at, and its VLP part before any VLP arm was run
# (docs/study.md); the options only size it.
PROTOCOL: dict[str, Any] = {
    "variant": "clutter",
    "images": 1024,
    "epochs": 20,
    "seeds": 5,
    "valImages": 1024,
    "backbone": "vit_test_patch4",
    "imageSize": 32,
    "batchSize": 64,
    "lr": 0.004,  # per 256 images: a peak of 1e-3 at batch 64 (AdamW)
    "warmupEpochs": 1,
    "arms": "core",
    "primary": {framework: scoring.primary for framework, scoring in SCORING.items()},
    "attentionModel": "toy://shapes-clutter",
    # The attention arms' SyntheticDataset (batchSize only sets the throughput: every image has its own seed). The
    # mask settings scored best of seven on the model's own images (`freeatm shapesbench masks`, RESULTS.md); the
    # colour word is left out because every object of a clutter scene has the same one.
    "generation": {"steps": 20, "guidanceScale": 1.0, "scheduler": "ddim", "batchSize": 64},
    "attention": {
        "resolutions": [8, 16],
        "timesteps": [0.66, 1.0],
        "modifiers": False,
        "threshold": {"method": "relative", "value": 0.5},
    },
    # framework vlp: the API's defaults, written out so that the protocol names them
    "vlpTemperature": 0.2,
    "phraseTemperature": 0.07,
    "phraseLossWeight": 1.0,
    "textTower": {"tokenizer": "toy://shapesbench", "width": 128, "layers": 2, "heads": 4},
    "detection": False,  # also score the object-centric checkpoints on detection (the GPU form)
    "gpus": 0,  # 0: train on the CPU in fp32; 1: on one GPU in `precision`
    "precision": "fp32",
    "loaderWorkers": 1,
}

# The larger form, for one GPU (docs/study.md, "The GPU form"): the crowd scenes at 64 px, tens of thousands
# of images, ViT-S with 8-pixel patches (the same 8×8 grid as the CPU form), 100 epochs, 10 seeds, detection on
# frozen features beside the object-centric benchmarks. Fixed before it was ever run; the lr follows the linear
# scaling rule from the CPU form's base rate.
GPU_PROTOCOL: dict[str, Any] = PROTOCOL | {
    "variant": "crowd",
    "images": 20_480,
    "epochs": 100,
    "seeds": 10,
    "valImages": 2048,
    "backbone": "vit_small_patch8",
    "imageSize": 64,
    "batchSize": 256,
    "warmupEpochs": 5,
    "detection": True,
    "gpus": 1,
    "precision": "bf16",
    "loaderWorkers": 6,
}
PROTOCOLS: dict[str, dict[str, Any]] = {"cpu": PROTOCOL, "gpu": GPU_PROTOCOL}

# Two-sided 95% quantiles of Student's t by degrees of freedom; a df between entries takes the smaller df's
# (wider) value.
T975: dict[int, float] = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (from :data:`T975`; 1.96 beyond 120)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    return 1.96 if df > 120 else T975[max(d for d in T975 if d <= df)]


def paired(differences: Sequence[float]) -> dict[str, Any]:
    """Mean of the per-seed differences, its 95% t interval (None with one seed), and the seeds each way."""
    n = len(differences)
    mean = statistics.fmean(differences)
    low = high = None
    if n > 1:
        half = t975(n - 1) * statistics.stdev(differences) / math.sqrt(n)
        low, high = mean - half, mean + half
    return {
        "mean_diff": mean,
        "ci_low": low,
        "ci_high": high,
        "wins": sum(d > 0 for d in differences),
        "losses": sum(d < 0 for d in differences),
        "seeds": n,
    }


def gates(
    ceiling_probe: float,
    baseline_probe: Sequence[float],
    random_probe: float,
    baseline_miou: Sequence[float],
    floor: float,
) -> dict[str, dict[str, Any]]:
    """The validity gates: the probe can see a learnt shape feature (the supervised ceiling ≥ MIN_CEILING_GAIN
    above random init), the baseline learnt something (per-object probe ≥ MIN_PROBE_GAIN above random init,
    mean over seeds) and its segmentation beats the all-background floor (mean over seeds)."""
    reach = ceiling_probe - random_probe
    gain = statistics.fmean(baseline_probe) - random_probe
    miou = statistics.fmean(baseline_miou)
    return {
        "probe-sees-learnt-shapes": {
            "value": reach,
            "needs": f">= {MIN_CEILING_GAIN}",
            "passed": reach >= MIN_CEILING_GAIN,
        },
        "baseline-beats-random-init": {
            "value": gain,
            "needs": f">= {MIN_PROBE_GAIN}",
            "passed": gain >= MIN_PROBE_GAIN,
        },
        "semseg-beats-all-background": {"value": miou, "needs": f"> {floor:.4f}", "passed": miou > floor},
    }


def attention_unavailable(p: dict[str, Any]) -> str | None:
    """Why the arms on generated images cannot run under protocol `p`, or None when they can: a toy:// attention
    model must be a trained one, drawing the protocol's variant, with its weights installed."""
    model = p["attentionModel"]
    if not model.startswith("toy://"):
        return None
    from ..toy.pipeline import TRAINED, toy_model_dir

    name = model.removeprefix("toy://")
    if name not in TRAINED:
        return f"{model} is not a trained toy model ({', '.join(f'toy://{n}' for n in TRAINED)} are)"
    if TRAINED[name] != p["variant"]:
        return f"{model} was trained on the {TRAINED[name]} ShapesBench scenes; it cannot draw the {p['variant']} ones"
    if not (toy_model_dir(name) / "model_index.json").is_file():
        return f"the weights of {model} are not installed at {toy_model_dir(name)}"
    return None


def _generate_doc(seed: int, output: str, p: dict[str, Any]) -> dict[str, Any]:
    """The SyntheticDataset of the generated arms: the attention model draws the captions of seed `seed`'s rendered
    scenes (the preset's stream is the dataset seed), with attention masks."""
    return {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": "study-generated"},
        "spec": {
            "model": {"uri": p["attentionModel"]},
            "prompts": {"preset": {"plain": "shapes", "clutter": "shapes-clutter"}[p["variant"]]},
            "generation": {
                **p["generation"],
                "images": p["images"],
                "resolution": p["imageSize"],
                "seed": seed,
            },
            "attention": p["attention"],
            "output": {"uri": output},
        },
    }


def _pretrain_doc(arm: Arm, seed: int, dataset: str, output: str, p: dict[str, Any]) -> dict[str, Any]:
    method: dict[str, Any] = {"framework": arm.framework, "useMasks": arm.masks is not None, **arm.method}
    extra: dict[str, Any] = {}
    if arm.framework == "vlp":
        method["temperature"] = p["vlpTemperature"]
        if arm.masks is not None:
            method |= {"phraseTemperature": p["phraseTemperature"], "phraseLossWeight": p["phraseLossWeight"]}
        extra["textTower"] = p["textTower"]
    return {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "MaskPretrainJob",
        "metadata": {"name": f"study-{arm.name.replace('.', '')}"},
        "spec": {
            "dataset": {"uri": dataset},
            "method": method,
            **extra,
            "backbone": p["backbone"],
            "training": {
                "epochs": p["epochs"],
                "batchSize": p["batchSize"],
                "imageSize": p["imageSize"],
                "lr": p["lr"],
                "warmupEpochs": min(p["warmupEpochs"], p["epochs"] - 1),
                "seed": seed,
                "checkpointEvery": 100_000,
                "loaderWorkers": p["loaderWorkers"],
                "precision": p["precision"],
            },
            "distributed": {"gpusPerNode": p["gpus"]},
            "output": {"uri": output},
        },
    }


def _val_uri(p: dict[str, Any]) -> str:
    return f"toy://shapesbench/val?variant={p['variant']}&images={p['valImages']}&size={p['imageSize']}"


def benchmarks_of(scoring: Scoring, p: dict[str, Any]) -> tuple[str, ...]:
    """The EvalJob benchmarks that score `scoring`'s checkpoints under protocol `p`."""
    return scoring.benchmarks + (("detection",) if p["detection"] and scoring is OBJECTS else ())


def secondary_of(scoring: Scoring, p: dict[str, Any]) -> tuple[str, ...]:
    """The secondary metrics of `scoring` under protocol `p` (detection's box mAP when it scores detection)."""
    return scoring.secondary + (("detection/map",) if "detection" in benchmarks_of(scoring, p) else ())


def _evaluate(
    checkpoints: dict[str, str], scoring: Scoring, output: str, p: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """{checkpoint label: {"benchmark/metric": value}} of one EvalJob over `scoring`'s benchmarks."""
    from freeatm.api import parse_resource

    from ..evaluate import run as evaluate

    doc = {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "EvalJob",
        "metadata": {"name": "study-eval"},
        "spec": {
            "checkpoints": [{"uri": uri, "label": label} for label, uri in checkpoints.items()],
            "benchmarks": [
                {"name": b, "dataset": {"format": "shapes", "uri": _val_uri(p)}}
                for b in benchmarks_of(scoring, p)
            ],
            "output": {"uri": output},
        },
    }
    scores: dict[str, dict[str, float]] = {label: {} for label in checkpoints}
    for row in evaluate(parse_resource(doc))["results"]:
        scores[row["checkpoint"]][f"{row['benchmark']}/{row['metric']}"] = float(row["value"])
    return scores


def _arm_maps(masks: str, truth: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """The label maps an arm trains with; each arm draws from its own stream of the seed."""
    rng = np.random.default_rng([seed, int(hashlib.sha256(masks.encode()).hexdigest()[:8], 16)])
    if masks == "shuffled":
        return shuffled_maps(truth, rng)
    if masks == "area-matched":
        return [area_matched_map(t, rng) for t in truth]
    if masks.startswith("iou-"):
        return [degraded_map(t, float(masks[4:]), rng) for t in truth]
    if masks != "true":
        raise ValueError(f"the study cannot make {masks!r} masks")
    return truth


def resolve_arms(spec: str) -> list[str]:
    """Arm names from a comma list of arms and arm sets (the keys of ARM_SETS), in ARMS order,
    with the arms they are compared against (and the contrastive baseline, which the gates are about, whenever an
    arm scored on the object-centric metrics runs); ValueError names what is unknown."""
    wanted: set[str] = set()
    for part in (s.strip() for s in spec.split(",") if s.strip()):
        if part in ARM_SETS:
            wanted.update(ARM_SETS[part])
        elif part in ARMS:
            wanted.add(part)
        else:
            raise ValueError(f"unknown arm {part!r}; arms: {', '.join(ARMS)}; sets: {', '.join(ARM_SETS)}")
    if not wanted:
        raise ValueError("no arms given")
    wanted |= {ARMS[a].versus for a in wanted if ARMS[a].versus != REFERENCE}
    if any(ARMS[a].scoring is OBJECTS for a in wanted):
        wanted.add("baseline")
    return [a for a in ARMS if a in wanted]


def _random_uri(p: dict[str, Any]) -> str:
    return f"random://{p['backbone']}?imageSize={p['imageSize']}"


def write_random_dual_encoder(output: str, p: dict[str, Any]) -> None:
    """Export the VLP arms' random init under `output`: random://'s backbone (the same weights) beside a randomly
    initialised text tower of the protocol's size."""
    import torch

    from ..backbones import load_export
    from ..dual_encoder import DualEncoder, build_text_tokenizer, save_vlp_export

    tower = p["textTower"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone, _ = load_export(_random_uri(p))
        model = DualEncoder(
            backbone,
            build_text_tokenizer(tower["tokenizer"]),
            width=tower["width"],
            layers=tower["layers"],
            heads=tower["heads"],
        )
    save_vlp_export(
        model, tower["tokenizer"], {"framework": "vlp", "useMasks": False, "job": REFERENCE}, output
    )


def study(
    workdir: Path, protocol: dict[str, Any] | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the study under `workdir` (datasets, checkpoints and evaluations are kept and reused on a rerun) with
    `protocol` (PROTOCOL's keys; missing ones take PROTOCOL's values). Returns the result: "protocol",
    "arms" ({arm: paired entry, or {"status": "unavailable: …"}}), "reference" (random init, per scoring),
    "ceiling" (when the object-centric arms run), "scores" (per seed and checkpoint), "gates" and "passed"."""
    import torch

    from freeatm.api import parse_resource

    from ..evaluate.datasets import open_split
    from ..evaluate.segmentation import all_background_miou
    from ..generate import generate_dataset as generate
    from ..pretrain import run as pretrain
    from ..toy.tokenizer import SHAPESBENCH_MAX_LENGTH
    from .probe_ceiling import train_probe_ceiling

    p = {**PROTOCOL, **(protocol or {})}
    arms = resolve_arms(p["arms"])
    seeds = list(range(p["seeds"])) if isinstance(p["seeds"], int) else list(p["seeds"])
    if p["gpus"] and not torch.cuda.is_available():
        raise ValueError(f"this protocol trains on {p['gpus']} GPU, and this machine has no CUDA device")
    unavailable: dict[str, str] = {}
    reason = attention_unavailable(p)
    for name in arms:
        if ARMS[name].generated and reason:
            unavailable[name] = f"unavailable: {reason}"
            log(f"{name}: {unavailable[name]}")
    runnable = [a for a in arms if a not in unavailable]
    longest = 4 * max_objects(p["variant"]) + 1  # "a <colour> <shape>" joined by "and", <bos> and <eos>
    if any(ARMS[a].framework == "vlp" for a in runnable) and longest > SHAPESBENCH_MAX_LENGTH:
        raise ValueError(
            f"the VLP arms' text tower reads {SHAPESBENCH_MAX_LENGTH} tokens; {p['variant']} captions take up to "
            f"{longest}: run the VLP arms on another variant"
        )
    for name in runnable:  # a bad size, backbone or attention model fails here, before any work
        parse_resource(_pretrain_doc(ARMS[name], 0, "file:///data", "file:///out", p))
        if ARMS[name].generated:
            parse_resource(_generate_doc(0, "file:///data", p))
    scorings = [s for s in (OBJECTS, TEXT) if any(ARMS[a].scoring is s for a in runnable)]

    references: dict[str, dict[str, float]] = {}
    ceiling: dict[str, float] | None = None
    floor: float | None = None
    if OBJECTS in scorings:
        ceiling_dir = workdir / CEILING
        if not (ceiling_dir / "export" / "metadata.json").exists():
            start = time.perf_counter()
            scenes = render_stream(seeds[0], p["images"], p["imageSize"], p["variant"])
            train_probe_ceiling(scenes, p, f"file://{ceiling_dir}")
            log(f"probe ceiling: supervised on the shapes in {time.perf_counter() - start:.0f} s")
        scored = _evaluate(
            {REFERENCE: _random_uri(p), CEILING: f"file://{ceiling_dir}"},
            OBJECTS,
            f"file://{workdir}/references",
            p,
        )
        references[OBJECTS.name], ceiling = scored[REFERENCE], scored[CEILING]
        floor = all_background_miou(open_split("shapes", _val_uri(p), "val", "segmentation"), p["imageSize"])
        log(f"random init: {json.dumps(references[OBJECTS.name])}; semseg all-background floor {floor:.4f}")
        log(f"probe ceiling (supervised): {json.dumps(ceiling)}")
    if TEXT in scorings:
        random_vlp = workdir / f"{REFERENCE}-vlp"
        if not (random_vlp / "export" / "metadata.json").exists():
            write_random_dual_encoder(f"file://{random_vlp}", p)
        references[TEXT.name] = _evaluate(
            {REFERENCE: f"file://{random_vlp}"}, TEXT, f"file://{workdir}/references-{TEXT.name}", p
        )[REFERENCE]
        log(f"random init (dual encoder): {json.dumps(references[TEXT.name])}")

    scores: dict[int, dict[str, dict[str, float]]] = {}
    mask_iou: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for seed in seeds:
        root = workdir / f"seed-{seed}"
        scenes = render_stream(seed, p["images"], p["imageSize"], p["variant"])
        truth = [s.label_map() for s in scenes]
        outputs: dict[str, dict[str, str]] = {s.name: {} for s in scorings}
        for name in runnable:
            arm = ARMS[name]
            if arm.generated:
                data = root / "data" / "generated"
                if not (data / "manifest.json").exists():
                    start = time.perf_counter()
                    generate(parse_resource(_generate_doc(seed, f"file://{data}", p)), worker=0)
                    took = time.perf_counter() - start
                    log(f"seed {seed}: {p['attentionModel']} drew {p['images']} images in {took:.0f} s")
            else:
                masks = arm.masks or "true"  # a baseline reads the images only
                data = root / "data" / masks
                if not (data / "manifest.json").exists():
                    maps = _arm_maps(masks, truth, seed)
                    write_scenes(f"file://{data}", scenes, maps, seed=seed, mask_source=masks)
                    if masks != "true":
                        ious = [v for t, m in zip(truth, maps, strict=True) for v in object_ious(t, m)]
                        (root / "data" / f"{masks}.iou.json").write_text(json.dumps(statistics.fmean(ious)))
                if masks != "true":
                    iou = json.loads((root / "data" / f"{masks}.iou.json").read_text())
                    mask_iou.setdefault(name, []).append(iou)
            out = root / name
            if not (out / "export" / "metadata.json").exists():
                start = time.perf_counter()
                pretrain(parse_resource(_pretrain_doc(arm, seed, f"file://{data}", f"file://{out}", p)))
                seconds.setdefault(name, []).append(time.perf_counter() - start)
                log(f"seed {seed}: pretrained {name} in {seconds[name][-1]:.0f} s")
            outputs[arm.scoring.name][name] = f"file://{out}"
        start = time.perf_counter()
        scores[seed] = {}
        for scoring in scorings:
            # "eval": a rerun of a workdir reuses it
            suffix = "" if scoring is OBJECTS else f"-{scoring.name}"
            scores[seed] |= _evaluate(outputs[scoring.name], scoring, f"file://{root}/eval{suffix}", p)
        log(f"seed {seed}: evaluated {len(runnable)} checkpoints in {time.perf_counter() - start:.0f} s")

    entries: dict[str, dict[str, Any]] = {}
    for name in arms:
        if name in unavailable:
            entries[name] = {"status": unavailable[name], "vs": ARMS[name].versus}
            continue
        versus, scoring = ARMS[name].versus, ARMS[name].scoring
        reference = references[scoring.name]

        def against(metric: str, seed: int) -> float:
            return reference[metric] if versus == REFERENCE else scores[seed][versus][metric]  # noqa: B023

        primary = scoring.primary
        entry: dict[str, Any] = {"status": "ok", "vs": versus, "metric": primary}
        entry |= paired([scores[s][name][primary] - against(primary, s) for s in seeds])
        secondary = secondary_of(scoring, p)
        entry["mean"] = {
            m: statistics.fmean(scores[s][name][m] for s in seeds) for m in (primary, *secondary)
        }
        entry["secondary"] = {
            m: paired([scores[s][name][m] - against(m, s) for s in seeds]) for m in secondary
        }
        if name in mask_iou:
            entry["maskIoU"] = statistics.fmean(mask_iou[name])
        if name in seconds:
            entry["pretrainSeconds"] = statistics.fmean(seconds[name])
        entries[name] = entry
    gate: dict[str, dict[str, Any]] = {}
    if ceiling is not None and floor is not None:
        random_init = references[OBJECTS.name]
        gate = gates(
            ceiling[OBJECTS.primary],
            [scores[s]["baseline"][OBJECTS.primary] for s in seeds],
            random_init[OBJECTS.primary],
            [scores[s]["baseline"]["semseg/miou"] for s in seeds],
            floor,
        )
        references[OBJECTS.name] = {**random_init, "semseg/all_background_miou": floor}
    return {
        "protocol": {**p, "seeds": seeds, "arms": arms},
        "arms": entries,
        "reference": references,
        "ceiling": ceiling,
        "scores": {str(s): v for s, v in scores.items()},
        "gates": gate,
        "passed": all(g["passed"] for g in gate.values()),
    }


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def _label(metric: str) -> str:
    return metric.replace("/", " ")


def print_tables(result: dict[str, Any], console: Any) -> None:
    """The result as rich tables, one per scoring (object-centric, text): per arm the paired difference in its
    primary metric and in the other benchmarks' metrics; then the unavailable arms and the gates."""
    from rich.table import Table

    p = result["protocol"]
    for scoring in (OBJECTS, TEXT):
        names = [n for n, e in result["arms"].items() if ARMS[n].scoring is scoring]
        if not names:
            continue
        primary = scoring.primary
        table = Table(
            title=f"ShapesBench study ({scoring.name}): {p['variant']}, {p['images']} images, {p['epochs']} epochs, "
            f"{p['backbone']} at {p['imageSize']} px, {len(p['seeds'])} seeds; {p['valImages']} val images",
            caption=f"primary {primary}: difference to 'vs' in points (paired over seeds; 95% t interval)",
        )
        # the first metric of each other benchmark (the JSON has every metric's difference)
        benchmarks = {m.split("/")[0]: m for m in reversed(secondary_of(scoring, p))}
        shown = [m for b, m in reversed(benchmarks.items()) if b != primary.split("/")[0]]
        columns = [
            "arm",
            "vs",
            primary.split("/")[1],  # the caption names it
            "diff",
            "95% CI",
            "wins/losses",
        ]
        columns += [f"{_label(m)} diff" for m in shown] + ["mask IoU"]
        for column in columns:
            table.add_column(column, justify="left" if column in ("arm", "vs") else "right")
        blank = [""] * (len(columns) - 3)
        reference = result["reference"][scoring.name]
        table.add_row(REFERENCE, "", f"{reference[primary]:.3f}", *blank)
        if scoring is OBJECTS and result["ceiling"] is not None:
            gain = _points(result["ceiling"][primary] - reference[primary])
            table.add_row(
                f"{CEILING} (ceiling)", REFERENCE, f"{result['ceiling'][primary]:.3f}", gain, *blank[1:]
            )
        for name in names:
            e = result["arms"][name]
            if e["status"] != "ok":
                table.add_row(name, e["vs"], "", "unavailable", *blank[1:])
                continue
            ci = f"[{_points(e['ci_low'])}, {_points(e['ci_high'])}]" if e["ci_low"] is not None else "-"
            table.add_row(
                name, e["vs"], f"{e['mean'][primary]:.3f}", _points(e["mean_diff"]), ci, f"{e['wins']}/{e['losses']}",
                *(_points(e["secondary"][m]["mean_diff"]) for m in shown),
                f"{e['maskIoU']:.2f}" if "maskIoU" in e else "",
            )  # fmt: skip
        console.print(table)
    for name, e in result["arms"].items():
        if e["status"] != "ok":
            console.print(f"{name}: {e['status']}")
    for name, g in result["gates"].items():
        verdict = "[green]passed[/green]" if g["passed"] else "[red]FAILED[/red]"
        console.print(f"gate {name}: {g['value']:.4f} (needs {g['needs']}) {verdict}")


def main(argv: list[str] | None = None) -> int:
    """`freeatm shapesbench study`: exit 0 when the gates hold, 1 when one fails, 2 on bad options."""
    import argparse
    import tempfile

    from rich.console import Console

    parser = argparse.ArgumentParser(
        prog="freeatm shapesbench study",
        description="The paired mask-guidance experiment on ShapesBench (docs/study.md). The defaults are the "
        "protocol's; the size options shrink it (results at other sizes are not the study's).",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="cpu",
        help="cpu: clutter at 32 px on 2 CPU cores; gpu: the larger form (crowd at 64 px, ViT-S/8) on one GPU",
    )
    parser.add_argument("--seeds", type=int)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds are first-seed … first-seed + seeds − 1 (a replication on fresh seeds: the same protocol on "
        "other data, initialisations and draws)",
    )
    parser.add_argument("--images", type=int, help="pretraining images per seed")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--val-images", type=int, help="probe train and val images")
    parser.add_argument("--backbone")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        help="other scenes than the protocol's (a pilot, not the study's result)",
    )
    parser.add_argument(
        "--image-size", type=int, help="other pixels than the protocol's (a pilot, as --variant)"
    )
    parser.add_argument(
        "--arms",
        default="core",
        help=f"comma list of arms ({', '.join(ARMS)}) or sets ({', '.join(ARM_SETS)})",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep datasets, checkpoints and scores here (a rerun reuses them)"
    )
    parser.add_argument("--json", type=Path, help="also write the whole result (per-seed scores) as JSON")
    args = parser.parse_args(argv)
    # Piped output (a log, CI) gets a width that keeps the table's columns readable.
    console = Console(width=None if sys.stdout.isatty() else 150)
    errors = Console(stderr=True)
    overrides = {"seeds": "seeds", "images": "images", "epochs": "epochs", "val_images": "valImages",
             "backbone": "backbone", "batch_size": "batchSize", "variant": "variant",
             "image_size": "imageSize"}  # fmt: skip
    protocol = PROTOCOLS[args.protocol] | {"arms": args.arms}
    protocol |= {
        key: getattr(args, option) for option, key in overrides.items() if getattr(args, option) is not None
    }
    for option in ("seeds", "images", "epochs", "val_images", "batch_size", "image_size"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            errors.print(f"--{option.replace('_', '-')} must be at least 1")
            return 2
    if args.first_seed < 0:
        errors.print("--first-seed must be at least 0")
        return 2
    protocol["seeds"] = list(range(args.first_seed, args.first_seed + protocol["seeds"]))
    try:
        resolve_arms(args.arms)
    except ValueError as e:
        errors.print(f"--arms: {e}")
        return 2
    from pydantic import ValidationError

    from freeatm.api.resources import error_lines
    from freeatm.runtime.errors import InvalidInput

    try:
        with tempfile.TemporaryDirectory(prefix="freeatm-study-") as tmp:
            result = study(
                args.workdir or Path(tmp), protocol, log=lambda line: errors.print(line, highlight=False)
            )
    except ValidationError as e:
        for path, message in error_lines(e):
            errors.print(f"study: {path}: {message}")
        return 2
    except (InvalidInput, ValueError) as e:
        errors.print(f"study: {e}")
        return 2
    print_tables(result, console)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    summary = {
        "arms": {
            name: {k: v for k, v in e.items() if k not in ("mean", "secondary")}
            | ({"score": e["mean"][e["metric"]]} if "mean" in e else {})
            for name, e in result["arms"].items()
        },
        "gates": result["gates"],
        "passed": result["passed"],
    }
    print(json.dumps(summary))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
