"""The resource's status, computed in one place from what the reconciler observed (pure functions).

The operator owns everything in `status` except `progress`, which the workload patches (runtime/status_patch.py):
`status_patch` never touches it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from freeatm.api import Outputs
from freeatm.api.conditions import get_condition, phase_conditions, set_condition
from freeatm.api.vocabulary import (
    DEPENDENCIES_SUCCEEDED,
    DEPENDENCY_CYCLE,
    DEPENDENCY_FAILED,
    FINAL_PHASES,
    INVALID_SPEC,
    JOB_CREATED,
    JOB_FAILED,
    JOB_FAILURE_REASONS,
    JOB_LOST,
    JOB_REJECTED,
    PENDING,
    QUEUED,
    REPLACING_JOB,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    WAITING_FOR_DEPENDENCIES,
    PhaseReason,
    final_outcome,
    workload_failed,
)

from .dependencies import Verdict


@dataclass
class Observation:
    """What the status of one pass is computed from: what was observed, decided and done."""

    generation: int | None
    now: str
    invalid: list[tuple[str, str]] | None = None  # validation errors (path, message)
    verdict: Verdict | None = None  # dependencies; None when not evaluated
    job: dict[str, Any] | None = None  # the Job that serves this generation, as stored (None: no Job)
    suspend: bool = False  # spec.suspend
    output_uri: str | None = None  # spec.output.uri
    pod_results: list[dict[str, Any]] = field(default_factory=list)  # termination messages, index 0 last
    running: bool | None = None  # whether one of the Job's pods runs; None: not looked (Job status decides)
    pending: PhaseReason | None = None  # why the Job's pods do not run yet
    blocked: str | None = None  # why the Job could not be created (message)
    blocked_reason: str = WAITING_FOR_DEPENDENCIES
    rejected: PhaseReason | None = None  # the Job's create was refused (the API server's message)
    lost: str | None = None  # the Job of this generation disappeared before its result was read
    replacing: str | None = None  # the previous Job (and its pods) are going away; the new one follows


def job_condition(job: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def job_finished(job: dict[str, Any] | None) -> str | None:
    """'Complete', 'Failed' or None."""
    if job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet"):
        return "Complete"
    if job_condition(job, "Failed") or job_condition(job, "FailureTarget"):
        return "Failed"
    return None


def failed_pods(job_status: dict[str, Any]) -> int:
    """Failed pods of a Job, also those the Job controller has not counted yet: it can set FailureTarget while the
    last failures are still in uncountedTerminatedPods."""
    uncounted = (job_status.get("uncountedTerminatedPods") or {}).get("failed") or []
    return int(job_status.get("failed") or 0) + len(uncounted)


def parse_pod_result(message: str | None) -> dict[str, Any] | None:
    """The JSON object a runtime pod wrote as its termination message (runtime/cli.py), or None."""
    if not message:
        return None
    for line in reversed(message.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def outputs_from(output_uri: str | None, results: list[dict[str, Any]]) -> dict[str, Any]:
    """status.outputs: spec.output.uri, overlaid with what the pods reported (index 0 last, so it wins)."""
    merged: dict[str, Any] = {}
    for r in results:
        merged.update({k: v for k, v in r.items() if k not in ("error", "exitCode") and v is not None})
    if output_uri and not merged.get("uri"):
        merged["uri"] = output_uri
    known = {f.alias or name for name, f in Outputs.model_fields.items()}
    merged = {k: v for k, v in merged.items() if k in known}
    try:
        wire = Outputs.model_validate(merged).to_wire()
        if not wire.get("results"):
            wire.pop("results", None)
        return wire
    except ValidationError:
        return {"uri": merged.get("uri") or output_uri} if (merged.get("uri") or output_uri) else {}


def finished_at(status: Mapping[str, Any], generation: int | None) -> bool:
    """Whether the stored `status` holds the final outcome of `generation`: nothing runs again for it (its Job
    may be gone already, ttlSecondsAfterFinished)."""
    reason = (get_condition(status.get("conditions"), "Ready") or {}).get("reason")
    return status.get("observedGeneration") == generation and final_outcome(status.get("phase"), reason)


def _job_failure(job: dict[str, Any], results: list[dict[str, Any]]) -> PhaseReason:
    cond = job_condition(job, "Failed") or job_condition(job, "FailureTarget") or {}
    reason = JOB_FAILURE_REASONS.get(cond.get("reason", ""), JOB_FAILED)
    errors = [str(r["error"]) for r in results if r.get("error")]
    what = cond.get("message") or cond.get("reason") or "the Job failed"
    return workload_failed(reason, what, errors[-1] if errors else None)


def _phase(current: dict[str, Any], obs: Observation) -> PhaseReason:
    job = obs.job
    if obs.invalid is not None:
        message = "invalid spec: " + "; ".join(f"{p}: {m}" for p, m in obs.invalid)
        return PhaseReason("Failed", INVALID_SPEC, message)
    if obs.rejected is not None:
        return obs.rejected
    if obs.replacing is not None:
        return PhaseReason("Pending", REPLACING_JOB, obs.replacing)
    if job is not None:
        name = job.get("metadata", {}).get("name")
        finished = job_finished(job)
        jstatus = job.get("status") or {}
        if finished == "Complete":
            return PhaseReason("Succeeded", SUCCEEDED, f"Job {name} completed")
        if finished == "Failed":
            failure = _job_failure(job, obs.pod_results)
            ready = get_condition(current.get("conditions"), "Ready") or {}
            if (
                not obs.pod_results
                and current.get("phase") == "Failed"
                and ready.get("reason") == failure.reason
            ):
                # pods are read once, when the Job fails
                return failure._replace(message=ready.get("message", ""))
            return failure
        if (job.get("spec") or {}).get("suspend"):
            if obs.suspend:
                return PhaseReason("Suspended", SUSPENDED, f"Job {name} is suspended (spec.suspend)")
            queue = (job.get("metadata", {}).get("labels") or {}).get("kueue.x-k8s.io/queue-name")
            if queue:
                return PhaseReason(
                    "Pending", QUEUED, f"Job {name} waits for Kueue to admit it (queue {queue})"
                )
            return PhaseReason("Pending", QUEUED, f"Job {name} is suspended, waiting for admission")
        active = int(jstatus.get("active") or 0)
        running = obs.running if obs.running is not None else bool(active)
        if running or int(jstatus.get("ready") or 0):
            return PhaseReason("Running", RUNNING, f"Job {name}: {active} pod(s) active")
        if obs.pending is not None:
            return obs.pending
        return PhaseReason("Pending", JOB_CREATED, f"Job {name} created, waiting for pods")
    if obs.lost is not None:
        return PhaseReason("Failed", JOB_LOST, obs.lost)
    if finished_at(current, obs.generation):
        ready = get_condition(current.get("conditions"), "Ready") or {}
        return PhaseReason(
            current["phase"], ready.get("reason") or current["phase"], ready.get("message", "")
        )
    v = obs.verdict
    if v is not None and v.cycle:
        return PhaseReason("Failed", DEPENDENCY_CYCLE, v.message)
    if v is not None and v.reason == DEPENDENCY_FAILED:
        return PhaseReason("Failed", DEPENDENCY_FAILED, v.message)
    if v is not None and not v.ready:
        return PhaseReason("Waiting", WAITING_FOR_DEPENDENCIES, v.message)
    if obs.blocked:
        return PhaseReason("Waiting", obs.blocked_reason, obs.blocked)
    return PhaseReason("Pending", PENDING, "creating the workload")


def desired_status(current: dict[str, Any] | None, obs: Observation) -> dict[str, Any]:
    """The full status the operator wants (without `progress`)."""
    current = dict(current or {})
    phase, reason, message = _phase(current, obs)
    gen, now = obs.generation, obs.now
    conds = [dict(c) for c in current.get("conditions") or []]

    def cond(type_: str, status: str, why: str, msg: str = "") -> None:
        nonlocal conds
        conds = set_condition(conds, type_, status, why, msg, gen, now)

    conds = phase_conditions(conds, phase, reason, message, gen, now)
    v = obs.verdict
    if obs.invalid is not None:
        cond("DependenciesReady", "Unknown", INVALID_SPEC, "the spec is invalid")
    elif obs.job is not None:
        old = get_condition(conds, "DependenciesReady")
        if not old or old.get("status") != "True":
            cond("DependenciesReady", "True", DEPENDENCIES_SUCCEEDED, "all dependencies Succeeded")
    elif v is not None:
        cond("DependenciesReady", "True" if v.ready else "False", v.reason, v.message)

    status: dict[str, Any] = {"phase": phase, "conditions": conds}
    if gen is not None:
        status["observedGeneration"] = gen
    job = obs.job
    jstatus = (job or {}).get("status") or {}
    if job is not None:
        status["jobName"] = job["metadata"]["name"]
        status["startTime"] = current.get("startTime") or jstatus.get("startTime") or now
        status["restarts"] = failed_pods(jstatus)
    elif current.get("jobName") and final_outcome(phase, reason):
        status["jobName"] = current["jobName"]
    if phase in FINAL_PHASES:
        status["completionTime"] = current.get("completionTime") or jstatus.get("completionTime") or now
    if phase == "Succeeded":
        if job is not None and not (current.get("outputs") and current.get("phase") == "Succeeded"):
            status["outputs"] = outputs_from(obs.output_uri, obs.pod_results)
        elif current.get("outputs"):
            status["outputs"] = current["outputs"]
    status["waitingFor"] = list(v.waiting) if (v is not None and phase == "Waiting") else []
    ran = final_outcome(phase, reason) and reason != JOB_REJECTED  # a refused Job never ran: no run to record
    for key in ("startTime", "restarts", "completionTime", "jobName", "outputs"):
        if key not in status and key in current and ran:
            status[key] = current[key]
    return status


OWNED = (
    "phase",
    "conditions",
    "observedGeneration",
    "startTime",
    "completionTime",
    "restarts",
    "waitingFor",
    "jobName",
    "outputs",
)


def status_patch(current: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any]:
    """Merge patch turning `current` into `desired` for the operator-owned fields; `progress` is never touched."""
    current = current or {}
    patch: dict[str, Any] = {}
    for key in OWNED:
        if key in desired:
            if current.get(key) != desired[key]:
                patch[key] = desired[key]
        elif key in current and current[key] not in (None, [], 0):
            patch[key] = None
    return patch
