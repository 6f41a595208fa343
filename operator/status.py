"""The resource's status, computed in one place from what the reconciler observed (pure functions).

The operator owns everything in `status` except `progress`, which the workload patches (runtime/status_patch.py):
`status_patch` never touches it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from freeatm.api import Outputs
from freeatm.api.conditions import get_condition, phase_conditions, set_condition

from .dependencies import Verdict

# Job failure reasons → the resource's reason.
JOB_FAILURE_REASONS = {
    "BackoffLimitExceeded": "BackoffLimitExceeded",
    "DeadlineExceeded": "DeadlineExceeded",
    "PodFailurePolicy": "InvalidInput",
    "FailedIndexes": "BackoffLimitExceeded",
    "MaxFailedIndexesExceeded": "BackoffLimitExceeded",
}
# Reasons of a Failed status that are final for this generation (only a spec change starts a new run): the
# workload's own failures, a Job the API server refused as invalid, a Job lost before its result was read.
WORKLOAD_FAILURES = {*JOB_FAILURE_REASONS.values(), "JobFailed", "JobRejected", "JobLost"}


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
    pending: tuple[str, str] | None = None  # (reason, message): why the Job's pods do not run yet
    blocked: str | None = None  # why the Job could not be created (message)
    blocked_reason: str = "WaitingForDependencies"
    rejected: tuple[str, str] | None = None  # (reason, API server's message): the Job's create was refused
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


def failure_message(job: dict[str, Any] | None, results: list[dict[str, Any]]) -> str:
    cond = job_condition(job, "Failed") or job_condition(job, "FailureTarget") or {}
    parts = [cond.get("message") or cond.get("reason") or "the Job failed"]
    errors = [str(r["error"]) for r in results if r.get("error")]
    if errors:
        parts.append("runtime: " + errors[-1])
    return "; ".join(parts)


def _phase(current: dict[str, Any], obs: Observation) -> tuple[str, str, str]:
    """(phase, reason, message)."""
    job = obs.job
    if obs.invalid is not None:
        return "Failed", "InvalidSpec", "invalid spec: " + "; ".join(f"{p}: {m}" for p, m in obs.invalid)
    if obs.rejected is not None:
        return "Failed", *obs.rejected
    if obs.replacing is not None:
        return "Pending", "ReplacingJob", obs.replacing
    if job is not None:
        name = job.get("metadata", {}).get("name")
        finished = job_finished(job)
        jstatus = job.get("status") or {}
        if finished == "Complete":
            return "Succeeded", "Succeeded", f"Job {name} completed"
        if finished == "Failed":
            cond = job_condition(job, "Failed") or job_condition(job, "FailureTarget") or {}
            reason = JOB_FAILURE_REASONS.get(cond.get("reason", ""), "JobFailed")
            ready = get_condition(current.get("conditions"), "Ready") or {}
            if not obs.pod_results and current.get("phase") == "Failed" and ready.get("reason") == reason:
                return "Failed", reason, ready.get("message", "")  # pods are read once, when the Job fails
            return "Failed", reason, failure_message(job, obs.pod_results)
        if (job.get("spec") or {}).get("suspend"):
            if obs.suspend:
                return "Suspended", "Suspended", f"Job {name} is suspended (spec.suspend)"
            queue = (job.get("metadata", {}).get("labels") or {}).get("kueue.x-k8s.io/queue-name")
            if queue:
                return "Pending", "Queued", f"Job {name} waits for Kueue to admit it (queue {queue})"
            return "Pending", "Queued", f"Job {name} is suspended, waiting for admission"
        active = int(jstatus.get("active") or 0)
        running = obs.running if obs.running is not None else bool(active)
        if running or int(jstatus.get("ready") or 0):
            return "Running", "Running", f"Job {name}: {active} pod(s) active"
        if obs.pending is not None:
            return "Pending", *obs.pending
        return "Pending", "JobCreated", f"Job {name} created, waiting for pods"
    if obs.lost is not None:
        return "Failed", "JobLost", obs.lost
    phase = current.get("phase")
    reason = (get_condition(current.get("conditions"), "Ready") or {}).get("reason", "")
    if (
        phase in ("Succeeded", "Failed")
        and current.get("observedGeneration") == obs.generation
        and (phase == "Succeeded" or reason in WORKLOAD_FAILURES)
    ):  # finished at this generation; its Job may have been deleted (ttlSecondsAfterFinished)
        msg = (get_condition(current.get("conditions"), "Ready") or {}).get("message", "")
        return phase, reason or phase, msg
    v = obs.verdict
    if v is not None and v.cycle:
        return "Failed", "DependencyCycle", v.message
    if v is not None and v.reason == "DependencyFailed":
        return "Failed", "DependencyFailed", v.message
    if v is not None and not v.ready:
        return "Waiting", "WaitingForDependencies", v.message
    if obs.blocked:
        return "Waiting", obs.blocked_reason, obs.blocked
    return "Pending", "Pending", "creating the workload"


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
        cond("DependenciesReady", "Unknown", "InvalidSpec", "the spec is invalid")
    elif obs.job is not None:
        old = get_condition(conds, "DependenciesReady")
        if not old or old.get("status") != "True":
            cond("DependenciesReady", "True", "DependenciesSucceeded", "all dependencies Succeeded")
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
    elif (
        current.get("jobName")
        and phase in ("Succeeded", "Failed")
        and reason in (*WORKLOAD_FAILURES, "Succeeded")
    ):
        status["jobName"] = current["jobName"]
    if phase in ("Succeeded", "Failed"):
        status["completionTime"] = current.get("completionTime") or jstatus.get("completionTime") or now
    if phase == "Succeeded":
        if job is not None and not (current.get("outputs") and current.get("phase") == "Succeeded"):
            status["outputs"] = outputs_from(obs.output_uri, obs.pod_results)
        elif current.get("outputs"):
            status["outputs"] = current["outputs"]
    status["waitingFor"] = list(v.waiting) if (v is not None and phase == "Waiting") else []
    for key in ("startTime", "restarts", "completionTime", "jobName", "outputs"):
        if (
            key not in status
            and key in current
            and phase in ("Succeeded", "Failed")
            and reason not in ("InvalidSpec", "DependencyFailed", "DependencyCycle", "JobRejected")
            and obs.rejected is None
        ):
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
