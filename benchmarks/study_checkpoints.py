"""What the study's checkpoint diagnostics share (object_term_cues.py, term_gradients.py): their command line (a
study dataset with true masks, training checkpoints or `random`, the seed, how many batches) with clear errors
for bad input, and a trainer on the study's mask-aware views with a checkpoint loaded into its model. They read
on this machine's CPU in fp32 whichever protocol (`--protocol`) trained the checkpoints."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import torch

from freeatm.api import parse_resource
from freeatm.runtime.pretrain.loop import Trainer
from freeatm.runtime.shapesbench import study


def parser(description: str, batches: int) -> argparse.ArgumentParser:
    """The diagnostics' arguments: data, checkpoints, --seed, --batches (default `batches`), --protocol."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("data", type=Path, help="a study dataset with true masks (<workdir>/seed-N/data/true)")
    p.add_argument("checkpoints", nargs="+", help="contrastive training checkpoints (.pt) or `random`")
    p.add_argument("--seed", type=int, default=0, help="the dataset's seed (the study's seed)")
    p.add_argument("--batches", type=int, default=batches, help="batches of the study's size to read")
    p.add_argument(
        "--protocol",
        choices=study.PROTOCOLS,
        default="cpu",
        help="the study protocol the data and checkpoints are of",
    )
    return p


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """The study protocol of `args.protocol`, read on the CPU in fp32 (its data, sizes, batch and backbone)."""
    return study.PROTOCOLS[args.protocol] | {"gpus": 0, "precision": "fp32"}


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed arguments; exit 2 with a message for a missing dataset or checkpoint file."""
    args = p.parse_args()
    if not (args.data / "manifest.json").is_file():
        p.error(f"{args.data}: not a study dataset (no manifest.json)")
    for c in args.checkpoints:
        if c != "random" and not Path(c).is_file():
            p.error(f"{c}: no such checkpoint file")
    if args.batches < 1:
        p.error("--batches must be at least 1")
    return args


def label(checkpoint: str) -> str:
    """A checkpoint's column name: its arm (<arm>/checkpoints/step-N.pt) or `random`."""
    return checkpoint if checkpoint == "random" else Path(checkpoint).parent.parent.name


def trainer(
    arm: str, data: Path, checkpoint: str, seed: int, p: dict[str, Any], may_lack: tuple[str, ...] = ()
) -> Trainer:
    """The trainer of study arm `arm` under protocol `p` on `data` with `seed`'s draws, its model holding
    `checkpoint` ("random": the initialisation of `seed`). Modules named in `may_lack` (e.g. "silhouette_head.")
    keep their initialisation when the checkpoint has none; exit 1 with a message when the file is not a
    contrastive training checkpoint of `p`'s backbone or lacks another module."""
    backbone = p["backbone"]
    t = Trainer(
        parse_resource(study._pretrain_doc(study.ARMS[arm], seed, data.as_uri(), "file:///dev/null", p))
    )
    if checkpoint == "random":
        return t
    not_ours = f"{checkpoint}: not a contrastive training checkpoint of {backbone}"
    try:
        state = torch.load(checkpoint, weights_only=False)["model"]
        missing = t.model.load_state_dict(state, strict=False).missing_keys
    except (RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as e:
        raise SystemExit(f"{not_ours}: {str(e).splitlines()[0]}") from None
    if any(not k.startswith(may_lack) for k in missing):
        raise SystemExit(f"{not_ours} (missing {', '.join(missing[:3])})")
    return t
