"""Local mode (`freeatm run`): the operator's pipeline on one machine, without a cluster (DESIGN §7).

Same validation, same dependency order, same reference resolution, same runtime entry points: each stage is a
`freeatm-runtime` subprocess (a crash stays contained), its progress read from the JSON-lines file the
runtime's progress reporter writes, its outputs from the runtime's result file. Each resource's status, in the
cluster's shape, is written to WORKDIR/status/<name>.json; a rerun skips stages that Succeeded with the same
resolved spec.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from freeatm.api import KINDS, Resource, Status
from freeatm.api.conditions import now, with_phase
from freeatm.api.graph import topological_order
from freeatm.api.manifests import Manifests
from freeatm.api.resolve import resolve, spec_digest
from freeatm.api.status import Outputs

PROGRESS_INTERVAL = "0.5"  # seconds between progress lines (the cluster default is 5)


@dataclass
class Stage:
    resource: Resource

    @property
    def kind(self) -> str:
        return self.resource.kind  # type: ignore[attr-defined]

    @property
    def name(self) -> str:
        return self.resource.metadata.name

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


class Workdir:
    """Where local mode keeps specs, statuses, logs, progress, outputs and the report."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        for sub in ("specs", "status", "logs", "progress", "results", "outputs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def path(self, sub: str, stage: Stage, suffix: str) -> Path:
        return self.root / sub / f"{stage.kind}-{stage.name}{suffix}"

    def output_uri(self, stage: Stage) -> str:
        return (self.root / "outputs" / stage.name).as_uri()

    def read_status(self, stage: Stage) -> tuple[Status, str | None]:
        path = self.path("status", stage, ".json")
        if not path.exists():
            return Status(phase="Pending"), None
        doc = json.loads(path.read_text())
        return Status.model_validate(doc["status"]), doc.get("specDigest")

    def write_status(self, stage: Stage, status: Status, digest: str | None) -> None:
        doc = {
            "apiVersion": stage.resource.api_version,
            "kind": stage.kind,
            "metadata": {"name": stage.name},
            "specDigest": digest,
            "status": status.to_wire(),
        }
        self.path("status", stage, ".json").write_text(json.dumps(doc, indent=2))


def in_workdir(resource: Resource, workdir: Workdir) -> Resource:
    """The resource with its output moved into the workdir (local mode never writes outside it)."""
    local = resource.model_copy(deep=True)
    local.spec.output.uri = workdir.output_uri(Stage(resource))  # type: ignore[attr-defined]
    local.spec.output.secret_ref = None  # type: ignore[attr-defined]
    return local


def run_pipeline(manifests: Manifests, workdir_path: Path, force: bool, console: Console) -> int:
    """Run every resource in dependency order; 0 when all succeed, 1 otherwise, 130 on Ctrl-C."""
    workdir = Workdir(workdir_path)
    stages = [Stage(in_workdir(r, workdir)) for r in topological_order(manifests.resources)]
    outputs: dict[tuple[str, str], Outputs] = {}
    failed: set[tuple[str, str]] = set()
    console.print(f"[bold]freeatm run[/]: {len(stages)} stage(s), workdir {workdir.root}")
    for stage in stages:
        status, old_digest = workdir.read_status(stage)
        bad_deps = [d for d in stage.resource.dependencies() if d in failed]
        if bad_deps:
            names = ", ".join(f"{k}/{n}" for k, n in bad_deps)
            status = with_phase(status, "Failed", "DependencyFailed", f"dependency failed: {names}")
            workdir.write_status(stage, status, None)
            console.print(f"[red]✗[/] {stage.kind}/{stage.name}: skipped, dependency failed ({names})")
            failed.add(stage.key)
            continue
        resolved = resolve(stage.resource, outputs)
        digest = spec_digest(resolved)
        if not force and status.phase == "Succeeded" and old_digest == digest and status.outputs:
            console.print(f"[green]✓[/] {stage.kind}/{stage.name}: unchanged since its last success, skipped")
            outputs[stage.key] = status.outputs
            continue
        status = with_phase(
            status, "Running", "Started", f"running freeatm-runtime {KINDS[stage.kind].runtime_command}"
        )
        status.start_time, status.completion_time, status.outputs = now(), None, None
        workdir.write_status(stage, status, digest)
        try:
            code, result = run_stage(stage, resolved, workdir, console)
        except KeyboardInterrupt:
            status = with_phase(status, "Failed", "Interrupted", "interrupted (Ctrl-C); rerun to resume")
            workdir.write_status(stage, status, digest)
            console.print(
                f"[yellow]interrupted[/]: {stage.kind}/{stage.name} left resumable state; rerun to resume"
            )
            return 130
        status.completion_time = now()
        if code == 0:
            outputs[stage.key] = Outputs.model_validate(result)
            status.outputs = outputs[stage.key]
            status = with_phase(status, "Succeeded", "Completed", "workload finished")
            console.print(f"[green]✓[/] {stage.kind}/{stage.name}: done")
        else:
            message = result.get("error") or f"exit code {code}"
            status = with_phase(status, "Failed", "InvalidInput" if code == 65 else "WorkloadFailed", message)
            failed.add(stage.key)
            log = workdir.path("logs", stage, ".log")
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            console.print(
                f"[red]✗[/] {stage.kind}/{stage.name} failed (exit {code}): {message}\n[dim]{tail}[/]\nlog: {log}"
            )
        workdir.write_status(stage, status, digest)
    return 1 if failed else 0


