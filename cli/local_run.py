"""Local mode (`freeatm run`): the operator's pipeline on one machine, without a cluster
(docs/architecture.md#local-mode).

Same validation, same dependency order, same reference resolution, same runtime entry points: each stage is a
`freeatm-runtime` subprocess (a crash stays contained), its progress read from the JSON-lines file the
runtime's progress reporter writes, its outputs from the runtime's result file. The workdir's layout, lock and
status files are cli/workdir.py's.

A stage is identified by its digest: its spec as declared, less the output URI and the cluster's scheduling
fields, and its dependencies' digests. A rerun skips a stage that Succeeded for the same digest; a changed
spec runs into a fresh output directory. The run owns its processes: they stay in its process group and
watch its lifeline (their stdin), so they stop with it; Ctrl-C, SIGTERM or SIGHUP stop them (SIGTERM, then
SIGKILL after GRACE_SECONDS) and mark the stage Interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
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
from freeatm.api.common import WorkloadSpec
from freeatm.api.conditions import now, with_phase
from freeatm.api.digest import spec_digest
from freeatm.api.manifests import Manifests
from freeatm.api.references import topological_order
from freeatm.api.resolve import resolve
from freeatm.api.status import Outputs
from freeatm.api.vocabulary import (
    DEPENDENCY_FAILED,
    EXIT_INVALID,
    INTERRUPTED,
    RUNNING,
    SUCCEEDED,
    PhaseReason,
    exit_reason,
    workload_failed,
)

from .workdir import UnreadableStatus, Workdir, WorkdirBusy, WorkdirError

PROGRESS_INTERVAL = "0.5"  # seconds between progress lines (the cluster default is 5)
GRACE_SECONDS = 10.0  # between SIGTERM and SIGKILL when stopping a stage's processes
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_FAILED = 1
EXIT_UNUSABLE_WORKDIR = 73  # sysexits EX_CANTCREAT
EXIT_BUSY_WORKDIR = 75  # sysexits EX_TEMPFAIL: another run holds it; try again later
EXIT_INTERRUPTED = 130
# Where its output goes and how a cluster would schedule it do not change what a stage computes.
NOT_IN_DIGEST = {"output"} | {f.alias or name for name, f in WorkloadSpec.model_fields.items()}


class Stopped(Exception):
    """A stop signal reached local mode."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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


def stage_digest(resource: Resource, upstream: Mapping[tuple[str, str], str]) -> str:
    """The digest of what the stage computes (see the module docstring); no path of the workdir enters it."""
    spec = {k: v for k, v in resource.spec.to_wire().items() if k not in NOT_IN_DIGEST}
    after = {f"{kind}/{name}": upstream[(kind, name)] for kind, name in resource.dependencies()}
    return spec_digest({"spec": spec, "after": after})


def in_workdir(resource: Resource, output_uri: str) -> Resource:
    """The resource with its output moved into the workdir (local mode never writes outside it)."""
    local = resource.model_copy(deep=True)
    local.spec.output.uri = output_uri  # type: ignore[attr-defined]
    local.spec.output.secret_ref = None  # type: ignore[attr-defined]
    return local


