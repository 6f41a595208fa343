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

import argparse
import json
import pickle
import statistics
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from freeatm.api import parse_resource
from freeatm.runtime.pretrain.loop import Trainer
from freeatm.runtime.shapesbench import study

TERMS = ("image", "object", "silhouette")


def term_gradient_norms(data: Path, checkpoint: str, seed: int, batches: int) -> dict[str, float]:
    """Mean over `batches` of each term's backbone gradient norm for `checkpoint` ("random": the initialisation of
    `seed`), with the image / silhouette and image / object ratios."""
    arm = study.ARMS["silhouette-method-w64"]  # every term on
    doc = study._pretrain_doc(arm, seed, data.as_uri(), "file:///dev/null", study.PROTOCOL)
    trainer = Trainer(parse_resource(doc))
    model = trainer.model
    if checkpoint != "random":
        not_ours = f"{checkpoint}: not a contrastive training checkpoint of {study.PROTOCOL['backbone']}"
        try:
            state = torch.load(checkpoint, weights_only=False)["model"]
            missing = model.load_state_dict(state, strict=False).missing_keys
        except (RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as e:
            raise SystemExit(f"{not_ours}: {str(e).splitlines()[0]}") from None
        if any(not k.startswith("silhouette_head.") for k in missing):
            raise SystemExit(f"{not_ours} (missing {', '.join(missing[:3])})")
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data", type=Path, help="a study dataset with true masks (<workdir>/seed-N/data/true)"
    )
    parser.add_argument("checkpoints", nargs="+", help="contrastive training checkpoints (.pt) or `random`")
    parser.add_argument("--seed", type=int, default=0, help="the dataset's seed (the study's seed)")
    parser.add_argument("--batches", type=int, default=4, help="batches of the study's size to measure")
    args = parser.parse_args()
    if not (args.data / "manifest.json").is_file():
        parser.error(f"{args.data}: not a study dataset (no manifest.json)")
    for c in args.checkpoints:
        if c != "random" and not Path(c).is_file():
            parser.error(f"{c}: no such checkpoint file")
    torch.set_num_threads(1)
    results = {
        (c if c == "random" else Path(c).parent.parent.name): term_gradient_norms(
            args.data, c, args.seed, args.batches
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
