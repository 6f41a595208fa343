"""The EvalJob's report: results.json (everything, machine-readable), report.md (side-by-side Markdown table,
one column per checkpoint, best score in bold) and plots/scores.png (grouped bars).

A run's note (job.text_side) labels its cells in report.md: which text tower scored retrieval, or
"n/a: no text tower" in the rows of a text-tower protocol that an image-only checkpoint cannot run."""

from __future__ import annotations

import io
import json
from typing import Any

from ..storage import Store

REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"
PLOT_FILE = "plots/scores.png"


def markdown_table(
    rows: list[dict[str, Any]], checkpoints: list[str], notes: dict[tuple[str, str], str] | None = None
) -> str:
    """Rows (benchmark, metric) x columns (checkpoints); the best value of each row in bold; `notes`
    ((benchmark, checkpoint) -> text) follow the value of their cells or stand for a missing one."""
    notes = notes or {}
    keys: list[tuple[str, str]] = []
    values: dict[tuple[str, str, str], float] = {}
    for r in rows:
        key = (r["benchmark"], r["metric"])
        if key not in keys:
            keys.append(key)
        values[(r["benchmark"], r["metric"], r["checkpoint"])] = r["value"]
    delta = len(checkpoints) == 2  # baseline vs one variant: show the difference too
    header = "| benchmark | metric | " + " | ".join(_cell(c) for c in checkpoints) + " |"
    if delta:
        header += f" Δ ({_cell(checkpoints[1])} − {_cell(checkpoints[0])}) |"
    lines = [header, "|---|---|" + "---:|" * (len(checkpoints) + delta)]
    for bench, metric in keys:
        present = [values[(bench, metric, c)] for c in checkpoints if (bench, metric, c) in values]
        best = max(present) if len(present) > 1 else None
        cells = []
        for c in checkpoints:
            v = values.get((bench, metric, c))
            note = notes.get((bench, c))
            text = (note or "–") if v is None else f"{v:.4f}"
            text = f"**{text}**" if v is not None and v == best else text
            cells.append(f"{text} ({note})" if v is not None and note else text)
        if delta:
            a, b = (values.get((bench, metric, c)) for c in checkpoints)
            cells.append("–" if a is None or b is None else f"{b - a:+.4f}")
        lines.append(f"| {bench} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(
    job: str,
    checkpoints: list[dict[str, Any]],
    benchmarks: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    plot: bool,
    notes: dict[tuple[str, str], str] | None = None,
) -> str:
    out = [f"# Evaluation: {job}", "", "## Results", ""]
    out.append(markdown_table(rows, [c["label"] for c in checkpoints], notes))
    out += ["", "Bold: the best checkpoint of the row. Scores are fractions (1.0 = 100%)."]
    if plot:
        out += ["", f"![scores]({PLOT_FILE})"]
    out += ["", "## Checkpoints", "", "| label | checkpoint | backbone and method |", "|---|---|---|"]
    out += [f"| {_cell(c['label'])} | `{c['uri']}` | {_cell(c['description'])} |" for c in checkpoints]
    out += [
        "",
        "## Benchmarks",
        "",
        "| benchmark | protocol | dataset | train / val images | settings |",
        "|---|---|---|---|---|",
    ]
    for b in benchmarks:
        s = b["settings"]
        settings = ", ".join(
            f"{k}={s[k]}" for k in ("epochs", "lr", "batchSize", "imageSize", "k", "finetune") if k in s
        )
        out.append(
            f"| {b['id']} | {b['protocol']} | {b['format']} `{b['uri']}` | {b.get('trainImages', '?')} / "
            f"{b.get('valImages', '?')} | {settings} |"
        )
    return "\n".join(out) + "\n"


def render_plot(rows: list[dict[str, Any]], checkpoints: list[str]) -> bytes | None:
    """Grouped bar chart of every (benchmark, metric), one bar per checkpoint, as PNG bytes."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys: list[tuple[str, str]] = []
    for r in rows:
        if (r["benchmark"], r["metric"]) not in keys:
            keys.append((r["benchmark"], r["metric"]))
    values = {(r["benchmark"], r["metric"], r["checkpoint"]): r["value"] for r in rows}
    width = 0.8 / max(1, len(checkpoints))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(keys) * max(1, len(checkpoints)) / 2 + 2), 3.5))
    for j, ckpt in enumerate(checkpoints):
        xs = [i + (j - (len(checkpoints) - 1) / 2) * width for i in range(len(keys))]
        ys = [values.get((b, m, ckpt), 0.0) for b, m in keys]
        ax.bar(xs, ys, width=width, label=ckpt)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{b}\n{m}" for b, m in keys], fontsize=8)
    ax.set_ylabel("score")
    ax.set_ylim(0, max(1.0, max(values.values()) * 1.05))
    ax.legend(fontsize=8)
    ax.set_title("scores by checkpoint")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(
    store: Store,
    job: str,
    checkpoints: list[dict[str, Any]],
    benchmarks: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
) -> str:
    """Write results.json, the plot and report.md (last); return the report's URL."""
    labels = [c["label"] for c in checkpoints]
    results = {
        "job": job,
        "checkpoints": checkpoints,
        "benchmarks": benchmarks,
        "results": rows,
        "runs": runs,
    }
    store.write_bytes(RESULTS_FILE, json.dumps(results, indent=2).encode())
    png = render_plot(rows, labels)
    if png:
        store.write_bytes(PLOT_FILE, png)
    notes = {(r["benchmark"], r["checkpoint"]): r["note"] for r in runs if r.get("note")}
    store.write_bytes(
        REPORT_FILE, render_markdown(job, checkpoints, benchmarks, rows, png is not None, notes).encode()
    )
    return store.url(REPORT_FILE)