def run_pipeline(manifests: Manifests, workdir_path: Path, force: bool, console: Console) -> int:
    """Run every resource in dependency order; 0 when all succeed, 1 otherwise, 130 on Ctrl-C.

    SIGTERM or SIGHUP stop it as Ctrl-C does, after which the process ends by that signal. When the workdir
    cannot be used or another run holds it, nothing runs: EXIT_UNUSABLE_WORKDIR or EXIT_BUSY_WORKDIR.
    """
    try:
        workdir = Workdir(workdir_path)
        with workdir.locked(), _stop_signals_raise():
            return _run_stages(
                [Stage(r) for r in topological_order(manifests.resources)], workdir, force, console
            )
    except WorkdirError as e:
        console.print(f"[red]error[/]: {e}", soft_wrap=True)
        return EXIT_BUSY_WORKDIR if isinstance(e, WorkdirBusy) else EXIT_UNUSABLE_WORKDIR
    except Stopped as e:
        if e.signum == signal.SIGINT:
            return EXIT_INTERRUPTED
        sys.stdout.flush()
        signal.signal(e.signum, signal.SIG_DFL)
        os.kill(os.getpid(), e.signum)
        return 128 + e.signum  # not reached: the signal ends the process


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """Turn the first stop signal into Stopped; ignore the rest while the stage's processes are stopped."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _read_status(workdir: Workdir, stage: Stage, console: Console) -> tuple[Status, str | None]:
    try:
        status, digest = workdir.read_status(stage.kind, stage.name)
    except UnreadableStatus as e:
        console.print(
            f"[yellow]![/] {e}: {stage.kind}/{stage.name} counts as unknown and reruns", soft_wrap=True
        )
        return Status(phase="Pending"), None
    if status.phase == "Running":  # the run that started it ended without a word: killed
        status = with_phase(
            status, PhaseReason("Failed", INTERRUPTED, "its run ended before it finished; rerun to resume")
        )
        workdir.write_status(stage.resource, status, digest)
        console.print(f"[yellow]![/] {stage.kind}/{stage.name} was left running by a run that was killed")
    return status, digest


def _run_stages(stages: list[Stage], workdir: Workdir, force: bool, console: Console) -> int:
    digests: dict[tuple[str, str], str] = {}
    outputs: dict[tuple[str, str], Outputs] = {}
    failed: set[tuple[str, str]] = set()
    console.print(f"[bold]freeatm run[/]: {len(stages)} stage(s), workdir {workdir.root}")
    recorded = {stage.key: _read_status(workdir, stage, console) for stage in stages}
    for stage in stages:
        status, old_digest = recorded[stage.key]
        bad_deps = [d for d in stage.resource.dependencies() if d in failed]
        if bad_deps:
            names = ", ".join(f"{k}/{n}" for k, n in bad_deps)
            status = with_phase(
                status, PhaseReason("Failed", DEPENDENCY_FAILED, f"dependency failed: {names}")
            )
            workdir.write_status(stage.resource, status, None)
            console.print(f"[red]✗[/] {stage.kind}/{stage.name}: skipped, dependency failed ({names})")
            failed.add(stage.key)
            continue
        digest = digests[stage.key] = stage_digest(stage.resource, digests)
        output_uri = workdir.output_uri(stage.kind, stage.name, digest)
        if not force and status.phase == "Succeeded" and old_digest == digest and status.outputs:
            console.print(f"[green]✓[/] {stage.kind}/{stage.name}: unchanged since its last success, skipped")
            outputs[stage.key] = status.outputs
            workdir.write_status(stage.resource, status, digest)  # the outputs' URIs, had the workdir moved
            continue
        if force and old_digest == digest:
            console.print(
                f"{stage.kind}/{stage.name}: rerunning (--force) in {output_uri}; nothing is discarded, the "
                "runtime keeps what is complete there",
                soft_wrap=True,
            )
        elif old_digest not in (None, digest):
            previous = workdir.output_uri(stage.kind, stage.name, old_digest)
            console.print(
                f"{stage.kind}/{stage.name}: its spec or a dependency changed; running into a fresh output "
                f"{output_uri} (the previous one stays at {previous})",
                soft_wrap=True,
            )
        resolved = resolve(in_workdir(stage.resource, output_uri), outputs)
        status = with_phase(
            status,
            PhaseReason("Running", RUNNING, f"running freeatm-runtime {KINDS[stage.kind].runtime_command}"),
        )
        status.start_time, status.completion_time, status.outputs = now(), None, None
        workdir.write_status(stage.resource, status, digest)
        try:
            code, result, log = run_stage(stage, resolved, workdir, console)
        except Stopped as e:
            status = with_phase(
                status, PhaseReason("Failed", INTERRUPTED, f"stopped by {e}; rerun to resume")
            )
            workdir.write_status(stage.resource, status, digest)
            console.print(
                f"[yellow]interrupted[/] by {e}: {stage.kind}/{stage.name} left resumable state; "
                "rerun to resume",
                soft_wrap=True,
            )
            raise
        status.completion_time = now()
        if code == 0:
            outputs[stage.key] = Outputs.model_validate(result)
            status.outputs = outputs[stage.key]
            status = with_phase(
                status, PhaseReason("Succeeded", SUCCEEDED, f"{stage.kind}/{stage.name} completed")
            )
            console.print(f"[green]✓[/] {stage.kind}/{stage.name}: done")
        else:
            message = result.get("error") or f"exit code {code}"
            what = f"freeatm-runtime exited with code {code} (local mode does not retry)"
            status = with_phase(status, workload_failed(exit_reason(code), what, result.get("error")))
            failed.add(stage.key)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            console.print(
                f"[red]✗[/] {stage.kind}/{stage.name} failed (exit {code}): {message}\n[dim]{tail}[/]\nlog: {log}"
            )
            for kind, name in _blamed(stage, code, message, outputs):
                console.print(
                    f"[yellow]![/] the error is about the output of {kind}/{name}, which a rerun skips as "
                    "unchanged: `freeatm run --force` reruns it (generation regenerates what does not verify)",
                    soft_wrap=True,
                )
        workdir.write_status(stage.resource, status, digest)
    return EXIT_FAILED if failed else 0


def _blamed(
    stage: Stage, code: int, message: str, outputs: Mapping[tuple[str, str], Outputs]
) -> list[tuple[str, str]]:
    """The dependencies whose output an invalid-input failure of `stage` names (a corrupt dataset shard)."""
    blamed = []
    for dep in stage.resource.dependencies() if code == EXIT_INVALID else []:
        uri = outputs[dep].uri if dep in outputs else None
        if uri and uri in message:
            blamed.append(dep)
    return blamed


def run_stage(
    stage: Stage, resolved: Resource, workdir: Workdir, console: Console
) -> tuple[int, dict[str, Any], Path]:
    """Run one stage's runtime subprocesses with a progress bar; return the exit code, the stage's result and
    the attempt's log.

    A SyntheticDataset with several workers runs like its Indexed Job: one process per completion index, in
    parallel, each owning a range of shards; the last to finish writes the manifest and reports its digest.
    """
    spec_file = workdir.path("specs", stage.kind, stage.name, ".json")
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
    # Leave a core to the rest of the machine: OpenMP threads that wait on a busy core spin
    # (docs/architecture.md#measured-facts).
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
    with workdir.new_log(stage.kind, stage.name) as log, Progress(*columns, console=console) as bars:
        task = bars.add_task(f"{stage.kind}/{stage.name}", total=None, unit="", detail="starting")
        try:
            for index in range(workers):
                suffix = f"-{index}" if workers > 1 else ""
                progress_file = workdir.path("progress", stage.kind, stage.name, f"{suffix}.jsonl")
                result_file = workdir.path("results", stage.kind, stage.name, f"{suffix}.json")
                for f in (progress_file, result_file):
                    f.unlink(missing_ok=True)
                env = {
                    **os.environ,
                    "FREEATM_PROGRESS_FILE": str(progress_file),
                    "FREEATM_RESULT_FILE": str(result_file),
                    "FREEATM_PROGRESS_INTERVAL": PROGRESS_INTERVAL,
                    "FREEATM_CACHE_DIR": str(workdir.root / "cache"),
                    "FREEATM_PARENT_PIPE": "1",  # stdin: the lifeline, closed when this process ends
                    "OMP_NUM_THREADS": threads,
                }
                if workers > 1:
                    env["JOB_COMPLETION_INDEX"] = str(index)
                child = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env
                )
                children.append((child, progress_file, result_file))
            while any(c.poll() is None for c, _, _ in children):
                time.sleep(0.2)
                _show([p for _, p, _ in children], bars, task)
        finally:
            _stop([c for c, _, _ in children])
        _show([p for _, p, _ in children], bars, task)
    results = [json.loads(r.read_text()) if r.exists() else {} for _, _, r in children]
    failed = [(c.returncode, res) for (c, _, _), res in zip(children, results, strict=True) if c.returncode]
    if failed:
        return (*failed[0], Path(log.name))
    # The worker that completed the dataset reports the most (its manifest digest).
    return 0, max(results, key=len), Path(log.name)


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM the children still running, SIGKILL those left after GRACE_SECONDS; close their lifelines."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdin:
            child.stdin.close()


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
    for job, status in Workdir(workdir_path).statuses("EvalJob"):
        for r in status.outputs.results if status.outputs else []:
            rows.setdefault((job, r.benchmark, r.metric), {})[r.checkpoint] = r.value
            if r.checkpoint not in checkpoints:
                checkpoints.append(r.checkpoint)
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
