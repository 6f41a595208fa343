"""Images a second of one pretraining loader process on a study protocol's data, per arm: how many loader workers
a GPU needs before its steps wait on data.

One process, one thread, no workers: each arm's loader (shard reading, decoding, the two views' crops and colour
jitter, the mask-aware crop search where the arm has masks) is iterated over one epoch of the protocol's scenes,
and nothing is trained. A GPU step of batch B waits on data unless the loader workers together deliver B images
in less time than the step takes, so workers × this figure is the ceiling on a run's images a second.

    python benchmarks/loader_speed.py                        # the GPU form: crowd scenes at 64 px
    python benchmarks/loader_speed.py --protocol cpu --images 1024

About 15 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from freeatm.api import parse_resource
from freeatm.runtime.pretrain.loop import Trainer
from freeatm.runtime.shapesbench import study


def images_per_second(arm: str, dataset: str, output: str, p: dict) -> float:
    """One epoch of `arm`'s loader over `dataset`, in images (each two views) a second."""
    trainer = Trainer(parse_resource(study._pretrain_doc(study.ARMS[arm], 0, dataset, output, p)))
    start, images = time.perf_counter(), 0
    for batch in trainer.batches(0, workers=0):
        images += batch["view1"].shape[0]
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocol", choices=study.PROTOCOLS, default="gpu")
    parser.add_argument("--images", type=int, default=1024, help="scenes of the protocol's variant and size")
    parser.add_argument("--arms", default="baseline,true-masks,silhouette-simclr-w64")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # the protocol's data and views, read here on the CPU: only the loader runs
    p = study.PROTOCOLS[args.protocol] | {"gpus": 0, "precision": "fp32", "images": args.images}
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        study.write_shapes_dataset(
            f"file://{tmp}/data", args.images, size=p["imageSize"], variant=p["variant"], shard_size=256
        )
        for arm in args.arms.split(","):
            rates[arm] = images_per_second(arm, f"file://{tmp}/data", f"file://{tmp}/{arm}", p)
    table = Table(
        title=f"one loader process, {args.protocol} protocol ({p['variant']} at {p['imageSize']} px)"
    )
    workers = p["loaderWorkers"]
    table.add_column("arm", no_wrap=True)
    table.add_column("images/s", justify="right")
    table.add_column(f"ms a batch of {p['batchSize']}", justify="right")
    table.add_column(f"× the protocol's {workers} workers", justify="right")
    for arm, rate in rates.items():
        table.add_row(arm, f"{rate:.0f}", f"{1000 * p['batchSize'] / rate:.0f}", f"{rate * workers:.0f}")
    Console().print(table)
    print(json.dumps({"protocol": args.protocol, "loaderWorkers": workers, "images_per_s": rates}))


if __name__ == "__main__":
    main()
