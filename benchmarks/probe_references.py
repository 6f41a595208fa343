"""What the object probe reads from features that learnt nothing: the floor a ShapesBench variant sets.

Issue #12's study reads shape with a linear probe on each object's mask-pooled frozen features. This scores the
same probe (the EvalJob `object-probe` with its defaults, on the study's validation images) with features that no
training produced, so that a pretrained arm's score can be read against what the scenes give for free:

- random init: the study's own floor (`random://<backbone>`);
- cell colour: each feature cell's mean input colour (the image average-pooled to the backbone's grid);
- patch pixels: each cell's raw pixels (the input unfolded into the backbone's patches), what a ViT's patch
  embedding sees before it has learnt anything;
- box geometry: four numbers per object from its true mask (area, the share of its bounding box it fills, the
  box's aspect and area), standardised: how far the probe's classes can be told apart by coarse geometry alone.

    python benchmarks/probe_references.py                                   # the CPU protocol's scenes
    python benchmarks/probe_references.py --variant plain
    python benchmarks/probe_references.py --image-size 64 --backbone vit_test_patch8

About a minute a variant on 2 cores at 32 px.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from freeatm.api import parse_resource
from freeatm.api.pretrain_job import BACKBONE_GEOMETRY
from freeatm.runtime.evaluate.common import Checkpoint, instance_map, load_checkpoint
from freeatm.runtime.evaluate.datasets import Split
from freeatm.runtime.evaluate.job import open_benchmark, settings_for
from freeatm.runtime.evaluate.objects import probe_objects, run_object_probe
from freeatm.runtime.shapes import VARIANTS
from freeatm.runtime.shapesbench import study


class PixelCells(nn.Module):
    """A fixed 'backbone' on the grid of a patch or stride: each cell's mean colour, or its raw pixels."""

    def __init__(self, patch: int, raw: bool) -> None:
        super().__init__()
        self.patch, self.raw = patch, raw

    def forward_features(self, x: Tensor) -> Tensor:
        if not self.raw:
            return F.avg_pool2d(x, self.patch)
        b, _, h, w = x.shape
        return F.unfold(x, self.patch, stride=self.patch).view(b, -1, h // self.patch, w // self.patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).mean(dim=(2, 3))


def box_geometry(split: Split) -> tuple[Tensor, Tensor]:
    """Per object of `split` that its instance map shows: (area, box fill, box aspect, box area), and its class."""
    rows, labels = [], []
    for sample in split.samples:
        instances = instance_map(sample, split.where)
        for k, label in enumerate(sample.object_labels, start=1):
            ys, xs = (instances == k).nonzero(as_tuple=True)
            if not len(ys):
                continue
            height, width = float(ys.max() - ys.min() + 1), float(xs.max() - xs.min() + 1)
            rows.append([len(ys), len(ys) / (height * width), height / width, height * width])
            labels.append(label)
    return torch.tensor(rows), torch.tensor(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, default=study.PROTOCOL["variant"])
    parser.add_argument("--image-size", type=int, default=study.PROTOCOL["imageSize"])
    parser.add_argument("--backbone", default=study.PROTOCOL["backbone"])
    parser.add_argument("--val-images", type=int, default=study.PROTOCOL["valImages"])
    args = parser.parse_args()
    p = study.PROTOCOL | {
        "variant": args.variant,
        "imageSize": args.image_size,
        "backbone": args.backbone,
        "valImages": args.val_images,
    }
    random_uri = f"random://{args.backbone}?imageSize={args.image_size}"
    doc = {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "EvalJob",
        "metadata": {"name": "probe-references"},
        "spec": {
            "checkpoints": [{"uri": random_uri, "label": "random init"}],
            "benchmarks": [
                {"name": "object-probe", "dataset": {"format": "shapes", "uri": study._val_uri(p)}}
            ],
            "output": {"uri": "file:///dev/null"},
        },
    }
    bench = parse_resource(doc).spec.benchmarks[0]
    train, val = open_benchmark(bench)
    random_init = load_checkpoint("random init", random_uri)
    settings = settings_for(bench, random_init)
    patch = BACKBONE_GEOMETRY[args.backbone][1]
    scores = {"random init": run_object_probe(random_init, train, val, settings)}
    for label, raw in (("cell colour", False), ("patch pixels", True)):
        fixed = Checkpoint(label, label, PixelCells(patch, raw), {}, f"{label}/{patch}")  # type: ignore[arg-type]
        scores[label] = run_object_probe(fixed, train, val, settings)
    (train_x, train_y), (val_x, val_y) = box_geometry(train), box_geometry(val)
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    scores["box geometry"] = probe_objects(
        (train_x - mean) / std, train_y, (val_x - mean) / std, val_y, len(train.classes), settings
    )
    table = Table(
        title=f"object-probe references: {args.variant} at {args.image_size} px, {args.backbone}'s grid "
        f"({args.image_size // patch}×{args.image_size // patch}), {args.val_images} + {args.val_images} images"
    )
    for column in ("features", "top-1", "balanced top-1"):
        table.add_column(column)
    for label, s in scores.items():
        table.add_row(label, f"{s['top1']:.3f}", f"{s['balanced_top1']:.3f}")
    Console().print(table)
    print(
        json.dumps(
            {"protocol": {k: p[k] for k in ("variant", "imageSize", "backbone", "valImages")}} | scores
        )
    )


if __name__ == "__main__":
    main()
