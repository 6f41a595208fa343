"""Is the shape in the features but not linear? The study's object probe, linear and with an MLP, per arm.

Issue #12's readout: the study's primary metric is a linear probe on each object's mask-pooled frozen features.
A checkpoint can hold an object's shape in a form a linear layer cannot read, and pretraining can also remove
shape that the initialisation held. This scores the object-centric checkpoints of a study workdir on the study's
validation images twice, with the same features: the study's linear probe (the EvalJob `object-probe` with its
defaults) and a probe with one hidden layer (512 ReLU units, AdamW 1e-3, the same epochs and batch). Per arm it
prints both scores and the paired differences against the arm the study pairs it with (random init for the
baselines), with 95% intervals; random init and the supervised ceiling are the references. The last line is JSON.

    python benchmarks/shape_readout.py /work/study/work                # every object-centric arm it finds
    python benchmarks/shape_readout.py /work/study/work --arms baseline,true-masks --seeds 0 1
    python benchmarks/shape_readout.py /data/study-gpu --protocol gpu

Under the CPU protocol, a minute per five checkpoints on 2 cores (one pass over 2 × 1,024 images of 32 px).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from freeatm.api import parse_resource
from freeatm.api.eval_job import Benchmark
from freeatm.runtime.evaluate.classification import train_linear
from freeatm.runtime.evaluate.common import Settings, load_checkpoint, object_features
from freeatm.runtime.evaluate.datasets import Split
from freeatm.runtime.evaluate.job import open_benchmark, settings_for
from freeatm.runtime.evaluate.scores import topk_accuracy
from freeatm.runtime.shapesbench import study

HIDDEN = 512
MLP_LR = 1e-3


def train_mlp(x: Tensor, y: Tensor, classes: int, settings: Settings) -> nn.Module:
    """A standardising probe with one hidden layer, fitted like the linear probe (same epochs, batch, seed)."""
    torch.manual_seed(settings.seed)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    net = nn.Sequential(nn.Linear(x.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, classes))
    opt = torch.optim.AdamW(net.parameters(), lr=MLP_LR, weight_decay=1e-4)
    xn = (x - mean) / std
    for _ in range(settings.epochs):
        for idx in torch.randperm(x.shape[0]).split(settings.batch_size):
            loss = F.cross_entropy(net(xn[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return nn.Sequential(_Standardise(mean, std), net)


class _Standardise(nn.Module):
    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def object_probe(p: dict) -> Benchmark:
    """The study's object-probe benchmark under protocol `p`, with the EvalJob's defaults."""
    doc = {
        "apiVersion": "freeatm.io/v1alpha1",
        "kind": "EvalJob",
        "metadata": {"name": "shape-readout"},
        "spec": {
            "checkpoints": [{"uri": study._random_uri(p), "label": "checkpoint"}],
            "benchmarks": [
                {"name": "object-probe", "dataset": {"format": "shapes", "uri": study._val_uri(p)}}
            ],
            "output": {"uri": "file:///dev/null"},
        },
    }
    return parse_resource(doc).spec.benchmarks[0]


def readout(uri: str, bench: Benchmark, train: Split, val: Split) -> dict[str, float]:
    """{"linear": top-1, "mlp": top-1} of `bench` on the checkpoint at `uri` (`train`, `val`: its splits)."""
    ckpt = load_checkpoint("checkpoint", uri)
    settings = settings_for(bench, ckpt)
    train_x, train_y = object_features(ckpt, train, settings)
    val_x, val_y = object_features(ckpt, val, settings)
    scores = {}
    for name, fit in (("linear", train_linear), ("mlp", train_mlp)):
        probe = fit(train_x, train_y, len(train.classes), settings)
        with torch.no_grad():
            scores[name] = topk_accuracy(probe(val_x), val_y, 1)
    return scores


def _diff(entry: dict) -> str:
    if entry["ci_low"] is None:
        return f"{100 * entry['mean_diff']:+.1f}"
    return (
        f"{100 * entry['mean_diff']:+.1f} [{100 * entry['ci_low']:+.1f}, {100 * entry['ci_high']:+.1f}]"
        f" {entry['wins']}/{entry['losses']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a `freeatm shapesbench study` workdir")
    parser.add_argument(
        "--protocol", choices=study.PROTOCOLS, default="cpu", help="the protocol the workdir was run with"
    )
    parser.add_argument("--arms", default="all", help="arms or arm sets, as the study's --arms")
    parser.add_argument("--seeds", type=int, nargs="*", help="seeds to score (default: every seed-N found)")
    args = parser.parse_args()
    p = study.PROTOCOLS[args.protocol]
    seeds = args.seeds or sorted(int(d.name[5:]) for d in args.workdir.glob("seed-*"))
    arms = [
        a
        for a in study.resolve_arms(args.arms)
        if study.ARMS[a].scoring is study.OBJECTS
        and all((args.workdir / f"seed-{s}" / a / "export" / "metadata.json").exists() for s in seeds)
    ]
    references = {
        study.REFERENCE: study._random_uri(p),
        study.CEILING: f"file://{args.workdir / study.CEILING}",
    }
    bench = object_probe(p)
    train, val = open_benchmark(bench)
    reference = {name: readout(uri, bench, train, val) for name, uri in references.items()}
    scores = {
        s: {a: readout(f"file://{args.workdir / f'seed-{s}' / a}", bench, train, val) for a in arms}
        for s in seeds
    }
    result: dict[str, dict] = {name: {"mean": r} for name, r in reference.items()}
    table = Table("arm", "vs", "linear", "MLP", "linear diff (points)", "MLP diff (points)",
                  title=f"object probe, {len(seeds)} seeds")  # fmt: skip
    for name, r in reference.items():
        table.add_row(name, "", f"{r['linear']:.3f}", f"{r['mlp']:.3f}", "", "")
    for arm in arms:
        versus = study.ARMS[arm].versus
        entry: dict = {"vs": versus, "mean": {}, "paired": {}}
        for probe in ("linear", "mlp"):
            entry["mean"][probe] = sum(scores[s][arm][probe] for s in seeds) / len(seeds)
            base = [
                reference[versus][probe] if versus == study.REFERENCE else scores[s][versus][probe]
                for s in seeds
            ]
            entry["paired"][probe] = study.paired(
                [scores[s][arm][probe] - b for s, b in zip(seeds, base, strict=True)]
            )
        result[arm] = entry
        table.add_row(arm, versus, f"{entry['mean']['linear']:.3f}", f"{entry['mean']['mlp']:.3f}",
                      _diff(entry["paired"]["linear"]), _diff(entry["paired"]["mlp"]))  # fmt: skip
    Console().print(table)
    print(json.dumps({"seeds": seeds, "arms": result, "scores": {str(s): v for s, v in scores.items()}}))


if __name__ == "__main__":
    main()
