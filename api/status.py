"""Status of every freeatm resource: phase, metav1-style conditions, progress and outputs
(docs/architecture.md#status-and-conditions)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import Model
from .vocabulary import Phase


class Condition(Model):
    """A condition in the metav1.Condition shape."""

    type: str
    """Ready, Reconciling, Stalled, DependenciesReady, Complete, Failed or Suspended."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    """CamelCase reason of the last transition."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details."""
    last_transition_time: str
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """metadata.generation the condition was computed from."""


class Progress(Model):
    """Progress reported by the workload (rank 0 patches it; the operator never overwrites it)."""

    done: float | None = Field(default=None, ge=0)
    """Units done (images, steps or benchmarks)."""
    total: float | None = Field(default=None, ge=0)
    """Units the workload will have done when it finishes."""
    unit: str | None = None
    """What is counted: images, steps or benchmarks."""
    percent: int | None = Field(default=None, ge=0, le=100)
    """done / total in percent."""
    rate: float | None = Field(default=None, ge=0)
    """Units per second, recently."""
    eta_seconds: float | None = Field(default=None, ge=0)
    """Estimated seconds left."""
    images: int | None = Field(default=None, ge=0)
    """SyntheticDataset: images generated."""
    epoch: int | None = Field(default=None, ge=0)
    """MaskPretrainJob: current epoch."""
    step: int | None = Field(default=None, ge=0)
    """MaskPretrainJob: optimiser steps done."""
    loss: float | None = None
    """MaskPretrainJob: recent training loss."""
    benchmarks_done: int | None = Field(default=None, ge=0)
    """EvalJob: benchmarks finished (over all checkpoints)."""
    message: str | None = None
    """What the workload is doing now."""
    updated_at: str | None = None
    """When the workload last reported (RFC 3339)."""


class ResultRow(Model):
    """One score of an EvalJob."""

    checkpoint: str
    """Label of the checkpoint scored (spec.checkpoints[].label, or its ref or URI)."""
    benchmark: str
    """Id of the benchmark run (spec.benchmarks[].id, or its protocol name)."""
    metric: str
    """Metric name, e.g. top1, miou, map, recall@5."""
    value: float
    """The metric's value (accuracies, mIoU, mAP and recall as fractions in [0, 1])."""


class Outputs(Model):
    """What the workload produced; dependents read it."""

    uri: str | None = None
    """Where the output lives (the dataset, the checkpoint directory, the evaluation results)."""
    manifest_digest: str | None = None
    """SyntheticDataset: sha256 of manifest.json."""
    checkpoint_uri: str | None = None
    """MaskPretrainJob: the exported checkpoint file."""
    report_uri: str | None = None
    """EvalJob: the Markdown report."""
    results: list[ResultRow] = Field(default_factory=list)
    """EvalJob: the result table."""


class Status(Model):
    """Observed state, written by the operator (progress by the workload)."""

    phase: Phase | None = None
    """Pending, Waiting, Running, Succeeded, Failed or Suspended."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Reconciling, Stalled (kstatus), DependenciesReady, Complete, Failed, Suspended."""
    observed_generation: int | None = Field(default=None, ge=0)
    """metadata.generation this status describes."""
    start_time: str | None = None
    """When the workload started (RFC 3339)."""
    completion_time: str | None = None
    """When the workload finished (RFC 3339)."""
    restarts: int = Field(default=0, ge=0)
    """Pod failures that were retried."""
    waiting_for: list[str] = Field(default_factory=list)
    """Dependencies not yet Succeeded, as Kind/name."""
    job_name: str | None = None
    """The batch/v1 Job running the workload."""
    progress: Progress | None = None
    """Progress reported by the workload."""
    outputs: Outputs | None = None
    """What the workload produced."""
