"""Which cue does the object term use? Retrieval of each object across the two views of a trained checkpoint.

Issue #12's diagnostic: on the study's dataset, the mask-aware views the true-masks arm trains on are embedded by
the checkpoint's backbone and projector exactly as the object term embeds them (features pooled inside each
object's mask, then projected). For every object seen in both views it counts how often its partner in the other
view scores above a negative, split by what the negative shares with it:

- siblings (same image, hence same colour and background) of the same shape vs of another shape,
- siblings in the same half (row) of the image vs in the other half,
- other images' objects of the same colour name, of the same shape vs of another shape.

A gap between "same shape" and "other shape" is the share of the work shape does; a gap between rows is what
position does. A minute per checkpoint on 2 cores; `random` scores the study's initialisation.

    python benchmarks/object_term_cues.py /tmp/s/e1/seed-0/data/true random \
        /tmp/s/e1/seed-0/true-masks/checkpoints/step-000000320.pt [--backbone resnet_test_os8]

The dataset must be a study dataset (rendered clutter scenes of `--seed`); the last line is JSON.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import study_checkpoints
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from freeatm.runtime.pretrain.contrastive import MIN_OBJECT_AREA, mask_pool
from freeatm.runtime.shapes import render

COLUMNS = {
    "top1": "every object (top-1)",
    "vs_siblings": "every sibling",
    "vs_others": "every other image's object",
    "sibling_same_shape": "sibling pair, same shape",
    "sibling_other_shape": "sibling pair, other shape",
    "sibling_same_row": "sibling pair, same row",
    "sibling_other_row": "sibling pair, other row",
    "colour_same_shape": "same-colour pair, same shape",
    "colour_other_shape": "same-colour pair, other shape",
}


def cue_accuracies(
    data: Path, checkpoint: str, seed: int, batches: int, p: dict[str, Any]
) -> dict[str, tuple[float, int]]:
    """(accuracy, count) per entry of COLUMNS for `checkpoint` under protocol `p` ("random": the initialisation of
    `seed`)."""
    trainer = study_checkpoints.trainer("true-masks", data, checkpoint, seed, p)
    model = trainer.model.eval()
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def count(key: str, ok: bool) -> None:
        hits[key][0] += int(ok)
        hits[key][1] += 1

    with torch.no_grad():
        for b, batch in enumerate(trainer.batches(0, workers=0)):
            if b >= batches:
                break
            dense = model.backbone.forward_features(torch.cat([batch["view1"], batch["view2"]]))
            pooled, area = mask_pool(dense, torch.cat([batch["mask1"], batch["mask2"]]))
            (o1, o2), (a1, a2) = pooled.chunk(2), area.chunk(2)
            valid = (a1 >= MIN_OBJECT_AREA) & (a2 >= MIN_OBJECT_AREA)
            image, label = valid.nonzero(as_tuple=True)
            z1, z2 = F.normalize(model.projector(torch.cat([o1[valid], o2[valid]])), dim=1).chunk(2)
            scores = z1 @ z2.t()
            objects = []
            for i, k in zip(batch["index"][image].tolist(), label.tolist(), strict=True):
                obj = render(seed, i, p["imageSize"], p["variant"]).objects[k]
                objects.append(
                    (i, obj.shape, obj.colour, np.nonzero(obj.mask)[0].mean() < p["imageSize"] / 2)
                )
            for a, (img, shape, colour, top) in enumerate(objects):
                row = scores[a]
                positive = row[a]
                siblings = [c for c, o in enumerate(objects) if c != a and o[0] == img]
                others = [c for c, o in enumerate(objects) if o[0] != img]
                count("top1", bool(row.argmax() == a))
                if siblings:
                    count("vs_siblings", bool(positive > row[siblings].max()))
                count("vs_others", bool(positive > row[others].max()))
                for c in siblings:
                    ok = bool(positive > row[c])
                    count("sibling_same_shape" if objects[c][1] == shape else "sibling_other_shape", ok)
                    count("sibling_same_row" if objects[c][3] == top else "sibling_other_row", ok)
                for c in others:
                    if objects[c][2] == colour:
                        key = "colour_same_shape" if objects[c][1] == shape else "colour_other_shape"
                        count(key, bool(positive > row[c]))
    return {
        k: (round(hits[k][0] / hits[k][1], 3) if hits[k][1] else float("nan"), hits[k][1]) for k in COLUMNS
    }


def main() -> None:
    parser = study_checkpoints.parser(__doc__.splitlines()[0], batches=6)
    parser.add_argument(
        "--backbone", help="the backbone the checkpoints were trained with (default: the protocol's)"
    )
    args = study_checkpoints.parse(parser)
    p = study_checkpoints.protocol(args) | ({"backbone": args.backbone} if args.backbone else {})
    torch.set_num_threads(1)
    results = {
        study_checkpoints.label(c): cue_accuracies(args.data, c, args.seed, args.batches, p)
        for c in args.checkpoints
    }
    table = Table("how often the partner beats …", *results, title="object term, across the two views")
    for key, label in COLUMNS.items():
        table.add_row(label, *(f"{row[key][0]:.3f}" for row in results.values()))
    Console().print(table)
    print(json.dumps({name: {k: v[0] for k, v in row.items()} for name, row in results.items()}))


if __name__ == "__main__":
    main()
