"""Throughput of mask-guided pretraining vs its baseline, for contrastive (SimCLR ± mask-aware crops and the
object term; and ± those with the opt-in silhouette term), MIM (MAE ± guided masking and object-weighted loss) and VLP (CLIP ± region–phrase alignment), on
the same data in one run.

    python benchmarks/pretrain.py [--images 64] [--batch 8] [--steps 48] [--mim-steps 64] [--vlp-steps 48]
    python benchmarks/pretrain.py --gpu --precision bf16 --workers 8 --batch 64 --images 512   # GPU check

Each step is timed end to end in one process (fetching the batch — shard reading, decoding, augmentation — then
forward, backward, optimiser step; loader workers off by default so the data-side cost of the masks is counted
in full). Baseline and mask-guided steps alternate one by one (order alternating), and the ratio is the median
over i of baseline step i's time ÷ mask-guided step i's time: the two steps of a pair ran back to back, so
load on the machine that lasts that long cancels, and the median drops the pairs a burst of load split. Each
arm's images/s is its median step (the ratio of the two medians is printed beside). Both the wall clock and
this process's CPU time are measured; with one thread and no loader workers all the work is in this thread,
so CPU time counts the work itself and the ratios use it (`--clock` overrides). The defaults are backbones
whose feature grid resolves the objects (4×4 or more). The last line is a JSON object with
`contrastive_ratio`, `mim_ratio` and `vlp_ratio` (mask-guided images/s ÷ baseline images/s; targets ≥ 0.97, VLP
≥ 0.95) and `silhouette_ratio` (the contrastive fixes with the silhouette term on; no target: it is opt-in).
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
from freeatm.runtime.pretrain.distributed import DistInfo
from freeatm.runtime.pretrain.loop import Trainer
from freeatm.runtime.shapesbench.study import write_shapes_dataset


def job(
    dataset: str,
    output: str,
    framework: str,
    use_masks: bool,
    backbone: str,
    size: int,
    batch: int,
    workers: int,
    extra: dict,
    precision: str = "fp32",
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
                "training": {
                    "epochs": 100,
                    "batchSize": batch,
                    "imageSize": size,
                    "loaderWorkers": workers,
                    "precision": precision,
                },
                "distributed": {"gpusPerNode": 1 if precision != "fp32" else 0},
                "output": {"uri": output},
            },
        }
    )


def endless(trainer: Trainer):
    """The trainer's batches, epoch after epoch."""
    epoch = 0
    while True:
        yield from trainer.batches(epoch)
        epoch += 1


