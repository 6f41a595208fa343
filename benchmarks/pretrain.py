"""Throughput of mask-guided pretraining vs its baseline, for contrastive (SimCLR ± mask-aware crops and the
object term) and MIM (MAE ± guided masking and object-weighted loss), on the same data in one run.

    python benchmarks/pretrain.py [--images 64] [--batch 16] [--rounds 3] [--steps 3]

Each measurement is end to end in one process (shard reading, decoding, augmentation, forward, backward,
optimiser step; loader workers off so the data-side cost of the masks is counted in full). Baseline and
mask-guided runs alternate round by round and the median rate of each is compared, which cancels most drift
from other load on the machine. The last line is a JSON object with `contrastive_ratio` and `mim_ratio`
(mask-guided images/s ÷ baseline images/s; target ≥ 0.95).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from freeatm.api import parse_resource
from freeatm.runtime.pretrain.loop import Trainer
from freeatm.runtime.study import write_shapes_dataset


def job(
    dataset: str,
    output: str,
    framework: str,
    use_masks: bool,
    backbone: str,
    size: int,
    batch: int,
    extra: dict,
):
    method = {"framework": framework, "useMasks": use_masks}
    if use_masks:
        method.update(extra)
    return parse_resource(
        {
            "apiVersion": "freeatm.io/v1alpha1",
            "kind": "MaskPretrainJob",
            "metadata": {"name": "bench"},
            "spec": {
                "dataset": {"uri": dataset},
                "method": method,
                "backbone": backbone,
                "training": {"epochs": 100, "batchSize": batch, "imageSize": size, "loaderWorkers": 0},
                "output": {"uri": output},
            },
        }
    )


def rate(trainer: Trainer, steps: int, warmup: int, epoch: int) -> float:
    """Images per second over `steps` training steps after `warmup` untimed ones."""
    it = iter(trainer.batches(epoch))
    for _ in range(warmup):
        trainer.train_step(next(it))
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(it))
    return steps * trainer.local_batch / (time.perf_counter() - start)


def compare(dataset: str, tmp: Path, framework: str, backbone: str, size: int, args, extra: dict) -> dict:
    trainers = {
        variant: Trainer(job(dataset, f"file://{tmp}/{framework}-{variant}", framework, variant == "guided",
                             backbone, size, args.batch, extra))
        for variant in ("baseline", "guided")
    }  # fmt: skip
    rates: dict[str, list[float]] = {"baseline": [], "guided": []}
    for r in range(args.rounds):
        order = ("baseline", "guided") if r % 2 == 0 else ("guided", "baseline")
        for variant in order:
            rates[variant].append(rate(trainers[variant], args.steps, args.warmup, r))
    base, guided = statistics.median(rates["baseline"]), statistics.median(rates["guided"])
    fixes = trainers["guided"].fixes
    print(
        f"{framework:12s} {backbone} {size}px batch {args.batch}: baseline {base:7.1f} img/s, "
        f"mask-guided {guided:7.1f} img/s {fixes}  ratio {guided / base:.3f}"
        f"   (rounds: {[round(x, 1) for x in rates['baseline']]} vs {[round(x, 1) for x in rates['guided']]})",
        flush=True,
    )
    return {"baseline": base, "guided": guided, "ratio": guided / base}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--contrastive-backbone", default="resnet18")
    parser.add_argument("--contrastive-size", type=int, default=32)
    parser.add_argument("--mim-backbone", default="vit_tiny")
    parser.add_argument("--mim-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="freeatm-bench-") as tmp:
        root = Path(tmp)
        dataset = f"file://{root}/shapes"
        write_shapes_dataset(dataset, args.images, seed=0, size=32, shard_size=16)
        c = compare(dataset, root, "contrastive", args.contrastive_backbone, args.contrastive_size, args, {})
        m = compare(
            dataset, root, "mim", args.mim_backbone, args.mim_size, args, {"objectWeightedLoss": True}
        )
    print(
        json.dumps(
            {
                "contrastive_ratio": round(c["ratio"], 4),
                "mim_ratio": round(m["ratio"], 4),
                "contrastive_images_per_s": {k: round(c[k], 2) for k in ("baseline", "guided")},
                "mim_images_per_s": {k: round(m[k], 2) for k in ("baseline", "guided")},
                "threads": args.threads,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
