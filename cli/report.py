"""The local-mode report: pictures a person would rather look at, linked from WORKDIR/report.md.

- masks.png: generated images with each object word's attention mask overlaid (first shard of each dataset)
- loss.png: training loss curves of every MaskPretrainJob (baseline and mask-guided side by side)
- eval.png: the evaluation comparison as grouped bars, one colour per checkpoint
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from freeatm.api import KINDS

from .workdir import Workdir

COLOURS = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
    ],
    dtype=np.float32,
)


def _statuses(workdir: Path, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, status on the wire) of the stages of `kind` that Succeeded."""
    return [(n, s.to_wire()) for n, s in Workdir(workdir).statuses(kind) if s.phase == "Succeeded"]


def _samples(dataset_dir: Path, limit: int) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """(image, label map, record) of the first `limit` samples of a dataset's first shard."""
    from PIL import Image

    from freeatm.runtime.dataset_format import MANIFEST, read_shard
    from freeatm.runtime.storage import open_store

    manifest = json.loads((dataset_dir / MANIFEST).read_text())
    if not manifest.get("shards"):
        return []
    samples = []
    for sample in read_shard(open_store(f"file://{dataset_dir}"), manifest["shards"][0])[:limit]:
        mask = Image.fromarray(sample.mask).resize(sample.image.shape[1::-1], Image.NEAREST)
        samples.append((sample.image, np.asarray(mask), sample.record))
    return samples


def mask_grid(workdir: Path, target: Path, per_dataset: int = 8) -> bool:
    import matplotlib.pyplot as plt

    datasets = [
        (n, Path(urlsplit(s["outputs"]["uri"]).path)) for n, s in _statuses(workdir, "SyntheticDataset")
    ]
    rows = [(name, _samples(d, per_dataset)) for name, d in datasets if (d / "manifest.json").exists()]
    rows = [(n, s) for n, s in rows if s]
    if not rows:
        return False
    cols = max(len(s) for _, s in rows)
    fig, axes = plt.subplots(2 * len(rows), cols, figsize=(1.8 * cols, 3.9 * len(rows)), squeeze=False)
    for r, (name, samples) in enumerate(rows):
        for c in range(cols):
            top, bottom = axes[2 * r][c], axes[2 * r + 1][c]
            top.axis("off")
            bottom.axis("off")
            if c >= len(samples):
                continue
            image, mask, record = samples[c]
            overlay = image.astype(np.float32)
            for obj in record["objects"]:
                sel = mask == obj["label"]
                overlay[sel] = 0.45 * overlay[sel] + 0.55 * COLOURS[(obj["label"] - 1) % len(COLOURS)]
            top.imshow(image, interpolation="nearest")
            top.set_title(record["prompt"].replace(" and ", "\nand "), fontsize=6)
            bottom.imshow(overlay.astype(np.uint8), interpolation="nearest")
            bottom.set_title(", ".join(o["word"] for o in record["objects"]), fontsize=6)
        axes[2 * r][0].text(
            -0.1, 0.5, name, transform=axes[2 * r][0].transAxes, rotation=90, ha="right", va="center"
        )
    fig.suptitle("Generated images (top) and their free attention masks (bottom)")
    fig.tight_layout()
    fig.savefig(target, dpi=130)
    plt.close(fig)
    return True


