"""ShapesBench mask scoring: how well a model's free attention masks cover what it actually drew.

``score_masks("toy://shapes", 128)`` generates 128 images for held-out ShapesBench captions with attention
capture (the same :class:`~freeatm.runtime.generate.sampler.Sampler` a SyntheticDataset uses) and scores each
object word's mask against that object's true extent *in the generated image*: in plain scenes the colours are
pure and distinct within a caption, so the pixels of the object's colour are its truth; in clutter scenes (one
hue for every object) the regions of the objects' hue are matched to the named objects by shape
(:func:`freeatm.runtime.shapes.find_drawn_objects`). Two objects of the same shape in one caption are
interchangeable there, so either may take either region. Objects the model did not draw are counted (the drawn share)
but not scored. Per class (shape), IoU = Σ intersection / Σ union over its drawn objects; mIoU is the mean
over classes. The defaults are the best setting measured (docs/architecture.md#measured-facts): colour word +
noun, the 16×16 layers, the last third of 20 DDIM steps, relative threshold 0.5, guidance 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

SCORE_STREAM = 999_999
"""ShapesBench scene stream whose captions are the scoring prompts (held out: the toy model trains on stream 0)."""


def score_masks(
    model_uri: str,
    images: int = 128,
    *,
    steps: int = 20,
    guidance_scale: float = 1.0,
    scheduler: str = "ddim",
    resolutions: Sequence[int] = (16,),
    timesteps: tuple[float, float] = (0.66, 1.0),
    modifiers: bool = True,
    threshold: str = "relative",
    threshold_value: float = 0.5,
    self_attention_refinement: bool = False,
    seed: int = 0,
    stream: int = SCORE_STREAM,
    variant: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate `images` ShapesBench scenes of `variant` with `model_uri` and score their attention masks; the
    report dict. `variant` defaults to the one a toy:// model was trained on, else plain."""
    import numpy as np

    from freeatm.api.synthetic_dataset import Attention, Generation, Threshold
    from freeatm.runtime.generate.models import load_pipeline
    from freeatm.runtime.generate.prompts import ShapesPrompts
    from freeatm.runtime.generate.sampler import Sampler, sample_seed
    from freeatm.runtime.shapes import ObjectSpec, find_drawn_objects, shapes_of
    from freeatm.runtime.toy.pipeline import TRAINED

    if variant is None:
        name = model_uri.removeprefix("toy://")
        variant = TRAINED.get(name, "plain") if model_uri.startswith("toy://") else "plain"
    shapes = shapes_of(variant)
    began = time.perf_counter()
    model = load_pipeline(model_uri, device=device)
    resolution = int(model.pipe.unet.config.sample_size * getattr(model.pipe, "vae_scale_factor", 1))
    generation = Generation(
        images=images,
        resolution=resolution,
        steps=steps,
        guidance_scale=guidance_scale,
        scheduler=scheduler,  # type: ignore[arg-type]
        seed=seed,
        batch_size=batch_size,
    )
    attention = Attention(
        resolutions=list(resolutions),
        timesteps=timesteps,
        modifiers=modifiers,
        self_attention_refinement=self_attention_refinement,
        threshold=Threshold(method=threshold, value=threshold_value),  # type: ignore[arg-type]
    )
    source = ShapesPrompts(stream, resolution, variant)
    inter = dict.fromkeys(shapes, 0)
    union = dict.fromkeys(shapes, 0)
    counts = {s: {"objects": 0, "drawn": 0} for s in shapes}
    object_ious: list[float] = []
    fg_inter = fg_union = 0
    with Sampler(model.pipe, generation, attention) as sampler:
        for start in range(0, images, batch_size):
            indices = list(range(start, min(start + batch_size, images)))
            samples = sampler.generate(
                [source.item(i) for i in indices], indices, [sample_seed(seed, i) for i in indices]
            )
            for sample in samples:
                item = source.item(sample.index)
                specs = [ObjectSpec(o.word, o.modifiers[0]) for o in item.objects]
                assert sample.labels is not None
                labels = sample.labels
                if labels.shape != sample.image.shape[:2]:
                    raise ValueError("mask and image resolution differ")
                drawn = _pair_identical(find_drawn_objects(sample.image, specs, variant=variant), labels)
                foreground = np.logical_or.reduce([f.mask for f in drawn])
                fg_inter += int(np.logical_and(labels > 0, foreground).sum())
                fg_union += int(np.logical_or(labels > 0, foreground).sum())
                for k, found in enumerate(drawn, start=1):
                    counts[found.shape]["objects"] += 1
                    if not found.drawn:
                        continue
                    counts[found.shape]["drawn"] += 1
                    predicted = labels == k
                    i = int(np.logical_and(predicted, found.mask).sum())
                    u = int(np.logical_or(predicted, found.mask).sum())
                    inter[found.shape] += i
                    union[found.shape] += u
                    object_ious.append(i / u if u else 0.0)
            if on_batch:
                on_batch(indices[-1] + 1, images)

    per_class = {
        s: {
            "iou": round(inter[s] / union[s], 4) if union[s] else None,
            "objects": counts[s]["objects"],
            "drawn": counts[s]["drawn"],
        }
        for s in shapes
    }
    scored = [v["iou"] for v in per_class.values() if v["iou"] is not None]
    objects = sum(c["objects"] for c in counts.values())
    drawn = sum(c["drawn"] for c in counts.values())
    return {
        "model": model_uri,
        "variant": variant,
        "modelDigest": model.digest,
        "images": images,
        "objects": objects,
        "drawn": drawn,
        "drawnShare": round(drawn / objects, 4) if objects else 0.0,
        "perClass": per_class,
        "miou": round(sum(scored) / len(scored), 4) if scored else 0.0,
        "meanObjectIou": round(sum(object_ious) / len(object_ious), 4) if object_ious else 0.0,
        # every mask against every drawn object, identities aside: where the masks find objects at all
        "foregroundIou": round(fg_inter / fg_union, 4) if fg_union else 0.0,
        "settings": {
            "steps": steps,
            "guidanceScale": guidance_scale,
            "scheduler": scheduler,
            "resolutions": list(resolutions),
            "timesteps": list(timesteps),
            "modifiers": modifiers,
            "threshold": {"method": threshold, "value": threshold_value},
            "selfAttentionRefinement": self_attention_refinement,
            "seed": seed,
            "stream": stream,
        },
        "seconds": round(time.perf_counter() - began, 1),
    }


