"""Progress reporting: one reporter per workload fans updates out to sinks
(docs/architecture.md#the-runtime-contract).

Sinks receive the camelCase `status.progress` object (see freeatm.api.status.Progress). They are chosen from the
environment so that the same runtime code reports to the cluster (status patch), to local mode (a JSON-lines
file that `freeatm run` reads for its progress bars) and to the pod log.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from freeatm.api.conditions import now as now_rfc3339

from .metrics import PROGRESS_RATIO

Sink = Callable[[dict[str, Any]], None]
log = logging.getLogger("freeatm.progress")


class ProgressReporter:
    """Computes rate, ETA and percent from (done, total) and forwards at most every `interval` seconds."""

    def __init__(self, total: float, unit: str, sinks: list[Sink], interval: float = 5.0) -> None:
        self.total, self.unit, self.sinks, self.interval = total, unit, sinks, interval
        self._start = time.monotonic()
        self._start_done: float | None = None
        self._last_sent = float("-inf")
        self.last: dict[str, Any] = {}

    def update(self, done: float, *, force: bool = False, **fields: Any) -> None:
        """Report `done` units (of `total`) and kind-specific fields (images, epoch, step, loss, message …)."""
        now = time.monotonic()
        if self._start_done is None:
            self._start_done, self._start = done, now
        elapsed = now - self._start
        rate = (done - self._start_done) / elapsed if elapsed > 0 else 0.0
        progress: dict[str, Any] = {
            "done": done,
            "total": self.total,
            "unit": self.unit,
            "percent": int(100 * done / self.total) if self.total else 100,
            "rate": round(rate, 4),
            "updatedAt": now_rfc3339(),
            **{k: v for k, v in fields.items() if v is not None},
        }
        if rate > 0:
            progress["etaSeconds"] = round(max(self.total - done, 0) / rate, 1)
        self.last = progress
        PROGRESS_RATIO.set(done / self.total if self.total else 1.0)
        if force or done >= self.total or now - self._last_sent >= self.interval:
            self._last_sent = now
            for sink in self.sinks:
                try:
                    sink(progress)
                except Exception as e:  # progress must never break the workload
                    log.warning("progress sink %s failed: %s", getattr(sink, "__name__", sink), e)


def file_sink(path: Path) -> Sink:
    """Append each update as one JSON line (local mode reads it)."""

    def write(progress: dict[str, Any]) -> None:
        with path.open("a") as f:
            f.write(json.dumps(progress) + "\n")

    write.__name__ = f"file:{path}"
    return write


def log_sink(progress: dict[str, Any]) -> None:
    eta = f", eta {progress['etaSeconds']:.0f}s" if "etaSeconds" in progress else ""
    log.info(
        "%s/%s %s (%s%%)%s", progress["done"], progress["total"], progress["unit"], progress["percent"], eta
    )


def sinks_from_env() -> list[Sink]:
    """The sinks this process should report to: FREEATM_PROGRESS_FILE, the resource status in-cluster, the log.

    Only rank 0 of a torchrun group reports (RANK unset or 0). Of an Indexed Job's pods (generation workers, which
    have no RANK) each writes its own progress file and log, but only index 0 patches the resource's status, so
    that N workers do not overwrite each other's done/total several times a second.
    """
    if os.environ.get("RANK", "0") != "0":
        return []
    sinks: list[Sink] = [log_sink]
    if path := os.environ.get("FREEATM_PROGRESS_FILE"):
        sinks.append(file_sink(Path(path)))
    if os.environ.get("FREEATM_RESOURCE") and os.environ.get("JOB_COMPLETION_INDEX", "0") == "0":
        from .status_patch import status_sink

        sinks.append(status_sink())
    return sinks


def reporter(total: float, unit: str, interval: float | None = None) -> ProgressReporter:
    """A reporter wired to the environment's sinks; FREEATM_PROGRESS_INTERVAL overrides the 5 s default."""
    if interval is None:
        interval = float(os.environ.get("FREEATM_PROGRESS_INTERVAL", "5"))
    return ProgressReporter(total, unit, sinks_from_env(), interval)
