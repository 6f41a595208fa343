"""Local mode's working directory: its layout, its lock, each stage's status and per-attempt logs.

    lock                              held (flock) by the one `freeatm run` using the workdir; holds its PID
    specs/, results/, progress/       the resolved spec, result and progress lines of each stage's processes
    status/<Kind>-<name>.json         the stage's status in the cluster's shape, with the digest it is for
    logs/<Kind>-<name>/<N>.log        the output of attempt N; never truncated or reused
    outputs/<Kind>-<name>/<digest>/   what the stage wrote for one declared spec (a changed spec: a fresh one)

Status files are replaced atomically; one that cannot be read counts as unknown (the stage reruns). Nothing
stored depends on where the workdir is: outputs recorded under another location (a moved or copied workdir)
are read back under this one.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from freeatm.api import Resource, Status
from freeatm.api.status import Outputs

SUBDIRS = ("specs", "status", "logs", "progress", "results", "outputs")
DIGEST_CHARS = 16  # of the hex sha256 in an output directory's name


class WorkdirError(Exception):
    """The workdir cannot be used (a path in it is not a directory, or is not writable)."""


class WorkdirBusy(WorkdirError):
    """Another run holds the workdir."""


class UnreadableStatus(Exception):
    """A status file that is torn, not JSON or not a status."""


def stage_id(kind: str, name: str) -> str:
    return f"{kind}-{name}"


class Workdir:
    """Where local mode keeps specs, statuses, logs, progress, outputs and the report."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        try:
            for sub in SUBDIRS:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            (self.root / "lock").touch()
        except OSError as e:
            raise WorkdirError(f"cannot use {self.root} as a workdir: {e.strerror}: {e.filename}") from e

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the workdir for this process; WorkdirError naming the holder's PID when another run has it.

        The lock is the open file's flock: it goes with the process, however it ends, and the file's
        descriptor is not inherited, so the stages' processes do not keep it.
        """
        with open(self.root / "lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise WorkdirBusy(
                    f"{self.root} is in use by another freeatm run (PID {holder}): wait for it or stop it"
                ) from None
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield

    def path(self, sub: str, kind: str, name: str, suffix: str) -> Path:
        return self.root / sub / f"{stage_id(kind, name)}{suffix}"

    def output_uri(self, kind: str, name: str, digest: str) -> str:
        return (self.root / "outputs" / stage_id(kind, name) / digest.split(":")[-1][:DIGEST_CHARS]).as_uri()

    def read_status(self, kind: str, name: str) -> tuple[Status, str | None]:
        """The stage's status and the digest it was written for; Pending when there is none."""
        path = self.path("status", kind, name, ".json")
        try:
            doc = json.loads(path.read_text())
            status, digest = Status.model_validate(doc["status"]), doc.get("specDigest")
        except FileNotFoundError:
            return Status(phase="Pending"), None
        except (OSError, ValueError, TypeError, KeyError, ValidationError) as e:
            raise UnreadableStatus(f"{path} cannot be read ({type(e).__name__})") from e
        if status.outputs and digest:
            status.outputs = self._rebased(status.outputs, self.output_uri(kind, name, digest))
        return status, digest

    def statuses(self, kind: str) -> list[tuple[str, Status]]:
        """(name, status) of every stage of `kind` with a readable status, by name."""
        found = []
        for path in sorted((self.root / "status").glob(f"{kind}-*.json")):
            name = path.stem.removeprefix(f"{kind}-")
            try:
                found.append((name, self.read_status(kind, name)[0]))
            except UnreadableStatus:
                continue
        return found

    def write_status(self, resource: Resource, status: Status, digest: str | None) -> None:
        doc = {
            "apiVersion": resource.api_version,
            "kind": resource.kind,  # type: ignore[attr-defined]
            "metadata": {"name": resource.metadata.name},
            "specDigest": digest,
            "status": status.to_wire(),
        }
        path = self.path("status", doc["kind"], resource.metadata.name, ".json")
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
            f.write(json.dumps(doc, indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, path)

    def new_log(self, kind: str, name: str) -> IO[str]:
        """A log file for the stage's next attempt, created (never opened over an existing one)."""
        logs = self.root / "logs" / stage_id(kind, name)
        logs.mkdir(exist_ok=True)
        attempt = 1 + max((int(p.stem) for p in logs.glob("*.log") if p.stem.isdigit()), default=0)
        while True:
            try:
                return (logs / f"{attempt}.log").open("x")
            except FileExistsError:
                attempt += 1

    @staticmethod
    def _rebased(outputs: Outputs, output_uri: str) -> Outputs:
        """`outputs` with URIs under the output directory they were written in moved to `output_uri`."""
        old = (outputs.uri or output_uri).rstrip("/")
        if old == output_uri:
            return outputs

        def moved(uri: str | None) -> str | None:
            return output_uri + uri[len(old) :] if uri and (uri == old or uri.startswith(old + "/")) else uri

        return outputs.model_copy(
            update={
                "uri": moved(outputs.uri),
                "checkpoint_uri": moved(outputs.checkpoint_uri),
                "report_uri": moved(outputs.report_uri),
            }
        )
