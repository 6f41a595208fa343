"""Local mode owns its work: its processes stop with it, one run per workdir, no dead end after a change.

Every stage runs the real runtime in a subprocess, on the built-in toy model at the smallest sizes. A stage
that must still be running when the test acts on it generates far more images than it ever finishes; the
tests wait for its first progress line (generously, the machine may be loaded), never for a fixed time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from freeatm.cli import local_run
from freeatm.cli.workdir import Workdir
from tests import local_cli
from tests.local_cli import DATASET, PRETRAIN

ENDLESS = 1_000_000  # images: a generation that is still running whenever the test acts
WAIT = 300  # seconds, at most, for anything the tests wait on


def pipeline(path: Path, *docs: dict, images: int = 16, lr: float = 0.004) -> Path:
    docs = json.loads(json.dumps(docs))
    for doc in docs:
        if doc["kind"] == "SyntheticDataset":
            doc["spec"]["generation"]["images"] = images
        else:
            doc["spec"]["training"]["lr"] = lr
    path.write_text(yaml.safe_dump_all(docs))
    return path


STARTED: list[
    subprocess.Popen[str]
] = []  # every `freeatm run` of a test, killed with what it started after it


def freeatm_run(pipeline: Path, workdir: Path, *options: str) -> subprocess.Popen[str]:
    cli = local_cli.freeatm_run(pipeline, workdir, *options, start_new_session=True)
    STARTED.append(cli)
    return cli


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    yield
    while STARTED:
        cli = STARTED.pop()
        for pid in [*descendants(cli.pid), cli.pid]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        cli.communicate()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def descendants(pid: int) -> list[int]:
    return [d for c in children(pid) for d in (c, *descendants(c))]


def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def status(workdir: Path, stage: str) -> dict:
    return json.loads((workdir / "status" / f"{stage}.json").read_text())["status"]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[int], Path]]:
    """A `freeatm run` in the middle of an endless generation: (the CLI, its runtime processes, the workdir).
    Its runtime processes are killed afterwards, should they have outlived it."""
    workdir = tmp_path / "work"
    cli = freeatm_run(pipeline(tmp_path / "endless.yaml", DATASET, images=ENDLESS), workdir)
    wait_for(
        lambda: cli.poll() is not None or list((workdir / "progress").glob("*.jsonl")),
        "generation never reported progress",
    )
    assert cli.poll() is None, cli.communicate()[0]
    pids = children(cli.pid)
    assert pids
    yield cli, pids, workdir
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_stops_the_stage_and_marks_it_interrupted(running) -> None:
    cli, pids, workdir = running
    assert {os.getpgid(p) for p in pids} == {os.getpgid(cli.pid)}  # a terminal's Ctrl-C reaches them all
    cli.send_signal(signal.SIGTERM)
    out, _ = cli.communicate(timeout=WAIT)
    assert cli.returncode == -signal.SIGTERM, out  # it ends by the signal, as the shell expects
    assert "interrupted by SIGTERM" in out
    wait_for(lambda: not any(alive(p) for p in pids), "the runtime outlived the CLI")
    ready = {c["type"]: c for c in status(workdir, "SyntheticDataset-shapes")["conditions"]}["Ready"]
    assert ready["reason"] == "Interrupted" and "SIGTERM" in ready["message"]


def test_killed_cli_takes_its_processes_with_it(running, tmp_path: Path) -> None:
    cli, pids, workdir = running
    cli.kill()
    cli.communicate(timeout=WAIT)
    wait_for(lambda: not any(alive(p) for p in pids), "the runtime outlived the killed CLI")
    # nobody was left to say otherwise
    assert status(workdir, "SyntheticDataset-shapes")["phase"] == "Running"

    # The lock died with its process; the next run says what it found and runs the stage again.
    rerun = freeatm_run(pipeline(tmp_path / "endless.yaml", DATASET, images=ENDLESS), workdir)
    try:
        wait_for(lambda: status(workdir, "SyntheticDataset-shapes")["startTime"] is not None, "no rerun")
        wait_for(
            lambda: len(list((workdir / "logs" / "SyntheticDataset-shapes").glob("*.log"))) == 2, "no log"
        )
    finally:
        rerun.send_signal(signal.SIGTERM)
        out, _ = rerun.communicate(timeout=WAIT)
    assert "SyntheticDataset/shapes was left running by a run that was killed" in out, out


def test_second_run_on_a_workdir_refuses_naming_the_holder(running, tmp_path: Path) -> None:
    cli, pids, workdir = running
    second = freeatm_run(pipeline(tmp_path / "endless.yaml", DATASET, images=ENDLESS), workdir)
    out, _ = second.communicate(timeout=WAIT)
    assert second.returncode == 75, out
    assert f"is in use by another freeatm run (PID {cli.pid})" in out
    assert "Traceback" not in out
    assert all(alive(p) for p in pids)  # the first run's processes are untouched
    logs = list((workdir / "logs").rglob("*.log"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0  # and its log is still there, alone


def test_a_file_where_a_workdir_folder_should_be_is_a_one_line_error(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "logs").write_text("not a folder")
    cli = freeatm_run(pipeline(tmp_path / "p.yaml", DATASET), workdir)
    out, _ = cli.communicate(timeout=WAIT)
    assert cli.returncode == 73, out
    assert "Traceback" not in out and "cannot use" in out and "logs" in out, out


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_run, "GRACE_SECONDS", 1.0)
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(600)"
    )
    child = subprocess.Popen([sys.executable, "-c", stubborn], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout and child.stdout.readline() == b"ready\n"
        local_run._stop([child])
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_attempt_logs_are_never_reused(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path)
    with workdir.new_log("MaskPretrainJob", "x") as first:
        first.write("attempt one\n")
    with workdir.new_log("MaskPretrainJob", "x") as second:
        second.write("attempt two\n")
    assert Path(first.name).read_text() == "attempt one\n" and Path(second.name).name == "2.log"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir where a dataset and a pretraining on it both Succeeded."""
    root = tmp_path_factory.mktemp("finished")
    cli = freeatm_run(pipeline(root / "p.yaml", DATASET, PRETRAIN), root / "work")
    out, _ = cli.communicate(timeout=900)
    assert cli.returncode == 0, out
    return root