def run_stage(
    stage: Stage, resolved: Resource, workdir: Workdir, console: Console
) -> tuple[int, dict[str, Any]]:
    """Run one stage's runtime subprocess with a progress bar; return its exit code and result."""
    spec_file = workdir.path("specs", stage, ".json")
    spec_file.write_text(json.dumps(resolved.to_wire(), indent=2))
    progress_file, result_file = (
        workdir.path("progress", stage, ".jsonl"),
        workdir.path("results", stage, ".json"),
    )
    for f in (progress_file, result_file):
        f.unlink(missing_ok=True)
    env = {
        **os.environ,
        "FREEATM_PROGRESS_FILE": str(progress_file),
        "FREEATM_RESULT_FILE": str(result_file),
        "FREEATM_PROGRESS_INTERVAL": PROGRESS_INTERVAL,
        "FREEATM_CACHE_DIR": str(workdir.root / "cache"),
    }
    command = [
        sys.executable,
        "-m",
        "freeatm.runtime.cli",
        KINDS[stage.kind].runtime_command,
        "--spec",
        str(spec_file),
    ]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with workdir.path("logs", stage, ".log").open("w") as log, Progress(*columns, console=console) as bars:
        task = bars.add_task(f"{stage.kind}/{stage.name}", total=None, unit="", detail="starting")
        child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        seen = 0
        try:
            while child.poll() is None:
                time.sleep(0.2)
                seen = _follow(progress_file, seen, bars, task)
        except KeyboardInterrupt:
            os.killpg(child.pid, signal.SIGINT)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
            raise
        _follow(progress_file, seen, bars, task)
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return child.returncode, result


def _follow(progress_file: Path, seen: int, bars: Progress, task: Any) -> int:
    """Apply the progress lines written since `seen` to the bar; return how many lines were read."""
    if not progress_file.exists():
        return seen
    lines = progress_file.read_text().splitlines()
    for line in lines[seen:]:
        try:
            p = json.loads(line)
        except json.JSONDecodeError:
            return seen  # a line still being written
        detail = " ".join(
            f"{k} {p[k]:.4g}" if isinstance(p[k], float) else f"{k} {p[k]}"
            for k in ("epoch", "loss", "message")
            if k in p
        )
        bars.update(
            task, completed=p.get("done"), total=p.get("total"), unit=p.get("unit", ""), detail=detail
        )
        seen += 1
    return seen


def results_table(workdir_path: Path) -> Table | None:
    """The evaluation results of every EvalJob in the workdir: one row per benchmark metric, one column per checkpoint."""
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    checkpoints: list[str] = []
    for path in sorted((workdir_path / "status").glob("EvalJob-*.json")):
        status = json.loads(path.read_text())["status"]
        for r in (status.get("outputs") or {}).get("results", []):
            rows.setdefault((path.stem.removeprefix("EvalJob-"), r["benchmark"], r["metric"]), {})[
                r["checkpoint"]
            ] = r["value"]
            if r["checkpoint"] not in checkpoints:
                checkpoints.append(r["checkpoint"])
    if not rows:
        return None
    table = Table(title="Evaluation results")
    for col in ("EvalJob", "benchmark", "metric", *checkpoints):
        table.add_column(col, justify="right" if col in checkpoints else "left")
    for (job, bench, metric), values in rows.items():
        best = max(values.values())
        table.add_row(
            job,
            bench,
            metric,
            *(
                (f"[bold]{values[c]:.4f}[/]" if values[c] == best and len(values) > 1 else f"{values[c]:.4f}")
                if c in values
                else "—"
                for c in checkpoints
            ),
        )
    return table
