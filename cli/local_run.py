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
    """Run one stage's runtime subprocesses with a progress bar; return the exit code and the stage's result.

    A SyntheticDataset with several workers runs like its Indexed Job: one process per completion index, in
    parallel, each owning a range of shards; the last to finish writes the manifest and reports its digest.
    """
    spec_file = workdir.path("specs", stage, ".json")
    spec_file.write_text(json.dumps(resolved.to_wire(), indent=2))
    workers = resolved.spec.workers if stage.kind == "SyntheticDataset" else 1  # type: ignore[attr-defined]
    command = [
        sys.executable,
        "-m",
        "freeatm.runtime.cli",
        KINDS[stage.kind].runtime_command,
        "--spec",
        str(spec_file),
    ]
    # Leave a core to the rest of the machine: OpenMP threads that wait on a busy core spin (DESIGN §8).
    threads = str(max(1, ((os.cpu_count() or 1) - 1) // workers))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    children: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    with workdir.path("logs", stage, ".log").open("w") as log, Progress(*columns, console=console) as bars:
        task = bars.add_task(f"{stage.kind}/{stage.name}", total=None, unit="", detail="starting")
        for index in range(workers):
            suffix = f"-{index}" if workers > 1 else ""
            progress_file = workdir.path("progress", stage, f"{suffix}.jsonl")
            result_file = workdir.path("results", stage, f"{suffix}.json")
            for f in (progress_file, result_file):
                f.unlink(missing_ok=True)
            env = {
                **os.environ,
                "FREEATM_PROGRESS_FILE": str(progress_file),
                "FREEATM_RESULT_FILE": str(result_file),
                "FREEATM_PROGRESS_INTERVAL": PROGRESS_INTERVAL,
                "FREEATM_CACHE_DIR": str(workdir.root / "cache"),
                "OMP_NUM_THREADS": threads,
            }
            if workers > 1:
                env["JOB_COMPLETION_INDEX"] = str(index)
            child = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            children.append((child, progress_file, result_file))
        try:
            while any(c.poll() is None for c, _, _ in children):
                time.sleep(0.2)
                _show([p for _, p, _ in children], bars, task)
        except KeyboardInterrupt:
            for child, _, _ in children:
                if child.poll() is None:
                    os.killpg(child.pid, signal.SIGINT)
            for child, _, _ in children:
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
            raise
        _show([p for _, p, _ in children], bars, task)
    results = [json.loads(r.read_text()) if r.exists() else {} for _, _, r in children]
    failed = [(c.returncode, res) for (c, _, _), res in zip(children, results, strict=True) if c.returncode]
    if failed:
        return failed[0]
    return 0, max(
        results, key=len
    )  # the worker that completed the dataset reports the most (its manifest digest)


def _show(progress_files: list[Path], bars: Progress, task: Any) -> None:
    """Show the newest progress line of each process, summed over the processes."""
    latest = []
    for path in progress_files:
        lines = path.read_text().splitlines() if path.exists() else []
        for line in reversed(lines):
            try:
                latest.append(json.loads(line))
                break
            except json.JSONDecodeError:  # a line still being written
                continue
    if not latest:
        return
    last = latest[-1]
    detail = " ".join(
        f"{k} {last[k]:.4g}" if isinstance(last[k], float) else f"{k} {last[k]}"
        for k in ("epoch", "loss", "message")
        if k in last
    )
    bars.update(
        task,
        completed=sum(p.get("done", 0) for p in latest),
        total=sum(p.get("total", 0) for p in latest),
        unit=last.get("unit", ""),
        detail=detail,
    )


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
