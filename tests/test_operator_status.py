"""operator/status.py, conditions.py, dependencies.py, events.py: the status the operator writes (pure)."""

from __future__ import annotations

import pytest
from openapi_schema_validator import OAS30Validator

from freeatm.api.conditions import get_condition, set_condition
from freeatm.api.crd import crd_for
from freeatm.api.references import cycle_through
from freeatm.operator.dependencies import evaluate
from freeatm.operator.events import event_object, transition_event
from freeatm.operator.status import Observation, desired_status, outputs_from, parse_pod_result, status_patch

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def validate_status(kind: str, status: dict) -> None:
    schema = crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    OAS30Validator(schema).validate(status)


def job(name="x-gen", **status):
    return {"metadata": {"name": name}, "spec": {"suspend": status.pop("suspend", False)}, "status": status}


def lookup_from(table):
    return lambda kind, name: table.get((kind, name))


CASES = {
    "invalid": Observation(generation=1, now=T0, invalid=[("spec.training.epochs", "must be ≥ 1")]),
    "waiting": Observation(
        generation=1,
        now=T0,
        verdict=evaluate(("MaskPretrainJob", "m"), [("SyntheticDataset", "d")], lookup_from({})),
    ),
    "pending": Observation(generation=1, now=T0, job=job()),
    "running": Observation(generation=1, now=T0, job=job(active=2, startTime=T0)),
    "suspended": Observation(generation=1, now=T0, job=job(suspend=True), suspend=True),
    "queued": Observation(generation=1, now=T0, job=job(suspend=True), suspend=False),
    "succeeded": Observation(
        generation=1,
        now=T1,
        job=job(succeeded=1, conditions=[{"type": "Complete", "status": "True"}]),
        output_uri="s3://b/x",
        pod_results=[{"uri": "s3://b/x", "manifestDigest": "sha256:1", "extra": 1}],
    ),
    "failed": Observation(
        generation=1,
        now=T1,
        job=job(
            failed=4,
            conditions=[
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ],
        ),
    ),
    "bad-input": Observation(
        generation=1,
        now=T1,
        job=job(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]),
        pod_results=[{"error": "model uri not found", "exitCode": 65}],
    ),
}
EXPECTED = {
    "invalid": ("Failed", "InvalidSpec"),
    "waiting": ("Waiting", "WaitingForDependencies"),
    "pending": ("Pending", "JobCreated"),
    "running": ("Running", "Running"),
    "suspended": ("Suspended", "Suspended"),
    "queued": ("Pending", "Queued"),
    "succeeded": ("Succeeded", "Succeeded"),
    "failed": ("Failed", "BackoffLimitExceeded"),
    "bad-input": ("Failed", "InvalidInput"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["SyntheticDataset", "MaskPretrainJob", "EvalJob"])
def test_every_status_validates_against_the_crd_schema(case, kind):
    status = desired_status({}, CASES[case])
    validate_status(kind, status)
    phase, reason = EXPECTED[case]
    assert status["phase"] == phase
    ready = get_condition(status["conditions"], "Ready")
    assert ready["reason"] == reason and ready["status"] == ("True" if phase == "Succeeded" else "False")
    assert get_condition(status["conditions"], "Stalled")["status"] == (
        "True" if phase == "Failed" else "False"
    )
    assert get_condition(status["conditions"], "Reconciling")["status"] == (
        "True" if phase in ("Pending", "Waiting", "Running") else "False"
    )
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    assert {c["type"] for c in status["conditions"]} == {
        "Ready",
        "Reconciling",
        "Stalled",
        "DependenciesReady",
        "Complete",
        "Failed",
        "Suspended",
    }
    # the status as it is stored, with the runtime's progress beside it, validates too
    validate_status(
        kind, {**status, "progress": {"done": 3, "total": 10, "unit": "images", "percent": 30, "images": 3}}
    )


def test_invalid_spec_message_names_the_field():
    status = desired_status({}, CASES["invalid"])
    assert "spec.training.epochs" in get_condition(status["conditions"], "Ready")["message"]
    assert get_condition(status["conditions"], "Stalled")["reason"] == "InvalidSpec"


def test_outputs_and_restarts():
    status = desired_status({"startTime": T0}, CASES["succeeded"])
    assert status["outputs"] == {"uri": "s3://b/x", "manifestDigest": "sha256:1"}
    assert status["completionTime"] == T1 and status["startTime"] == T0
    failed = desired_status({}, CASES["failed"])
    assert failed["restarts"] == 4
    bad = desired_status({}, CASES["bad-input"])
    assert "model uri not found" in get_condition(bad["conditions"], "Failed")["message"]


def test_outputs_fall_back_to_the_spec_uri():
    assert outputs_from("s3://b/x", []) == {"uri": "s3://b/x"}
    assert (
        outputs_from(
            None,
            [
                {
                    "uri": "s3://b/y",
                    "results": [{"checkpoint": "a", "benchmark": "knn", "metric": "top1", "value": 0.5}],
                }
            ],
        )["results"][0]["value"]
        == 0.5
    )
    assert parse_pod_result('log line\n{"uri": "s3://b"}') == {"uri": "s3://b"}
    assert parse_pod_result("Traceback: boom") is None


def test_last_transition_time_changes_only_with_the_status():
    conds = set_condition([], "Ready", "False", "Pending", "", 1, T0)
    conds = set_condition(conds, "Ready", "False", "Running", "now running", 1, T1)
    assert get_condition(conds, "Ready")["lastTransitionTime"] == T0
    conds = set_condition(conds, "Ready", "True", "Succeeded", "", 1, T1)
    assert get_condition(conds, "Ready")["lastTransitionTime"] == T1


def test_finished_status_survives_the_job_being_deleted():
    done = desired_status({}, CASES["succeeded"])
    again = desired_status(done, Observation(generation=1, now="2026-01-02T00:00:00Z"))
    assert again["phase"] == "Succeeded" and again["outputs"] == done["outputs"]
    assert status_patch(done, again) == {}


def test_status_patch_never_touches_progress():
    current = {"phase": "Running", "progress": {"done": 5}, "waitingFor": ["SyntheticDataset/a"]}
    desired = desired_status(current, CASES["running"])
    patch = status_patch(current, desired)
    assert "progress" not in patch and patch["waitingFor"] == [] and "phase" not in patch
    assert status_patch({**current, "outputs": {"uri": "x"}}, {"phase": "Waiting"})["outputs"] is None


def test_dependencies():
    table = {
        ("SyntheticDataset", "d"): {"phase": "Succeeded", "outputs": {"uri": "s3://b/d"}, "deps": []},
        ("MaskPretrainJob", "m"): {"phase": "Running", "deps": [["SyntheticDataset", "d"]]},
        ("MaskPretrainJob", "bad"): {"phase": "Failed", "reason": "BackoffLimitExceeded", "deps": []},
    }
    lookup = lookup_from(table)
    ok = evaluate(("MaskPretrainJob", "x"), [("SyntheticDataset", "d")], lookup)
    assert ok.ready and ok.outputs == {("SyntheticDataset", "d"): {"uri": "s3://b/d"}}
    wait = evaluate(("EvalJob", "e"), [("MaskPretrainJob", "m"), ("MaskPretrainJob", "nope")], lookup)
    assert not wait.ready and wait.waiting == ["MaskPretrainJob/m", "MaskPretrainJob/nope"]
    assert "MaskPretrainJob/nope (not found)" in wait.message and wait.reason == "WaitingForDependencies"
    failed = evaluate(("EvalJob", "e"), [("MaskPretrainJob", "bad")], lookup)
    assert failed.reason == "DependencyFailed" and "BackoffLimitExceeded" in failed.message
    patient = evaluate(("EvalJob", "e"), [("MaskPretrainJob", "bad")], lookup, on_failure="Wait")
    assert patient.reason == "WaitingForDependencies" and not patient.ready
    assert evaluate(("EvalJob", "e"), [], lookup).ready


def test_cycles_are_found_and_named():
    table = {
        ("SyntheticDataset", "a"): {"deps": [["EvalJob", "c"]]},
        ("MaskPretrainJob", "b"): {"deps": [["SyntheticDataset", "a"]]},
        ("EvalJob", "c"): {"deps": [["MaskPretrainJob", "b"]]},
    }
    v = evaluate(("EvalJob", "c"), [("MaskPretrainJob", "b")], lookup_from(table))
    assert v.reason == "DependencyCycle"
    assert v.message == "dependency cycle: EvalJob/c → MaskPretrainJob/b → SyntheticDataset/a → EvalJob/c"
    status = desired_status({}, Observation(generation=2, now=T0, verdict=v))
    assert (
        status["phase"] == "Failed"
        and get_condition(status["conditions"], "Stalled")["reason"] == "DependencyCycle"
    )
    assert cycle_through(("X", "1"), lambda k: []) is None


def test_events_on_transitions_only():
    assert transition_event("Running", "Running", "Running", "") is None
    ev = transition_event("Running", "Failed", "BackoffLimitExceeded", "boom")
    assert ev.type == "Warning" and ev.reason == "BackoffLimitExceeded" and "Running → Failed" in ev.message
    obj = event_object(
        {
            "apiVersion": "freeatm.io/v1alpha1",
            "kind": "EvalJob",
            "metadata": {"name": "e", "namespace": "ns", "uid": "u"},
        },
        ev,
        T0,
    )
    assert obj["involvedObject"]["uid"] == "u" and obj["metadata"]["name"].startswith("e.")


def test_failure_message_survives_later_passes_without_pods():
    failed = desired_status({}, CASES["bad-input"])
    later = desired_status(failed, Observation(generation=1, now=T1, job=CASES["bad-input"].job))
    assert status_patch(failed, later) == {}
    assert "model uri not found" in get_condition(later["conditions"], "Failed")["message"]
