"""api/vocabulary.py: a local status file and the operator's status say the same thing for the same outcome."""

from __future__ import annotations

import pytest

from freeatm.api.conditions import with_phase
from freeatm.api.status import Status
from freeatm.api.vocabulary import (
    EXIT_BUG,
    EXIT_INVALID,
    EXIT_TRANSIENT,
    RUNNING,
    SUCCEEDED,
    PhaseReason,
    exit_reason,
    final_outcome,
    workload_failed,
)
from freeatm.operator.status import Observation, desired_status, finished_at

T0 = "2026-01-01T00:00:00Z"
ERROR = "shard s3://b/d/shard-00001.tar of dataset s3://b/d is corrupt: not a readable tar"


def failed_job(reason: str, message: str) -> dict:
    condition = {"type": "Failed", "status": "True", "reason": reason, "message": message}
    return {"metadata": {"name": "m-train"}, "spec": {}, "status": {"failed": 1, "conditions": [condition]}}


def conditions(status: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def local_status(*outcomes: PhaseReason) -> dict:
    """The status file local mode writes after `outcomes`, in order (cli/local_run.py)."""
    status = Status()
    for outcome in outcomes:
        status = with_phase(status, outcome, generation=1)
    return status.to_wire()


@pytest.mark.parametrize(
    ("job_reason", "job_message", "exit_code"),
    [
        (
            "PodFailurePolicy",
            "Container runtime for pod ns/m-train-0 failed with exit code 65 matching FailJob rule at index 0",
            EXIT_INVALID,
        ),
        ("BackoffLimitExceeded", "Job has reached the specified backoff limit", EXIT_BUG),
        ("BackoffLimitExceeded", "Job has reached the specified backoff limit", EXIT_TRANSIENT),
    ],
)
def test_a_failure_reads_the_same_locally_and_in_the_cluster(
    job_reason: str, job_message: str, exit_code: int
) -> None:
    results = [{"error": ERROR, "exitCode": exit_code}]
    observation = Observation(
        generation=1, now=T0, job=failed_job(job_reason, job_message), pod_results=results
    )
    cluster = desired_status({}, observation)
    local = local_status(
        PhaseReason("Running", RUNNING, "running freeatm-runtime pretrain"),
        workload_failed(exit_reason(exit_code), f"freeatm-runtime exited with code {exit_code}", ERROR),
    )
    assert local["phase"] == cluster["phase"] == "Failed"
    assert conditions(local) == conditions(cluster)
    local_stalled, cluster_stalled = (
        [c for c in s["conditions"] if c["type"] == "Stalled"][0] for s in (local, cluster)
    )
    assert local_stalled["message"].endswith(f"; runtime: {ERROR}")
    assert cluster_stalled["message"] == f"{job_message}; runtime: {ERROR}"


def test_a_success_reads_the_same_locally_and_in_the_cluster() -> None:
    complete = {"type": "Complete", "status": "True"}
    job = {"metadata": {"name": "m-train"}, "spec": {}, "status": {"succeeded": 1, "conditions": [complete]}}
    cluster = desired_status({}, Observation(generation=1, now=T0, job=job, output_uri="s3://b/m"))
    local = local_status(
        PhaseReason("Running", RUNNING, "running freeatm-runtime pretrain"),
        PhaseReason("Succeeded", SUCCEEDED, "MaskPretrainJob/m completed"),
    )
    assert local["phase"] == cluster["phase"] == "Succeeded"
    assert conditions(local) == conditions(cluster)


@pytest.mark.parametrize(
    ("phase", "reason", "final"),
    [
        ("Succeeded", "Succeeded", True),
        ("Failed", "InvalidInput", True),
        ("Failed", "BackoffLimitExceeded", True),
        ("Failed", "JobLost", True),
        ("Failed", "JobRejected", True),
        ("Failed", "InvalidSpec", False),  # fixed by editing the spec, which is a new generation anyway
        ("Failed", "DependencyFailed", False),  # re-evaluated when the dependency changes
        ("Failed", "CreateForbidden", False),  # retried: quota may free up
        ("Running", "Running", False),
    ],
)
def test_which_outcomes_are_final_for_their_generation(phase: str, reason: str, final: bool) -> None:
    assert final_outcome(phase, reason) is final
    status = {"phase": phase, "observedGeneration": 2, "conditions": [{"type": "Ready", "reason": reason}]}
    assert finished_at(status, 2) is final
    assert not finished_at(status, 3)