def test_moved_workdir_resumes_where_it_was(finished: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(finished / "work", moved)
    cli = freeatm_run(pipeline(tmp_path / "p.yaml", DATASET, PRETRAIN), moved)
    out, _ = cli.communicate(timeout=900)
    assert cli.returncode == 0, out
    assert out.count("unchanged since its last success, skipped") == 2, out
    outputs = status(moved, "MaskPretrainJob-baseline")["outputs"]
    assert outputs["uri"].startswith(moved.as_uri() + "/") and outputs["checkpointUri"].startswith(
        outputs["uri"]
    )
    assert (moved / "masks.png").exists()  # the report found the dataset where it now is


def test_moved_workdir_resumes_training_from_its_checkpoint(finished: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(finished / "work", moved)
    output = Path(status(moved, "MaskPretrainJob-baseline")["outputs"]["uri"].removeprefix("file://"))
    output = moved / output.relative_to(finished / "work")
    shutil.rmtree(output / "export")  # as if stopped before its export: it must go on from its checkpoint
    cli = freeatm_run(pipeline(tmp_path / "p.yaml", DATASET, PRETRAIN), moved, "--force")
    out, _ = cli.communicate(timeout=900)
    assert cli.returncode == 0, out
    log = (moved / "logs" / "MaskPretrainJob-baseline" / "2.log").read_text()
    assert f"resuming from {(output / 'checkpoints' / 'step-000000002.pt').as_uri()}" in log, log


def test_changed_spec_reruns_into_a_fresh_output(finished: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(finished / "work", workdir)
    before = status(workdir, "MaskPretrainJob-baseline")["outputs"]["uri"]
    cli = freeatm_run(pipeline(tmp_path / "p.yaml", DATASET, PRETRAIN, lr=0.002), workdir)
    out, _ = cli.communicate(timeout=900)
    assert cli.returncode == 0, out
    assert "SyntheticDataset/shapes: unchanged since its last success, skipped" in out
    assert "MaskPretrainJob/baseline: its spec or a dependency changed; running into a fresh output" in out
    after = status(workdir, "MaskPretrainJob-baseline")
    assert after["phase"] == "Succeeded" and after["outputs"]["uri"] != before
    for uri in (before, after["outputs"]["uri"]):  # the previous output is kept
        assert (Path(uri.removeprefix("file://")) / "export" / "metadata.json").exists()


def test_unreadable_status_counts_as_unknown(finished: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(finished / "work", workdir)
    path = workdir / "status" / "MaskPretrainJob-baseline.json"
    path.write_text(path.read_text()[:40])  # torn
    cli = freeatm_run(pipeline(tmp_path / "p.yaml", DATASET, PRETRAIN), workdir)
    out, _ = cli.communicate(timeout=900)
    assert cli.returncode == 0, out
    assert "MaskPretrainJob/baseline counts as unknown and reruns" in out and "Traceback" not in out
    assert status(workdir, "MaskPretrainJob-baseline")["phase"] == "Succeeded"