def _pair_identical(found: list[Any], labels: Any) -> list[Any]:
    """`found` with the drawn regions of identical objects (same shape and colour: the same words, so either
    may be either) permuted to agree best with the predicted `labels` (object k is label k + 1)."""
    import numpy as np

    found = list(found)
    groups: dict[tuple[str, str], list[int]] = {}
    for k, f in enumerate(found):
        groups.setdefault((f.shape, f.colour), []).append(k)
    for members in (m for m in groups.values() if len(m) > 1):
        overlap = {
            (k, j): int(np.logical_and(labels == k + 1, found[j].mask).sum())
            for k in members
            for j in members
        }
        best = _best_order(members, overlap)
        regions = [found[j] for j in best]
        for k, region in zip(members, regions, strict=True):
            found[k] = region
    return found


def _best_order(members: list[int], overlap: dict[tuple[int, int], int]) -> tuple[int, ...]:
    """The permutation of `members` whose regions (j) overlap the objects' labels (k) most; identity on ties."""
    import itertools

    return max(
        itertools.permutations(members),
        key=lambda order: sum(overlap[k, j] for k, j in zip(members, order, strict=True)),
    )


def print_report(report: dict[str, Any], console: Any = None) -> None:
    """A rich table of per-class IoU, then mIoU and the drawn share; the last line is the report as JSON."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"ShapesBench masks — {report['model']} ({report['images']} {report['variant']} images)"
    )
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("drawn / named", justify="right")
    for name, row in report["perClass"].items():
        iou = "—" if row["iou"] is None else f"{row['iou']:.3f}"
        table.add_row(name, iou, f"{row['drawn']} / {row['objects']}")
    table.add_section()
    table.add_row(
        "mIoU",
        f"{report['miou']:.3f}",
        f"{report['drawn']} / {report['objects']} ({report['drawnShare']:.0%})",
    )
    table.add_row("foreground IoU", f"{report['foregroundIou']:.3f}", "")
    console.print(table)
    console.file.flush()
    print(json.dumps(report), flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m freeatm.runtime.shapesbench.masks --model URI --images N`` (``freeatm shapesbench masks``)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy://shapes")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[16])
    parser.add_argument("--timesteps", type=float, nargs=2, default=[0.66, 1.0])
    parser.add_argument("--no-modifiers", action="store_true")
    parser.add_argument("--threshold", choices=["fixed", "relative", "otsu"], default="relative")
    parser.add_argument("--threshold-value", type=float, default=0.5)
    parser.add_argument("--self-attention-refinement", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variant", choices=["plain", "clutter"], help="the scenes to prompt; default: the toy model's own"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    from freeatm.runtime.errors import RuntimeFailure

    try:
        report = score_masks(
            args.model,
            args.images,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            resolutions=args.resolutions,
            timesteps=tuple(args.timesteps),
            modifiers=not args.no_modifiers,
            threshold=args.threshold,
            threshold_value=args.threshold_value,
            self_attention_refinement=args.self_attention_refinement,
            seed=args.seed,
            variant=args.variant,
            batch_size=args.batch_size,
        )
    except RuntimeFailure as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