def loss_curves(workdir: Path, target: Path) -> bool:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for name, _ in _statuses(workdir, "MaskPretrainJob"):
        path = workdir / "progress" / f"MaskPretrainJob-{name}.jsonl"
        points = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        points = [(p["step"], p["loss"]) for p in points if "step" in p and "loss" in p]
        if points:
            steps, losses = zip(*sorted(set(points)), strict=True)
            ax.plot(steps, losses, label=name, marker=".")
            drawn = True
    if drawn:
        ax.set(xlabel="step", ylabel="training loss", title="Pretraining loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(target, dpi=130)
    plt.close(fig)
    return drawn


def eval_chart(workdir: Path, target: Path) -> bool:
    import matplotlib.pyplot as plt

    results = [
        r for _, s in _statuses(workdir, "EvalJob") for r in (s.get("outputs") or {}).get("results", [])
    ]
    if not results:
        return False
    groups = list(dict.fromkeys(f"{r['benchmark']}\n{r['metric']}" for r in results))
    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in results))
    values = {(f"{r['benchmark']}\n{r['metric']}", r["checkpoint"]): r["value"] for r in results}
    width = 0.8 / len(checkpoints)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(groups)), 3.8))
    for i, ckpt in enumerate(checkpoints):
        xs = [g + i * width for g in range(len(groups))]
        bars = ax.bar(xs, [values.get((grp, ckpt), 0.0) for grp in groups], width, label=ckpt)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([g + width * (len(checkpoints) - 1) / 2 for g in range(len(groups))], groups, fontsize=8)
    ax.set(title="Evaluation: baseline vs mask-guided", ylabel="score")
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=130)
    plt.close(fig)
    return True


def one_seed_statement(results: list[dict[str, Any]]) -> list[str]:
    """What a single run's evaluation can and cannot say, as report lines: whether pretraining learnt something
    (baseline vs the random-init reference on the per-object probe, when both were scored) and that one seed
    cannot show a mask-guidance effect."""
    probe = {
        r["checkpoint"]: r["value"]
        for r in results
        if r["benchmark"].startswith("object-probe") and r["metric"] == "top1"
    }
    lines = []
    if "baseline" in probe and "random-init" in probe:
        gain = 100 * (probe["baseline"] - probe["random-init"])
        lines.append(
            f"Per-object probe (top-1): the SimCLR baseline scores {probe['baseline']:.3f}, a random-init backbone "
            f"{probe['random-init']:.3f} ({gain:+.1f} points): "
            + (
                "pretraining learnt object features."
                if gain >= 10
                else "pretraining learnt little; train longer."
            )
        )
    lines.append(
        "This is one seed. The difference between the baseline and the mask-guided checkpoint here is within the "
        "run-to-run noise of one pretraining and one probe (several points), so it cannot show whether the masks "
        "help, either way. The paired experiment that can — several seeds, positive and negative controls, 95% "
        "confidence intervals — is `freeatm shapesbench study` (docs/study.md)."
    )
    return lines


def write_report(workdir: Path) -> Path:
    """Draw the pictures and write WORKDIR/report.md linking them."""
    import matplotlib

    matplotlib.use("Agg")
    lines = ["# freeatm run report", "", "| resource | phase | reason | outputs |", "|---|---|---|---|"]
    for kind in KINDS:
        for name, status in Workdir(workdir).statuses(kind):
            ready = next((c for c in status.conditions if c.type == "Ready"), None)
            uri = status.outputs.uri if status.outputs else ""
            lines.append(f"| {kind}/{name} | {status.phase} | {ready.reason if ready else ''} | {uri} |")
    sections = [
        ("masks.png", "Free attention masks", mask_grid),
        ("loss.png", "Pretraining loss", loss_curves),
        ("eval.png", "Evaluation", eval_chart),
    ]
    for file, title, draw in sections:
        if draw(workdir, workdir / file):
            lines += ["", f"## {title}", "", f"![{title}]({file})"]
    results = [
        (n, r) for n, s in _statuses(workdir, "EvalJob") for r in (s.get("outputs") or {}).get("results", [])
    ]
    if results:
        lines += [
            "",
            "## Results",
            "",
            "| EvalJob | checkpoint | benchmark | metric | value |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {r['checkpoint']} | {r['benchmark']} | {r['metric']} | {r['value']:.4f} |"
            for n, r in results
        ]
    if results:
        lines += ["", "## What one run can show", "", *one_seed_statement([r for _, r in results])]
    report = workdir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
