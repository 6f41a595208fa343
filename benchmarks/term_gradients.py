"""How hard does each term of the contrastive objective pull on the backbone? Per-term gradient norms.

Issue #12's diagnostic for the silhouette term's weight: beside SimCLR's image term at weight 1 the silhouette term
learns nothing (`silhouette-simclr`), and a seed-0 pilot needed a weight of 64 to see it work. Under AdamW the sum's
gradient direction is what the step follows, so a term whose gradient is much smaller than another's barely
steers it. For each checkpoint this takes batches of the study's mask-aware views (true masks, the study's
augmentation draws of `--seed`) and measures, on the same batch, the L2 norm of each unweighted term's gradient
over the backbone's parameters: the image term (SimCLR), the object term (DetCon) and the silhouette term. The
ratio image / silhouette is the weight at which the silhouette term's gradient would match the image term's.

    python benchmarks/term_gradients.py /work/silw/confirm/seed-10/data/true random \
        /work/silw/confirm/seed-10/baseline/checkpoints/step-000000320.pt --seed 10

A checkpoint trained without some head (the baseline has no silhouette head) keeps that head's initialisation.
The last line is JSON.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import study_checkpoints
import torch
from rich.console import Console
from rich.table import Table

TERMS = ("image", "object", "silhouette")


def term_gradient_norms(
    data: Path, checkpoint: str, seed: int, batches: int, p: dict[str, Any]
) -> dict[str, float]:
    """Mean over `batches` of each term's backbone gradient norm for `checkpoint` ("random": the initialisation of
    `seed`) under protocol `p`, with the image / silhouette and image / object ratios."""
    # every term on; a checkpoint trained without the silhouette term keeps the head's initialisation
    trainer = study_checkpoints.trainer(
        "silhouette-method-w64", data, checkpoint, seed, p, may_lack=("silhouette_head.",)
    )
    model = trainer.model
    params = list(model.backbone.parameters())
    norms: dict[str, list[float]] = {t: [] for t in TERMS}
    for b, batch in enumerate(trainer.batches(0, workers=0)):
        if b >= batches:
            break
        for term in TERMS:
            # one term at a time through the model's own forward; the silhouette term stays in the graph at
            # weight 0 when it is not the one measured (forward needs at least one term)
            model.image_loss = term == "image"
            model.object_contrast = term == "object"
            model.silhouette_loss_weight = 1.0 if term == "silhouette" else 0.0
            loss, _ = model(batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            norms[term].append(
                float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads if g is not None])))
            )
    mean = {t: statistics.fmean(v) for t, v in norms.items()}
    return mean | {
        "image/silhouette": mean["image"] / mean["silhouette"],
        "image/object": mean["image"] / mean["object"],
    }


def main() -> None:
    args = study_checkpoints.parse(study_checkpoints.parser(__doc__.splitlines()[0], batches=4))
    torch.set_num_threads(1)
    results = {
        study_checkpoints.label(c): term_gradient_norms(
            args.data, c, args.seed, args.batches, study_checkpoints.protocol(args)
        )
        for c in args.checkpoints
    }
    table = Table("backbone gradient norm", *results, title="each term's pull on the backbone (unweighted)")
    for key in (*TERMS, "image/silhouette", "image/object"):
        table.add_row(key, *(f"{row[key]:.4g}" for row in results.values()))
    Console().print(table)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