def timed_step(trainer: Trainer, batches) -> tuple[float, float]:
    """(wall, CPU) seconds of one step: fetching (reading, decoding, augmenting) the batch and training on it."""
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train_step(next(batches))
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(
    dataset: str,
    tmp: Path,
    framework: str,
    backbone: str,
    size: int,
    steps: int,
    args,
    extra: dict,
    label: str | None = None,
) -> dict:
    """Images/s of baseline and mask-guided per clock and their ratio, `steps` steps each, interleaved; `label`
    names the comparison (default: the framework)."""
    label = label or framework
    variants = ("baseline", "guided")
    device = torch.device("cuda" if args.gpu else "cpu")
    dist = DistInfo(0, 1, 0, device)
    trainers = {
        v: Trainer(job(dataset, f"file://{tmp}/{label}-{v}", framework, v == "guided", backbone, size,
                       args.batch, args.workers, extra, args.precision), dist)
        for v in variants
    }  # fmt: skip
    batches = {v: endless(trainers[v]) for v in variants}
    for v in variants:
        for _ in range(args.warmup):
            timed_step(trainers[v], batches[v])
    seconds: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for i in range(steps):
        for v in variants if i % 2 == 0 else variants[::-1]:
            seconds[v].append(timed_step(trainers[v], batches[v]))
    result = {}
    for clock, k in (("wall", 0), ("cpu", 1)):
        rate = {v: args.batch / statistics.median(t[k] for t in seconds[v]) for v in variants}
        # step i of one arm ran right beside step i of the other: their ratio cancels load that lasts a pair
        paired = statistics.median(
            b[k] / g[k] for b, g in zip(seconds["baseline"], seconds["guided"], strict=True)
        )
        result[clock] = {**rate, "ratio": paired, "ratio_of_medians": rate["guided"] / rate["baseline"]}
        print(
            f"{label:12s} {backbone} {size}px batch {args.batch}, {steps} steps each, {clock:4s} clock: "
            f"baseline {rate['baseline']:7.2f} img/s, mask-guided {rate['guided']:7.2f} img/s "
            f"{trainers['guided'].fixes}  ratio {paired:.3f} (of the medians {result[clock]['ratio_of_medians']:.3f})",
            flush=True,
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=48, help="timed contrastive steps per variant")
    parser.add_argument(
        "--mim-steps", type=int, default=64, help="timed MIM steps per variant (cheaper steps)"
    )
    parser.add_argument("--vlp-steps", type=int, default=48, help="timed VLP steps per variant")
    parser.add_argument(
        "--silhouette-steps", type=int, default=48, help="timed steps per variant with the silhouette term"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, default=0, help="loader workers (0: data cost counted in full)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--contrastive-backbone", default="resnet18_os8")
    parser.add_argument("--contrastive-size", type=int, default=32)
    parser.add_argument("--mim-backbone", default="vit_tiny")
    parser.add_argument("--mim-size", type=int, default=64)
    parser.add_argument("--vlp-backbone", default="resnet18_os8")
    parser.add_argument("--vlp-size", type=int, default=32)
    parser.add_argument("--gpu", action="store_true", help="train on CUDA device 0 (the GPU check)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast (GPU)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        help="which clock the ratios use; default: cpu when the whole work runs in this one thread (workers 0, "
        "threads 1: immune to other load on a shared machine), else wall",
    )
    parser.add_argument(
        "--stat",
        choices=("min", "median"),
        default="min",
        help="each arm's step time: fastest or median step",
    )
    args = parser.parse_args()
    if args.precision != "fp32" and not args.gpu:
        parser.error("--precision bf16/fp16 needs --gpu")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="freeatm-bench-") as tmp:
        root = Path(tmp)
        dataset = f"file://{root}/shapes"
        write_shapes_dataset(dataset, args.images, seed=0, size=32, shard_size=16)
        c = compare(
            dataset,
            root,
            "contrastive",
            args.contrastive_backbone,
            args.contrastive_size,
            args.steps,
            args,
            {},
        )
        m = compare(
            dataset, root, "mim", args.mim_backbone, args.mim_size, args.mim_steps, args,
            {"objectWeightedLoss": True},
        )  # fmt: skip
        v = compare(dataset, root, "vlp", args.vlp_backbone, args.vlp_size, args.vlp_steps, args, {})
        sil = compare(
            dataset, root, "contrastive", args.contrastive_backbone, args.contrastive_size,
            args.silhouette_steps, args, {"silhouette": True}, label="silhouette",
        )  # fmt: skip
    clock = args.clock or ("cpu" if args.workers == 0 and args.threads == 1 else "wall")
    print(
        json.dumps(
            {
                "contrastive_ratio": round(c[clock]["ratio"], 4),
                "mim_ratio": round(m[clock]["ratio"], 4),
                "vlp_ratio": round(v[clock]["ratio"], 4),
                "silhouette_ratio": round(sil[clock]["ratio"], 4),
                "clock": clock,
                "contrastive_ratio_wall": round(c["wall"]["ratio"], 4),
                "mim_ratio_wall": round(m["wall"]["ratio"], 4),
                "vlp_ratio_wall": round(v["wall"]["ratio"], 4),
                "contrastive_ratio_of_medians": round(c[clock]["ratio_of_medians"], 4),
                "mim_ratio_of_medians": round(m[clock]["ratio_of_medians"], 4),
                "vlp_ratio_of_medians": round(v[clock]["ratio_of_medians"], 4),
                "contrastive_images_per_s": {k: round(c[clock][k], 2) for k in ("baseline", "guided")},
                "mim_images_per_s": {k: round(m[clock][k], 2) for k in ("baseline", "guided")},
                "vlp_images_per_s": {k: round(v[clock][k], 2) for k in ("baseline", "guided")},
                "backbones": {
                    "contrastive": args.contrastive_backbone,
                    "mim": args.mim_backbone,
                    "vlp": args.vlp_backbone,
                },
                "threads": args.threads,
                "workers": args.workers,
                "batch": args.batch,
                "steps": {
                    "contrastive": args.steps,
                    "mim": args.mim_steps,
                    "vlp": args.vlp_steps,
                    "silhouette": args.silhouette_steps,
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
