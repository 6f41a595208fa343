"""The status vocabulary shared by the operator, local mode and the runtime: phases, condition types, the
reasons freeatm writes, the exit codes of the runtime contract, and which outcomes are final.

A local status file and a cluster status use these words alike, so the same outcome reads the same in both
(docs/architecture.md#status-and-conditions, #exit-codes). Pure: imported by the operator (without torch) and the
runtime (without kopf).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Phase = Literal["Pending", "Waiting", "Running", "Succeeded", "Failed", "Suspended"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
ACTIVE_PHASES = ("Pending", "Waiting", "Running")
FINAL_PHASES = ("Succeeded", "Failed")

# kstatus types (Flux, Argo CD) plus freeatm's own.
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled", "DependenciesReady", "Complete", "Failed", "Suspended")

# Reasons of the phase (the Ready, Reconciling, Stalled, Complete and Failed conditions carry it).
PENDING = "Pending"  # nothing created yet
JOB_CREATED = "JobCreated"  # the Job exists, its pods do not run yet
QUEUED = "Queued"  # the Job waits for admission (Kueue)
REPLACING_JOB = "ReplacingJob"  # the previous Job and its pods are going away
WAITING_FOR_DEPENDENCIES = "WaitingForDependencies"
JOB_NAME_CONFLICT = "JobNameConflict"  # a Job of the workload's name exists that freeatm did not create
RUNNING = "Running"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
INVALID_SPEC = "InvalidSpec"  # the resource does not validate
DEPENDENCY_FAILED = "DependencyFailed"
DEPENDENCY_CYCLE = "DependencyCycle"
INVALID_INPUT = "InvalidInput"  # the workload exited with EXIT_INVALID: its spec or input is wrong
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"  # the workload failed and no retry is left
DEADLINE_EXCEEDED = "DeadlineExceeded"  # spec.activeDeadlineSeconds ran out
JOB_FAILED = "JobFailed"  # the Job failed for a reason freeatm does not know
JOB_LOST = "JobLost"  # the Job of this generation went away before its result was read
JOB_REJECTED = "JobRejected"  # the API server refused the Job as invalid
CREATE_FORBIDDEN = "CreateForbidden"  # the API server forbade the Job (quota, admission, RBAC); retried
INTERRUPTED = "Interrupted"  # local mode: its run was stopped or killed before the stage finished
# Reasons of the DependenciesReady condition (besides WAITING_FOR_DEPENDENCIES, DEPENDENCY_FAILED/CYCLE).
NO_DEPENDENCIES = "NoDependencies"
DEPENDENCIES_SUCCEEDED = "DependenciesSucceeded"
# Reasons of the Complete, Failed and Suspended conditions while they are False.
NOT_COMPLETE, NOT_FAILED, NOT_SUSPENDED = "NotComplete", "NotFailed", "NotSuspended"

# A failed Job's condition reason → the resource's reason (anything else: JOB_FAILED).
JOB_FAILURE_REASONS = {
    "BackoffLimitExceeded": BACKOFF_LIMIT_EXCEEDED,
    "DeadlineExceeded": DEADLINE_EXCEEDED,
    "PodFailurePolicy": INVALID_INPUT,  # the FailJob rule on EXIT_INVALID (operator/workload.py)
    "FailedIndexes": BACKOFF_LIMIT_EXCEEDED,
    "MaxFailedIndexesExceeded": BACKOFF_LIMIT_EXCEEDED,
}
# Failures that end a run of the workload: final for their generation.
RUN_FAILURES = frozenset({*JOB_FAILURE_REASONS.values(), JOB_FAILED, JOB_LOST})
# Failures of a dependent that are re-evaluated when a dependency changes (not final on their own).
DEPENDENCY_REASONS = (DEPENDENCY_FAILED, DEPENDENCY_CYCLE)

# Exit codes of the runtime contract (sysexits where one fits). The operator fails the Job at once on
# EXIT_INVALID (podFailurePolicy); EXIT_TRANSIENT and any other non-zero code count against backoffLimit.
EXIT_BUG = 1  # anything else: a bug, with its traceback in the log
EXIT_INVALID = 65  # EX_DATAERR: the spec or its input is wrong; permanent
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: storage or network trouble; retry
EXIT_INTERRUPTED = 130  # 128 + SIGINT


class PhaseReason(NamedTuple):
    """A phase with the reason and message its conditions carry."""

    phase: Phase
    reason: str
    message: str


def final_outcome(phase: str | None, reason: str | None) -> bool:
    """Whether a status in `phase` for `reason` is the final outcome of its generation: only a spec change runs
    the workload again. Failures before a run (invalid spec, dependencies) are re-evaluated instead."""
    return phase == "Succeeded" or (phase == "Failed" and reason in (*RUN_FAILURES, JOB_REJECTED))


def exit_reason(exit_code: int) -> str:
    """The reason of a workload that exited with `exit_code` (non-zero) and is not retried: what the operator
    reads from the failed Job (EXIT_INVALID fails it through the podFailurePolicy, any other code once the
    retries are spent)."""
    return INVALID_INPUT if exit_code == EXIT_INVALID else BACKOFF_LIMIT_EXCEEDED


def workload_failed(reason: str, what: str, error: str | None) -> PhaseReason:
    """A failed workload: `what` failed (the Job's failure, or the exit of a local process), and the error the
    runtime reported, if it reported one."""
    return PhaseReason("Failed", reason, f"{what}; runtime: {error}" if error else what)
